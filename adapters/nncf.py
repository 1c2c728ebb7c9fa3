"""NNCF adapter: ``"algorithm": "mix_and_match"`` in NNCF-style JSON configs, down to OpenVINO IR.

NNCF 3.x dropped the 2.x JSON config and ``create_compressed_model``. This module gives NNCF users
that experience back for Mix-and-Match, on top of NNCF 3.4's own machinery::

    from mm_plugin.adapters.nncf import create_compressed_model

    ctrl, model = create_compressed_model(model, {
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "compression": {"algorithm": "mix_and_match", "strategy": "balanced", "target_sparsity": 0.5},
    })
    print(ctrl.statistics())          # per-layer plan vs. NNCF's own pruning_statistic
    ctrl.export("out/model.xml")      # nncf.strip -> openvino.convert_model -> save_model, zeros checked

How it maps onto NNCF 3.4:

* the model is wrapped with ``nncf.torch.function_hook.wrap_model`` and its graph built with
  ``build_nncf_graph``; the weights to prune are NNCF's own ``get_prunable_parameters`` (Conv, Linear,
  Embedding, MatMul constants), filtered by an ``nncf.IgnoredScope`` (names, patterns, types);
* the Mix-and-Match plan and masks come from the core (``mm_plugin.plan``, ``Plan.rescale``,
  ``mm_plugin.compute_masks``); each keep-mask goes in as a stock ``UnstructuredPruningMask``
  post-hook on the weight constant, so ``nncf.pruning_statistic``, ``nncf.strip``
  (``strip_format=IN_PLACE`` bakes the zeros) and ``nncf.torch.get_config`` / ``load_from_config``
  (default ``allowed_modules``) all work unchanged;
* ``"algorithm": "flexhinm"`` takes the same plan and hands its per-layer amounts to
  ``mm_plugin.flexhinm.flexhinm_sparsify_`` (hybrid dense / 2:4 / vector regions, permutations folded
  in); its masks become the same NNCF hooks;
* ``"algorithm": "quantization"`` after pruning runs ``nncf.quantize`` (symmetric int8 weights, so a
  zero weight stays an exact zero in the IR).

NNCF's own ratio updates (``update_pruning_ratio``, the magnitude schedulers) rewrite every mask with
one ratio: do not run them on a model compressed here.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mm_plugin
from mm_plugin.allocations import list_allocations
from mm_plugin.errors import (
    CalibrationRequiredError,
    ConfigError,
    MMError,
    NoPrunableLayersError,
    RuleError,
    UnsupportedModelError,
    ValidationError,
)
from mm_plugin.plan import Plan
from mm_plugin.ranges import DEFAULT_TARGETS, RANGE_MODES
from mm_plugin.rules import Rule, load_rules
from mm_plugin.signals import list_signals
from mm_plugin.strategies import NAMED_STRATEGIES, Strategy

from . import openvino as ovh

log = logging.getLogger(__name__)

__all__ = [
    "ALGORITHMS", "CompressionConfig", "CompressionController", "CompressionStatistics", "ExportReport",
    "ExportVerificationError", "LayerStatistic", "add_cli", "create_compressed_model", "load_config",
    "main", "run_cli", "unwrap_model",
]

ALGORITHMS = ("mix_and_match", "flexhinm", "quantization")
PRUNING_ALGORITHMS = ("mix_and_match", "flexhinm")
INPUT_TYPES = ("float", "long")
FILLERS = ("ones", "zeros", "random")
QUANTIZATION_PRESETS = ("performance", "mixed")  # both give symmetric int8 weights
MODEL_TYPES = ("transformer",)
#: How far on either side of ``target_sparsity`` the range targets go when none are given.
RANGE_SPREAD = 0.1
#: NNCF's C++ quantization kernels compile on first use (about 2.5 min on 2 cores); the stock 60 s
#: timeout then fails. Used only when NNCF_EXTENSION_LOAD_TIMEOUT is not set.
EXTENSION_LOAD_TIMEOUT_S = "900"

_STRATEGY_NAME = re.compile(r"interp-0\.\d\d")
_SAMPLE_NAME = re.compile(r"sample-\d\d+")
#: Keys NNCF 2.x users will try, with what to write instead.
_NNCF2_HINTS = {
    "sparsity_target": "use target_sparsity",
    "sparsity_init": "Mix-and-Match prunes in one shot: use target_sparsity",
    "params": "NNCF 2.x schedules do not apply: Mix-and-Match prunes in one shot to target_sparsity",
    "sparsity_target_epoch": "Mix-and-Match prunes in one shot: no epochs",
    "ignored_scope": "the key is ignored_scopes",
    "target_scopes": "list what to leave dense in ignored_scopes instead",
    "initializer": "use subset_size for the number of calibration samples",
    "scope_overrides": "per-layer bounds are rules: use rules",
}


# =====================================================================================================
# Config: parsing and validation (every error names its JSON path and the allowed values)
# =====================================================================================================
def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _fail(path: str, message: str, allowed: Iterable[Any] | None = None, what: str = "values") -> ConfigError:
    text = f"{path}: {message}"
    if allowed is not None:
        text += f"; allowed {what}: {', '.join(str(a) for a in allowed)}"
    return ConfigError(text)


def _object(value: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {_jtype(value)}")
    for key in value:
        if key not in allowed:
            hint = f" ({_NNCF2_HINTS[key]})" if key in _NNCF2_HINTS else ""
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = hint or (f" (did you mean {close[0]!r}?)" if close else "")
            raise _fail(f"{path}.{key}", f"unknown key{hint}", sorted(allowed), "keys")
    for key in required:
        if key not in value:
            raise _fail(f"{path}.{key}", "is required")
    return dict(value)


def _choice(d: Mapping[str, Any], key: str, path: str, allowed: Sequence[str], default: str | None) -> str | None:
    if key not in d:
        return default
    value = d[key]
    if not isinstance(value, str):
        raise _fail(f"{path}.{key}", f"expected a string, got {_jtype(value)}", allowed)
    if value not in allowed:
        raise _fail(f"{path}.{key}", f"unknown value {value!r}", allowed)
    return value


def _number(value: Any, path: str, lo: float, hi: float, *, hi_open: bool = True, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"expected a number, got {_jtype(value)}")
    value = float(value)
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok or not np.isfinite(value):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise _fail(path, f"{value:g} is out of range; allowed values: numbers in {interval}")
    return value


def _integer(d: Mapping[str, Any], key: str, path: str, minimum: int, default: int | None) -> int | None:
    if key not in d:
        return default
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{path}.{key}", f"expected an integer, got {_jtype(value)}")
    if value < minimum:
        raise _fail(f"{path}.{key}", f"{value} is out of range; allowed values: integers >= {minimum}")
    return value


def _boolean(d: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    if key not in d:
        return default
    if not isinstance(d[key], bool):
        raise _fail(f"{path}.{key}", f"expected true or false, got {_jtype(d[key])}")
    return d[key]


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(path, f"expected an array of strings, got {_jtype(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise _fail(f"{path}[{i}]", f"expected a string, got {_jtype(v)}")
    return tuple(value)


@dataclass(frozen=True)
class InputInfo:
    """One model input, as in NNCF 2.x ``input_info``."""

    sample_size: tuple[int, ...]
    type: str = "float"
    filler: str = "ones"

    def make(self, device: torch.device | str = "cpu") -> torch.Tensor:
        dtype = torch.float32 if self.type == "float" else torch.long
        if self.filler == "ones":
            return torch.ones(self.sample_size, dtype=dtype, device=device)
        if self.filler == "zeros":
            return torch.zeros(self.sample_size, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(0)
        if dtype == torch.long:
            return torch.randint(0, 2, self.sample_size, generator=gen).to(device)
        return torch.randn(self.sample_size, generator=gen).to(device)


@dataclass(frozen=True)
class ScopeSpec:
    """An ``ignored_scopes`` entry: NNCF ``IgnoredScope`` fields over NNCF graph node names / types."""

    path: str
    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    validate: bool = True
    listed: bool = False  # given as a 2.x-style array of names and '{re}' patterns

    def where(self, key: str) -> str:
        return self.path if self.listed else f"{self.path}.{key}"

    def to_nncf(self):
        import nncf

        return nncf.IgnoredScope(names=list(self.names), patterns=list(self.patterns), types=list(self.types),
                                 validate=self.validate)


@dataclass(frozen=True)
class MixAndMatchSpec:
    path: str
    signal: str = "magnitude"
    strategy: str = "balanced"
    target_sparsity: float | None = None
    range_targets: tuple[float, ...] = DEFAULT_TARGETS
    range_targets_given: bool = False
    allocations: tuple[str, ...] | None = None
    range_mode: str = "allocations"
    rules: tuple[Rule, ...] | None = None
    default_rules: bool = True
    ignored_scope: ScopeSpec | None = None
    samples: int = 0
    seed: int = 0
    algorithm: str = "mix_and_match"  # or "flexhinm": the same plan, FlexHiNM's hybrid 2:4 masks
    flexhinm: Any = None  # mm_plugin.flexhinm.FlexHiNMConfig for "flexhinm"


@dataclass(frozen=True)
class QuantizationSpec:
    path: str
    preset: str = "performance"
    subset_size: int = 300
    fast_bias_correction: bool = True
    model_type: str | None = None
    ignored_scope: ScopeSpec | None = None
    algorithm: str = "quantization"


@dataclass(frozen=True)
class CompressionConfig:
    """A validated config: the inputs and the compression steps in order."""

    input_info: tuple[InputInfo, ...]
    steps: tuple[MixAndMatchSpec | QuantizationSpec, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def example_inputs(self, device: torch.device | str = "cpu") -> torch.Tensor | tuple[torch.Tensor, ...]:
        tensors = tuple(info.make(device) for info in self.input_info)
        return tensors[0] if len(tensors) == 1 else tensors

    @property
    def pruning(self) -> MixAndMatchSpec | None:
        return next((s for s in self.steps if isinstance(s, MixAndMatchSpec)), None)


def _parse_input_info(value: Any) -> tuple[InputInfo, ...]:
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise _fail("input_info", "needs at least one input")
    out = []
    for i, item in enumerate(items):
        path = f"input_info[{i}]" if isinstance(value, list) else "input_info"
        d = _object(item, path, ("sample_size", "type", "filler"), required=("sample_size",))
        size = d["sample_size"]
        if isinstance(size, str) or not isinstance(size, (list, tuple)) or not size:
            raise _fail(f"{path}.sample_size", f"expected a non-empty array of positive integers, got {_jtype(size)}")
        for j, s in enumerate(size):
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise _fail(f"{path}.sample_size[{j}]", f"expected a positive integer, got {s!r}")
        out.append(InputInfo(tuple(size), _choice(d, "type", path, INPUT_TYPES, "float"),
                             _choice(d, "filler", path, FILLERS, "ones")))
    return tuple(out)


def _parse_scope(value: Any, path: str) -> ScopeSpec:
    if isinstance(value, (list, tuple)):
        names, patterns = [], []
        for i, entry in enumerate(_strings(value, path)):
            if entry.startswith("{re}"):
                patterns.append((entry[4:], f"{path}[{i}]"))
            else:
                names.append(entry)
        spec_patterns = patterns
        scope = ScopeSpec(path, tuple(names), tuple(p for p, _ in patterns), listed=True)
    elif isinstance(value, Mapping):
        d = _object(value, path, ("names", "patterns", "types", "validate"))
        spec_patterns = [(p, f"{path}.patterns[{i}]")
                         for i, p in enumerate(_strings(d.get("patterns", []), f"{path}.patterns"))]
        scope = ScopeSpec(
            path,
            _strings(d.get("names", []), f"{path}.names"),
            tuple(p for p, _ in spec_patterns),
            _strings(d.get("types", []), f"{path}.types"),
            _boolean(d, "validate", path, True),
        )
    else:
        raise _fail(path, f"expected an array of node names ('{{re}}<regex>' for patterns) or an object with "
                          f"names/patterns/types/validate, got {_jtype(value)}")
    for pattern, where in spec_patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise _fail(where, f"{pattern!r} is not a valid regular expression ({e})") from None
    return scope


def _parse_rules(value: Any, path: str) -> tuple[Rule, ...]:
    if isinstance(value, Mapping):  # {"rule-name": {fields}}: NNCF-style keyed overrides
        entries = []
        for name, fields_ in value.items():
            if not isinstance(fields_, Mapping):
                raise _fail(f"{path}.{name}", f"expected an object of rule fields, got {_jtype(fields_)}")
            if "name" in fields_ and fields_["name"] != name:
                raise _fail(f"{path}.{name}.name", f"{fields_['name']!r} differs from its key {name!r}")
            entries.append(({**fields_, "name": name}, f"{path}.{name}"))
    elif isinstance(value, list):
        entries = [(r, f"{path}[{i}]") for i, r in enumerate(value)]
    else:
        raise _fail(path, f"expected an array of rules or an object keyed by rule name, got {_jtype(value)}")
    rules = []
    for entry, where in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("kinds"), list):
            entry = {**entry, "kinds": tuple(entry["kinds"])}
        try:
            rules.append(load_rules([entry])[0])
        except (RuleError, TypeError) as e:
            message = re.sub(r"^rules\[0\]:\s*", "", str(e))
            raise _fail(where, message) from None
    return tuple(rules)


def _strategy_names(samples: int) -> list[str]:
    names = list(NAMED_STRATEGIES) + ["interp-<a> (a = 0.05 ... 0.95)"]
    return names + (["sample-<NN>"] if samples else [])


_PLAN_KEYS = ("algorithm", "signal", "strategy", "target_sparsity", "range_targets", "allocations", "range_mode",
              "rules", "default_rules", "ignored_scopes", "samples", "seed")


def _parse_flexhinm_params(value: Any, path: str):
    """The ``"flexhinm"`` object: fields of ``mm_plugin.flexhinm.FlexHiNMConfig``."""
    from dataclasses import fields as dc_fields

    from mm_plugin.flexhinm import IMPORTANCES, PERMUTATIONS, FlexHiNMConfig

    d = _object(value, path, [f.name for f in dc_fields(FlexHiNMConfig)])
    kwargs: dict[str, Any] = dict(d)
    if "permutation" in d:
        kwargs["permutation"] = _choice(d, "permutation", path, PERMUTATIONS.names(), None)
    if "importance" in d:
        kwargs["importance"] = _choice(d, "importance", path, IMPORTANCES.names(), None)
    if "tile_rows" in d and d["tile_rows"] is not None:
        kwargs["tile_rows"] = _integer(d, "tile_rows", path, 4, None)
    for key in ("seed", "effort"):
        if key in d:
            kwargs[key] = _integer(d, key, path, 0 if key == "seed" else 1, None)
    if "verify_atol" in d:
        kwargs["verify_atol"] = _number(d["verify_atol"], f"{path}.verify_atol", 0.0, float("inf"), lo_open=True)
    try:
        return FlexHiNMConfig(**kwargs)
    except (MMError, TypeError, ValueError) as e:
        raise _fail(path, str(e).replace("FlexHiNMConfig.", "")) from None


def _parse_mix_and_match(d: Mapping[str, Any], path: str) -> MixAndMatchSpec:
    algorithm = d.get("algorithm", "mix_and_match") if isinstance(d, Mapping) else "mix_and_match"
    d = _object(d, path, _PLAN_KEYS + (("flexhinm",) if algorithm == "flexhinm" else ()))
    samples = _integer(d, "samples", path, 0, 0)
    strategy = d.get("strategy", "balanced")
    if not isinstance(strategy, str):
        raise _fail(f"{path}.strategy", f"expected a string, got {_jtype(strategy)}", _strategy_names(samples))
    if not (strategy in NAMED_STRATEGIES or _STRATEGY_NAME.fullmatch(strategy)
            or (samples and _SAMPLE_NAME.fullmatch(strategy))):
        raise _fail(f"{path}.strategy", f"unknown strategy {strategy!r}", _strategy_names(samples))
    target = d.get("target_sparsity")
    if target is not None:
        target = _number(target, f"{path}.target_sparsity", 0.0, 1.0)
    if "range_targets" in d:
        raw = d["range_targets"]
        if isinstance(raw, str) or not isinstance(raw, (list, tuple)) or not raw:
            raise _fail(f"{path}.range_targets", f"expected a non-empty array of numbers, got {_jtype(raw)}")
        range_targets = tuple(_number(t, f"{path}.range_targets[{i}]", 0.0, 1.0) for i, t in enumerate(raw))
    elif target is not None:
        range_targets = tuple(sorted({round(min(max(target + dt, 0.0), 0.99), 6)
                                      for dt in (-RANGE_SPREAD, 0.0, RANGE_SPREAD)}))
    else:
        range_targets = DEFAULT_TARGETS
    allocations = None
    if "allocations" in d:
        allocations = _strings(d["allocations"], f"{path}.allocations")
        known = list_allocations()
        for i, a in enumerate(allocations):
            if a not in known:
                raise _fail(f"{path}.allocations[{i}]", f"unknown allocation {a!r}", known)
    return MixAndMatchSpec(
        path=path,
        signal=_choice(d, "signal", path, list_signals(), "magnitude"),
        strategy=strategy,
        target_sparsity=target,
        range_targets=range_targets,
        range_targets_given="range_targets" in d,
        allocations=allocations,
        range_mode=_choice(d, "range_mode", path, RANGE_MODES, "allocations"),
        rules=_parse_rules(d["rules"], f"{path}.rules") if "rules" in d else None,
        default_rules=_boolean(d, "default_rules", path, True),
        ignored_scope=_parse_scope(d["ignored_scopes"], f"{path}.ignored_scopes") if "ignored_scopes" in d else None,
        samples=samples,
        seed=_integer(d, "seed", path, 0, 0),
        algorithm=algorithm,
        flexhinm=_parse_flexhinm_params(d.get("flexhinm", {}), f"{path}.flexhinm") if algorithm == "flexhinm" else None,
    )


def _parse_quantization(d: Mapping[str, Any], path: str) -> QuantizationSpec:
    d = _object(d, path, ("algorithm", "preset", "subset_size", "fast_bias_correction", "model_type",
                          "ignored_scopes"))
    model_type = d.get("model_type")
    if model_type is not None:
        model_type = _choice(d, "model_type", path, MODEL_TYPES, None)
    return QuantizationSpec(
        path=path,
        preset=_choice(d, "preset", path, QUANTIZATION_PRESETS, "performance"),
        subset_size=_integer(d, "subset_size", path, 1, 300),
        fast_bias_correction=_boolean(d, "fast_bias_correction", path, True),
        model_type=model_type,
        ignored_scope=_parse_scope(d["ignored_scopes"], f"{path}.ignored_scopes") if "ignored_scopes" in d else None,
    )


def flexhinm_verb() -> Callable | None:
    """The public one-shot verb of ``mm_plugin.flexhinm`` once it exists, else None."""
    try:
        import mm_plugin.flexhinm as fx
    except Exception:  # noqa: BLE001 - a half-written package must not break the NNCF adapter
        return None
    for name in ("flexhinm_sparsify_", "one_shot", "prune"):
        verb = getattr(fx, name, None)
        if callable(verb):
            return verb
    return None


def _read_config(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if isinstance(config, (str, os.PathLike)):
        text = str(config) if not isinstance(config, os.PathLike) else None
        if text is not None and text.lstrip().startswith("{"):
            where = "<JSON text>"
        else:
            path = Path(config)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist (pass a dict, a JSON file path or JSON text)")
            text, where = path.read_text(), str(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the top level must be a JSON object, got {_jtype(data)}")
        return data
    raise ConfigError(f"config must be a dict, a JSON file path or JSON text, got {type(config).__name__}")


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> CompressionConfig:
    """Parse and validate a config (dict, path of a JSON file, or JSON text) without touching a model."""
    raw = _read_config(config)
    d = _object(raw, "$", ("input_info", "compression"), required=("input_info", "compression"))
    inputs = _parse_input_info(d["input_info"])
    comp = d["compression"]
    entries = [(c, f"compression[{i}]") for i, c in enumerate(comp)] if isinstance(comp, list) else \
        [(comp, "compression")]
    if isinstance(comp, list) and not comp:
        raise _fail("compression", "needs at least one algorithm", ALGORITHMS)
    if not isinstance(comp, (list, Mapping)):
        raise _fail("compression", f"expected an object or an array of objects, got {_jtype(comp)}")
    steps: list[MixAndMatchSpec | QuantizationSpec] = []
    seen: list[str] = []
    for entry, path in entries:
        if not isinstance(entry, Mapping):
            raise _fail(path, f"expected an object, got {_jtype(entry)}")
        if "algorithm" not in entry:
            raise _fail(f"{path}.algorithm", "is required", ALGORITHMS)
        algo = entry["algorithm"]
        if not isinstance(algo, str) or algo not in ALGORITHMS:
            hint = " (NNCF's own magnitude sparsity is nncf.prune)" if algo in ("magnitude_sparsity", "rb_sparsity") \
                else ""
            raise _fail(f"{path}.algorithm", f"unknown algorithm {algo!r}{hint}", ALGORITHMS)
        if algo in seen:
            raise _fail(f"{path}.algorithm", f"{algo!r} appears twice; each algorithm runs at most once")
        if algo in PRUNING_ALGORITHMS and any(a in PRUNING_ALGORITHMS for a in seen):
            raise _fail(f"{path}.algorithm", "only one pruning algorithm per config",
                        [a for a in ALGORITHMS if a not in PRUNING_ALGORITHMS])
        if algo in PRUNING_ALGORITHMS and "quantization" in seen:
            raise _fail(f"{path}.algorithm", f"{algo!r} must come before quantization (pruning a quantized "
                                             "model would lose the int8 scales); reorder the list")
        seen.append(algo)
        if algo == "quantization":
            steps.append(_parse_quantization(entry, path))
        else:
            if algo == "flexhinm" and flexhinm_verb() is None:
                raise _fail(
                    f"{path}.algorithm",
                    "'flexhinm' is not available yet: mm_plugin.flexhinm exposes no one-shot verb "
                    "(mm_plugin.flexhinm.flexhinm_sparsify_) until the FlexHiNM issue lands",
                    [a for a in ALGORITHMS if a != "flexhinm"],
                )
            steps.append(_parse_mix_and_match(entry, path))
    return CompressionConfig(inputs, tuple(steps), raw)


# =====================================================================================================
# NNCF plumbing
# =====================================================================================================
def _require_nncf():
    try:
        import nncf
    except ImportError:
        raise MMError("the NNCF adapter needs NNCF 3.4: pip install 'mm-plugin[nncf]'") from None
    if importlib.util.find_spec("torchao") is None:
        raise MMError(
            "nncf.strip imports torchao, which NNCF 3.4 does not declare: pip install 'mm-plugin[nncf]' "
            "(it pins torchao) or pip install torchao"
        )
    return nncf


def _hook_storage(model: nn.Module):
    from nncf.torch.function_hook.wrapper import get_hook_storage, is_wrapped

    return get_hook_storage(model) if is_wrapped(model) else None


def _mask_hooks(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight constant name: UnstructuredPruningMask}`` of a wrapped model."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask

    storage = _hook_storage(model)
    if storage is None:
        return {}
    return {decode_hook_name(name)[1]: hook for name, hook in storage.named_hooks()
            if isinstance(hook, UnstructuredPruningMask)}


def _other_hooks(model: nn.Module) -> list[str]:
    from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask

    storage = _hook_storage(model)
    if storage is None:
        return []
    return [name for name, hook in storage.named_hooks() if not isinstance(hook, UnstructuredPruningMask)]


@torch.no_grad()
def _bake_mask_hooks(model: nn.Module) -> None:
    """Fold only the pruning masks into their weights and drop those hooks (quantizers stay)."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask

    storage = _hook_storage(model)
    for name, hook in list(storage.named_hooks()):
        if isinstance(hook, UnstructuredPruningMask):
            param = model.get_parameter(decode_hook_name(name)[1])
            param.data = param.data * hook.binary_mask.to(param.dtype)
            storage.delete_hook(name)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Undo ``nncf.torch.function_hook.wrap_model`` on a model whose hook storage is empty: a plain module."""
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE, ReplicateForDataParallel, is_wrapped

    if not is_wrapped(model):
        return model
    storage = _hook_storage(model)
    if not storage.is_empty():
        remaining = [name for name, _ in storage.named_hooks()]
        raise UnsupportedModelError(
            f"cannot unwrap {type(model).__name__}: it still carries NNCF hooks {remaining[:3]}...; strip it first"
        )
    del model.__dict__["forward"]
    if isinstance(model.__dict__.get("_replicate_for_data_parallel"), ReplicateForDataParallel):
        del model.__dict__["_replicate_for_data_parallel"]
    delattr(model, ATR_HOOK_STORAGE)
    return model


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        raise UnsupportedModelError(
            f"NNCF cannot wrap a bare {type(model).__name__} root (it would run NNCF's hook storage as a layer); "
            "put it inside a module with its own forward(), e.g. class Net(nn.Module): forward = lambda s, x: s.body(x)"
        )
    if _mask_hooks(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} already carries NNCF pruning masks; start from the uncompressed model"
        )


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass(frozen=True)
class _WeightNode:
    """An NNCF weight constant: the ops that use it and their metatypes."""

    const: str
    ops: tuple[str, ...]
    metatypes: tuple[str, ...]


def _weight_nodes(graph: Any) -> dict[str, _WeightNode]:
    """Every weight constant NNCF's pruning would consider, with its consumer ops (metadata only; the set
    itself comes from ``get_prunable_parameters``)."""
    from nncf.torch.function_hook.pruning.prune_model import OPERATORS_WITH_WEIGHTS_METATYPES
    from nncf.torch.model_graph_manager import get_const_node

    ops: dict[str, list[tuple[str, str]]] = {}
    for node in graph.get_nodes_by_metatypes(OPERATORS_WITH_WEIGHTS_METATYPES):
        ports = getattr(node.layer_attributes, "constant_port_ids", set()) & set(node.metatype.weight_port_ids)
        for port in sorted(ports):
            const = get_const_node(node, port, graph)
            if const is not None:
                ops.setdefault(const.node_name, []).append((node.node_name, node.metatype.__name__))
    return {c: _WeightNode(c, tuple(o for o, _ in v), tuple(m for _, m in v)) for c, v in ops.items()}


def _resolve_scope(spec: ScopeSpec | None, graph: Any):
    """NNCF ``IgnoredScope`` semantics over the NNCF graph; unmatched rules are an error naming the path."""
    if spec is None:
        return None
    from nncf.scopes import get_difference_ignored_scope, get_matched_ignored_scope_info

    scope = spec.to_nncf()
    matched, _ = get_matched_ignored_scope_info(scope, [graph])
    missing = get_difference_ignored_scope(scope, matched)
    if spec.validate and (missing.names or missing.patterns or missing.types):
        nodes = sorted(n.node_name for n in graph.get_all_nodes())
        if missing.names:
            name = missing.names[0]
            close = difflib.get_close_matches(name, nodes, n=5, cutoff=0.4)
            contains = [n for n in nodes if name.replace(".", "/") in n][:5]
            suggestions = list(dict.fromkeys(contains + close))[:5] or nodes[:5]
            raise _fail(spec.where("names"),
                        f"{missing.names} match no node of the NNCF graph (names are NNCF node names, e.g. "
                        f"'layer1/0/conv1/conv2d/0'; '{{re}}' or 'patterns' for regular expressions)",
                        suggestions, "values (closest node names)")
        if missing.patterns:
            raise _fail(spec.where("patterns"),
                        f"{missing.patterns} match no node name of the NNCF graph (re.match from the start)",
                        nodes[:5], "values: patterns over node names such as")
        types = sorted({n.node_type for n in graph.get_all_nodes()})
        raise _fail(spec.where("types"), f"{missing.types} match no operation type of the NNCF graph", types)
    if not (matched.names or matched.patterns or matched.types):
        return None
    return matched


# =====================================================================================================
# Controller
# =====================================================================================================
@dataclass(frozen=True)
class LayerStatistic:
    name: str  # parameter name == NNCF weight constant name
    kind: str  # the core's layer kind
    metatype: str  # NNCF metatype of the op(s) using the weight
    shape: tuple[int, ...]
    numel: int
    planned_ratio: float
    ratio: float  # from nncf.pruning_statistic (masks) or from the weights once baked
    zeros: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "shape": list(self.shape)}


@dataclass(frozen=True)
class CompressionStatistics:
    algorithm: str
    strategy: str
    target_sparsity: float | None
    planned_ratio: float  # the plan's global sparsity over the planned weights
    pruning_ratio: float  # zeros / planned weights, as measured (NNCF's "Prunable parameters" ratio)
    global_pruning_ratio: float  # zeros / all parameters of the model
    layers: tuple[LayerStatistic, ...]
    unplanned: tuple[str, ...]  # NNCF prunable weights outside the core inventory: left dense
    ignored: tuple[str, ...]  # weights left dense by ignored_scopes
    quantized: bool
    left_dense: dict[str, str]  # flexhinm: planned weights it left dense, with the reason
    source: str  # "nncf.pruning_statistic" or "weights"
    nncf: Any = field(default=None, repr=False, compare=False)  # nncf's ModelPruningStatistic, if masks are hooks

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "nncf"}
        d["layers"] = [layer.to_dict() for layer in self.layers]
        d["unplanned"], d["ignored"] = list(self.unplanned), list(self.ignored)
        return d

    def to_str(self, max_rows: int | None = None) -> str:
        header = ["weight", "kind", "metatype", "shape", "planned", "masked"]
        rows = [[s.name, s.kind, s.metatype.removeprefix("PT").removesuffix("Metatype"), "x".join(map(str, s.shape)),
                 f"{s.planned_ratio:.4f}", f"{s.ratio:.4f}"] for s in self.layers]
        if max_rows is not None and len(rows) > max_rows:
            rows = rows[: max_rows // 2] + [["..."] + [""] * 5] + rows[-(max_rows // 2):]
        rows.append(["PLANNED WEIGHTS", "", "", "", f"{self.planned_ratio:.4f}", f"{self.pruning_ratio:.4f}"])
        rows.append(["ALL PARAMETERS", "", "", "", "", f"{self.global_pruning_ratio:.4f}"])
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in [header, ["-" * w for w in widths]] + rows]
        title = f"{self.algorithm}: strategy {self.strategy}" + (
            f", target {self.target_sparsity:g}" if self.target_sparsity is not None else "") + (
            ", int8" if self.quantized else "") + f" (source: {self.source})"
        extra = []
        if self.ignored:
            extra.append(f"dense by ignored_scopes: {len(self.ignored)} weights")
        if self.unplanned:
            extra.append(f"dense, outside the Mix-and-Match inventory: {', '.join(self.unplanned)}")
        for name, reason in self.left_dense.items():
            extra.append(f"dense, left by FlexHiNM: {name} ({reason})")
        return "\n".join([title, *lines, *extra])

    __str__ = to_str


class ExportVerificationError(MMError):
    """The saved IR lost zeros the plan put in (a planned zero is not zero in its Constant)."""


@dataclass(frozen=True)
class ExportReport:
    xml: Path
    bin: Path
    matches: tuple[ovh.ParamMatch, ...]
    constants: tuple[ovh.WeightConstant, ...]
    quantized: bool
    seconds: dict[str, float]

    @property
    def exact(self) -> bool:
        """Every planned weight's Constant holds exactly the planned zeros."""
        return all(m.exact for m in self.matches)

    @property
    def kept(self) -> bool:
        """Every planned zero is a zero in the IR (int8 rounding may add more)."""
        return all(m.kept for m in self.matches)

    def to_dict(self) -> dict[str, Any]:
        return {
            "xml": str(self.xml), "bin": str(self.bin), "quantized": self.quantized, "exact": self.exact,
            "kept": self.kept, "seconds": self.seconds,
            "planned_zeros": sum(m.expected_zeros for m in self.matches),
            "ir_zeros_in_planned_constants": sum(m.ir_zeros or 0 for m in self.matches),
            "matches": [m.to_dict() for m in self.matches],
            "constants": [c.to_dict() for c in self.constants],
        }


class CompressionController:
    """What ``create_compressed_model`` returns beside the model (the NNCF 2.x controller's role)."""

    def __init__(self, model: nn.Module, config: CompressionConfig, example_inputs: Any) -> None:
        self.model = model
        self.config = config
        self.example_inputs = example_inputs
        self.plan: Plan | None = None
        self.strategy: Strategy | None = None
        self.spec: MixAndMatchSpec | None = None
        self.quantized = False
        self.prepared = False
        self.weights: dict[str, _WeightNode] = {}
        self.unplanned: tuple[str, ...] = ()
        self.ignored: tuple[str, ...] = ()
        self.seconds: dict[str, float] = {}
        self.left_dense: dict[str, str] = {}  # FlexHiNM: planned weights it could not give the pattern
        self.flexhinm_result: Any = None
        self._planned_zeros: dict[str, np.ndarray] = {}  # param -> flat bool "must be zero"

    # --- building ---------------------------------------------------------------------------------
    def _apply_pruning(self, spec: MixAndMatchSpec, calibration: Iterable | None, loss_fn: Callable | None):
        from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
        from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask
        from nncf.torch.function_hook.pruning.prune_model import get_prunable_parameters
        from nncf.torch.function_hook.wrapper import register_post_function_hook, wrap_model

        t = time.perf_counter()
        model = wrap_model(self.model)
        graph = build_nncf_graph(model, self.example_inputs)
        self.seconds["nncf_graph"] = time.perf_counter() - t

        t = time.perf_counter()
        all_weights = get_prunable_parameters(graph, None)
        scope = _resolve_scope(spec.ignored_scope, graph)
        prunable = get_prunable_parameters(graph, scope) if scope is not None else set(all_weights)
        self.weights = _weight_nodes(graph)
        inventory = mm_plugin.inventory(model, self.example_inputs)
        inv_names = set(inventory.names)
        self.ignored = tuple(sorted(all_weights - prunable))
        self.unplanned = tuple(sorted(prunable - inv_names))
        if self.unplanned:
            log.warning("NNCF finds weights the Mix-and-Match inventory does not plan (left dense): %s",
                        ", ".join(f"{n} ({'/'.join(self.weights[n].metatypes)})" for n in self.unplanned))
        dense = sorted(inv_names - prunable)  # ignored by scope, or not a weight in NNCF's graph
        if not inv_names & prunable:
            where = f"{spec.path}.ignored_scopes" if spec.ignored_scope is not None else spec.path
            raise _fail(where, "no prunable weight is left: every Conv/Linear/Embedding weight is ignored")
        # The calibration data serves the plan only where the config asks for gradients: a gradient
        # signal or the 'snip' allocation (data given for int8 calibration alone changes nothing here).
        if not (spec.signal in ("gradient", "product") or "snip" in (spec.allocations or ())):
            calibration = None
        try:
            plan = mm_plugin.plan(
                model, self.example_inputs, signal=spec.signal, calibration=calibration, loss_fn=loss_fn,
                rules=list(spec.rules) if spec.rules is not None else None, default_rules=spec.default_rules,
                ignored_scope=mm_plugin.IgnoredScope(names=tuple(dense)) if dense else None,
                targets=spec.range_targets, allocations=spec.allocations, range_mode=spec.range_mode,
                samples=spec.samples, seed=spec.seed,
            )
        except NoPrunableLayersError as e:
            raise _fail(f"{spec.path}.ignored_scopes", str(e)) from None
        names = [s.name for s in plan.strategies]
        if spec.strategy not in names:
            raise _fail(f"{spec.path}.strategy", f"strategy {spec.strategy!r} is not in this model's plan "
                                                 "(the ranges are too narrow to tell it apart)", names)
        strategy = plan.strategy(spec.strategy)
        if spec.target_sparsity is not None:
            try:
                strategy = plan.rescale(strategy, spec.target_sparsity)
            except ValidationError as e:
                hint = "" if spec.range_targets_given else \
                    f" (range_targets were derived as {list(spec.range_targets)})"
                raise _fail(f"{spec.path}.target_sparsity",
                            f"{e}{hint}; set {spec.path}.range_targets to bracket the target") from None
        self.seconds["plan"] = time.perf_counter() - t

        t = time.perf_counter()
        if spec.algorithm == "flexhinm":
            masks = self._flexhinm_masks(model, spec, strategy, calibration, loss_fn)
        else:
            masks = mm_plugin.compute_masks(model, strategy, signal=spec.signal, calibration=calibration,
                                            loss_fn=loss_fn, plan=plan)
        for layer in plan.layers:
            keep = masks[layer.name]
            hook = UnstructuredPruningMask(tuple(keep.shape)).to(device=keep.device)
            hook.binary_mask.copy_(keep)
            register_post_function_hook(model, layer.name, 0, hook)
            self._planned_zeros[layer.name] = (~keep).reshape(-1).cpu().numpy()
        self.seconds["masks"] = time.perf_counter() - t
        self.model, self.plan, self.strategy, self.spec = model, plan, strategy, spec
        log.info("%s: %d weights masked, planned global sparsity %.4f", spec.path, len(plan.layers),
                 plan.global_sparsity(strategy))

    def _flexhinm_masks(self, model: nn.Module, spec: MixAndMatchSpec, strategy: Strategy,
                        calibration: Iterable | None, loss_fn: Callable | None) -> dict[str, torch.Tensor]:
        """FlexHiNM's one-shot verb on the plan's per-layer amounts; its masks become NNCF hooks.

        FlexHiNM traces and permutes the plain model (channel permutations are folded into the
        neighbouring weights, outputs checked), so NNCF's wrapper comes off for that step and goes back
        on. Its parametrization masks are baked (zeros in the weights) and re-registered as NNCF hooks.
        With a gradient signal the core's scores replace FlexHiNM's ``importance``.
        """
        from nncf.torch.function_hook.wrapper import wrap_model

        from mm_plugin.masks import bake_masks_
        from mm_plugin.signals import compute_scores

        verb = flexhinm_verb()
        unwrap_model(model)
        scores = None
        if spec.signal != "magnitude":
            scores = compute_scores(model, list(strategy.sparsity), spec.signal, calibration, loss_fn)
        inputs = self.example_inputs if isinstance(self.example_inputs, tuple) else (self.example_inputs,)
        result = verb(model, strategy.sparsity, spec.flexhinm, example_inputs=inputs, scores=scores)
        bake_masks_(model)
        wrap_model(model)
        self.flexhinm_result = result
        self.left_dense = dict(result.skipped)
        keep = result.masks
        return {name: keep[name] if name in keep else torch.ones_like(model.get_parameter(name), dtype=torch.bool)
                for name in strategy.sparsity}

    def _apply_quantization(self, spec: QuantizationSpec, calibration: Iterable | None) -> None:
        import nncf

        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_LOAD_TIMEOUT_S)
        scope = None
        if spec.ignored_scope is not None:
            from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
            from nncf.torch.function_hook.wrapper import wrap_model

            scope = _resolve_scope(spec.ignored_scope, build_nncf_graph(wrap_model(self.model), self.example_inputs))
        t = time.perf_counter()
        self.model = nncf.quantize(
            self.model,
            nncf.Dataset(calibration, _model_inputs),
            preset=nncf.QuantizationPreset.PERFORMANCE if spec.preset == "performance" else
            nncf.QuantizationPreset.MIXED,
            subset_size=spec.subset_size,
            fast_bias_correction=spec.fast_bias_correction,
            model_type=nncf.ModelType.TRANSFORMER if spec.model_type == "transformer" else None,
            ignored_scope=scope,
        )
        self.quantized = True
        self.seconds["quantize"] = time.perf_counter() - t

    # --- the controller API -------------------------------------------------------------------------
    def _require_plan(self) -> Plan:
        if self.plan is None:
            raise MMError("this config has no pruning step; there is nothing to report or verify")
        return self.plan

    def statistics(self) -> CompressionStatistics:
        """Plan vs. what the model computes with, per weight. Read from ``nncf.pruning_statistic``
        while the masks are NNCF hooks, from the weights themselves once baked."""
        import nncf

        plan = self._require_plan()
        hooks = _mask_hooks(self.model)
        nncf_stat = nncf.pruning_statistic(self.model) if hooks else None
        measured: dict[str, tuple[float, int]] = {}
        if nncf_stat is not None:
            for t in nncf_stat.pruned_tensors:
                numel = int(np.prod(t.shape))
                measured[t.tensor_name] = (t.pruned_ratio, round(t.pruned_ratio * numel))
        else:
            for layer in plan.layers:
                w = self.model.get_parameter(layer.name).detach()
                zeros = int((w == 0).sum())
                measured[layer.name] = (zeros / w.numel(), zeros)
        layers = []
        for layer in plan.layers:
            ratio, zeros = measured.get(layer.name, (0.0, 0))
            node = self.weights.get(layer.name)
            layers.append(LayerStatistic(
                name=layer.name, kind=layer.kind, metatype="/".join(dict.fromkeys(node.metatypes)) if node else "",
                shape=tuple(layer.shape), numel=layer.params, planned_ratio=float(self.strategy.sparsity[layer.name]),
                ratio=float(ratio), zeros=zeros,
            ))
        planned_total = sum(s.numel for s in layers)
        total_zeros = sum(s.zeros for s in layers)
        if nncf_stat is not None:
            pruning_ratio, global_ratio = nncf_stat.pruning_ratio, nncf_stat.global_pruning_ratio
        else:
            all_params = sum(p.numel() for p in self.model.parameters())
            pruning_ratio, global_ratio = total_zeros / planned_total, total_zeros / all_params
        return CompressionStatistics(
            algorithm=self.spec.algorithm, strategy=self.strategy.name, target_sparsity=self.spec.target_sparsity,
            planned_ratio=float(plan.global_sparsity(self.strategy)), pruning_ratio=float(pruning_ratio),
            global_pruning_ratio=float(global_ratio), layers=tuple(layers), unplanned=self.unplanned,
            ignored=self.ignored, quantized=self.quantized, left_dense=dict(self.left_dense),
            source="nncf.pruning_statistic" if nncf_stat is not None else "weights", nncf=nncf_stat,
        )

    def strip(self, do_copy: bool = True) -> nn.Module:
        """``nncf.strip``: masks baked into the weights (``StripFormat.IN_PLACE``); with int8, quantizers
        become native torch FakeQuantize (``StripFormat.NATIVE``) after the masks are baked."""
        import nncf

        model = copy.deepcopy(self.model) if do_copy else self.model
        if _hook_storage(model) is None:
            return model
        if _other_hooks(model):
            _bake_mask_hooks(model)
            return nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.NATIVE,
                              example_input=self.example_inputs)
        return nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE)

    @staticmethod
    def _ready_for_openvino(model: nn.Module) -> nn.Module:
        """In place: masks baked; then a plain module (pruning only) or, with int8, the NNCF model whose
        quantizer hooks ``openvino.convert_model`` turns into FakeQuantize ops (NNCF's own export path)."""
        import nncf

        if _hook_storage(model) is None:
            return model
        if _other_hooks(model):
            _bake_mask_hooks(model)
            return model
        return unwrap_model(nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE))

    def prepare_for_export(self) -> nn.Module:
        """Bake the masks in place; without quantizers the model is unwrapped into a plain ``nn.Module``.
        ``self.model`` is replaced by the result, which is also returned."""
        self.model, self.prepared = self._ready_for_openvino(self.model), True
        return self.model

    def export(self, path: str | os.PathLike, *, compress_to_fp16: bool = False, verify: bool = True) -> ExportReport:
        """OpenVINO IR via ``openvino.convert_model`` + ``save_model`` of a stripped copy (``self.model``
        is left as it is), then zeros counted per weight Constant of the saved IR and compared with the
        plan: a planned zero that is not zero in the IR raises :class:`ExportVerificationError`
        (``verify=False`` only reports). Extra zeros (int8 rounding, BatchNorm with gamma = 0 folded into
        a convolution) are reported, not errors."""
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        model = self._ready_for_openvino(copy.deepcopy(self.model))
        seconds["strip"] = time.perf_counter() - t
        t = time.perf_counter()
        ov_model = ovh.convert(model, self.example_inputs)
        seconds["convert"] = time.perf_counter() - t
        t = time.perf_counter()
        xml = ovh.save(ov_model, path, compress_to_fp16=compress_to_fp16)
        seconds["save"] = time.perf_counter() - t
        t = time.perf_counter()
        matches: tuple[ovh.ParamMatch, ...] = ()
        constants = tuple(ovh.weight_constants(xml))
        if self.plan is not None:
            matches = tuple(ovh.match_params(constants, self._planned_zeros))
        seconds["verify"] = time.perf_counter() - t
        report = ExportReport(xml, xml.with_suffix(".bin"), matches, constants, self.quantized, seconds)
        lost = [m for m in matches if not m.kept]
        if lost:
            text = "; ".join(f"{m.param}: " + ("no Constant found" if m.constant is None else
                                               f"{m.lost_zeros} planned zeros are non-zero in {m.constant}")
                             for m in lost[:5])
            if verify:
                raise ExportVerificationError(f"the IR {xml} does not keep the planned zeros: {text}")
            log.warning("the IR %s does not keep the planned zeros: %s", xml, text)
        extra = [m for m in matches if m.kept and not m.exact]
        if extra:
            log.info("%d weights have more zeros in the IR than planned (int8 rounding or a folded BatchNorm "
                     "with gamma = 0): %s", len(extra), ", ".join(m.param for m in extra[:5]))
        return report


def _model_inputs(batch: Any) -> Any:
    """Calibration batch -> what the model takes: a tensor, the first of a pair, or a dict's 'x'/'input'."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return batch["x"] if "x" in batch else batch["input"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def _check_calibration(cfg: CompressionConfig, calibration: Iterable | None) -> None:
    """Fail before any work when a step needs calibration data that was not given."""
    if calibration is not None:
        return
    for step in cfg.steps:
        if isinstance(step, QuantizationSpec):
            raise CalibrationRequiredError(
                f"{step.path}: 'quantization' needs calibration data: pass create_compressed_model(..., "
                "calibration=<batches>) (tensors, (inputs, targets) pairs or dicts with 'x')"
            )
        if step.signal in ("gradient", "product") or "snip" in (step.allocations or ()):
            where, what = ("signal", step.signal) if step.signal in ("gradient", "product") else ("allocations", "snip")
            raise CalibrationRequiredError(
                f"{step.path}.{where}: {what!r} needs calibration data: pass "
                "create_compressed_model(..., calibration=<(inputs, targets) batches>) or use 'magnitude'"
            )


def create_compressed_model(
    model: nn.Module,
    config: Mapping[str, Any] | str | os.PathLike,
    *,
    calibration: Iterable | None = None,
    loss_fn: Callable | None = None,
    example_inputs: Any = None,
) -> tuple[CompressionController, nn.Module]:
    """NNCF 2.x-style entry point: ``(controller, compressed_model)`` from a JSON-like config.

    ``config``: a dict, the path of a JSON file, or JSON text. ``calibration``: batches for the gradient
    signals (``(inputs, targets)`` pairs) and for int8 quantization (tensors or pairs).
    ``example_inputs`` overrides the tensors built from ``input_info``. The model is wrapped by NNCF in
    place (as NNCF 3.x does); with quantization the returned model is NNCF's quantized copy.
    """
    cfg = load_config(config)
    _require_nncf()
    _check_model(model)
    _check_calibration(cfg, calibration)
    inputs = example_inputs if example_inputs is not None else cfg.example_inputs(_model_device(model))
    ctrl = CompressionController(model, cfg, inputs)
    was_training = model.training
    model.eval()
    try:
        for step in cfg.steps:
            if isinstance(step, MixAndMatchSpec):
                ctrl._apply_pruning(step, calibration, loss_fn)
            else:
                ctrl._apply_quantization(step, calibration)
    finally:
        ctrl.model.train(was_training)
    return ctrl, ctrl.model


# =====================================================================================================
# CLI: mm-prune nncf --config cfg.json --model timm:<name>|pkg.mod:fn --out DIR
# =====================================================================================================
def _create_model(spec: str, num_classes: int | None, in_chans: int | None, img_size: int | None) -> nn.Module:
    try:
        from mm_plugin.zoo import create_model
    except ImportError:
        create_model = None
    if create_model is not None:
        return create_model(spec, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    if not spec.startswith("timm:"):
        raise ConfigError(f"--model {spec!r}: without mm_plugin.zoo only 'timm:<name>' specs are supported")
    import timm

    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", img_size))
              if v is not None}
    return timm.create_model(spec[len("timm:"):], pretrained=False, **kwargs)


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nncf`` on an argparse subparsers object; the handler is ``args.func(args)``."""
    p = subparsers.add_parser(
        "nncf",
        help="Mix-and-Match from an NNCF-style JSON config, through NNCF 3.4, to OpenVINO IR",
        description="Prune (and optionally int8-quantize) a model from an NNCF-style config, write the "
                    "statistics, an NNCF checkpoint and the OpenVINO IR, and check the IR's zeros.",
    )
    p.add_argument("--config", required=True, help="JSON config file (see docs/nncf.md)")
    p.add_argument("--model", required=True, help="timm:<name>, package.module:function or a built-in name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-classes", type=int, default=None, help="passed to the model factory when given")
    p.add_argument("--in-chans", type=int, default=None, help="passed to the model factory when given")
    p.add_argument("--img-size", type=int, default=None, help="passed to the model factory when given")
    p.add_argument("--data", default=None,
                   help="dataset for calibration (mm_plugin.data.load_data spec); needed by gradient signals and "
                        "quantization")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches used for calibration")
    p.add_argument("--fp16", action="store_true", help="compress the IR's float weights to FP16")
    p.add_argument("--no-export", action="store_true", help="stop after the statistics and checkpoint")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    calibration = None
    if args.data:
        from mm_plugin.data import load_data

        calibration = load_data(args.data).calibration(args.calibration_batches)
    model = _create_model(args.model, args.num_classes, args.in_chans, args.img_size)
    t = time.perf_counter()
    ctrl, model = create_compressed_model(model, args.config, calibration=calibration)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import nncf.torch

    torch.save({"state_dict": model.state_dict(), "nncf_config": nncf.torch.get_config(model),
                "config": ctrl.config.raw}, out / "checkpoint.pt")
    summary: dict[str, Any] = {"model": args.model, "config": ctrl.config.raw, "seconds": dict(ctrl.seconds)}
    if ctrl.plan is not None:
        stats = ctrl.statistics()
        print(stats.to_str(max_rows=40))
        summary["statistics"] = stats.to_dict()
        ctrl.plan.save(out / "plan.json")
    if not args.no_export:
        report = ctrl.export(out / "model.xml", compress_to_fp16=args.fp16)
        summary["export"] = report.to_dict()
        print(f"IR: {report.xml} ({'exact' if report.exact else 'planned zeros kept'}; "
              f"{sum(m.ir_zeros or 0 for m in report.matches):,} zeros in the planned weights' Constants, "
              f"{sum(m.expected_zeros for m in report.matches):,} planned)")
    summary["seconds"]["total"] = time.perf_counter() - t
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out / 'summary.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mm_plugin.adapters.nncf nncf --config ...`` (the same as ``mm-prune nncf``)."""
    parser = argparse.ArgumentParser(prog="mm-prune")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
