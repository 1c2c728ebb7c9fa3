"""Run the portfolio: every signal x strategy and every baseline, pruned one-shot, fine-tuned with
fixed masks (or removed channels) on the same budget, evaluated, and gathered into a Pareto front and
a report. What depends on the sparsity pattern lives in :mod:`mm_plugin.patterns`.

A run folder holds ``config.json`` (what was asked), ``plan.json`` (and ``plan-<signal>.json`` for
further signals), ``results.jsonl`` (one line per finished run, rewritten atomically),
``checkpoints/`` (masks baked in), ``report.md`` and ``pareto.png``. Rerunning the same command
resumes: finished runs are skipped, and a folder made with other settings is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .data import DataSplits, load_data
from .errors import ConfigError, ValidationError, check_fraction
from .pareto import Aggregate, aggregate, front_of, latency_front_of
from .patterns import Pattern, RunContext, get_pattern
from .plan import Plan, write_json_atomic
from .strategies import Strategy
from .report import plot_pareto, write_report
from .training import evaluate, finetune
from .zoo import MODELS, create_model, pretrained_demo_model

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's numbers; a run folder belongs to exactly one of these."""

    model: str
    data: str = "mnist"
    signals: tuple[str, ...] = ("magnitude",)
    strategies: tuple[str, ...] | None = None  # None: every planned strategy
    baselines: tuple[str, ...] | None = None  # None: the pattern's (GMP, LAMP, ERK; TP uniform and global)
    targets: tuple[float, ...] | None = None  # None: the pattern's; empty: strategies at their own sparsity
    epochs: int = 2
    lr: float = 5e-4
    patience: int | None = 3
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    calibration_batches: int = 4
    range_targets: tuple[float, ...] | None = None  # None: the pattern's
    rules: Any = None  # list of rule dicts or a path
    dense_epochs: int | None = None  # built-ins: their recipe; other models: 0 = use the weights as given
    sparsity: str = "unstructured"  # a pattern name: "flexhinm", or "structured" (Torch-Pruning channels)

    def __post_init__(self) -> None:
        pattern = get_pattern(self.sparsity)
        for name in ("baselines", "targets", "range_targets"):  # fill defaults, so config.json says them
            if getattr(self, name) is None:
                object.__setattr__(self, name, tuple(getattr(pattern, f"default_{name}")))
        pattern().check(self)
        for t in self.targets:
            check_fraction(t, "target sparsity")
        if self.epochs < 0:
            raise ValidationError(f"epochs must be >= 0, got {self.epochs}")
        if not self.seeds:
            raise ValidationError("give at least one seed")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class Job:
    method: str  # "mix_and_match" or "baseline"
    signal: str
    name: str  # strategy or allocation
    target: float | None
    seed: int
    sparsity: dict[str, float] = field(compare=False, hash=False)

    @property
    def config_key(self) -> str:
        t = "natural" if self.target is None else f"{self.target:.4f}"
        return f"{self.method}/{self.signal}/{self.name}/{t}"

    @property
    def key(self) -> str:
        return f"{self.config_key}/seed{self.seed}"


@dataclass
class RunResult:
    out: Path
    records: list[dict]
    aggregates: list[Aggregate]
    front: list[Aggregate]
    report: Path | None
    plot: Path | None


# --- the run folder --------------------------------------------------------------------------

def _check_folder(out: Path, config: RunConfig) -> None:
    """Refuse a folder made for other settings: its results would be silently mixed with ours."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        new = config.to_dict()
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
        if diff:
            raise ConfigError(
                f"run folder {out} was made with a different configuration ({'; '.join(diff)}); "
                "use another --out folder, or rerun with the original settings to resume"
            )
    else:
        write_json_atomic(path, config.to_dict())


def load_records(out: Path) -> list[dict]:
    path = Path(out) / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_record(out: Path, record: dict) -> None:
    """Rewrite results.jsonl through a temporary file: a crash leaves the old or the new file, never half."""
    path = out / "results.jsonl"
    old = path.read_text() if path.exists() else ""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(old + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared
    os.replace(tmp, path)


def _checkpoint_path(out: Path, key: str) -> Path:
    return out / "checkpoints" / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".pt")


# --- the pieces of one run -------------------------------------------------------------------

def _dense_model(config: RunConfig, data: DataSplits, out: Path, cache_dir: str | Path | None) -> nn.Module:
    if config.model in MODELS:
        model, _ = pretrained_demo_model(config.model, data, cache_dir=cache_dir, epochs=config.dense_epochs)
        return model
    h, w = data.input_shape[-2:]
    model = create_model(config.model, num_classes=data.num_classes, in_chans=data.input_shape[0],
                         img_size=h if h == w else (h, w))
    if config.dense_epochs:
        path = out / "dense.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            finetune(model, data.train, data.val, epochs=config.dense_epochs, lr=1e-3, patience=None, desc="dense")
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
    return model


def _check_model_fits_data(model: nn.Module, data: DataSplits, spec: str) -> torch.Tensor:
    x, _ = next(iter(data.val))
    try:
        with torch.no_grad():
            y = model.eval()(x[:2])
    except Exception as e:  # noqa: BLE001 - any failure here means model and data disagree
        raise ConfigError(f"model {spec!r} cannot run on {data.name!r} inputs of shape {tuple(x.shape[1:])}: {e}") from None
    if y.dim() != 2 or y.shape[-1] != data.num_classes:
        raise ConfigError(
            f"model {spec!r} outputs shape {tuple(y.shape)} but {data.name!r} has {data.num_classes} classes; "
            f"build the model with num_classes={data.num_classes}"
        )
    return x[:1]


def _same_at(plan: Plan, strategy: Strategy, target: float, cost: str) -> tuple:
    """What a strategy becomes at ``target``: strategies that only differ by a constant position in
    the ranges (conservative, balanced, aggressive, interp-*) all rescale to the same vector."""
    try:
        return tuple(round(v, 6) for v in plan.rescale(strategy, target, cost).sparsity.values())
    except ValidationError:
        return (strategy.name,)


def _jobs(config: RunConfig, pattern: Pattern, ctx: RunContext) -> tuple[list[Job], dict[str, list[str]]]:
    """Every run to make, and the strategies merged into another one's runs (config key -> names)."""
    jobs: list[Job] = []
    merged: dict[str, list[str]] = {}
    for signal, p in ctx.plans.items():
        chosen = [p.strategy(n) for n in config.strategies] if config.strategies else p.strategies
        for t in config.targets:
            first: dict[tuple, Job] = {}
            for s in chosen:
                job = first.setdefault(_same_at(p, s, t, pattern.cost),
                                       Job("mix_and_match", signal, s.name, t, 0, pattern.scaled(p, s, t)))
                if job.name != s.name:
                    log.info("%s at target %g rescales to the same sparsities as %s: run once", s.name, t, job.name)
                    merged.setdefault(job.config_key, []).append(s.name)
                    continue
                jobs += [dataclasses.replace(job, seed=seed) for seed in config.seeds]
        for s in () if config.targets else chosen:  # each strategy at its own sparsity
            t = round(p.global_sparsity(s, pattern.cost), 4)
            jobs += [Job("mix_and_match", signal, s.name, t, seed, s.sparsity) for seed in config.seeds]
    for t in sorted(config.targets or {j.target for j in jobs}):
        for b in pattern.baselines(ctx, t):
            jobs += [Job("baseline", b.signal, b.name, t, seed, b.sparsity) for seed in config.seeds]
    return jobs, merged


def _run_job(job: Job, pattern: Pattern, ctx: RunContext, data: DataSplits, dense_acc: tuple[float, float],
             out: Path, progress: bool) -> dict:
    start = time.perf_counter()
    config = ctx.config
    model, extra = pattern.prune_(copy.deepcopy(ctx.dense), job, ctx)
    oneshot_val, oneshot_test = evaluate(model, data.val), evaluate(model, data.test)
    ft = finetune(model, data.train, data.val, epochs=config.epochs, lr=config.lr, patience=config.patience,
                  seed=job.seed, progress=progress, desc=job.key)
    test = evaluate(model, data.test)
    record = {
        "key": job.key, "config_key": job.config_key, "method": job.method, "signal": job.signal,
        "name": job.name, "target": job.target, "seed": job.seed, "pattern": config.sparsity,
        "planned_sparsity": job.sparsity,
        **pattern.measure(model, job, ctx),
        "dense_val_accuracy": dense_acc[0], "dense_test_accuracy": dense_acc[1],
        "oneshot_val_accuracy": oneshot_val, "oneshot_test_accuracy": oneshot_test,
        "val_accuracy": ft.best_val_accuracy, "test_accuracy": test,
        "best_epoch": ft.best_epoch, "epochs_run": ft.epochs_run,
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    ckpt = _checkpoint_path(out, job.key)
    ckpt.parent.mkdir(exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save(pattern.checkpoint(model, record, extra), tmp)
    tmp.replace(ckpt)
    record["checkpoint"] = str(ckpt.relative_to(out))
    return record


def run(
    config: RunConfig,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    keep_checkpoints: str = "front",
    command: str = "",
    on_record: Callable[[dict], None] | None = None,
) -> RunResult:
    """Run (or resume) the whole portfolio in ``out``; see the module docstring for the files."""
    if keep_checkpoints not in ("front", "all"):
        raise ValidationError(f"keep_checkpoints must be 'front' or 'all', got {keep_checkpoints!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(out, config)
    data = load_data(config.data, batch_size=config.batch_size, seed=0)
    dense = _dense_model(config, data, out, cache_dir)
    example = _check_model_fits_data(dense, data, config.model)
    dense_acc = (evaluate(dense, data.val), evaluate(dense, data.test))
    log.info("dense %s: val %.4f, test %.4f", config.model, *dense_acc)

    pattern = get_pattern(config.sparsity)()
    calibration = data.calibration(config.calibration_batches) if pattern.needs_calibration(config) else None
    ctx = RunContext(config, dense, example, calibration, plans={})
    for i, signal in enumerate(config.signals):
        p = pattern.plan(ctx, signal)
        p.save(out / ("plan.json" if i == 0 else f"plan-{signal}.json"))
        ctx.plans[signal] = p

    done = {r["key"] for r in load_records(out)}
    jobs, merged = _jobs(config, pattern, ctx)
    todo = [j for j in jobs if j.key not in done]
    if done:
        log.info("resuming %s: %d runs finished, %d to go", out, len(done), len(todo))
    for job in tqdm(todo, desc=f"{config.model} runs", disable=not progress, unit="run"):
        record = _run_job(job, pattern, ctx, data, dense_acc, out, progress=False)
        _append_record(out, record)
        if on_record is not None:
            on_record(record)

    records = load_records(out)
    aggs = aggregate(records)
    front = front_of(aggs)
    title = f"{config.model} on {config.data}" + ("" if config.sparsity == "unstructured" else f", {config.sparsity}")
    report = write_report(aggs, out, title, command or f"mm-prune run --model {config.model} --data {config.data}",
                          merged=merged)
    plot = plot_pareto(aggs, out / "pareto.png", title)
    if keep_checkpoints == "front":  # both fronts: select picks from either
        keep = {a.key for a in front} | {a.key for a in latency_front_of(aggs)}
        for r in records:
            if r["config_key"] not in keep:
                (out / r["checkpoint"]).unlink(missing_ok=True)
    write_json_atomic(out / "front.json", [
        {**asdict(a), "checkpoints": [r["checkpoint"] for r in records if r["config_key"] == a.key]} for a in front
    ])
    return RunResult(out, records, aggs, front, report, plot)


def select(out: str | Path, *, min_accuracy: float | None = None, max_nonzeros: int | None = None,
           max_latency: float | None = None) -> tuple[Aggregate, dict]:
    """The front member meeting the budget: the sparsest with val accuracy >= ``min_accuracy``, the
    most accurate (val) with at most ``max_nonzeros`` non-zero weights, or (structured runs) the most
    accurate with a measured latency <= ``max_latency`` x dense. Returns it and its best seed's record."""
    if sum(x is not None for x in (min_accuracy, max_nonzeros, max_latency)) != 1:
        raise ValidationError("give exactly one of --min-accuracy, --max-nonzeros or --max-latency")
    out = Path(out)
    records = load_records(out)
    if not records:
        raise ConfigError(f"{out} has no finished runs (results.jsonl missing or empty); run `mm-prune run` first")
    aggs = aggregate(records)
    front = front_of(aggs)
    if min_accuracy is not None:
        ok = [a for a in front if a.val >= min_accuracy]
        pick = max(ok, key=lambda a: a.sparsity) if ok else None
        budget = f"validation accuracy >= {min_accuracy}"
    elif max_nonzeros is not None:
        ok = [a for a in front if a.nonzeros <= max_nonzeros]
        pick = max(ok, key=lambda a: a.val) if ok else None
        budget = f"at most {max_nonzeros} non-zeros"
    else:
        front = latency_front_of(aggs)
        if not front:
            raise ConfigError(f"{out} has no measured latencies: --max-latency needs a run with --sparsity structured")
        ok = [a for a in front if a.latency_ratio <= max_latency]
        pick = max(ok, key=lambda a: a.val) if ok else None
        budget = f"latency <= {max_latency} x dense"
    if pick is None:
        best = ", ".join(f"{100 * a.sparsity:.1f} % / val {100 * a.val:.2f} / {a.nonzeros:,.0f} nz"
                         + (f" / {a.latency_ratio:.2f}x latency" if a.timed else "") for a in front)
        raise ValidationError(f"no front member meets {budget}; the front is: {best}")
    record = max((r for r in records if r["config_key"] == pick.key), key=lambda r: r["val_accuracy"])
    return pick, record


def export_selected(out: str | Path, record: dict, dest: str | Path) -> Path:
    src = Path(out) / record["checkpoint"]
    if not src.exists():
        raise ConfigError(f"checkpoint {src} is missing; rerun with keep_checkpoints='all' or rerun the run")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest

