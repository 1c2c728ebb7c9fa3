"""Run the portfolio: every signal x strategy and every baseline, pruned one-shot, fine-tuned with
fixed masks (or removed channels) on the same budget, evaluated, and gathered into a Pareto front and
a report. What depends on the sparsity pattern lives in :mod:`.patterns`, the run folder in :mod:`.folder`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..deploy import backend
from ..errors import ConfigError, ValidationError
from ..files import write_json_atomic
from ..masks import masked_weights
from ..planning import Plan, Strategy
from ..training import mean_loss, reestimate_bn_, seed_everything
from .config import RunConfig
from .executors import EXECUTORS, Executor
from .folder import RunFolder, fingerprint
from .jobs import Job, RunContext
from .pareto import Aggregate, aggregate, front_of, latency_front_of
from .patterns import Pattern, get_pattern
from .report import plot_pareto, write_report
from .search import Fitness, Rungs, best_baselines, finalists, pick_final, propose, shortlist
from .sensitivity import prepare_sensitivity
from .task import Task

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    """What a run leaves: its records, their aggregates over seeds, the Pareto front, report and plot."""

    out: Path
    records: list[dict]
    aggregates: list[Aggregate]
    front: list[Aggregate]
    report: Path | None
    plot: Path | None

    @property
    def picks(self) -> dict[float, list[dict]]:
        """The search's pick per target: one record per seed (its ``planned_sparsity``, scores, checkpoint)."""
        out: dict[float, list[dict]] = {}
        for r in self.records:
            if r["name"] == "search" and r.get("rung") is None:
                out.setdefault(r["target"], []).append(r)
        return out


# --- the pieces of one run -------------------------------------------------------------------

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
        chosen = p.strategies if config.strategies is None else [p.strategy(n) for n in config.strategies]
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


def _oneshot(model: nn.Module, job: Job, pattern: Pattern, ctx: RunContext, known: dict[str, Any] | None
             ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``model`` (a copy of the dense one) pruned, its BatchNorm statistics re-estimated, and its one-shot
    validation scores: what ranks candidates before any fine-tuning (``known``: scored already, by a search's
    rung 0, so not again)."""
    model, extra = pattern.prune_(model, job, ctx)
    if ctx.batches() is not None:
        reestimate_bn_(model, ctx.batches())
    if known is None:
        val = ctx.task.scores(model, "val")
        known = {"oneshot_val_score": val["score"], "oneshot_val_loss": val.get("loss")}
    return model, extra, known


#: A sample a model trains on (forward and backward) costs about three forward passes of it.
TRAINING_PASSES = 3


def _batch_size(inputs: Any) -> int | None:
    """The leading size of the first batched tensor in ``inputs`` (tensors, or tuples, lists and dicts of them)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0] if inputs.dim() else None
    values = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else ()
    return next((n for n in map(_batch_size, values) if n), None)


@contextmanager
def _metered(model: nn.Module) -> Iterator[dict[str, float]]:
    """The compute ``model`` spends inside the block, as ``{"work": samples}``: every sample through its forward
    counts one, three where it trains with gradients. The same count on any machine, so a search spends its
    budget (see :func:`_oneshot_cost`) the same way wherever it runs."""
    meter = {"work": 0.0}

    def count(module: nn.Module, args: tuple, kwargs: dict) -> None:
        samples = _batch_size((args, kwargs)) or 1
        meter["work"] += samples * (TRAINING_PASSES if module.training and torch.is_grad_enabled() else 1)

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield meter
    finally:
        handle.remove()


def _record(job: Job, ctx: RunContext, start: float, **fields: Any) -> dict:
    """A job's record; ``test_score`` (and the dense model's) stay None until the final evaluation."""
    return {"key": job.key, "config_key": job.config_key, "method": job.method, "signal": job.signal,
            "name": job.name, "target": job.target, "seed": job.seed, "pattern": ctx.config.sparsity,
            **({} if job.rung is None else {"rung": job.rung}), "planned_sparsity": job.sparsity,
            "dense_val_score": ctx.cache["dense_val_score"], "dense_test_score": None,
            "test_score": None, **fields, "wall_seconds": round(time.perf_counter() - start, 2)}


@contextmanager
def _driven(model: nn.Module, hooks: Sequence) -> Iterator[None]:
    """Training hooks stepped by the model itself, for a user's loop that does not take them: one step per
    forward pass in training mode, before it."""
    if not hooks:
        yield
        return
    step = 0

    def pre_forward(module: nn.Module, args: Any) -> None:
        nonlocal step
        if module.training:
            for hook in hooks:
                hook.on_step(module, step)
            step += 1

    handle = model.register_forward_pre_hook(pre_forward)
    try:
        yield
    finally:
        handle.remove()


def _finetune(task: Task, model: nn.Module, epochs: float, seed: int, hooks: Sequence, keep: str) -> Any:
    """The task's ``finetune`` with what it accepts of ``seed``, ``keep`` and ``hooks`` (the rest driven here);
    the masks must still be there afterwards."""
    masked = set(masked_weights(model))
    seed_everything(seed)
    kwargs: dict[str, Any] = {k: v for k, v in (("seed", seed), ("keep", keep)) if task.takes(k)}
    if hooks and task.takes("hooks"):
        result = task.finetune(model, epochs, **kwargs, hooks=hooks)
    else:
        with _driven(model, hooks):
            result = task.finetune(model, epochs, **kwargs)
    lost = sorted(masked - set(masked_weights(model)))
    if lost:
        raise ConfigError(f"finetune removed the masks of {', '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}: "
                          "train the model it is given in place, without baking or removing its parametrizations")
    return result


def _run_job(shared: tuple[Pattern, RunContext], item: tuple[Job, float | None, dict | None]) -> tuple[dict, Any, Any]:
    """One job, anywhere (an executor's task): prune, score one-shot (unless ``known``), fine-tune (``epochs``:
    the config's, or fewer for a search rung, then only the scores count) and measure, on the validation split
    only. Returns the record (with the job's ``work``, see :func:`_metered`), the checkpoint payload and, for a
    timed pattern, the model; nothing is written here."""
    (pattern, ctx), (job, epochs, known) = shared, item
    start = time.perf_counter()
    model = copy.deepcopy(ctx.dense)
    with _metered(model) as meter:
        model, extra, oneshot = _oneshot(model, job, pattern, ctx, known)
        if epochs == 0:  # a search's rung 0: one-shot scores rank
            return _record(job, ctx, start, **oneshot, val_score=oneshot["oneshot_val_score"],
                           val_loss=oneshot["oneshot_val_loss"], **meter), None, None
        epochs_run = ctx.config.epochs if epochs is None else epochs
        steps = max(1, round(epochs_run * ctx.task.steps_per_epoch)) if ctx.task.steps_per_epoch else 0
        hooks = pattern.hooks(model, job, ctx, steps=steps)
        # a search's candidates were chosen on validation one-shot: their untrained state wins only on evidence
        result = _finetune(ctx.task, model, epochs_run, job.seed, hooks, "best" if job.rung is None else "trained")
        extra.update(pattern.finish_(model, hooks))
        val = ctx.task.scores(model, "val")
        trained = {**oneshot, "val_score": val.pop("score"), "val_loss": val.pop("loss", None), "val_metrics": val,
                   **{k: getattr(result, k) for k in ("best_epoch", "epochs_run") if hasattr(result, k)}}
        if epochs is not None:  # a search's rung 1: short fine-tunes rank
            return _record(job, ctx, start, **trained, **meter), None, None
        measured = pattern.measure(model, job, ctx)
    record = _record(job, ctx, start, **measured, **trained, **meter)
    return record, pattern.checkpoint(model, record, extra), model if pattern.timed else None


def _final_evaluation(pattern: Pattern, ctx: RunContext, folder: RunFolder, progress: bool) -> None:
    """The test split's only reader, once every job is fine-tuned and every search has picked on
    validation: the dense model and each finished configuration (from its checkpoint) are evaluated on
    test, and their records completed. A rerun finishes what an interrupted one left."""
    todo = [r for r in folder.records() if r.get("rung") in (None, 2) and r["test_score"] is None]  # rung 2: full
    if not todo:
        return
    dense = ctx.memo("dense_test", lambda: ctx.task.scores(ctx.dense, "test"))
    dense_fields = {"dense_test_score": dense["score"], "dense_test_metrics": {
        k: v for k, v in dense.items() if k not in ("score", "correct")}}
    scored: dict[str, dict[str, float]] = {}  # a search's pick shares its finalist's checkpoint
    for r in tqdm(todo, desc="test split", disable=not progress, unit="model"):
        if r["checkpoint"] not in scored:
            payload = torch.load(folder.path / r["checkpoint"], map_location="cpu", weights_only=False)
            scored[r["checkpoint"]] = ctx.task.scores(pattern.load(payload, ctx), "test")
        test = dict(scored[r["checkpoint"]])
        folder.update({**r, "test_score": test.pop("score"), "test_metrics": test, **dense_fields})


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
    timing_seconds: float = 0.0  # spent timing models: an evaluation, like the test split's, not search work

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
            start = time.perf_counter()
            self.latency[job.config_key] = self.timer.time(model)
            self.timing_seconds += time.perf_counter() - start
        dense_ms, pruned_ms = self.latency[job.config_key]
        return {"latency_ms": pruned_ms, "dense_latency_ms": dense_ms, "latency_ratio": pruned_ms / dense_ms}

    def run(self, items: list[tuple[Job, float | None, dict | None]], desc: str) -> dict[str, dict]:
        """Every (job, epochs, one-shot scores known or None); their records by key, as they finish."""
        out = {}
        for (job, _, _), (record, payload, model) in self.executor.map(_run_job, (self.pattern, self.ctx), items, desc):
            if model is not None:
                record.update(self._time(job, model))
                payload["record"] = record
            if payload is not None:
                record.update(self.folder.save_checkpoint(job.key, payload))
            self.add(record)
            out[job.key] = record
        return out


def _fitness(pattern: Pattern, ctx: RunContext, target: float, seed: int) -> Fitness | None:
    """The EvoPress sampler's selection: a candidate pruned one-shot, BatchNorm re-estimated on the first ``n``
    calibration batches (``-1``: all), its mean loss on them. None without calibration batches."""
    batches = ctx.batches()
    if not batches:
        return None

    def fitness(candidates: list[Strategy], n: int) -> list[float]:
        used = batches if n < 0 else batches[:n]
        out = []
        for c in candidates:
            job = Job("search", c.signal, c.name, target, seed, c.sparsity, 0)
            model, _ = pattern.prune_(copy.deepcopy(ctx.dense), job, ctx)
            reestimate_bn_(model, used)
            out.append(mean_loss(model, used, ctx.loss_fn))
        return out

    return fitness


def _oneshot_cost(records: Sequence[dict], target: float, seed: int) -> float:
    """What one one-shot score cost this search, in full fine-tunes: the mean ``work`` of its rung-0 jobs over
    that of the baselines' fine-tunes at the same target and seed (each one full fine-tune). 0 (the one-shot rung
    not counted) where there is no baseline to measure by, or records from before jobs were metered."""
    at = [r for r in records if r["target"] == target and r["seed"] == seed]
    zero = [r["work"] for r in at if r.get("rung") == 0 and "work" in r]
    full = [r["work"] for r in at if r["method"] == "baseline" and r.get("rung") is None and r.get("work")]
    if not zero or not full:
        log.info("search at target %g, seed %d: no metered baseline fine-tune to count its one-shot scores by, so "
                 "its budget counts fine-tunes only", target, seed)
        return 0.0
    return float(sum(zero) / len(zero) / (sum(full) / len(full)))


def _say_what_the_budget_left(rungs: Rungs, budget: float, target: float, seed: int) -> None:
    """Where the one-shot scores overspend the budget or leave no room for short fine-tunes, say so: with the
    number of candidates that would leave room (a warning), or, where no pool worth searching would, that the
    budget is small for this cost (information)."""
    at = f"search at target {target:g}, seed {seed}: its {rungs.candidates} one-shot scores cost " \
         f"{rungs.candidates * rungs.oneshot:.2f} full fine-tunes of a budget of {budget:g}"
    if rungs.cost > budget + 1e-9:
        log.warning("%s, so it spends %.2f; lower --candidates or raise --budget", at, rungs.cost)
    if rungs.short or not Rungs.for_budget(budget, rungs.candidates, rungs.eta).short:
        return
    fits = rungs.candidates_for(budget)
    if fits > 2 * rungs.full:
        log.warning("%s, leaving no room for short fine-tunes; --candidates %d would leave room for %d", at, fits,
                    2 * rungs.full)
    else:
        log.info("%s, leaving no room for short fine-tunes: the finalists are the best one-shot scores (a budget of "
                 "%g would fit %d short fine-tunes)", at, budget + 1,
                 Rungs.for_budget(budget + 1, rungs.candidates, rungs.eta, rungs.oneshot).short)


def _search(target: float, seed: int, driver: _Driver) -> None:
    """One budgeted search at ``target``: rung 0 one-shot, rung 1 short fine-tunes, rung 2 full ones;
    each rung's candidates run together (in parallel on a cluster). The budget counts the one-shot rung by its
    measured work, so the short rung gets what it leaves (:meth:`Rungs.for_budget`). The finalist picked on
    validation is recorded again as the run's ``search`` pick. Its ``seconds`` are end to end (its sampler
    and the driver too, not only its jobs), less the latency timing of its finalists: the baselines' jobs
    are not charged theirs either (exact with the sequential executor; with Ray the driver times while
    other jobs run, so there they are a lower bound)."""
    config = driver.ctx.config
    recorded = {r["key"]: r for r in driver.folder.records()}
    start, timed = time.perf_counter(), driver.timing_seconds

    def rung(candidates: list[Strategy], k: int, epochs: float | None) -> list[dict]:
        jobs = [Job("search", c.signal, c.name, target, seed, c.sparsity, k) for c in candidates]
        known = [None if k == 0 else {f: recorded[dataclasses.replace(j, rung=0).key][f]
                                      for f in ("oneshot_val_score", "oneshot_val_loss")} for j in jobs]
        recorded.update(driver.run([(j, epochs, o) for j, o in zip(jobs, known) if j.key not in recorded],
                                   f"rung {k}"))
        return [recorded[j.key] for j in jobs]

    def scored(records: list[dict]) -> list[tuple[float, float]]:
        return [(r["val_score"], r["val_loss"]) for r in records]

    done0 = {r["name"]: (r["val_score"], r["val_loss"]) for r in recorded.values()
             if r.get("rung") == 0 and r["target"] == target and r["seed"] == seed}
    allocations = driver.pattern.allocations(driver.ctx, target)
    oneshot = propose(config, driver.ctx.plans, target, seed, driver.folder.path / "search.journal", allocations,
                      driver.pattern.scaled, lambda cs: scored(rung(cs, 0, 0)), done0,
                      _fitness(driver.pattern, driver.ctx, target, seed))
    rungs = Rungs.for_budget(config.budget, len(oneshot), config.eta,
                             oneshot=_oneshot_cost(list(recorded.values()), target, seed))
    _say_what_the_budget_left(rungs, config.budget, target, seed)
    ranked = oneshot
    if rungs.short:
        short = shortlist(oneshot, rungs.short, usual_first=not driver.pattern.oneshot_ranks)
        ranked = [(c, *s) for c, s in zip(short, scored(rung(short, 1, config.epochs / rungs.eta)))]
    pick = pick_final(config, rung(finalists(config, ranked, rungs.full, oneshot), 2, None))
    chosen = Job("mix_and_match", "+".join(config.signals), "search", target, seed, pick["planned_sparsity"])
    seconds = time.perf_counter() - start - (driver.timing_seconds - timed)
    if chosen.key not in recorded:
        driver.add({**pick, "key": chosen.key, "config_key": chosen.config_key, "method": chosen.method,
                    "signal": chosen.signal, "name": chosen.name, "rung": None, "picked": pick["name"],
                    "search": {"budget": config.budget, "spent": round(rungs.cost, 4), "candidates": rungs.candidates,
                               "oneshot": round(rungs.oneshot, 5), "short": rungs.short, "full": rungs.full,
                               "eta": rungs.eta, "pick": config.pick, "seconds": round(seconds, 2)}})


def run(
    task: Task | Callable[[], Task],
    config: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    keep_checkpoints: str = "front",
    command: str = "",
    force_new: bool = False,
    on_record: Callable[[dict], None] | None = None,
    executor: str = "sequential",
    address: str | None = None,
    cpus_per_trial: int | None = None,
) -> RunResult:
    """The engine: run (or resume) the portfolio or search ``config`` asks for on ``task``, in ``out`` (see
    :mod:`.folder` for what it holds; the folder is locked for the run). ``task`` may be a function that
    makes it (loads data, builds or trains the model): it is called once the folder is held and the settings
    are checked, so a refused run does no work. ``force_new`` archives results
    made with other settings or inputs and starts again. ``executor="ray"`` runs every job as a Ray task
    (``address``: a cluster to join; ``cpus_per_trial``: CPUs per task, and torch threads per job for either
    executor)."""
    if keep_checkpoints not in ("front", "all"):
        raise ValidationError(f"keep_checkpoints must be 'front' or 'all', got {keep_checkpoints!r}")
    pattern = get_pattern(config.sparsity)()
    folder = RunFolder(out)
    with folder.locked(command or "mm_plugin.run"):
        folder.check(config, force_new=force_new)  # settings first: refuse before any work
        task = task if isinstance(task, Task) else task()
        pattern.check_task(config, task)
        command = command or f"mm_plugin run of {task.name}"
        inputs = fingerprint(config, task)
        folder.check(config, inputs, about=task.name)
        if inputs.get("task", "") is None:
            log.info("%s: the callbacks cannot be fingerprinted, so this run cannot be resumed; name them with "
                     "run_id=... to make it resumable", folder.path)
        options = {"address": address} if executor == "ray" else {}
        runner = EXECUTORS.get(executor, where="executor")(cpus_per_trial=cpus_per_trial, progress=progress, **options)
        try:
            return _run(task, config, pattern, folder, keep_checkpoints, command, progress, on_record, runner)
        finally:
            runner.close()


def _run(task: Task, config: RunConfig, pattern: Pattern, folder: RunFolder, keep_checkpoints: str, command: str,
         progress: bool, on_record: Callable[[dict], None] | None, executor: Executor) -> RunResult:
    out = folder.path
    ctx = pattern.context(config, task)
    if task.calibration is None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in task.model.modules()):
        log.warning("%s has BatchNorm layers but no calibration batches: pruned models are scored without "
                    "re-estimating their statistics, so one-shot scores rank them poorly; pass calibration=",
                    task.name)
    ctx.cache["dense_val_score"] = task.scores(task.model, "val")["score"]
    log.info("dense %s: val %s %.4f", task.name, task.metric, ctx.cache["dense_val_score"])
    prepare_sensitivity(ctx, pattern, out, progress)  # before planning: plans may read it
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
    driver.run([(j, None, None) for j in todo], f"{task.name} runs")
    if config.budget is not None:
        for target, seed in tqdm([(t, s) for t in config.targets for s in config.seeds], disable=not progress,
                                 desc=f"{task.name} searches", unit="search"):
            _search(target, seed, driver)
    _final_evaluation(pattern, ctx, folder, progress)

    records = folder.records()
    aggs = aggregate(records)
    front = front_of(aggs)
    title = task.name + ("" if config.sparsity == "unstructured" else f", {config.sparsity}")
    report = write_report(aggs, out, title, command, merged=merged, records=records, metric=task.metric)
    plot = plot_pareto(aggs, out / "pareto.png", title, metric=task.metric)
    if keep_checkpoints == "front":  # both fronts, the search's picks and the baselines they are compared with
        keep = {a.key for a in front} | {a.key for a in latency_front_of(aggs)}
        best = {r["key"] for r in best_baselines(records)}
        kept = {r["checkpoint"] for r in records if "checkpoint" in r
                and (r["config_key"] in keep or r["name"] == "search" or r["key"] in best)}
        for r in records:
            if r.get("checkpoint") not in kept | {None}:
                (out / r["checkpoint"]).unlink(missing_ok=True)
    write_json_atomic(out / "front.json", [
        {**asdict(a), "checkpoints": [r["checkpoint"] for r in records if r["config_key"] == a.key and "checkpoint" in r]}
        for a in front
    ])
    return RunResult(out, records, aggs, front, report, plot)
