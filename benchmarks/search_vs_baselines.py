"""Equal-compute comparison: the budgeted Mix-and-Match search against the allocations users already have.

For every testbed and target, ``mm-prune run --budget B`` searches (one-shot scores, short fine-tunes, full
ones; B full fine-tunes in all) while GMP, LAMP, ERK and uniform+ get one full fine-tune each (four in all),
the best baseline picked on validation per seed. Test accuracy (agreement with the dense model for
EfficientNet-Lite0) of both picks, over seeds. A second run per testbed fine-tunes the named strategies and
``--samples`` sampled ones fully, to measure how well one-shot scores rank final accuracy. Structured
testbeds compare structured Mix-and-Match with Torch-Pruning's uniform and global pruning at equal
multiply-adds. Every run is an ordinary run folder (resumable); rerunning the command resumes.

    python benchmarks/search_vs_baselines.py --seeds 0,1,2 --out docs/results/search
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.metrics import mcnemar
from mm_plugin.portfolio import RunConfig, TaskSpec, load_records, resolve_task, run
from mm_plugin.portfolio.report import search_summary, spearman

BASELINES = ("global_magnitude", "lamp", "erk", "uniform_plus")
CROPS = TaskSpec("efficientnet_lite0", "imagenet_crops", batch_size=32)
ELPV = TaskSpec("efficientnet_lite0", "elpv", batch_size=32)
TESTBEDS = {
    # the edge task: EfficientNet-Lite0 (ImageNet weights) fine-tuned on defective solar cells; every method gets the
    # same full fine-tunes: 4 for the unstructured search against 4 baselines, 2 for the structured one against 2
    "elpv": (ELPV, RunConfig(targets=(0.5, 0.7, 0.85), baselines=BASELINES, epochs=2, budget=4, candidates=16)),
    "elpv-structured": (ELPV, RunConfig(sparsity="structured", targets=(0.2, 0.35), epochs=2, budget=2,
                                        candidates=8)),
    "resnet8": (TaskSpec("resnet8"), RunConfig(targets=(0.9, 0.95), baselines=BASELINES, epochs=2, budget=4)),
    "vit_mnist": (TaskSpec("vit_mnist"), RunConfig(targets=(0.7, 0.85), baselines=BASELINES, epochs=2, budget=4)),
    "efficientnet_lite0": (CROPS, RunConfig(targets=(0.5, 0.7), baselines=BASELINES, epochs=1, budget=4,
                                            candidates=12)),
    "vit_mnist-structured": (TaskSpec("vit_mnist"), RunConfig(sparsity="structured", targets=(0.2, 0.3), epochs=2,
                                                              budget=4, candidates=12)),
    "efficientnet_lite0-structured": (CROPS, RunConfig(epochs=1, sparsity="structured", targets=(0.2, 0.3),
                                                       budget=4, candidates=8)),
}


def rank_run(config: RunConfig, samples: int) -> RunConfig:
    """Every named strategy and ``samples`` sampled ones fine-tuned fully at the first target, one seed."""
    return dataclasses.replace(config, budget=None, samples=samples, targets=config.targets[:1], seeds=(0,),
                               baselines=())


def correlation(records: list[dict]) -> dict[str, float | None]:
    done = [r for r in records if r.get("rung") is None and r["method"] == "mix_and_match"]
    return {"n": len(done),
            "rho_val": spearman([r["oneshot_val_score"] for r in done], [r["val_score"] for r in done]),
            "rho_test": spearman([r["oneshot_val_score"] for r in done], [r["test_score"] for r in done]),
            "rho_loss": spearman([-r["oneshot_val_loss"] for r in done], [r["test_score"] for r in done])}


def paired(picks: list[dict], baselines: list[dict]) -> dict | None:
    """McNemar on every seed's test images, pick against the best baseline of the same seed."""
    if not all("correct" in r.get("test_metrics", {}) for r in picks + baselines):
        return None  # records from before the runner kept per-image results
    only_pick, only_base, p = mcnemar("".join(r["test_metrics"]["correct"] for r in picks),
                                      "".join(r["test_metrics"]["correct"] for r in baselines))
    mean = lambda rs: np.mean([r["test_score"] for r in rs])  # noqa: E731
    verdict = "tie" if p >= 0.05 else "search wins" if mean(picks) > mean(baselines) else "baseline wins"
    return {"only_search": only_pick, "only_baseline": only_base, "p": p, "verdict": verdict}


def shipped(name: str, out: Path, records: list[dict], rows: list[dict], earlier: list[dict]) -> None:
    """Structured testbeds: the dense model, each seed's pick and best baseline as OpenVINO IR files (fp32):
    size on disk, latency and accuracy of the file (``edge`` in each summary row). A row of the ``earlier``
    summary with the same picks and baselines keeps its measurement (the checkpoints are not committed, so
    a clean checkout rebuilds the summary from it)."""
    measured = {(r["testbed"], r["target"], tuple(r["pick_keys"]), tuple(r["baseline_keys"])): r["edge"]
                for r in earlier if "edge" in r}
    todo = []
    for row in rows:
        edge = measured.get((row["testbed"], row["target"], tuple(row["pick_keys"]), tuple(row["baseline_keys"])))
        if edge is None:
            todo.append(row)
        else:
            row["edge"] = edge
    if not todo:
        return
    rows = todo
    from mm_plugin.deploy import edge_rows
    from mm_plugin.portfolio import get_pattern
    from mm_plugin.portfolio.jobs import RunContext

    spec, _ = TESTBEDS[name]
    task = resolve_task(spec, out / name)
    ctx = RunContext(None, task.model, task.example_inputs, None, plans={}, task=task)
    pattern = get_pattern("structured")()
    by_key = {r["key"]: r for r in records}
    for row in rows:
        models = {"dense": task.model}
        for role, keys in (("search", row["pick_keys"]), ("baseline", row["baseline_keys"])):
            for key in keys:
                payload = torch.load(out / name / by_key[key]["checkpoint"], map_location="cpu", weights_only=False)
                models[f"{role} {by_key[key]['seed']}"] = pattern.load(payload, ctx)
        edge = edge_rows(models, task.example_inputs, [], task.data.test, task.data.num_classes,
                         out / name / "deploy" / f"{row['target']:.2f}", int8=False)
        row["edge"] = {role: {k: float(np.mean([getattr(e, k) for e in edge if e.name.split()[0] == role]))
                              for k in ("size_mb", "latency_ms", "latency_ratio", "accuracy", "macro_f1")}
                       for role in ("dense", "search", "baseline")}


def summarize(name: str, records: list[dict], rank: list[dict]) -> list[dict]:
    rows = []
    for row in search_summary(records):
        pick = [p["test_score"] for p in row["pick"]]
        oracle = [max(r["test_score"] for r in records if r.get("rung") == 2 and r["target"] == row["target"]
                      and r["seed"] == p["seed"]) for p in row["pick"]]  # the finalist best on test, not picked
        base = [b["test_score"] for b in row["baselines"]]
        each = {b: [r["test_score"] for r in records if r["method"] == "baseline" and r["name"] == b
                    and r["target"] == row["target"]] for b in sorted({r["name"] for r in records if r["method"] == "baseline"})}
        rows.append({"testbed": name, "target": row["target"], "seeds": row["seeds"],
                     "dense": records[0]["dense_test_score"], "search": float(np.mean(pick)),
                     "search_std": float(np.std(pick)), "best_finalist": float(np.mean(oracle)),
                     "best_baseline": float(np.mean(base)),
                     "best_baseline_std": float(np.std(base)), "picked_baselines": [b["name"] for b in row["baselines"]],
                     "picks": [p["picked"] for p in row["pick"]], "budget": row["budget"],
                     "baselines_budget": row["n_baselines"], "each": {b: float(np.mean(v)) for b, v in each.items() if v},
                     "rho_search": row["rho_oneshot"], "rank": correlation(rank) if rank else None,
                     "search_seconds": row["search_seconds"], "baseline_seconds": row["baseline_seconds"],
                     "paired": paired(row["pick"], row["baselines"]),
                     "macro_f1": {role: float(np.mean([r["test_metrics"]["macro_f1"] for r in rs]))
                                  for role, rs in (("search", row["pick"]), ("best_baseline", row["baselines"]))
                                  if all("macro_f1" in r.get("test_metrics", {}) for r in rs)},
                     "pick_keys": [p["key"] for p in row["pick"]], "baseline_keys": [b["key"] for b in row["baselines"]],
                     **({"latency_ratio": {"search": float(np.mean([p["latency_ratio"] for p in row["pick"]])),
                                           "best_baseline": float(np.mean([b["latency_ratio"] for b in row["baselines"]]))}}
                        if all("latency_ratio" in r for r in row["pick"] + row["baselines"]) else {})})
    return rows


#: Every baseline a testbed may run, in table order (unstructured ones, then Torch-Pruning's at equal MACs).
COLUMNS = {"global_magnitude": "GMP", "lamp": "LAMP", "erk": "ERK", "uniform_plus": "uniform+",
           "tp_uniform": "TP uniform", "tp_global": "TP global"}


def pair(p: dict | None) -> str:
    return "—" if p is None else f"{p['only_search']} / {p['only_baseline']}, {p['p']:.2g} ({p['verdict']})"


def table(rows: list[dict]) -> str:
    lines = ["| testbed | target | dense | search pick (test) | best baseline on val (test) | difference | "
             "paired test: only search / only baseline right, p | best finalist on test | "
             + " | ".join(COLUMNS.values()) + " | ρ one-shot vs final (n) | ρ inside the search | seeds |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|"]
    for r in rows:
        e = r["each"]
        rank = r["rank"]
        rho = "—" if not rank or rank["rho_test"] is None else f"{rank['rho_test']:.2f} ({rank['n']})"
        lines.append(
            f"| {r['testbed']} | {r['target']:.2f} | {100 * r['dense']:.2f} | {100 * r['search']:.2f} ± "
            f"{100 * r['search_std']:.2f} | {100 * r['best_baseline']:.2f} ± {100 * r['best_baseline_std']:.2f} | "
            f"{100 * (r['search'] - r['best_baseline']):+.2f} | {pair(r.get('paired'))} | {100 * r['best_finalist']:.2f} | "
            + " | ".join("" if e.get(b) is None else f"{100 * e[b]:.2f}" for b in COLUMNS)
            + f" | {rho} | {'—' if r['rho_search'] is None else format(r['rho_search'], '.2f')} | {r['seeds']} |")
    return "\n".join(lines)


def edge_table(rows: list[dict]) -> str:
    """The structured rows' OpenVINO files (fp32, CPU): accuracy, latency and size, means over the seeds."""
    lines = ["| testbed | target | model | test accuracy (IR) | macro-F1 | latency (ms) | x dense | IR size (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if "edge" in r):
        for role, label in (("dense", "dense"), ("search", "search pick"), ("baseline", "best baseline on val")):
            e = r["edge"][role]
            lines.append(f"| {r['testbed']} | {r['target']:.2f} | {label} | {100 * e['accuracy']:.2f} | "
                         f"{e['macro_f1']:.3f} | {e['latency_ms']:.2f} | {e['latency_ratio']:.2f} | {e['size_mb']:.2f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['testbed']}\n{100 * r['target']:.0f} %" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    drop = lambda key: [100 * (r["dense"] - r[key]) for r in rows]
    ax.bar(x - 0.2, drop("search"), 0.4, yerr=[100 * r["search_std"] for r in rows], capsize=3,
           label="Mix-and-Match search pick")
    ax.bar(x + 0.2, drop("best_baseline"), 0.4, yerr=[100 * r["best_baseline_std"] for r in rows], capsize=3,
           label="best baseline, picked on val")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("test accuracy drop from dense (points; lower is better)")
    ax.set_title("Equal budget: M&M search vs best of four baselines", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbeds", default=",".join(TESTBEDS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rank-samples", type=int, default=6, help="sampled strategies in the rank-correlation run")
    parser.add_argument("--rank", action=argparse.BooleanOptionalAction, default=True,
                        help="the rank-correlation run on unstructured testbeds (ten named strategies and the "
                             "sampled ones, each a full fine-tune at the first target, seed 0)")
    parser.add_argument("--out", default="docs/results/search")
    parser.add_argument("--summary-only", action="store_true", help="rebuild the summary from the run folders")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    for name in [] if args.summary_only else args.testbeds.split(","):
        spec, config = TESTBEDS[name]
        config = dataclasses.replace(config, seeds=seeds)
        command = (f"python benchmarks/search_vs_baselines.py --testbeds {name} --seeds {args.seeds} --out {out}"
                   + ("" if args.rank else " --no-rank"))
        task = resolve_task(spec, out / name)
        run(task, config, out / name, command=command, progress=False)
        if config.sparsity == "unstructured" and args.rank:
            run(task, rank_run(config, args.rank_samples), out / f"{name}-rank", command=command, progress=False)
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else []
    rows = []
    for name in TESTBEDS:
        if not (out / name / "results.jsonl").exists():
            continue
        records = load_records(out / name)
        rows += summarize(name, records, load_records(out / f"{name}-rank"))
        if name == "elpv-structured":
            shipped(name, out, records, [r for r in rows if r["testbed"] == name], earlier)
    write_json_atomic(out / "summary.json", rows)
    write_text_atomic(out / "summary.md", "\n\n".join(filter(None, (table(rows), edge_table(rows)))) + "\n")
    plot(rows, out / "summary.png")
    print(table(rows), edge_table(rows), sep="\n\n")


if __name__ == "__main__":
    main()
