"""FlexHiNM-GP with per-layer targets searched by Mix-and-Match, against the allocations users already have.

For every testbed, at one global sparsity counted over the layers that can hold the hybrid pattern, the same
fine-tuning for every method (``mm-prune run``'s loop: AdamW, cosine, every epoch run, the best on validation
kept), every method's kept weights re-solved on the calibration batches (``--reconstruct``):

* ``unstructured``: magnitude masks, the same target in every layer (the ceiling the hybrid pattern chases);
* ``hybrid-oneshot``, ``hybrid-oneshot-lamp``, ``hybrid-oneshot-erk``: ``--sparsity hybrid`` (the hybrid dense /
  2:4 / vector-pruned masks, fixed) at uniform, LAMP's and ERK's per-layer targets;
  ``hybrid-oneshot-picked``: of those three, the one best on validation (per seed);
* ``flexhinm-gp``, ``flexhinm-gp-lamp``, ``flexhinm-gp-erk``: ``--sparsity flexhinm`` (2:4 choices learned,
  hardened) at uniform, LAMP's and ERK's targets; ``flexhinm-gp-picked``: the one best on validation;
* ``flexhinm-gp-search``: ``--sparsity flexhinm --budget B``: the strategy search over per-layer targets (the
  uniform, LAMP and ERK allocations held exactly in its pool), picked on validation.

Each pattern is one ``mm_plugin.run`` folder under ``<out>/<testbed>/`` (resumable: a rerun finishes what an
interrupted one left). ``summary.json`` holds one row per testbed, target, epochs and method: test accuracy
``mean`` / ``std`` over ``seeds`` (fractions), the measured ``sparsity`` and the shares of the pruned layers'
weights in 2:4 (``share_24``), removed whole (``share_vector``) and dense (``share_dense``), wall time per seed,
and McNemar's test (pooled test images of every seed) of the search against each other method. The commands
behind the published table are in ``docs/results/flexhinm.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
from pathlib import Path

import torch

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.flexhinm import FlexHiNMConfig
from mm_plugin.metrics import mcnemar
from mm_plugin.portfolio import RunConfig, TaskSpec, load_records, resolve_task, run
from mm_plugin.portfolio.patterns import PATTERNS, HybridPattern, Pattern
from mm_plugin.portfolio.search import best_baselines

UNSTRUCTURED = "unstructured-nm-layers"


@PATTERNS.register(UNSTRUCTURED)
class NMLayersUnstructured(Pattern):
    """Unstructured masks on exactly the layers the hybrid pattern prunes, so the target counts the same weights."""

    ignored = HybridPattern.ignored


TESTBEDS = {  # every fine-tune runs all its epochs (patience None), as FlexHiNM-GP's schedule does
    "resnet8": TaskSpec("resnet8", patience=None),
    "swin_tiny_mnist": TaskSpec("swin_tiny_mnist", patience=None),
    "elpv": TaskSpec("efficientnet_lite0", "elpv", batch_size=32, patience=None),
}
#: (run folder, pattern, baselines and their method names, whether the run searches)
RUNS = (
    ("unstructured", UNSTRUCTURED, {"uniform": "unstructured"}, False),
    ("hybrid", "hybrid", {"uniform": "hybrid-oneshot", "lamp": "hybrid-oneshot-lamp",
                          "erk": "hybrid-oneshot-erk"}, False),
    ("flexhinm", "flexhinm", {"uniform": "flexhinm-gp", "lamp": "flexhinm-gp-lamp", "erk": "flexhinm-gp-erk"}, True),
)
METHODS = ("unstructured", "hybrid-oneshot", "hybrid-oneshot-lamp", "hybrid-oneshot-erk", "hybrid-oneshot-picked",
           "flexhinm-gp", "flexhinm-gp-lamp", "flexhinm-gp-erk", "flexhinm-gp-picked", "flexhinm-gp-search")
#: The baselines' pick on validation (per seed) among the same pattern's uniform, LAMP and ERK targets.
PICKED = {"hybrid-oneshot-picked": ("hybrid-oneshot", "hybrid-oneshot-lamp", "hybrid-oneshot-erk"),
          "flexhinm-gp-picked": ("flexhinm-gp", "flexhinm-gp-lamp", "flexhinm-gp-erk")}
SEARCH = "flexhinm-gp-search"


def method_records(folder: Path, baselines: dict[str, str]) -> dict[str, list[dict]]:
    """The finished records of a run folder by method name: its baselines', its search picks'."""
    out: dict[str, list[dict]] = {}
    for r in load_records(folder) if (folder / "results.jsonl").exists() else []:
        if r.get("rung") is not None or r.get("test_score") is None:
            continue
        name = SEARCH if r["name"] == "search" else baselines.get(r["name"]) if r["method"] == "baseline" else None
        if name:
            out.setdefault(name, []).append(r)
    for picked, names in PICKED.items():
        if all(out.get(m) for m in names):  # the runner's own pick on validation; the first in ``names`` wins a tie
            out[picked] = best_baselines([r for m in names for r in out[m]])
    return out


def summarize(testbed: str, epochs: float, records: dict[str, list[dict]]) -> list[dict]:
    """One row per target and method; the search's McNemar test against every other method on the same seeds."""
    rows = []
    for target in sorted({r["target"] for rs in records.values() for r in rs}):
        at = {m: sorted((r for r in records.get(m, []) if r["target"] == target), key=lambda r: r["seed"])
              for m in METHODS}
        search = at[SEARCH]
        for method, rs in at.items():
            if not rs:
                continue
            tests = [r["test_score"] for r in rs]
            row = {"testbed": testbed, "target": target, "epochs": epochs, "method": method,
                   "seeds": [r["seed"] for r in rs], "mean": statistics.mean(tests),
                   "std": statistics.stdev(tests) if len(tests) > 1 else 0.0, "test": tests,
                   "val": [r["val_score"] for r in rs], "dense": rs[0]["dense_test_score"],
                   "sparsity": statistics.mean(r["sparsity"] for r in rs),
                   **{k: statistics.mean(r[k] for r in rs) for k in ("share_24", "share_vector", "share_dense")
                      if all(k in r for r in rs)},
                   "seconds": statistics.mean(r["wall_seconds"] for r in rs),
                   "picked": [r.get("picked", r["name"]) for r in rs]}
            if method == SEARCH:
                row["seconds"] = statistics.mean(r["search"]["seconds"] for r in rs)
            seeds = sorted(set(row["seeds"]) & {r["seed"] for r in search})
            if method != SEARCH and seeds:
                mine = {r["seed"]: r["test_metrics"]["correct"] for r in search}
                theirs = {r["seed"]: r["test_metrics"]["correct"] for r in rs}
                only_search, only_other, p = mcnemar("".join(mine[s] for s in seeds), "".join(theirs[s] for s in seeds))
                row["search_vs"] = {"seeds": seeds, "only_search": only_search, "only_other": only_other, "p": p}
            rows.append(row)
    return rows


def suffix(options: dict) -> str:
    """A run folder's suffix for FlexHiNM options other than the defaults."""
    return "".join(f"+{k}={v}" for k, v in sorted(options.items()))


def tile_variants(testbed: Path) -> list[int | None]:
    """The tile heights a testbed's FlexHiNM runs used: None (the default) first, then those of suffixed folders."""
    found = sorted(int(p.name.rpartition("=")[2]) for p in testbed.glob("flexhinm+tile_rows=*"))
    return [None, *found] if (testbed / "flexhinm").exists() else found


def table(rows: list[dict]) -> str:
    lines = [("| testbed | target | epochs | method | test accuracy (%) | seeds | sparsity | 2:4 | vector-pruned | dense "
             "| search − method | McNemar (search only / method only, p) | seconds per seed |"), "|" + "---|" * 13]
    for r in rows:
        at = {x["method"]: x for x in rows if (x["testbed"], x["target"]) == (r["testbed"], r["target"])}
        vs = r.get("search_vs")
        diff = f"{100 * (at[SEARCH]['mean'] - r['mean']):+.2f}" if SEARCH in at and r["method"] != SEARCH else ""
        shares = [f"{100 * r[k]:.1f} %" if k in r else "" for k in ("share_24", "share_vector", "share_dense")]
        lines.append(f"| {r['testbed']} | {r['target']:.0%} | {r['epochs']:g} | {r['tile_rows']} | {r['method']} | {100 * r['mean']:.2f} ± "
                     f"{100 * r['std']:.2f} | {','.join(map(str, r['seeds']))} | {100 * r['sparsity']:.1f} % | "
                     + " | ".join(shares) + f" | {diff} | "
                     + (f"{vs['only_search']} / {vs['only_other']}, p = {vs['p']:.2g}" if vs else "")
                     + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbeds", default="resnet8,swin_tiny_mnist")
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=float, default=4, help="the search's full fine-tunes per seed")
    parser.add_argument("--candidates", type=int, default=24, help="the search's one-shot candidates per seed")
    parser.add_argument("--tile-rows", type=int, default=None,
                        help="FlexHiNM's tile height for the hybrid runs (their folders get a +tile_rows=N suffix; "
                             "default: FlexHiNMConfig's)")
    parser.add_argument("--out", default="docs/results/flexhinm")
    parser.add_argument("--summary-only", action="store_true", help="rebuild the summary from the run folders")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    out = Path(args.out)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    testbeds = args.testbeds.split(",")
    for name in [] if args.summary_only else testbeds:
        command = (f"python benchmarks/flexhinm_search.py --testbeds {name} --target {args.target} --epochs "
                   f"{args.epochs:g} --seeds {args.seeds} --budget {args.budget:g} --candidates {args.candidates} "
                   + (f"--tile-rows {args.tile_rows} " if args.tile_rows else "") + f"--out {out}")
        task = resolve_task(TESTBEDS[name], out / name)
        for folder, pattern, baselines, searches in RUNS:
            options = {"tile_rows": args.tile_rows} if args.tile_rows and pattern != UNSTRUCTURED else {}
            config = RunConfig(sparsity=pattern, targets=(args.target,), strategies=(), baselines=tuple(baselines),
                               epochs=args.epochs, seeds=seeds, reconstruct=True, pattern_options=options)
            if searches:
                config = dataclasses.replace(config, budget=args.budget, candidates=args.candidates)
            run(task, config, out / name / (folder + suffix(options)), command=command, progress=False)
    rows = []
    for name in TESTBEDS:
        variants = tile_variants(out / name)
        for tile_rows in variants:  # the default tile first; the unstructured rows once
            options = {} if tile_rows is None else {"tile_rows": tile_rows}
            found = {m: rs for folder, pattern, baselines, _ in RUNS
                     for m, rs in method_records(out / name / (folder + (suffix(options) if pattern != UNSTRUCTURED
                                                                         else "")), baselines).items()}
            config = out / name / ("flexhinm" + suffix(options)) / "config.json"
            epochs = json.loads(config.read_text())["settings"]["epochs"] if config.exists() else None
            rows += [{**r, "tile_rows": tile_rows or FlexHiNMConfig().tile_rows} for r in summarize(name, epochs, found)
                     if tile_rows == variants[0] or r["method"] != "unstructured"]
    write_json_atomic(out / "summary.json", rows)
    write_text_atomic(out / "summary.md", table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
