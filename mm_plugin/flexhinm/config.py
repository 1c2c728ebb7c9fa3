"""FlexHiNM's small frozen configs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from ..errors import ConfigError
from . import exact, gyro  # noqa: F401  (the searches register themselves in PERMUTATIONS)
from .gates import GATES
from .layout import M
from .permutation import PERMUTATIONS


class _Fields:
    """``to_dict`` / ``from_dict`` of the config dataclasses; an unknown field is a ConfigError naming it."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class FlexHiNMConfig(_Fields):
    """How FlexHiNM prunes; per-layer *amounts* come separately (a Mix-and-Match strategy).

    ``permutation``: ``"none"`` (the default), ``"gyro"``, ``"greedy"`` (any name in ``PERMUTATIONS``). Opt-in:
    measured after fine-tuning, Gyro-Permutation has no consistent sign (docs/results/flexhinm.md).
    ``tile_rows``: output channels per row tile (multiple of 4); ``None`` = the whole layer, which
    lets a layer split into one 2:4 GEMM plus one dense GEMM without a custom kernel.
    ``effort``: multiplies the permutation search budget. ``verify_atol``: tolerance of the check
    that folded permutations leave the model's outputs unchanged (needs ``example_inputs``).
    """

    permutation: str = "none"
    tile_rows: int | None = 64
    seed: int = 0
    effort: int = 1
    verify_atol: float = 1e-5

    def __post_init__(self) -> None:
        if self.permutation not in PERMUTATIONS:
            PERMUTATIONS.get(self.permutation, where="FlexHiNMConfig.permutation")
        if self.tile_rows is not None and (int(self.tile_rows) <= 0 or int(self.tile_rows) % M):
            raise ConfigError(
                f"FlexHiNMConfig.tile_rows must be None or a positive multiple of {M}, got {self.tile_rows}"
            )
        if int(self.effort) < 1:
            raise ConfigError(f"FlexHiNMConfig.effort must be >= 1, got {self.effort}")
        if not self.verify_atol > 0:
            raise ConfigError(f"FlexHiNMConfig.verify_atol must be > 0, got {self.verify_atol}")


PARTITION_SIGNALS = ("magnitude", "movement")


def _pair(value, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"GradualConfig.{what} must be two numbers, got {value!r}") from None
    return a, b


@dataclass(frozen=True)
class GradualConfig(_Fields):
    """How gradual FlexHiNM-GP spends a fine-tuning budget; every time is a fraction of the total steps.

    ``ramp``: the sparsity rises with the cubic schedule (Zhu & Gupta) over this span, the layer being
    re-partitioned ``updates`` times; ``(0, 0)`` puts the final partition in place at once.
    ``ramp_from``: the share of each layer's target the ramp starts from: 0 starts dense (the seed's
    gradual pruning), 1 holds the target throughout, so the ramp's re-partitions only relabel vectors.
    ``harden``: the share of 2:4 groups frozen to their learned choice rises linearly over this span,
    most confident first; after its end the forward pass uses exactly the masks evaluation uses.
    ``gate``: a name in ``GATES`` (``"patterns"`` or ``"hard_concrete"``) and ``gate_options`` its
    keyword arguments. ``temperature``: ``(start, end)``, decayed geometrically until hardening ends
    (``None``: the gate's default). ``gate_lr``: the gates' own learning rate (their own AdamW group,
    no weight decay, the loop's schedule); Adam moves a logit by about this much per step, so the
    weights' rate (~1e-3) would leave the gates where they started. ``penalty_weight``: weight of the
    2-of-4 penalty (mean over learnable groups; Hard Concrete only). ``partition_signal``: what the
    re-partitions during the ramp rank vectors by: ``"magnitude"`` (``|w|`` of the current weights) or
    ``"movement"`` (``|w|`` times ``1 + tanh(m / std m)``, ``m`` the
    first-order loss change each weight made during training so far, Sanh et al. 2020), so that learning
    also moves the dense / 2:4 / vector-pruned boundaries; it needs a ramp. ``pruned_gradient``: pruned
    weights keep training on the straight-through gradient (SR-STE, Zhou et al. 2021), so the ramp's
    magnitude re-partitions can bring back vectors that would have helped.
    """

    gate: str = "patterns"
    gate_options: Mapping = field(default_factory=dict)
    ramp: tuple[float, float] = (0.0, 0.0)
    ramp_from: float = 0.0
    updates: int = 10
    harden: tuple[float, float] = (0.5, 0.75)
    temperature: tuple[float, float] | None = None
    gate_lr: float = 0.4
    penalty_weight: float = 300.0
    partition_signal: str = "magnitude"
    pruned_gradient: bool = False

    def __post_init__(self) -> None:
        GATES.get(self.gate, where="GradualConfig.gate")
        for what in ("ramp", "harden"):
            a, b = _pair(getattr(self, what), what)
            if not 0.0 <= a <= b <= 1.0:
                raise ConfigError(f"GradualConfig.{what} must be two fractions 0 <= start <= end <= 1, got {(a, b)}")
            object.__setattr__(self, what, (a, b))
        if self.ramp[1] > self.harden[0]:
            raise ConfigError(f"GradualConfig: hardening must start after the sparsity ramp ends: "
                              f"ramp={self.ramp}, harden={self.harden}")
        if self.temperature is not None:
            t = _pair(self.temperature, "temperature")
            if min(t) <= 0:
                raise ConfigError(f"GradualConfig.temperature must be positive, got {t}")
            object.__setattr__(self, "temperature", t)
        if not 0.0 <= float(self.ramp_from) <= 1.0:
            raise ConfigError(f"GradualConfig.ramp_from must be a fraction in [0, 1], got {self.ramp_from}")
        if int(self.updates) < 1:
            raise ConfigError(f"GradualConfig.updates must be >= 1, got {self.updates}")
        if not self.gate_lr > 0 or self.penalty_weight < 0:
            raise ConfigError(f"GradualConfig: gate_lr must be > 0 and penalty_weight >= 0, "
                              f"got {self.gate_lr} and {self.penalty_weight}")
        if self.partition_signal not in PARTITION_SIGNALS:
            raise ConfigError(f"GradualConfig.partition_signal must be one of {PARTITION_SIGNALS}, "
                              f"got {self.partition_signal!r}")
        if self.partition_signal != "magnitude" and self.ramp[1] == 0:
            raise ConfigError(f"GradualConfig.partition_signal={self.partition_signal!r} re-ranks vectors at the "
                              f"ramp's re-partitions; give a ramp, e.g. ramp=(0.0, 0.4)")
        object.__setattr__(self, "gate_options", dict(self.gate_options))
