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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..deploy import backend
from ..errors import ConfigError, ValidationError
from ..files import write_atomic, write_json_atomic
from ..planning import Plan, Strategy
from ..training import (
    MODELS,
    DataSplits,
    create_model,
    evaluate,
    finetune,
    load_data,
    pretrained_demo_model,
    reestimate_bn_,
    score,
)
from .config import RunConfig
from .executors import EXECUTORS, Executor
from .folder import RunFolder, fingerprint
from .jobs import Job, RunContext
from .pareto import Aggregate, aggregate, front_of, latency_front_of
from .patterns import Pattern, get_pattern
from .report import plot_pareto, write_report
from .search import Rungs, promote, propose

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
    """Every run to make, and the strategies merged into another one's runs (config key -> names). With
    a budget, the strategies are the search's candidates instead (see :func:`_search`)."""
    jobs: list[Job] = []
    merged: dict[str, list[str]] = {}
    for signal, p in ctx.plans.items() if config.budget is None else ():
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


def _oneshot(job: Job, pattern: Pattern, ctx: RunContext) -> tuple[nn.Module, dict[str, Any], dict[str, float]]:
    """A pruned copy of the dense model with its BatchNorm statistics re-estimated, and its one-shot
    validation scores: what ranks candidates before any fine-tuning."""
    model, extra = pattern.prune_(copy.deepcopy(ctx.dense), job, ctx)
    reestimate_bn_(model, ctx.batches())
    val, val_loss = score(model, ctx.data.val)
    return model, extra, {"oneshot_val_accuracy": val, "oneshot_val_loss": val_loss}


def _record(job: Job, ctx: RunContext, start: float, **fields: Any) -> dict:
    """A job's record; ``test_accuracy`` (and the dense model's) stay None until the final evaluation."""
    return {"key": job.key, "config_key": job.config_key, "method": job.method, "signal": job.signal,
            "name": job.name, "target": job.target, "seed": job.seed, "pattern": ctx.config.sparsity,
            **({} if job.rung is None else {"rung": job.rung}), "planned_sparsity": job.sparsity,
            "dense_val_accuracy": ctx.cache["dense_val_accuracy"], "dense_test_accuracy": None,
            "test_accuracy": None, **fields, "wall_seconds": round(time.perf_counter() - start, 2)}


def _run_job(shared: tuple[Pattern, RunContext], item: tuple[Job, float | None]) -> tuple[dict, Any, Any]:
    """One job, anywhere (an executor's task): prune, score one-shot, fine-tune (``epochs``: the config's,
    or fewer for a search rung, then only the scores count) and measure, on the validation split only.
    Returns the record, the checkpoint payload and, for a timed pattern, the model; nothing is written here."""
    (pattern, ctx), (job, epochs) = shared, item
    start = time.perf_counter()
    config = ctx.config
    model, extra, oneshot = _oneshot(job, pattern, ctx)
    if epochs == 0:  # a search's rung 0: one-shot scores rank
        return _record(job, ctx, start, **oneshot, val_accuracy=oneshot["oneshot_val_accuracy"],
                       val_loss=oneshot["oneshot_val_loss"]), None, None
    epochs_run = config.epochs if epochs is None else epochs
    hooks = pattern.hooks(model, job, ctx, steps=max(1, round(epochs_run * len(ctx.data.train))))
    ft = finetune(model, ctx.data.train, ctx.data.val, epochs=epochs_run, lr=config.lr,
                  patience=None if hooks else config.patience, seed=job.seed, progress=False, desc=job.key,
                  hooks=hooks)  # a schedule runs its whole budget; finetune decides which state it may keep
    extra.update(pattern.finish_(model, hooks))
    val_loss = score(model, ctx.data.val)[1]
    trained = {**oneshot, "val_accuracy": ft.best_val_accuracy, "val_loss": val_loss,
               "best_epoch": ft.best_epoch, "epochs_run": ft.epochs_run}
    if epochs is not None:  # a search's rung 1: short fine-tunes rank
        return _record(job, ctx, start, **trained), None, None
    record = _record(job, ctx, start, **pattern.measure(model, job, ctx), **trained)
    return record, pattern.checkpoint(model, record, extra), model if pattern.timed else None


def _final_evaluation(pattern: Pattern, ctx: RunContext, folder: RunFolder, progress: bool) -> None:
    """The test split's only reader, once every job is fine-tuned and every search has picked on
    validation: the dense model and each finished configuration (from its checkpoint) are evaluated on
    test, and their records completed. A rerun finishes what an interrupted one left."""
    todo = [r for r in folder.records() if r.get("rung") is None and r["test_accuracy"] is None]
    if not todo:
        return
    dense_test = ctx.memo("dense_test_accuracy", lambda: evaluate(ctx.dense, ctx.data.test))
    scored: dict[str, float] = {}  # a search's pick shares its finalist's checkpoint
    for r in tqdm(todo, desc="test split", disable=not progress, unit="model"):
        if r["checkpoint"] not in scored:
            payload = torch.load(folder.path / r["checkpoint"], map_location="cpu", weights_only=False)
            scored[r["checkpoint"]] = evaluate(pattern.load(payload, ctx), ctx.data.test)
        folder.update({**r, "test_accuracy": scored[r["checkpoint"]], "dense_test_accuracy": dense_test})


@dataclass
class _Driver:
    """The only writer of the run folder: hands jobs to the executor, then times (timed patterns), saves
    the checkpoint and appends the record of each as it comes back."""

    pattern: Pattern
    ctx: RunContext
    folder: RunFolder
    executor: Executor
    on_record: Callable[[dict], None] | None
    timer: Any = None
    latency: dict[str, tuple[float, float]] = field(default_factory=dict)

    def add(self, record: dict) -> None:
        self.folder.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def _time(self, job: Job, model: nn.Module) -> dict[str, float]:
        """Latency against the dense model, once per configuration (fine-tuning changes no shape), here
        in the driver: one timing at a time, never beside a training task."""
        if self.timer is None:
            self.timer = backend().Timer(self.ctx.dense, self.ctx.example)
        if job.config_key not in self.latency:
            self.latency[job.config_key] = self.timer.time(model)
        dense_ms, pruned_ms = self.latency[job.config_key]
        return {"latency_ms": pruned_ms, "dense_latency_ms": dense_ms, "latency_ratio": pruned_ms / dense_ms}

    def run(self, items: list[tuple[Job, float | None]], desc: str) -> dict[str, dict]:
        """Every (job, epochs); their records by key, as they finish."""
        out = {}
        for (job, _), (record, payload, model) in self.executor.map(_run_job, (self.pattern, self.ctx), items, desc):
            if model is not None:
                record.update(self._time(job, model))
                payload["record"] = record
            if payload is not None:
                record.update(self.folder.save_checkpoint(job.key, payload))
            self.add(record)
            out[job.key] = record
        return out


def _search(target: float, seed: int, driver: _Driver) -> None:
    """One budgeted search at ``target``: rung 0 one-shot, rung 1 short fine-tunes, rung 2 full ones;
    each rung's candidates run together (in parallel on a cluster). The finalist best on validation is
    recorded again as the run's ``search`` pick."""
    config = driver.ctx.config
    rungs = Rungs.for_budget(config.budget, config.candidates, config.eta)
    recorded = {r["key"]: r for r in driver.folder.records()}

    def rung(candidates: list[Strategy], k: int, epochs: float | None) -> list[dict]:
        jobs = [Job("search", c.signal, c.name, target, seed, c.sparsity, k) for c in candidates]
        recorded.update(driver.run([(j, epochs) for j in jobs if j.key not in recorded], f"rung {k}"))
        return [recorded[j.key] for j in jobs]

    def scored(records: list[dict]) -> list[tuple[float, float]]:
        return [(r["val_accuracy"], r["val_loss"]) for r in records]

    done0 = {r["name"]: (r["val_accuracy"], r["val_loss"]) for r in recorded.values()
             if r.get("rung") == 0 and r["target"] == target and r["seed"] == seed}
    allocations = {b.name: b.sparsity for b in driver.pattern.baselines(driver.ctx, target) if b.sparsity}
    ranked = propose(config, driver.ctx.plans, target, seed, driver.folder.path / "search.db", allocations,
                     driver.pattern.scaled, lambda cs: scored(rung(cs, 0, 0)), done0)
    if rungs.short:
        short = promote(ranked, rungs.short)
        ranked = [(c, *s) for c, s in zip(short, scored(rung(short, 1, config.epochs / rungs.eta)))]
    finals = rung(promote(ranked, rungs.full), 2, None)
    pick = max(finals, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    chosen = Job("mix_and_match", "+".join(config.signals), "search", target, seed, pick["planned_sparsity"])
    if chosen.key not in recorded:
        driver.add({**pick, "key": chosen.key, "config_key": chosen.config_key, "method": chosen.method,
                    "signal": chosen.signal, "name": chosen.name, "rung": None, "picked": pick["name"],
                    "search": {"budget": rungs.cost, "candidates": rungs.candidates, "short": rungs.short,
                               "full": rungs.full, "eta": rungs.eta}})


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
    executor: str = "sequential",
    address: str | None = None,
    cpus_per_trial: int | None = None,
) -> RunResult:
    """Run (or resume) the whole portfolio in ``out`` (see :mod:`.folder` for what it holds); the folder
    is locked for the run. ``force_new`` archives results made with other settings and starts again.
    ``executor="ray"`` runs every job as a Ray task (``address``: a cluster to join; ``cpus_per_trial``:
    CPUs per task, and torch threads per job for either executor)."""
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
        options = {"address": address} if executor == "ray" else {}
        runner = EXECUTORS.get(executor, where="executor")(cpus_per_trial=cpus_per_trial, progress=progress, **options)
        try:
            return _run(config, folder, data, dense, example, keep_checkpoints, command, progress, on_record, runner)
        finally:
            runner.close()


def _run(config: RunConfig, folder: RunFolder, data: DataSplits, dense: nn.Module, example: torch.Tensor,
         keep_checkpoints: str, command: str, progress: bool, on_record: Callable[[dict], None] | None,
         executor: Executor) -> RunResult:
    out = folder.path
    pattern = get_pattern(config.sparsity)()
    calibration = data.calibration(config.calibration_batches) if pattern.needs_calibration(config) else None
    ctx = RunContext(config, dense, example, calibration, plans={}, data=data)
    ctx.cache["dense_val_accuracy"] = evaluate(dense, data.val)
    log.info("dense %s: val %.4f", config.model, ctx.cache["dense_val_accuracy"])
    for i, signal in enumerate(config.signals):
        p = pattern.plan(ctx, signal)
        p.save(out / ("plan.json" if i == 0 else f"plan-{signal}.json"))
        ctx.plans[signal] = p

    driver = _Driver(pattern, ctx, folder, executor, on_record)
    done = {r["key"] for r in folder.records()}
    jobs, merged = _jobs(config, pattern, ctx)
    todo = [j for j in jobs if j.key not in done]
    if done:
        log.info("resuming %s: %d runs finished, %d to go", out, len(done), len(todo))
    driver.run([(j, None) for j in todo], f"{config.model} runs")
    if config.budget is not None:
        for target, seed in tqdm([(t, s) for t in config.targets for s in config.seeds], disable=not progress,
                                 desc=f"{config.model} searches", unit="search"):
            _search(target, seed, driver)
    _final_evaluation(pattern, ctx, folder, progress)

    records = folder.records()
    aggs = aggregate(records)
    front = front_of(aggs)
    title = f"{config.model} on {config.data}" + ("" if config.sparsity == "unstructured" else f", {config.sparsity}")
    report = write_report(aggs, out, title, command, merged=merged, records=records)
    plot = plot_pareto(aggs, out / "pareto.png", title)
    if keep_checkpoints == "front":  # both fronts: select picks from either
        keep = {a.key for a in front} | {a.key for a in latency_front_of(aggs)}
        kept = {r["checkpoint"] for r in records if r["config_key"] in keep and "checkpoint" in r}
        for r in records:
            if r.get("checkpoint") not in kept | {None}:
                (out / r["checkpoint"]).unlink(missing_ok=True)
    write_json_atomic(out / "front.json", [
        {**asdict(a), "checkpoints": [r["checkpoint"] for r in records if r["config_key"] == a.key and "checkpoint" in r]}
        for a in front
    ])
    return RunResult(out, records, aggs, front, report, plot)
