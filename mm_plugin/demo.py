"""The main job: an ImageNet-pretrained EfficientNet-Lite0, fine-tuned to find defective solar cells in the
ELPV electroluminescence images, pruned for an edge CPU.

Two runs, each the strategy search against the allocations users already have at the same budget of
full fine-tunes, picked on validation and reported on test:

1. unstructured masks at one global sparsity: the search (three full fine-tunes) against global magnitude,
   LAMP and ERK (one each, the best picked on validation);
2. whole channels removed with Torch-Pruning at one share of multiply-adds: the search (two full
   fine-tunes) against Torch-Pruning's uniform and global pruning (one each).

Then what an edge engineer decides on (:func:`mm_plugin.deploy.edge_rows`): the dense model, each run's
pick and its best baseline exported to OpenVINO IR, and each IR quantized to int8 with NNCF on calibration
images: test accuracy and macro-F1 of the file itself, CPU latency and size on disk, in ``report.md`` and
one plot of accuracy against latency (``tradeoff.png``). ``--quick`` runs the MNIST ResNet-8 instead, in
about two minutes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .deploy import EdgeRow, edge_rows
from .files import write_atomic, write_json_atomic, write_text_atomic
from .metrics import mcnemar
from .portfolio import RunConfig, RunResult, TaskSpec, resolve_task, run
from .portfolio.search import best_baselines
from .tables import markdown_table

log = logging.getLogger(__name__)

#: The four allocations users already have: each gets one full fine-tune, the best is picked on validation.
BASELINES = ("global_magnitude", "lamp", "erk", "uniform_plus")
ELPV = TaskSpec("efficientnet_lite0", "elpv", batch_size=32)


@dataclass(frozen=True)
class DemoRun:
    """One run of the demo: what it prunes, its settings, and its folder under the demo's."""

    spec: TaskSpec
    config: RunConfig
    folder: str
    title: str


DEMO = (
    DemoRun(ELPV, RunConfig(targets=(0.85,), baselines=BASELINES[:3], epochs=1, budget=3, candidates=8),
            "unstructured", "unstructured, 85 % of the weights"),
    DemoRun(ELPV, RunConfig(sparsity="structured", targets=(0.3,), epochs=1, budget=2, candidates=6),
            "structured", "channels removed, 30 % of the multiply-adds"),
)
QUICK = (
    DemoRun(TaskSpec("resnet8"), RunConfig(targets=(0.9,), baselines=BASELINES[:2], epochs=1, budget=2, candidates=8),
            "unstructured", "unstructured, 90 % of the weights"),
    DemoRun(TaskSpec("resnet8"), RunConfig(sparsity="structured", targets=(0.4,), epochs=1, budget=2, candidates=6),
            "structured", "channels removed, 40 % of the multiply-adds"),
)


def demo_runs(quick: bool = False, seeds: tuple[int, ...] = (0,)) -> list[DemoRun]:
    """The demo's runs at ``seeds`` (the structured one needs the torch-pruning and openvino extras)."""
    runs = [dataclasses.replace(r, config=dataclasses.replace(r.config, seeds=seeds))
            for r in (QUICK if quick else DEMO)]
    if not (importlib.util.find_spec("torch_pruning") and importlib.util.find_spec("openvino")):
        log.warning("the structured demo run needs the torch-pruning and openvino extras; skipping it")
        runs = [r for r in runs if r.config.sparsity != "structured"]
    return runs


@dataclass
class Comparison:
    """One run's pick against its best baseline (picked on validation), seed by seed."""

    run: DemoRun
    result: RunResult
    pick: list[dict] = field(default_factory=list)
    baseline: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, run: DemoRun, result: RunResult) -> Comparison:
        pick = sorted((r for r in result.records if r["name"] == "search"), key=lambda r: r["seed"])
        best = {(r["target"], r["seed"]): r for r in best_baselines(result.records)}
        return cls(run, result, pick, [best[p["target"], p["seed"]] for p in pick])

    def paired(self) -> tuple[int, int, float]:
        """McNemar over every seed's test images: only the pick right, only the baseline right, p."""
        a = "".join(r["test_metrics"]["correct"] for r in self.pick)
        b = "".join(r["test_metrics"]["correct"] for r in self.baseline)
        return mcnemar(a, b)


def _mean(records: Sequence[dict], get) -> float:
    return sum(get(r) for r in records) / len(records)


def _load(result: RunResult, record: dict, task) -> torch.nn.Module:
    from .portfolio import get_pattern
    from .portfolio.jobs import RunContext

    payload = torch.load(result.out / record["checkpoint"], map_location="cpu", weights_only=False)
    ctx = RunContext(None, task.model, task.example_inputs, None, plans={}, task=task)
    return get_pattern(record["pattern"])().load(payload, ctx)


def _plot(rows: Sequence[EdgeRow], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2))
    names = list(dict.fromkeys(r.name for r in rows))
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in rows:
        ax.scatter(r.latency_ratio, 100 * r.accuracy, s=40 + 25 * r.size_mb, color=colors[r.name],
                   facecolors=colors[r.name] if r.precision == "int8" else "none", lw=1.8)
        ax.annotate(f"{r.size_mb:.2g} MB", (r.latency_ratio, 100 * r.accuracy), textcoords="offset points",
                    xytext=(6, 4), fontsize=7)
    for name in names:
        ax.scatter([], [], color=colors[name], label=name)
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="fp32 (hollow)")
    ax.scatter([], [], color="grey", label="int8 (filled)")
    ax.set_xlabel("OpenVINO CPU latency over the dense fp32 file's (batch 1, one thread; lower is better)")
    ax.set_ylabel("test accuracy of the shipped file (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path


def _row(label: str, records: Sequence[dict], picked: str, budget: float) -> list[str]:
    return [label, picked, f"{100 * _mean(records, lambda r: r['test_score']):.2f}",
            f"{_mean(records, lambda r: r['test_metrics']['macro_f1']):.3f}",
            f"{100 * _mean(records, lambda r: r['sparsity']):.1f} %", f"{budget:g}"]


def _comparison(c: Comparison) -> list[str]:
    only_pick, only_base, p = c.paired()
    pick_acc, base_acc = (_mean(rs, lambda r: r["test_score"]) for rs in (c.pick, c.baseline))
    verdict = ("a tie: the paired test cannot tell them apart" if p >= 0.05 else
               "the search wins" if pick_acc > base_acc else "the baseline wins")
    n_baselines = len({r["name"] for r in c.result.records if r["method"] == "baseline"})
    images = len(c.pick[0]["test_metrics"]["correct"])
    return [f"## {c.run.title}", "",
            markdown_table(["", "picked", "test accuracy (%)", "macro-F1", "sparsity", "full fine-tunes"], [
                _row("search", c.pick, ", ".join(r["picked"] for r in c.pick), c.pick[0]["search"]["budget"]),
                _row("best baseline on validation", c.baseline, ", ".join(r["name"] for r in c.baseline),
                     n_baselines)]),
            "", f"Paired test on the {images} test images{' of each seed' if len(c.pick) > 1 else ''}: {only_pick} "
            f"only the search's pick gets right, {only_base} only the baseline; exact McNemar p = {p:.3g}: {verdict}. "
            f"Every configuration: [{c.run.folder}/report.md]({c.run.folder}/report.md).", ""]


def _report(out: Path, task, comparisons: Sequence[Comparison], rows: Sequence[EdgeRow], command: str,
            seconds: float) -> Path:
    dense = comparisons[0].pick[0]
    lines = [f"# {task.name}: pruned for an edge CPU", "", f"Reproduce: `{command}`", "",
             f"Dense model: test accuracy {100 * dense['dense_test_score']:.2f} %, macro-F1 "
             f"{dense['dense_test_metrics'].get('macro_f1', float('nan')):.3f}. Every selection reads the "
             "validation split only; test figures are read once, after every selection.", ""]
    for c in comparisons:
        lines += _comparison(c)
    lines += ["## What ships", "",
              "Each model exported to OpenVINO IR (fp32) and quantized to int8 with NNCF on training images; "
              "the figures are the file's own: test accuracy and macro-F1 through OpenVINO, CPU latency (batch 1, "
              "one thread; medians of blocks timed alternately with the dense fp32 file, and the ratio to it), "
              "and the weights file's size on disk and gzipped "
              "(unstructured zeros shrink only the latter: dense kernels store and compute them).", "",
              markdown_table(["model", "precision", "test accuracy (%)", "macro-F1", "latency (ms)", "size (MB)",
                              "gzipped (MB)"],
                             [[r.name, r.precision, f"{100 * r.accuracy:.2f}", f"{r.macro_f1:.3f}",
                               f"{r.latency_ms:.2f} ({r.latency_ratio:.2f}x)", f"{r.size_mb:.2f}",
                               f"{r.gzip_mb:.2f}"] for r in rows]),
              "", f"The dense fp32 file timed against itself reads {rows[0].latency_ratio:.2f}x: latency differences "
              f"smaller than {100 * abs(1 - rows[0].latency_ratio):.0f} % are within this machine's noise.", "",
              "![accuracy against latency](tradeoff.png)", "",
              f"Wall time of this demo: {seconds / 60:.1f} minutes."]
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")


def run_demo(out: Path, *, quick: bool = False, cache_dir: str | None = None, seeds: tuple[int, ...] = (0,),
             progress: bool = True) -> Iterator[RunResult]:
    """Run the demo's runs (each in its own folder under ``out``, ``out/quick`` for ``quick``), then the edge
    comparison and the demo's ``report.md`` and ``tradeoff.png``; yields each run's result as it ends."""
    import time

    start = time.perf_counter()
    base = out / "quick" if quick else out
    command = f"mm-prune demo --out {out}{' --quick' if quick else ''}" + (
        "" if seeds == (0,) else " --seeds " + ",".join(map(str, seeds)))
    comparisons, tasks = [], {}
    for demo in demo_runs(quick, seeds):
        folder = base / demo.folder
        if demo.spec not in tasks:
            tasks[demo.spec] = resolve_task(demo.spec, folder, cache_dir=cache_dir)
        result = run(tasks[demo.spec], demo.config, folder, command=command, progress=progress)
        comparisons.append(Comparison.of(demo, result))
        yield result
    task = next(iter(tasks.values()))
    models = {"dense": task.model}
    for c in comparisons:
        models[f"{c.run.folder} search"] = _load(c.result, c.pick[0], task)
        models[f"{c.run.folder} {c.baseline[0]['name']}"] = _load(c.result, c.baseline[0], task)
    calibration = [x for x, _ in task.data.calibration(8)]
    rows = edge_rows(models, task.example_inputs, calibration, task.data.test, task.data.num_classes,
                     base / "deploy", int8=importlib.util.find_spec("nncf") is not None)
    write_json_atomic(base / "deploy" / "edge.json", [r.to_dict() for r in rows])
    _plot(rows, base / "tradeoff.png", f"{task.name}: what ships")
    report = _report(base, task, comparisons, rows, command, time.perf_counter() - start)
    log.info("demo report: %s", report)
    print(f"\ndemo report: {report}\nplot:        {base / 'tradeoff.png'}")
    print(json.dumps([r.to_dict() for r in rows], indent=1))
