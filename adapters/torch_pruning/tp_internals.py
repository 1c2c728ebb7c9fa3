"""Every use of Torch-Pruning internals in this adapter, in one place, for the version it was written for.

Torch-Pruning (TP) keeps these private (a leading underscore) or leaves them undocumented (how ``BasePruner``
turns a ratio into a channel count, and when it reads ``pruning_ratio_dict``). Each helper names what it
relies on; ``integration_tests/test_torch_pruning_internals.py`` checks every one of them against the
installed TP, and fails naming :data:`WRITTEN_FOR` when the version changes (pyproject pins ``<1.7``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch_pruning as tp
from torch import nn

#: The Torch-Pruning release these helpers were written and tested for.
WRITTEN_FOR = "1.6.0"


# --- BasePruner's private group helpers (used to list groups exactly as BasePruner will) -----------
def group_is_prunable(pruner: tp.pruner.BasePruner, group: Any) -> bool:
    """``BasePruner._check_pruning_ratio``: False when a layer of the group cannot lose more channels."""
    return pruner._check_pruning_ratio(group)


def attention_group(pruner: tp.pruner.BasePruner, group: Any) -> tuple[bool, list[nn.Module]]:
    """``BasePruner._is_atten_group``: whether a ``num_heads`` layer is in the group, and those layers."""
    return pruner._is_atten_group(group)


def attention_root(pruner: tp.pruner.BasePruner, group: Any) -> Any:
    """``BasePruner._downstream_node_as_root_if_attention``: the group re-rooted at its downstream
    projection (or None), as BasePruner prunes attention groups."""
    return pruner._downstream_node_as_root_if_attention(group)


def channel_groups(pruner: tp.pruner.BasePruner, group: Any) -> int:
    """``BasePruner._get_channel_groups``: heads (or channel groups) every one of which keeps the same count."""
    return pruner._get_channel_groups(group)


def is_output_op(module: Any) -> bool:
    """Whether a dependency-graph node's module is ``tp.ops._OutputOp`` (the model's output)."""
    return isinstance(module, tp.ops._OutputOp)


# --- how BasePruner turns a ratio into channels ---------------------------------------------------
def ratio_for(kept: int, channels: int) -> float:
    """A ratio at which BasePruner keeps exactly ``kept`` of ``channels`` (per head) in one local scope:
    it keeps ``int(channels * (1 - ratio))`` (``_prune``); with its ``round_to`` it then floors that count
    to a multiple (``_round_to``), so a ``kept`` that is already a multiple survives unchanged."""
    r = (channels - kept) / channels
    while int(channels * (1 - r)) < kept:
        r = float(np.nextafter(r, -1.0))
    return max(r, 0.0)


def stop_rounding(pruner: tp.pruner.BasePruner) -> int | None:
    """Switch a built pruner's own ``round_to`` off and return it. BasePruner reads ``self.round_to`` only
    while pruning (``_prune``), where it rounds a group's *total* width (all heads), so for attention groups
    it can move a count that is already a multiple per head."""
    round_to, pruner.round_to = pruner.round_to, None
    return round_to


# --- when BasePruner reads pruning_ratio_dict -----------------------------------------------------
def pruner_reading_ratio_dict(max_depth: int = 3) -> tp.pruner.BasePruner | None:
    """The pruner whose ``BasePruner.__init__`` is iterating a ``pruning_ratio_dict`` right now, else None.

    Call it from the dict's ``__iter__``. TP 1.6 iterates the dict inside ``BasePruner.__init__`` (also when
    a subclass such as ``GroupNormPruner`` calls it), after it has set ``global_pruning``, ``isomorphic``,
    ``round_to``, ``max_pruning_ratio``, ``iterative_steps`` and ``model`` on the instance; the frame's
    ``self`` is that pruner."""
    getframe = getattr(sys, "_getframe", None)
    if getframe is None:  # not CPython
        return None
    init_code = tp.pruner.BasePruner.__init__.__code__
    frame = getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code is init_code:
            pruner = frame.f_locals.get("self")
            return pruner if isinstance(pruner, tp.pruner.BasePruner) else None
        frame = frame.f_back
    return None
