"""Equal-compute comparison: the budgeted Mix-and-Match search against the allocations users already have.

For every testbed and target, ``mm-prune run --budget B`` searches (one-shot scores, short fine-tunes, full
ones; B full fine-tunes in all) while GMP, LAMP, ERK and uniform+ get one full fine-tune each (four in all),
the best baseline picked on validation per seed. Test accuracy of both picks over seeds, and McNemar's test
on the test images pooled over seeds. Beside the configured pick, every row reports the finalist with the
lowest validation loss: the same finalists, so comparing the two picks costs nothing. ``--sampler``,
``--pick`` and ``--sensitivity`` make a variant of the search: its own run folder, ``<testbed>+<variant>``,
started with the main folder's baseline records (identical jobs, see :func:`share_baselines`). A second run
per testbed (``--rank``) fine-tunes the named strategies and sampled ones fully, to measure how well one-shot
scores rank final accuracy. Structured testbeds compare structured Mix-and-Match with Torch-Pruning's uniform
and global pruning at equal multiply-adds. The search's wall time is measured end to end (sampler included;
the latency timing of its finalists left out, as the baselines' jobs leave out theirs) and the measurement of
sensitivity is shared out over its targets. Every run is an ordinary run folder
(resumable); rerunning the command resumes.

    python benchmarks/search_vs_baselines.py --seeds 0,1,2 --out docs/results/search
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.metrics import mcnemar
from mm_plugin.planning import Sensitivity
from mm_plugin.portfolio import RunConfig, TaskSpec, load_records, resolve_task, run
from mm_plugin.portfolio.config import PICKS, SAMPLERS
from mm_plugin.portfolio.report import search_summary, spearman

log = logging.getLogger("search_vs_baselines")
BASELINES = ("global_magnitude", "lamp", "erk", "uniform_plus")
ELPV = TaskSpec("efficientnet_lite0", "elpv", batch_size=32)
TESTBEDS = {
    # the edge task: EfficientNet-Lite0 (ImageNet weights) fine-tuned on defective solar cells; every method gets the
    # same full fine-tunes: 4 for the unstructured search against 4 baselines, 2 for the structured one against 2;
    # a one-shot score costs about 6 % of a fine-tune here, so 8 candidates leave room for short fine-tunes
    "elpv": (ELPV, RunConfig(targets=(0.5, 0.7, 0.85), baselines=BASELINES, epochs=2, budget=4, candidates=8)),
    "elpv-structured": (ELPV, RunConfig(sparsity="structured", targets=(0.2, 0.35), epochs=2, budget=2,
                                        candidates=8)),
    # MNIST: a one-shot score costs about 4 % of a fine-tune on ResNet-8, so 12 candidates leave room in the budget for
    # twice as many short fine-tunes as full ones (Rungs.candidates_for)
    "resnet8": (TaskSpec("resnet8"), RunConfig(targets=(0.9, 0.95), baselines=BASELINES, epochs=2, budget=4,
                                               candidates=12)),
    "vit_mnist": (TaskSpec("vit_mnist"), RunConfig(targets=(0.7, 0.85), baselines=BASELINES, epochs=2, budget=4,
                                                   candidates=12)),
    "vit_mnist-structured": (TaskSpec("vit_mnist"), RunConfig(sparsity="structured", targets=(0.2, 0.3), epochs=2,
                                                              budget=2, candidates=12)),
}


def variant(config: RunConfig, sampler: str, pick: str, sensitivity: bool) -> tuple[RunConfig, str]:
    """The search with another sampler and final pick (unstructured testbeds: EvoPress selects on one-shot losses
    of unstructured masks; the paired pick holds the usual allocations, which Torch-Pruning's baselines do not
    have) and/or measured sensitivity, and the suffix of its run folder ("" for the search as configured)."""
    if config.sparsity == "unstructured":
        config = dataclasses.replace(config, sampler=sampler, pick=pick)
    config = dataclasses.replace(config, sensitivity=sensitivity)
    return config, "".join(f"+{v}" for v, on in ((config.sampler, config.sampler != "tpe"),
                                                   (config.pick, config.pick != "score"),
                                                   ("sensitivity", sensitivity)) if on)


def share_baselines(main: Path, folder: Path, config: RunConfig) -> None:
    """Start a variant's run folder with the main folder's baseline records (and checkpoints): the same jobs
    (seeds, data, weights, recipe; no baseline reads the sampler, the pick or the sensitivity), which repeat
    bit for bit on CPU (checked on ResNet-8: every validation score and loss equal), so the variant fine-tunes
    only its search. Each shared record says where it came from."""
    if (folder / "results.jsonl").exists() or not (main / "results.jsonl").exists():
        return
    settings = json.loads((main / "config.json").read_text())
    shared = [{**r, "shared_from": main.name} for r in load_records(main) if r["method"] == "baseline"]
    if not all("work" in r for r in shared):  # the search counts its one-shot scores against the baselines' work
        log.info("%s: its baseline records predate metered jobs; %s runs its own", main, folder.name)
        return
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    for r in shared:
        if r.get("checkpoint") and (main / r["checkpoint"]).exists():
            shutil.copy2(main / r["checkpoint"], folder / r["checkpoint"])
    write_json_atomic(folder / "config.json", {**settings, "settings": config.to_dict()})
    write_text_atomic(folder / "results.jsonl", "".join(json.dumps(r) + "\n" for r in shared))


def rank_run(config: RunConfig, samples: int) -> RunConfig:
    """Every named strategy and ``samples`` sampled ones fine-tuned fully at the first target, one seed."""
    return dataclasses.replace(config, budget=None, samples=samples, targets=config.targets[:1], seeds=(0,),
                               baselines=())


def fully_tuned(rank: list[dict]) -> list[dict]:
    """The rank run's candidates, each fine-tuned fully."""
    return [r for r in rank if r.get("rung") is None and r["method"] == "mix_and_match"]


def correlation(records: list[dict]) -> dict[str, float | None]:
    done = fully_tuned(records)
    return {"n": len(done),
            "rho_val": spearman([r["oneshot_val_score"] for r in done], [r["val_score"] for r in done]),
            "rho_test": spearman([r["oneshot_val_score"] for r in done], [r["test_score"] for r in done]),
            "rho_loss": spearman([-r["oneshot_val_loss"] for r in done], [r["test_score"] for r in done])}


def pool_ceiling(rank: list[dict], baselines: list[dict], target: float) -> dict | None:
    """The rank run's model best on test (every candidate fine-tuned fully, like a baseline; seed 0) against the
    best baseline of seed 0: where even this pick on test does not beat it beyond McNemar's test, no pick on
    validation among those candidates can."""
    done = [r for r in fully_tuned(rank) if r["target"] == target and r.get("test_score") is not None]
    base = [b for b in baselines if b["seed"] == 0]
    if not done or not base:
        return None
    best = max(done, key=lambda r: r["test_score"])
    return {"name": best["name"], "n": len(done), "test": best["test_score"], "baseline": base[0]["test_score"],
            "paired": paired([best], base)}


def paired(picks: list[dict], baselines: list[dict]) -> dict | None:
    """McNemar on every seed's test images, pick against the best baseline of the same seed."""
    if not all("correct" in r.get("test_metrics", {}) for r in picks + baselines):
        return None  # records from before the runner kept per-image results
    only_pick, only_base, p = mcnemar("".join(r["test_metrics"]["correct"] for r in picks),
                                      "".join(r["test_metrics"]["correct"] for r in baselines))
    mean = lambda rs: np.mean([r["test_score"] for r in rs])
    verdict = "tie" if p >= 0.05 else "search wins" if mean(picks) > mean(baselines) else "baseline wins"
    return {"only_search": only_pick, "only_baseline": only_base, "p": p, "verdict": verdict}


def shipped(name: str, out: Path, records: list[dict], rows: list[dict], earlier: list[dict]) -> None:
    """Structured testbeds: the dense model, each seed's pick and best baseline as OpenVINO IR files (fp32):
    size on disk, latency and accuracy of the file (``edge`` in each summary row). A row of the ``earlier``
    summary with the same models (their checkpoints' SHA-256) keeps its measurement (the checkpoints are
    not committed, so a clean checkout rebuilds the summary from it)."""
    def identity(row: dict) -> tuple:
        return row["testbed"], row["target"], tuple(row.get("pick_sha256", ())), tuple(row.get("baseline_sha256", ()))

    measured = {identity(r): r["edge"] for r in earlier if "edge" in r and r.get("pick_sha256")}
    by_key = {r["key"]: r for r in records}
    todo = []
    for row in rows:
        row["pick_sha256"] = [by_key[k]["checkpoint_sha256"] for k in row["pick_keys"]]
        row["baseline_sha256"] = [by_key[k]["checkpoint_sha256"] for k in row["baseline_keys"]]
        edge = measured.get(identity(row))
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


def finals_of(records: list[dict], target: float, seed: int) -> list[dict]:
    return [r for r in records if r.get("rung") == 2 and r["target"] == target and r["seed"] == seed]


def summarize(name: str, variant: str, records: list[dict], rank: list[dict], measured: float = 0.0) -> list[dict]:
    """One row per target; ``measured``: the seconds the run spent measuring sensitivity (once, for every
    target and seed), counted in the searches' wall time, a share per target."""
    rows = []
    targets = search_summary(records)
    for row in targets:  # end to end where the run timed it (sampler and driver included), else its jobs
        ends = [p["search"].get("seconds") for p in row["pick"]]
        row["search_seconds"] = (sum(ends) if None not in ends else row["search_seconds"]) + measured / len(targets)
        pick = [p["test_score"] for p in row["pick"]]
        finals = [finals_of(records, row["target"], p["seed"]) for p in row["pick"]]
        # the finalist best on test: not a pick but the ceiling of any pick among the finalists
        ceiling = [max(f, key=lambda r: r["test_score"]) for f in finals]
        by_loss = [min(f, key=lambda r: (r["val_loss"], -r["val_score"])) for f in finals]
        base = [b["test_score"] for b in row["baselines"]]
        each = {b: [r["test_score"] for r in records if r["method"] == "baseline" and r["name"] == b
                    and r["target"] == row["target"]] for b in sorted({r["name"] for r in records if r["method"] == "baseline"})}
        rows.append({"testbed": name, "variant": variant, "target": row["target"], "seeds": row["seeds"],
                     "dense": records[0]["dense_test_score"], "search": float(np.mean(pick)),
                     "search_std": float(np.std(pick)),
                     "best_finalist": float(np.mean([r["test_score"] for r in ceiling])),
                     "best_finalist_paired": paired(ceiling, row["baselines"]),
                     "loss_pick": float(np.mean([r["test_score"] for r in by_loss])),
                     "loss_pick_paired": paired(by_loss, row["baselines"]),
                     "best_baseline": float(np.mean(base)),
                     "best_baseline_std": float(np.std(base)), "picked_baselines": [b["name"] for b in row["baselines"]],
                     "picks": [p["picked"] for p in row["pick"]], "budget": row["budget"],
                     "baselines_budget": row["n_baselines"], "each": {b: float(np.mean(v)) for b, v in each.items() if v},
                     "rho_search": row["rho_oneshot"], "rank": correlation(rank) if rank else None,
                     "pool_ceiling": pool_ceiling(rank, row["baselines"], row["target"]),
                     "search_seconds": row["search_seconds"], "baseline_seconds": row["baseline_seconds"],
                     "cost_ratio": row["search_seconds"] / row["baseline_seconds"] * row["n_baselines"] / row["budget"],
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
    lines = ["| testbed | search | target | dense | search pick (test) | best baseline on val (test) | difference | "
             "paired test: only search / only baseline right, p | lowest-loss finalist (test), paired test | "
             "best finalist on test (a ceiling, not a pick), paired test | " + " | ".join(COLUMNS.values())
             + " | ρ one-shot vs final (n) | the pool fine-tuned fully, best on test (seed 0) against the best "
             "baseline, paired test | ρ inside the search | wall time x baselines' | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|---|"]
    for r in rows:
        e = r["each"]
        rank = r["rank"]
        rho = "—" if not rank or rank["rho_test"] is None else f"{rank['rho_test']:.2f} ({rank['n']})"
        c = r.get("pool_ceiling")
        pool = "—" if c is None else (f"{c['name']}: {100 * c['test']:.2f} against {100 * c['baseline']:.2f}, "
                                      f"{pair(c['paired'])}")
        lines.append(
            f"| {r['testbed']} | {r['variant']} | {r['target']:.2f} | {100 * r['dense']:.2f} | {100 * r['search']:.2f} ± "
            f"{100 * r['search_std']:.2f} | {100 * r['best_baseline']:.2f} ± {100 * r['best_baseline_std']:.2f} | "
            f"{100 * (r['search'] - r['best_baseline']):+.2f} | {pair(r.get('paired'))} | "
            f"{100 * r['loss_pick']:.2f}, {pair(r.get('loss_pick_paired'))} | "
            f"{100 * r['best_finalist']:.2f}, {pair(r.get('best_finalist_paired'))} | "
            + " | ".join("" if e.get(b) is None else f"{100 * e[b]:.2f}" for b in COLUMNS)
            + f" | {rho} | {pool} | {'—' if r['rho_search'] is None else format(r['rho_search'], '.2f')} | "
            f"{r['cost_ratio']:.2f} | {r['seeds']} |")
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
    ax.set_title("Equal budget: M&M search vs the best baseline picked on validation", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def folders(out: Path) -> list[tuple[str, str]]:
    """(testbed, run folder name) of every search run under ``out``, in testbed order, variants after."""
    found = []
    for name in TESTBEDS:
        variants = sorted(p.name for p in out.glob(f"{name}+*") if (p / "results.jsonl").exists())
        found += [(name, f) for f in ([name] if (out / name / "results.jsonl").exists() else []) + variants]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbeds", default=",".join(TESTBEDS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                        help="the search's sampler on unstructured testbeds (a variant folder unless tpe)")
    parser.add_argument("--pick", choices=PICKS, default="score",
                        help="the search's final pick on unstructured testbeds (a variant folder unless score)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="measure each unit's sensitivity first (a variant folder): ranges follow it")
    parser.add_argument("--share-baselines", action=argparse.BooleanOptionalAction, default=True,
                        help="a variant starts with the main folder's baseline records (identical jobs) instead of "
                             "fine-tuning the baselines again")
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
        config, suffix = variant(dataclasses.replace(config, seeds=seeds), args.sampler, args.pick, args.sensitivity)
        command = (f"python benchmarks/search_vs_baselines.py --testbeds {name} --seeds {args.seeds} --out {out}"
                   + (f" --sampler {args.sampler}" if args.sampler != "tpe" else "")
                   + (f" --pick {args.pick}" if args.pick != "score" else "")
                   + (" --sensitivity" if args.sensitivity else "") + ("" if args.rank else " --no-rank"))
        task = resolve_task(spec, out / name)
        if suffix and args.share_baselines:
            share_baselines(out / name, out / f"{name}{suffix}", config)
        run(task, config, out / f"{name}{suffix}", command=command, progress=False)
        if config.sparsity == "unstructured" and args.rank and not suffix:
            run(task, rank_run(config, args.rank_samples), out / f"{name}-rank", command=command, progress=False)
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else []
    rows = []
    for name, folder in folders(out):
        records = load_records(out / folder)
        sensitivity = out / folder / "sensitivity.json"
        measured = Sensitivity.load(sensitivity).meta.get("seconds", 0.0) if sensitivity.exists() else 0.0
        rows += summarize(name, folder[len(name) + 1:] or "score", records, load_records(out / f"{name}-rank"), measured)
        if name == "elpv-structured" and folder == name:
            shipped(name, out, records, [r for r in rows if r["testbed"] == name and r["variant"] == "score"], earlier)
    write_json_atomic(out / "summary.json", rows)
    write_text_atomic(out / "summary.md", "\n\n".join(filter(None, (table(rows), edge_table(rows)))) + "\n")
    plot([r for r in rows if r["variant"] == "score"], out / "summary.png")
    print(table(rows), edge_table(rows), sep="\n\n")


if __name__ == "__main__":
    main()
