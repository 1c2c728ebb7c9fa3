"""Resuming: the compression state a checkpoint saves (NNCF 2.x's ``ctrl.get_compression_state()``, given
back as ``create_compressed_model(model, config, compression_state)``), and NNCF 2.x's ``load_state`` for
the weights.

The state is plain data (dicts, lists, numbers, strings, bytes), so a checkpoint holding it loads with
the restricted unpickler of NNCF 2.x's samples: the plan, the strategy and level the masks hold, every
mask packed to bits, and the scheduler's position. The schedule itself comes from the config, as in 2.x.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mm_plugin.errors import ConfigError, MMError
from mm_plugin.planning import Plan, Strategy

from . import masking
from .config import CompressionConfig, PruningStep

if TYPE_CHECKING:
    from .controller import CompressionController

log = logging.getLogger(__name__)

FORMAT = 1
#: Prefixes a checkpoint's keys may carry that the model's do not (DataParallel, NNCF 2.x's NNCFNetwork).
PREFIXES = ("module.", "nncf_module.")


def compression_state(ctrl: CompressionController) -> dict[str, Any]:
    """``{"builder_state": {algorithm: ...}, "ctrl_state": {algorithm: ...}}``, NNCF 2.x's layout."""
    if ctrl.plan is None:  # quantization only: the config rebuilds it
        return {"builder_state": {}, "ctrl_state": {}}
    builder: dict[str, Any] = {"format": FORMAT, "step": ctrl.step.path, "structured": ctrl.channels is not None,
                               "learning": ctrl.learning is not None}
    if ctrl.channels is None and ctrl.learning is None:
        shapes = {u.name: tuple(u.shape) for u in ctrl.plan.units}
        builder |= {
            "plan": json.loads(json.dumps(ctrl.plan.to_dict())),
            "base": ctrl.base.name,
            "strategy": {"name": ctrl.strategy.name, "signal": ctrl.strategy.signal,
                         "sparsity": {k: float(v) for k, v in ctrl.strategy.sparsity.items()}},
            "level": None if ctrl.level is None else float(ctrl.level),
            "target_level": None if ctrl.target_level is None else float(ctrl.target_level),
            "masks": {name: _pack(~zeros, shapes[name]) for name, zeros in ctrl.planned_zeros.items()},
            "left_dense": dict(ctrl.left_dense),
        }
    scheduler = {"scheduler_state": {k: int(v) for k, v in ctrl.scheduler.get_state().items()},
                 "scheduler_disabled": ctrl.scheduler_disabled, "compression_stage": int(ctrl.compression_stage())}
    return {"builder_state": {ctrl.step.algorithm: builder}, "ctrl_state": {ctrl.step.algorithm: scheduler}}


def _pack(keep: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"shape": list(shape), "bits": np.packbits(keep.astype(bool)).tobytes()}


def _unpack(entry: Mapping[str, Any]) -> torch.Tensor:
    shape = tuple(entry["shape"])
    flat = np.unpackbits(np.frombuffer(entry["bits"], dtype=np.uint8), count=int(np.prod(shape))).astype(bool)
    return torch.from_numpy(flat.reshape(shape).copy())


@dataclass
class Restored:
    """A pruning step's saved state: what ``create_compressed_model`` puts back instead of planning."""

    plan: Plan
    base: Strategy
    strategy: Strategy
    level: float | None
    target_level: float | None
    masks: dict[str, torch.Tensor]
    scheduler_state: dict[str, int]
    scheduler_disabled: bool
    left_dense: dict[str, str]

    def check(self, model: nn.Module, planned: Collection[str]) -> None:
        """The saved masks must cover exactly the weights this model and config plan, shape for shape."""
        if set(self.masks) != set(planned):
            odd = sorted(set(self.masks) ^ set(planned))
            raise ConfigError(f"compression_state: its masks cover other weights than this model and config plan "
                              f"({', '.join(odd[:3])}...); resume with the model and config it was saved with")
        for name, keep in self.masks.items():
            if tuple(keep.shape) != tuple(model.get_parameter(name).shape):
                raise ConfigError(f"compression_state: the mask of {name} is {list(keep.shape)}, the weight "
                                  f"{list(model.get_parameter(name).shape)}; resume with the model it was saved with")
            self.masks[name] = keep.to(model.get_parameter(name).device)


def restored(state: Any, cfg: CompressionConfig) -> Restored | None:
    """Read a state ``get_compression_state()`` returned (None: nothing to restore); every mismatch with
    the config is one line starting ``compression_state:``."""
    if state is None:
        return None
    if not isinstance(state, Mapping) or not isinstance(state.get("builder_state"), Mapping):
        raise ConfigError(f"compression_state: expected the dict ctrl.get_compression_state() returned (keys "
                          f"builder_state, ctrl_state), got {type(state).__name__}")
    builder, ctrl_state = state["builder_state"], state.get("ctrl_state", {})
    step = next((s for s in cfg.steps if isinstance(s, PruningStep)), None)
    if step is None and not builder:  # quantization only: the config rebuilds it, the weights hold the ranges
        return None
    if step is None or step.algorithm not in builder:
        saved = ", ".join(builder) or "no pruning step"
        raise ConfigError(f"compression_state: saved for {saved}; this config's pruning step is "
                          f"{step.algorithm if step else 'missing'}: resume with the config it was saved with")
    entry, position = builder[step.algorithm], ctrl_state.get(step.algorithm, {})
    if entry.get("format") != FORMAT:
        raise ConfigError(f"compression_state: format {entry.get('format')!r} is not {FORMAT} (saved by another "
                          "version of mm_plugin, or by NNCF itself)")
    if entry["structured"]:
        raise ConfigError("compression_state: filter-pruning options removed channels, which a compression state "
                          "does not restore; reload the pruned model from ctrl.channels.checkpoint (Torch-Pruning's "
                          "format) and fine-tune it without the config")
    if entry["learning"]:
        raise ConfigError("compression_state: saved while the flexhinm step's gradual gates were learning; resume "
                          "from a checkpoint saved after they hardened (past gradual.epochs x steps_per_epoch steps)")
    try:
        plan = Plan.from_dict(entry["plan"])
        saved = entry["strategy"]
        return Restored(plan, plan.strategy(entry["base"]), Strategy(saved["name"], dict(saved["sparsity"]), saved["signal"]),
                        entry["level"], entry["target_level"], {n: _unpack(m) for n, m in entry["masks"].items()},
                        dict(position.get("scheduler_state", {"current_epoch": -1, "current_step": -1})),
                        bool(position.get("scheduler_disabled", False)), dict(entry.get("left_dense", {})))
    except (KeyError, TypeError, ValueError, MMError) as e:
        raise ConfigError(f"compression_state: not a state get_compression_state() wrote ({type(e).__name__}: {e})") from None


def _normal(key: str) -> str:
    while key.startswith(PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_state(model: nn.Module, state_dict_to_load: Mapping[str, torch.Tensor], is_resume: bool = False,
               keys_to_ignore: Collection[str] | None = None) -> int:
    """NNCF 2.x's ``load_state``: load the entries of a checkpoint's state dict that match the model's
    (``module.`` and ``nncf_module.`` prefixes ignored on both sides, shapes equal). ``is_resume``: any
    missing, unexpected or mismatched entry is a one-line error; otherwise they are logged. Returns how
    many entries were loaded."""
    ignore = {_normal(k) for k in keys_to_ignore or ()}
    own = model.state_dict()
    by_name = {_normal(k): k for k in own}
    loaded: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, value in state_dict_to_load.items():
        name = _normal(key)
        if name in ignore:
            continue
        target = by_name.get(name)
        if target is None:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(own[target].shape):
            mismatched.append(f"{key} {list(value.shape)} vs {list(own[target].shape)}")
        else:
            loaded[target] = value
    missing = [k for k in own if k not in loaded and _normal(k) not in ignore]
    problems = "; ".join(f"{what} ({len(keys)}): {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                         for what, keys in (("missing", missing), ("unexpected", unexpected),
                                            ("size mismatched", mismatched)) if keys)
    if problems and is_resume:
        raise ConfigError(f"load_state: the checkpoint does not match the model: {problems}; resume with the model "
                          "and config it was saved with, or pass is_resume=False to load what matches")
    if problems:
        log.warning("load_state: %s", problems)
    model.load_state_dict(loaded, strict=False)
    log.info("load_state: loaded %d/%d entries", len(loaded), len(own))
    return len(loaded)


def reload(ctrl: CompressionController, compression_state: Mapping[str, Any]) -> None:
    """Put a state this controller saved back into it (weights aside): plan, strategy, level, masks and
    the scheduler's position. A scheduler that is disabled now stays disabled."""
    saved = restored(compression_state, ctrl.config)
    if saved is None:
        return
    ctrl.plan, ctrl.base, ctrl.strategy, ctrl.level = saved.plan, saved.base, saved.strategy, saved.level
    ctrl.target_level = saved.target_level
    masking.write(ctrl, {name: keep.to(ctrl.model.get_parameter(name).device) for name, keep in saved.masks.items()})
    ctrl.scheduler.load_state(saved.scheduler_state)
    if saved.scheduler_disabled and not ctrl.scheduler_disabled:
        ctrl.disable_scheduler()
