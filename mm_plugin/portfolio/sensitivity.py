"""Measured sensitivity: each unit pruned alone at a grid of sparsities, scored by a cheap validation loss.

Per-layer sensitivity as Distiller draws it (one curve per layer, loss against sparsity) and SparseML's loss
sensitivity, made the way this project prunes: a copy of the dense model is pruned by the run's own pattern
(:meth:`Pattern.prune_units_`: the same masks, FlexHiNM's hybrid ones, or Torch-Pruning's removed channels)
with one unit at a grid sparsity and every other unit dense, its BatchNorm statistics re-estimated on the
calibration batches (and its kept weights reconstructed when the run reconstructs), and scored by
:meth:`Task.probe` (the built-in task: cross-entropy on the first few validation batches).

Coupled units are measured together: a structured plan's units already are Torch-Pruning's coupled channel
groups; for masks on weights, the layers summed into one residual stream
(:func:`mm_plugin.flexhinm.folding.residual_streams`) are also pruned together at each grid point, and where
their joint rise exceeds the sum of their rises alone, the excess is shared among them (see
:mod:`mm_plugin.planning.sensitivity`). Each weight keeps its own curve: masks on weights are independent,
and an allocation needs one curve per weight.

The measurement is cached as ``sensitivity.json`` in the run folder under a key of everything it depends on
(dense weights, the calibration and validation data behind the task, the units, grid, batches, pattern,
signal, reconstruction), so a rerun reads it back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn
from tqdm import tqdm

from ..errors import ValidationError
from ..flexhinm.folding import residual_streams
from ..planning import DEFAULT_BATCHES, DEFAULT_GRID, Plan, Sensitivity, check_grid
from ..training import reestimate_bn_
from .fingerprint import digest_of, model_fingerprint
from .jobs import RunContext

if TYPE_CHECKING:
    from .config import RunConfig
    from .patterns import Pattern
    from .task import Task

log = logging.getLogger(__name__)

FILE = "sensitivity.json"


def needed(config: RunConfig, pattern: Pattern) -> bool:
    """Whether a run measures: its plans use the measurement, or a baseline is the measured allocation."""
    return config.sensitivity or pattern.baseline_registry.any_needs(config.baselines, "measured")


def _key(ctx: RunContext, plan: Plan, grid: tuple[float, ...], batches: int, coupled: bool) -> str | None:
    """A hash of what the measurement depends on; None when the task's data cannot be fingerprinted."""
    task = ctx.task.fingerprint() if ctx.task is not None else None
    if task is None:
        return None
    parts = {"format": 1, "dense": model_fingerprint(ctx.dense), "task": task,
             "calibration": digest_of(ctx.batches()) if ctx.batches() is not None else None,
             "units": [[u.name, u.items] for u in plan.units], "unit_kind": plan.unit_kind, "signal": plan.signal,
             "pattern": ctx.config.sparsity, "reconstruct": ctx.config.reconstruct, "grid": list(grid),
             "batches": batches, "coupled": coupled}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def coupled_groups(model: nn.Module, plan: Plan) -> dict[str, tuple[str, ...]]:
    """The plan's weights summed into one residual stream, as ``{"stream@<first layer>": units}`` (weights
    only: a structured plan's units are coupled channel groups already)."""
    if plan.unit_kind != "weight":
        return {}
    by_module = {u.module: u.name for u in plan.units if u.name == f"{u.module}.weight"}
    groups = {}
    for stream in residual_streams(model):
        members = tuple(by_module[m] for m in stream if m in by_module)
        if len(members) > 1:
            groups[f"stream@{stream[0]}"] = members
    return groups


def measure_sensitivity(ctx: RunContext, pattern: Pattern, plan: Plan, *, grid: Sequence[float] = DEFAULT_GRID,
                        batches: int = DEFAULT_BATCHES, folder: str | Path | None = None, coupled: bool = True,
                        progress: bool = False) -> Sensitivity:
    """Each of ``plan``'s units pruned alone at every ``grid`` sparsity (see the module doc), scored by
    ``ctx.task.probe(model, batches)``; with ``folder``, read from or written to ``folder/sensitivity.json``."""
    if ctx.task is None:
        raise ValidationError("measuring sensitivity needs a task (its validation loss scores each probe)")
    grid = check_grid(grid)
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValidationError(f"sensitivity batches must be an integer >= 1 (validation batches per probe), "
                              f"got {batches!r}")
    key = _key(ctx, plan, grid, batches, coupled)
    path = Path(folder) / FILE if folder is not None else None
    if path is not None and key is not None and path.is_file():
        try:
            cached = Sensitivity.load(path)
        except ValidationError as e:
            log.warning("%s; measuring again", e)
        else:
            if cached.key == key:
                log.info("measured sensitivity read from %s", path)
                return cached
            log.info("%s was measured for other weights, data or settings; measuring again", path)
    groups = coupled_groups(ctx.dense, plan) if coupled else {}
    names = [u.name for u in plan.units]
    if ctx.batches() is None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ctx.dense.modules()):
        log.warning("sensitivity: the model has BatchNorm layers but the task has no calibration batches, so "
                    "pruned copies keep stale statistics and every unit looks more sensitive than it is")

    def probe(sparsity: dict[str, float]) -> float:
        model = copy.deepcopy(ctx.dense)
        if any(sparsity.values()):
            model = pattern.prune_units_(model, {n: sparsity.get(n, 0.0) for n in names}, plan.signal, ctx)
        if ctx.batches() is not None:
            reestimate_bn_(model, ctx.batches())
        return ctx.task.probe(model, batches)

    todo = [(u, s) for u in names for s in grid] + [(g, s) for g in groups for s in grid]
    restore = dict(ctx.plans)
    if not ctx.plans:  # a pattern reads the run's units from its plans (reconstruction)
        ctx.plans[plan.signal] = plan
    start = time.perf_counter()
    try:
        base = probe({})
        measured: dict[str, list[float]] = {}
        for name, s in tqdm(todo, desc="sensitivity", unit="probe", disable=not progress):
            members = groups.get(name, (name,))
            measured.setdefault(name, []).append(probe({m: s for m in members}))
    finally:
        ctx.plans.clear()
        ctx.plans.update(restore)
    result = Sensitivity(
        grid=grid, base_loss=base, loss={n: tuple(measured[n]) for n in names},
        kinds={u.name: u.kind for u in plan.units}, params={u.name: u.params for u in plan.units},
        groups=groups, group_loss={g: tuple(measured[g]) for g in groups}, key=key or "",
        meta={"batches": batches, "pattern": ctx.config.sparsity, "signal": plan.signal,
              "reconstruct": ctx.config.reconstruct, "unit_kind": plan.unit_kind, "coupled": coupled,
              "bn_reestimated": ctx.batches() is not None, "seconds": round(time.perf_counter() - start, 2),
              "probe": "evaluate.probe" if callable(getattr(ctx.task.evaluate, "probe", None)) else "evaluate(val)"},
    )
    if path is not None:
        result.save(path)
    return result


def prepare_sensitivity(ctx: RunContext, pattern: Pattern, folder: str | Path, progress: bool = False
                        ) -> Sensitivity | None:
    """The run's step before planning: measure (or read back) the sensitivity when the run needs it, and
    keep it in ``ctx.cache["sensitivity"]`` (:meth:`RunContext.sensitivity` for plans; baselines read it too)."""
    if not needed(ctx.config, pattern):
        return None
    c = ctx.config
    units = pattern.plan(ctx, c.signals[0])  # the units; nothing measured is used yet
    ctx.cache["sensitivity"] = measure_sensitivity(ctx, pattern, units, grid=c.sensitivity_grid,
                                                   batches=c.sensitivity_batches, folder=folder, progress=progress)
    return ctx.cache["sensitivity"]


def plot_sensitivity(sensitivity: Sensitivity, path: str | Path, title: str = "") -> Path:
    """One line per unit, loss rise against sparsity, one panel per unit kind; coupled streams dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(sensitivity.kinds.get(u, "") or "unit" for u in sensitivity.units))
    panels = kinds + (["coupled streams"] if sensitivity.group_loss else [])
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    xs = [0.0, *sensitivity.grid]
    for ax, panel in zip(axes.flat, panels):
        if panel == "coupled streams":
            lines = [(g, [0.0, *(max(v - sensitivity.base_loss, 0.0) for v in sensitivity.group_loss[g])])
                     for g in sensitivity.group_loss]
        else:
            lines = [(u, [0.0, *sensitivity.rise(u)]) for u in sensitivity.units
                     if (sensitivity.kinds.get(u, "") or "unit") == panel]
        for name, ys in lines:
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=name.removesuffix(".weight"),
                    linestyle="--" if panel == "coupled streams" else "-")
        ax.set_title(f"{panel} ({len(lines)})")
        ax.set_xlabel("sparsity of the unit alone" if panel != "coupled streams" else "sparsity of every member")
        ax.grid(alpha=0.3)
        if len(lines) <= 10:
            ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation loss rise")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or f"measured sensitivity (dense loss {sensitivity.base_loss:.4f})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sensitivity_report(task: Task, config: RunConfig, out: str | Path, *, progress: bool = True
                       ) -> tuple[Sensitivity, Path]:
    """``mm-prune sensitivity``: ``config``'s units (its pattern and first signal) measured on ``task``,
    cached in ``out/sensitivity.json`` (the file ``mm-prune run --sensitivity --out`` with the same folder
    reads back), and drawn to ``out/sensitivity.png``."""
    from .folder import RunFolder
    from .patterns import get_pattern

    pattern = get_pattern(config.sparsity)()
    pattern.check_task(config, task)
    ctx = pattern.context(config, task)
    with RunFolder(out).locked("mm-prune sensitivity"):
        units = pattern.plan(ctx, config.signals[0])
        measured = measure_sensitivity(ctx, pattern, units, grid=config.sensitivity_grid,
                                       batches=config.sensitivity_batches, folder=out, progress=progress)
        png = plot_sensitivity(measured, Path(out) / "sensitivity.png", f"{task.name}: measured sensitivity")
    return measured, png
