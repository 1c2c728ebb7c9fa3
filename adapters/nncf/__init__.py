"""NNCF adapter: ``"algorithm": "mix_and_match"`` (or ``"flexhinm"``) in NNCF-style JSON configs, down
to OpenVINO IR.

NNCF 3.x dropped the 2.x JSON config and ``create_compressed_model``; this adapter gives NNCF users that
experience back on NNCF 3.4's own machinery::

    from mm_plugin.adapters.nncf import create_compressed_model

    ctrl, model = create_compressed_model(model, {
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "compression": {"algorithm": "mix_and_match", "strategy": "balanced", "target_sparsity": 0.5},
    })
    print(ctrl.statistics())          # per-layer plan vs. NNCF's own pruning_statistic
    ctrl.export("out/model.xml")      # nncf.strip -> OpenVINO IR, zeros checked

NNCF 2.x configs run as they are once their algorithm is renamed ``mix_and_match``: :mod:`.legacy`
reads their options (schedules, filter pruning), :mod:`.scopes` their scope strings.

:mod:`.config` validates configs against ``schema.json``; :mod:`.algorithm` turns one into the core's
plan and masks as NNCF hooks (:mod:`.structured`: channels removed through the structured pattern;
``ctrl.scheduler``: NNCF 2.x's gradual schedules, driven by the core's :class:`~mm_plugin.planning.Scheduler`); :mod:`.cli` is ``mm-prune nncf``.
"""

from mm_plugin.config_schema import strip_comments
from mm_plugin.planning import CompressionStatistics, LayerStatistic, Scheduler, SparsitySchedule

from .algorithm import CompressionController, ExportReport, create_compressed_model, unwrap_model
from .cli import add_cli, run_cli
from .config import CompressionConfig, load_config, schema

__all__ = [
    "CompressionConfig",
    "CompressionController",
    "CompressionStatistics",
    "ExportReport",
    "LayerStatistic",
    "Scheduler",
    "SparsitySchedule",
    "add_cli",
    "create_compressed_model",
    "load_config",
    "run_cli",
    "schema",
    "strip_comments",
    "unwrap_model",
]
