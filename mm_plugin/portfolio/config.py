"""The settings that decide a run's numbers beyond its task: a run folder belongs to one :class:`RunConfig`
and one task (its fingerprint)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ValidationError, check_fraction
from ..planning import DEFAULT_BATCHES, DEFAULT_GRID, check_grid, load_rules
from .patterns import get_pattern

SAMPLERS = ("tpe", "evopress")
PICKS = ("score", "loss", "paired")


@dataclass(frozen=True)
class RunConfig:
    """How the strategies are planned, pruned, fine-tuned and chosen; what is pruned and how it trains is
    the :class:`~mm_plugin.portfolio.task.Task`."""

    signals: tuple[str, ...] = ("magnitude",)
    strategies: tuple[str, ...] | None = None  # None: every planned strategy; (): none (baselines only)
    baselines: tuple[str, ...] | None = None  # None: the pattern's (GMP, LAMP, ERK; TP uniform and global)
    targets: tuple[float, ...] | None = None  # None: the pattern's; empty: strategies at their own sparsity
    epochs: float = 2  # every fine-tune's budget, the same for every method (a fraction of an epoch is allowed)
    seeds: tuple[int, ...] = (0,)
    range_targets: tuple[float, ...] | None = None  # None: at and around the targets (the pattern's default)
    rules: Any = None  # list of rule dicts or a path
    sparsity: str = "unstructured"  # a pattern name: "flexhinm", "hybrid", or "structured" (Torch-Pruning channels)
    pattern_options: Mapping[str, Any] = field(default_factory=dict)  # flexhinm / hybrid: FlexHiNMConfig fields
    budget: float | None = None  # a strategy search per target and seed, in full fine-tunes (see .search)
    candidates: int = 24  # the search's one-shot candidates per target and seed (named strategies first)
    eta: int = 3  # the search keeps the best 1/eta of each rung
    sampler: str = "tpe"  # the search's proposals after the named ones: "tpe" or "evopress" (see .search)
    pick: str = "score"  # the search's final pick: best val "score", lowest val "loss", or "paired" (see .search)
    samples: int = 0  # without a budget: strategies sampled in the ranges, beside the named ones
    reconstruct: bool = False  # re-solve kept weights on the calibration batches after pruning (masks.reconstruct_)
    sensitivity: bool = False  # measure each unit's sensitivity first; plans use it (allocation, rules as priors)
    sensitivity_grid: tuple[float, ...] = DEFAULT_GRID  # the sparsities each unit is measured at, alone
    sensitivity_batches: int = DEFAULT_BATCHES  # validation batches per measurement

    def __post_init__(self) -> None:
        pattern = get_pattern(self.sparsity)
        if not isinstance(self.pattern_options, Mapping):
            raise ValidationError(f"pattern_options must map option names to values, got {self.pattern_options!r}")
        object.__setattr__(self, "pattern_options", dict(self.pattern_options))
        for name in ("baselines", "targets"):  # fill defaults, so config.json says them
            if getattr(self, name) is None:
                object.__setattr__(self, name, tuple(getattr(pattern, f"default_{name}")))
        if self.range_targets is None:
            object.__setattr__(self, "range_targets", pattern.range_targets_for(self.targets))
        object.__setattr__(self, "sensitivity_grid", check_grid(self.sensitivity_grid))
        if isinstance(self.sensitivity_batches, bool) or not isinstance(self.sensitivity_batches, int) \
                or self.sensitivity_batches < 1:
            raise ValidationError(f"sensitivity_batches must be an integer >= 1 (validation batches per "
                                  f"measurement), got {self.sensitivity_batches!r}")
        for name in ("signals", "strategies", "baselines", "targets", "seeds", "range_targets"):
            value = getattr(self, name)  # a repeated value would run (and count) twice
            object.__setattr__(self, name, None if value is None else tuple(dict.fromkeys(value)))
        pattern().check(self)
        if self.rules is not None:
            load_rules(self.rules)  # a missing, unreadable or malformed rules file stops the run before any work
        for t in self.targets:
            check_fraction(t, "target sparsity")
        if self.epochs < 0:
            raise ValidationError(f"epochs must be >= 0, got {self.epochs}")
        if self.budget is not None and (self.budget < 1 or not self.targets):
            raise ValidationError(f"a search needs --targets and a --budget of at least 1 full fine-tune, got "
                                  f"budget {self.budget} and targets {list(self.targets)}")
        if self.sampler not in SAMPLERS or self.pick not in PICKS:
            raise ValidationError(f"sampler must be one of {SAMPLERS} and pick one of {PICKS}, got {self.sampler!r} "
                                  f"and {self.pick!r}")
        if self.pick == "paired" and self.budget is not None and self.budget < 4:
            raise ValidationError(f"pick 'paired' holds the best usual allocation against a challenger in the last "
                                  f"rung: it needs two full fine-tunes, a --budget of at least 4 (got {self.budget})")
        if self.sampler == "evopress" and self.sparsity != "unstructured":
            raise ValidationError(f"sampler 'evopress' prunes every offspring one-shot to select it: it runs with "
                                  f"unstructured masks, not with --sparsity {self.sparsity} (use sampler 'tpe')")
        if self.candidates < 1 or self.eta < 2 or self.samples < 0:
            raise ValidationError(f"need candidates >= 1, eta >= 2 and samples >= 0, got {self.candidates}, "
                                  f"{self.eta}, {self.samples}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValidationError(f"seeds must be one or more integers >= 0, got {list(self.seeds)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
