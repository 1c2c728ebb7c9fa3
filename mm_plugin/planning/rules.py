"""Architectural rules: declarative bounds on a layer's sparsity range.

A rule matches layers by kind, name pattern, size and position, and then either clamps the range into
``[min, max]`` or widens its top (``widen_max``). Rules apply in list order; a user rule with the
name of a default replaces it, ``enabled: false`` switches a default off. Rules load from Python
objects, dicts, JSON or YAML.

Defaults and why they are there (norms and biases are never in the inventory, so they stay dense):

* ``classifier-head`` widens the head's maximum to 0.90: heads are wide and redundant, and the
  paper's v1 prunes them harder; applied first, so the size rules below still bind a small head.
* ``large-mlp`` widens the maximum of MLP layers with 1 M weights or more to 0.95: the wide
  expansion layers of transformers hold most of the weights and tolerate the most pruning.
* ``first-layer`` caps the first layer at 0.10: it sees raw pixels and every later layer depends on
  it (Gale et al. keep it dense in uniform+).
* ``patch-embedding`` caps patch embeddings at 0.30 (the draft's [0.15, 0.30] without forcing a
  floor): they are the only path from pixels into a transformer.
* ``embedding`` caps token/position embeddings at 0.30, for the same reason.
* ``tiny-layers`` caps layers under 10 K weights at 0.10: they cost almost nothing to keep and
  pruning them collapses capacity (the draft's rule). Only layers that also hold under 1 % of the
  planned weights count as tiny, so the rule scales down with small models (where every layer has
  fewer than 10 K weights) and is unchanged for ImageNet-size ones.

Rules as priors: with a measured :class:`~mm_plugin.planning.sensitivity.Sensitivity`, a rule that declares
``measured_min`` / ``measured_max`` has its bound (``max``, or ``widen_max`` for a widening rule) follow the
unit's measured tolerance within those limits (:func:`measured_bounds`); the plan records each move and its
evidence. Without a measurement, and for rules that declare no limits, the bounds are as written.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..config_schema import json_type
from ..errors import ConfigError, RuleError
from ..model import KINDS, Unit
from .sensitivity import Sensitivity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Bounds for the layers it matches; every given condition must hold."""

    name: str
    kinds: tuple[str, ...] = ()
    pattern: str | None = None  # regex searched in the module name
    min_params: int | None = None
    max_params: int | None = None  # matches layers with params < max_params
    max_share: float | None = None  # matches layers holding less than this share of all planned weights
    position: str | None = None  # "first" or "last" in execution order
    min: float = 0.0
    max: float = 1.0
    widen_max: float | None = None  # raise the range's top to at least this (before clamping)
    measured_min: float | None = None  # with measured sensitivity: how far the bound may be tightened
    measured_max: float | None = None  # with measured sensitivity: how far the bound may be relaxed
    enabled: bool = True
    _regex: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"rule {self.name!r}"
        if isinstance(self.kinds, str):
            object.__setattr__(self, "kinds", (self.kinds,))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise RuleError(f"{where}: unknown kinds {bad}; allowed: {', '.join(KINDS)}")
        for key in ("min", "max") + tuple(k for k in ("widen_max", "max_share", "measured_min", "measured_max")
                                          if getattr(self, k) is not None):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise RuleError(f"{where}: {key} must be a number in [0, 1], got {value!r}")
        if self.min > self.max:
            raise RuleError(f"{where}: min {self.min} > max {self.max}; swap them or fix one")
        key, bound = self.bound
        if self.measured_min is not None and not self.min <= self.measured_min <= bound:
            raise RuleError(f"{where}: measured_min {self.measured_min} must lie between min {self.min} and "
                            f"{key} {bound} (measurement may tighten {key} down to measured_min)")
        if self.measured_max is not None and self.measured_max < bound:
            raise RuleError(f"{where}: measured_max {self.measured_max} is below {key} {bound} (measurement may "
                            f"relax {key} up to measured_max); raise it or drop it")
        if self.position not in (None, "first", "last"):
            raise RuleError(f"{where}: position must be 'first' or 'last', got {self.position!r}")
        if self.pattern is not None:
            try:
                object.__setattr__(self, "_regex", re.compile(self.pattern))
            except re.error as e:
                raise RuleError(f"{where}: pattern {self.pattern!r} is not a valid regex: {e}") from None

    def matches(self, layer: Unit, total_params: int = 0) -> bool:
        return (
            (self.max_share is None or layer.params < self.max_share * total_params)
            and (not self.kinds or layer.kind in self.kinds)
            and (self._regex is None or self._regex.search(layer.module) is not None)
            and (self.min_params is None or layer.params >= self.min_params)
            and (self.max_params is None or layer.params < self.max_params)
            and (self.position != "first" or layer.order == 0)
            and (self.position != "last" or layer.depth == 1.0)
        )

    @property
    def bound(self) -> tuple[str, float]:
        """The bound measurement may move: ``("widen_max", v)`` for a widening rule, else ``("max", v)``."""
        return ("widen_max", self.widen_max) if self.widen_max is not None else ("max", self.max)

    @property
    def measured(self) -> bool:
        """Whether measured sensitivity may move this rule's bound."""
        return self.measured_min is not None or self.measured_max is not None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["kinds"] = list(self.kinds)
        return d


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("classifier-head", kinds=("head",), widen_max=0.90, measured_min=0.50),
    Rule("large-mlp", kinds=("mlp",), min_params=1_000_000, widen_max=0.95, measured_min=0.80),
    Rule("first-layer", position="first", max=0.10, measured_max=0.50),
    Rule("patch-embedding", kinds=("patch_embedding",), max=0.30, measured_max=0.50),
    Rule("embedding", kinds=("embedding",), max=0.30, measured_max=0.50),
    Rule("tiny-layers", max_params=10_000, max_share=0.01, max=0.10, measured_max=0.50),
)


def _rule_from_dict(d: dict[str, Any], where: str) -> Rule:
    if not isinstance(d, dict):
        raise RuleError(f"{where}: a rule must be a mapping, got {type(d).__name__}")
    allowed = {f.name for f in fields(Rule) if not f.name.startswith("_")}
    unknown = set(d) - allowed
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if "name" not in d:
        raise RuleError(f"{where}: every rule needs a 'name'")
    return Rule(**d)


def load_rules(source: Any) -> list[Rule]:
    """Rules from a list of Rule/dicts, a dict ``{"rules": [...]}``, or a .json / .yaml file path."""
    where = "rules"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise RuleError(f"rules file {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                            "give the path of a .json or .yaml rules file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise RuleError(f"rules file {path} cannot be read: {e}") from None
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                source = yaml.safe_load(text)
            else:
                source = json.loads(text)
        except Exception as e:  # noqa: BLE001 - parser errors differ by format; report them uniformly
            raise RuleError(f"rules file {path} cannot be parsed: {e}") from None
        where = str(path)
    if isinstance(source, dict):
        source = source.get("rules", source)
    if not isinstance(source, Iterable) or isinstance(source, (str, dict)):
        raise RuleError(f"{where}: expected a list of rules")
    return [r if isinstance(r, Rule) else _rule_from_dict(r, f"{where}[{i}]") for i, r in enumerate(source)]


def load_rules_at(value: Any, where: str) -> tuple[Rule, ...]:
    """Rules written in a config at ``where``: a list, or ``{name: fields}`` (NNCF-style keyed
    overrides); an error is a ConfigError naming the entry's JSON path."""
    if isinstance(value, Mapping):
        entries = []
        for name, fields_ in value.items():
            if not isinstance(fields_, Mapping):
                raise ConfigError(f"{where}.{name}: expected an object of rule fields, got {json_type(fields_)}")
            entries.append(({**fields_, "name": name}, f"{where}.{name}"))
    else:
        entries = [(r, f"{where}[{i}]") for i, r in enumerate(value)]
    rules = []
    for entry, path in entries:
        try:
            rules.append(load_rules([entry])[0])
        except (RuleError, TypeError) as e:
            message = re.sub(r"^rules\[0\]:\s*", "", str(e))
            raise ConfigError(f"{path}: {message}") from None
    return tuple(rules)


def resolve_rules(user: Any = None, *, defaults: bool = True) -> list[Rule]:
    """Defaults, with user rules replacing same-named defaults in place and new ones appended."""
    rules = list(DEFAULT_RULES) if defaults else []
    for rule in load_rules(user) if user is not None else []:
        names = [r.name for r in rules]
        if rule.name in names:
            rules[names.index(rule.name)] = rule
        else:
            rules.append(rule)
    return [r for r in rules if r.enabled]


def apply_rules(
    layers: Sequence[Unit], lo: np.ndarray, hi: np.ndarray, rules: Sequence[Rule],
    measured: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bound each layer's [lo, hi] by every rule that matches it, in order. ``measured``: ``{unit: {rule:
    bound}}`` from :func:`measured_bounds`, the bound (``max``, or ``widen_max``) a measurement moved."""
    lo, hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
    total = sum(u.params for u in layers)
    measured = measured or {}
    for i, layer in enumerate(layers):
        for rule in rules:
            if not rule.matches(layer, total):
                continue
            widen, top = rule.widen_max, rule.max
            moved = measured.get(layer.name, {}).get(rule.name)
            if moved is not None:
                widen, top = (moved, top) if widen is not None else (widen, moved)
            if widen is not None:
                hi[i] = max(hi[i], widen)
            lo[i] = min(max(lo[i], rule.min), top)
            hi[i] = min(max(hi[i], rule.min), top)
    return lo, hi


def measured_bounds(
    units: Sequence[Unit], rules: Sequence[Rule], sensitivity: Sensitivity, reference_sparsity: float
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, Any]]]]:
    """Rules as priors: each measured rule's bound moved toward each unit's measured tolerance.

    The reference is the median unit's loss rise at ``reference_sparsity`` (the plan's target, capped at
    the grid's last point); a unit's tolerance is the largest sparsity at which its own rise stays at or
    below it (:meth:`Sensitivity.tolerance`). A rule's bound becomes that tolerance, clipped into
    ``[measured_min, measured_max]`` (a missing limit: the bound as written). Returns the moved bounds
    ``{unit: {rule: bound}}`` (for :func:`apply_rules`) and per unit the records of what moved: the rule,
    the bound, from and to, relaxed or tightened, and the evidence (the unit's rise at both bounds, the
    reference and whether a declared limit stopped the move)."""
    moved: dict[str, dict[str, float]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    if not any(r.measured for r in rules):
        return moved, records
    names = [u.name for u in units]
    missing = [n for n in names if n not in sensitivity.loss]
    if missing:
        log.warning("the measured sensitivity has no curve for %d of %d units (%s%s): their rules stay as written",
                    len(missing), len(names), ", ".join(missing[:3]), " ..." if len(missing) > 3 else "")
    ref_s = min(reference_sparsity, sensitivity.grid[-1])
    reference = sensitivity.reference(ref_s, names)
    total = sum(u.params for u in units)
    for u in units:
        if u.name in missing:
            continue
        for rule in rules:
            if not rule.measured or not rule.matches(u, total):
                continue
            key, bound = rule.bound
            tol = sensitivity.tolerance(u.name, reference)
            low = bound if rule.measured_min is None else rule.measured_min
            high = bound if rule.measured_max is None else rule.measured_max
            new = round(float(np.clip(tol, low, high)), 4)
            if abs(new - bound) < 1e-9:
                continue
            moved.setdefault(u.name, {})[rule.name] = new
            records.setdefault(u.name, []).append({
                "rule": rule.name, "bound": key, "from": bound, "to": new,
                "change": "relaxed" if new > bound else "tightened", "tolerance": round(tol, 4),
                "limited": bool(abs(new - tol) > 1e-4),
                "rise_at_to": sensitivity.rise_at(u.name, new), "rise_at_from": sensitivity.rise_at(u.name, bound),
                "reference_rise": reference, "reference_sparsity": ref_s,
            })
    return moved, records


def describe_move(unit: str, record: Mapping[str, Any]) -> str:
    """One line on a measured move, e.g. ``0.weight: tiny-layers max 0.10 -> 0.34 (relaxed: loss rise 0.0120
    at 0.34 <= the median unit's 0.0121 at 0.80; 0.0030 at 0.10)``."""
    r = record
    limit = f", stopped at its declared measured_{'max' if r['change'] == 'relaxed' else 'min'}" if r["limited"] else ""
    return (f"{unit}: {r['rule']} {r['bound']} {r['from']:.2f} -> {r['to']:.2f} ({r['change']}: tolerance "
            f"{r['tolerance']:.2f}{limit}; loss rise {r['rise_at_to']:.4f} at {r['to']:.2f} and {r['rise_at_from']:.4f} "
            f"at {r['from']:.2f}, against the median unit's {r['reference_rise']:.4f} at {r['reference_sparsity']:.2f})")


def warn_unmatched(units: Sequence[Unit], user_rules: Sequence[Rule]) -> None:
    """A user rule that binds no unit is most likely a typo: say so, with the closest unit names."""
    modules = [u.module for u in units]
    for rule in user_rules:
        total = sum(u.params for u in units)
        if rule.enabled and not any(rule.matches(u, total) for u in units):
            close = difflib.get_close_matches(rule.pattern or "", modules, n=3, cutoff=0.3) if rule.pattern else []
            log.warning("rule %r matches no unit (kinds %s, pattern %r); %s", rule.name, list(rule.kinds) or "any",
                        rule.pattern, f"closest unit names: {', '.join(close)}" if close else
                        f"the units' kinds are {', '.join(sorted({u.kind for u in units}))}")


def explain(layer: Unit, rules: Sequence[Rule], total_params: int = 0) -> list[str]:
    """Names of the rules that bound ``layer`` (for tables and reports)."""
    return [r.name for r in rules if r.matches(layer, total_params)]
