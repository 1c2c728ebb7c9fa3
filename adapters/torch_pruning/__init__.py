"""Structured Mix-and-Match over Torch-Pruning dependency groups.

Torch-Pruning (TP) removes whole channels, which is what speeds up OpenVINO on CPUs without AMX. This
adapter turns TP's dependency groups into core units (:mod:`.groups`), so the core's engine plans them,
and turns a plan into TP's ``pruning_ratio_dict`` and pruner calls (:mod:`.pruner`); :mod:`.timm_support`
makes TP handle timm ViT and Swin, :mod:`.pattern` is the runner's ``structured`` pattern, and
:mod:`.tp_internals` holds every use of TP's internals (written for TP 1.6.0). Two ways in, both one-line
changes to an existing TP script::

    pruner = tp.pruner.BasePruner(model, x, imp, ignored_layers=ignored,
        pruning_ratio_dict=MixAndMatchScheduler("balanced").ratio_dict(model, x, ignored))
    pruner = MixAndMatchPruner(model, x, imp, ignored_layers=ignored, strategy="balanced")
"""

try:
    import torch_pruning  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mm_plugin.adapters.torch_pruning needs Torch-Pruning: pip install 'mm-plugin[torch-pruning]'"
    ) from e

from mm_plugin.model import update_attention_
from mm_plugin.planning import ChannelReport, GroupRow

from .groups import (
    CALIBRATED_IMPORTANCES,
    DATA_FREE_IMPORTANCES,
    DEFAULT_GROUP_TARGETS,
    IMPORTANCES,
    find_groups,
    plan_groups,
    signal_importance,
)
from .pattern import StructuredPattern, macs_of
from .pruner import (
    MixAndMatchPruner,
    MixAndMatchScheduler,
    channel_report,
    kept_channels,
    load_pruned,
    prune_baseline,
    prune_structured,
    ratio_dict,
    save_pruned,
)
from .timm_support import PatchMergingPruner, tp_support

__all__ = [
    "CALIBRATED_IMPORTANCES", "DATA_FREE_IMPORTANCES", "DEFAULT_GROUP_TARGETS", "IMPORTANCES", "ChannelReport",
    "GroupRow", "MixAndMatchPruner", "MixAndMatchScheduler", "PatchMergingPruner", "StructuredPattern",
    "channel_report", "find_groups", "kept_channels", "load_pruned", "macs_of", "plan_groups", "prune_baseline",
    "prune_structured", "ratio_dict", "save_pruned", "signal_importance", "tp_support", "update_attention_",
]
