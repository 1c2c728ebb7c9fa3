"""Run the portfolio: every signal x strategy and every baseline, pruned one-shot, fine-tuned with
fixed masks (or removed channels) on the same budget, evaluated, and gathered into a Pareto front and
a report. What depends on the sparsity pattern lives in :mod:`.patterns`, the run folder in :mod:`.folder`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..deploy import backend
from ..errors import ConfigError, ValidationError
from ..files import write_atomic, write_json_atomic
from ..planning import Plan, Strategy
from ..training import MODELS, DataSplits, create_model, evaluate, finetune, load_data, pretrained_demo_model
from .config import RunConfig
from .folder import RunFolder, fingerprint
from .jobs import Job, RunContext
from .pareto import Aggregate, aggregate, front_of, latency_front_of
from .patterns import Pattern, get_pattern
from .report import plot_pareto, write_report

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    out: Path
    records: list[dict]
    aggregates: list[Aggregate]
    front: list[Aggregate]
    report: Path | None
    plot: Path | None


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
            write_atomic(path, lambda f: torch.save(model.state_dict(), f))
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


def _latency(model: nn.Module, job: Job, ctx: RunContext) -> dict[str, float]:
    """Measured latency against the dense model, once per configuration (fine-tuning changes no shape)."""
    if "timer" not in ctx.cache:
        ctx.cache["timer"], ctx.cache["latency"] = backend().Timer(ctx.dense, ctx.example), {}
    timed = ctx.cache["latency"]
    if job.config_key not in timed:
        timed[job.config_key] = ctx.cache["timer"].time(model)
    dense_ms, pruned_ms = timed[job.config_key]
    return {"latency_ms": pruned_ms, "dense_latency_ms": dense_ms, "latency_ratio": pruned_ms / dense_ms}


def _run_job(job: Job, pattern: Pattern, ctx: RunContext, data: DataSplits, dense_acc: tuple[float, float],
             folder: RunFolder, progress: bool) -> dict:
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
        **(_latency(model, job, ctx) if pattern.timed else {}),
        "dense_val_accuracy": dense_acc[0], "dense_test_accuracy": dense_acc[1],
        "oneshot_val_accuracy": oneshot_val, "oneshot_test_accuracy": oneshot_test,
        "val_accuracy": ft.best_val_accuracy, "test_accuracy": test,
        "best_epoch": ft.best_epoch, "epochs_run": ft.epochs_run,
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    record.update(folder.save_checkpoint(job.key, pattern.checkpoint(model, record, extra)))
    return record


def run(
    config: RunConfig,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    keep_checkpoints: str = "front",
    command: str = "",
    force_new: bool = False,
    on_record: Callable[[dict], None] | None = None,
) -> RunResult:
    """Run (or resume) the whole portfolio in ``out`` (see :mod:`.folder` for what it holds); the folder
    is locked for the run. ``force_new`` archives results made with other settings and starts again."""
    if keep_checkpoints not in ("front", "all"):
        raise ValidationError(f"keep_checkpoints must be 'front' or 'all', got {keep_checkpoints!r}")
    command = command or f"mm-prune run --model {config.model} --data {config.data}"
    folder = RunFolder(out)
    with folder.locked(command):
        folder.check(config, force_new=force_new)  # settings first: refuse before any work
        data = load_data(config.data, batch_size=config.batch_size, seed=0)
        dense = _dense_model(config, data, folder.path, cache_dir)
        example = _check_model_fits_data(dense, data, config.model)
        folder.check(config, fingerprint(config, dense, data))
        return _run(config, folder, data, dense, example, keep_checkpoints, command, progress, on_record)


def _run(config: RunConfig, folder: RunFolder, data: DataSplits, dense: nn.Module, example: torch.Tensor,
         keep_checkpoints: str, command: str, progress: bool, on_record: Callable[[dict], None] | None) -> RunResult:
    out = folder.path
    dense_acc = (evaluate(dense, data.val), evaluate(dense, data.test))
    log.info("dense %s: val %.4f, test %.4f", config.model, *dense_acc)
    pattern = get_pattern(config.sparsity)()
    calibration = data.calibration(config.calibration_batches) if pattern.needs_calibration(config) else None
    ctx = RunContext(config, dense, example, calibration, plans={})
    for i, signal in enumerate(config.signals):
        p = pattern.plan(ctx, signal)
        p.save(out / ("plan.json" if i == 0 else f"plan-{signal}.json"))
        ctx.plans[signal] = p

    done = {r["key"] for r in folder.records()}
    jobs, merged = _jobs(config, pattern, ctx)
    todo = [j for j in jobs if j.key not in done]
    if done:
        log.info("resuming %s: %d runs finished, %d to go", out, len(done), len(todo))
    for job in tqdm(todo, desc=f"{config.model} runs", disable=not progress, unit="run"):
        record = _run_job(job, pattern, ctx, data, dense_acc, folder, progress=False)
        folder.append(record)
        if on_record is not None:
            on_record(record)

    records = folder.records()
    aggs = aggregate(records)
    front = front_of(aggs)
    title = f"{config.model} on {config.data}" + ("" if config.sparsity == "unstructured" else f", {config.sparsity}")
    report = write_report(aggs, out, title, command, merged=merged)
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
