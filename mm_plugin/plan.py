"""The planning verb: model -> layers, ranges and strategies, as plain data that saves to JSON."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import strategies as strat
from .allocations import AllocationInputs, ALLOCATIONS
from .errors import CalibrationRequiredError, NoPrunableLayersError, UnknownNameError, ValidationError
from .inventory import LayerInfo, inventory
from .ranges import DEFAULT_TARGETS, default_allocations, derive_ranges
from .rules import explain, resolve_rules
from .scope import IgnoredScope
from .signals import get_signal, mean_abs_gradients
from .strategies import Strategy

log = logging.getLogger(__name__)

PLAN_FORMAT = 1
GRADIENT_SIGNALS = ("gradient", "product")


@dataclass
class Plan:
    """Layers with their ranges, and the strategies built from them."""

    layers: list[LayerInfo]
    lo: np.ndarray
    hi: np.ndarray
    strategies: list[Strategy]
    signal: str
    rules: dict[str, list[str]] = field(default_factory=dict)  # layer -> names of the rules that bound it
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {layer.name: layer.params for layer in self.layers}

    def strategy(self, name: str) -> Strategy:
        for s in self.strategies:
            if s.name == name:
                return s
        raise UnknownNameError("strategy", name, [s.name for s in self.strategies])

    def global_sparsity(self, strategy: Strategy | str, cost: str = "params") -> float:
        """The fraction of all weights (or of another ``cost``, e.g. ``macs``) the strategy removes."""
        s = self.strategy(strategy) if isinstance(strategy, str) else strategy
        costs = strat.unit_costs(self.layers, cost)
        return s.global_sparsity({layer.name: c for layer, c in zip(self.layers, costs)})

    def rescale(self, strategy: Strategy | str, target: float, cost: str = "params") -> Strategy:
        """The strategy moved inside the ranges until its global sparsity (weighted by ``cost``) is
        exactly ``target``."""
        s = self.strategy(strategy) if isinstance(strategy, str) else strategy
        return strat.rescale(s, self.layers, self.lo, self.hi, target, cost)

    def sample(self, k: int, seed: int = 0) -> list[Strategy]:
        return strat.sample_strategies(self.layers, self.lo, self.hi, k, seed)

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "signal": self.signal,
            "config": self.config,
            "layers": [
                {**layer.to_dict(), "min": float(lo), "max": float(hi), "rules": self.rules.get(layer.name, [])}
                for layer, lo, hi in zip(self.layers, self.lo, self.hi)
            ],
            "strategies": [
                {"name": s.name, "global_sparsity": self.global_sparsity(s), "sparsity": s.sparsity}
                for s in self.strategies
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if d.get("format") != PLAN_FORMAT:
            raise ValidationError(f"plan format {d.get('format')!r} is not supported (expected {PLAN_FORMAT})")
        fields_ = {f for f in LayerInfo.__dataclass_fields__}
        layers = [LayerInfo(**{**{k: v for k, v in r.items() if k in fields_}, "shape": tuple(r["shape"])})
                  for r in d["layers"]]
        return cls(
            layers=layers,
            lo=np.array([r["min"] for r in d["layers"]], dtype=float),
            hi=np.array([r["max"] for r in d["layers"]], dtype=float),
            strategies=[Strategy(s["name"], {k: float(v) for k, v in s["sparsity"].items()})
                        for s in d["strategies"]],
            signal=d["signal"],
            rules={r["name"]: list(r.get("rules", [])) for r in d["layers"]},
            config=d.get("config", {}),
        )

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValidationError(f"plan file {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValidationError(f"plan file {path} is not a valid plan: {e!r}") from None

    def table(self, max_rows: int | None = None) -> str:
        """A readable table: one row per layer with its range and every strategy's sparsity."""
        names = [s.name for s in self.strategies]
        header = ["layer", "kind", "params", "min", "max"] + names
        rows = []
        for layer, lo, hi in zip(self.layers, self.lo, self.hi):
            rows.append([layer.module, layer.kind, f"{layer.params:,}", f"{lo:.2f}", f"{hi:.2f}"]
                        + [f"{s.sparsity[layer.name]:.2f}" for s in self.strategies])
        if max_rows is not None and len(rows) > max_rows:
            half = max_rows // 2
            rows = rows[:half] + [["..."] + [""] * (len(header) - 1)] + rows[-half:]
        rows.append(["GLOBAL", "", f"{sum(self.sizes.values()):,}", "", ""]
                    + [f"{self.global_sparsity(s):.3f}" for s in self.strategies])
        widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
        fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON through a temporary file and ``os.replace``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
    os.replace(tmp, path)
    return path


def effective_weights(model: nn.Module, layers: Sequence[LayerInfo]) -> dict[str, torch.Tensor]:
    return {layer.name: getattr(model.get_submodule(layer.module), "weight").detach() for layer in layers}


def plan(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    signal: str = "magnitude",
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    rules: Any = None,
    default_rules: bool = True,
    ignored_scope: IgnoredScope | dict | list | None = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
    allocations: Sequence[str] | None = None,
    range_mode: str = "allocations",
    samples: int = 0,
    seed: int = 0,
    min_density: float = 0.01,
) -> Plan:
    """Derive per-layer ranges and the ten named strategies (plus ``samples`` random ones).

    ``calibration`` (an iterable of (inputs, targets) batches) is needed by the gradient signals and
    the |w g| allocation; without it the default range allocations are global magnitude, LAMP, ERK.
    """
    get_signal(signal)  # fail on a typo before any work
    for a in allocations or ():
        ALLOCATIONS.get(a, where="allocations")
    if signal in GRADIENT_SIGNALS and calibration is None:
        raise CalibrationRequiredError(
            f"signal {signal!r} needs calibration data: pass calibration=<(inputs, targets) batches>, "
            "or use signal='magnitude'"
        )
    rule_list = resolve_rules(rules, defaults=default_rules)
    scope = IgnoredScope.from_any(ignored_scope)
    inv = inventory(model, example_inputs)
    layers = inv.layers
    if scope is not None:
        scope.check_used(layers)
        classes = {layer.name: type(model.get_submodule(layer.module)).__name__ for layer in layers}
        layers = [layer for layer in layers if not scope.matches(layer, classes[layer.name])]
        if not layers:
            raise NoPrunableLayersError("the ignored scope excludes every prunable layer")

    need_grads = calibration is not None and (
        signal in GRADIENT_SIGNALS or "snip" in (allocations or default_allocations(True))
    )
    grads = mean_abs_gradients(model, [layer.name for layer in layers], calibration, loss_fn) if need_grads else None
    inputs = AllocationInputs(layers, effective_weights(model, layers), grads, min_density)
    signal_scores = None
    if range_mode == "signal":
        signal_scores = get_signal(signal)(model, [layer.name for layer in layers], calibration, loss_fn)
    ranges = derive_ranges(
        inputs, rule_list, targets=targets, allocations=allocations, mode=range_mode, signal_scores=signal_scores
    )
    strategies = strat.build_strategies(layers, ranges.lo, ranges.hi)
    if len(strategies) < len(strat.NAMED_STRATEGIES):
        log.warning("ranges are too narrow for ten distinct strategies; kept %d", len(strategies))
    strategies += strat.sample_strategies(layers, ranges.lo, ranges.hi, samples, seed) if samples else []
    log.info("planned %d layers, %d strategies", len(layers), len(strategies))
    return Plan(
        layers=layers,
        lo=ranges.lo,
        hi=ranges.hi,
        strategies=strategies,
        signal=signal,
        rules={layer.name: explain(layer, rule_list) for layer in layers},
        config={
            "targets": list(targets),
            "allocations": list(allocations or default_allocations(grads is not None)),
            "range_mode": range_mode,
            "rules": [r.to_dict() for r in rule_list],
            "ignored_scope": None if scope is None else
            {"names": list(scope.names), "patterns": list(scope.patterns), "types": list(scope.types)},
            "samples": samples,
            "seed": seed,
            "min_density": min_density,
            "skipped": [{"name": p.name, "reason": p.reason} for p in inv.skipped],
        },
    )
