"""NNCF adapter: ``"algorithm": "mix_and_match"`` (or ``"flexhinm"``) in NNCF-style JSON configs, down
to OpenVINO IR, and the NNCF 2.x training-script surface around it.

NNCF 3.x dropped the 2.x JSON config, ``create_compressed_model`` and the helpers its samples import;
this adapter gives NNCF users that experience back on NNCF 3.4's own machinery::

    from mm_plugin.adapters.nncf import create_compressed_model

    ctrl, model = create_compressed_model(model, {
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "compression": {"algorithm": "mix_and_match", "strategy": "balanced", "target_sparsity": 0.5},
    })
    print(ctrl.statistics())          # per-layer plan vs. NNCF's own pruning_statistic
    ctrl.export("out/model.xml")      # nncf.strip -> OpenVINO IR, zeros checked

NNCF 2.x configs run as they are once their algorithm is renamed ``mix_and_match``: :mod:`.legacy`
reads their options (schedules, filter pruning, accuracy-aware training), :mod:`.scopes` their scope
strings. NNCF 2.x training scripts run once their ``from nncf... import`` lines import these names
instead (docs/nncf.md, "NNCF 2.x training scripts").

Modules, one job each: :mod:`.config` validates configs against ``schema.json``; :mod:`.create` is
``create_compressed_model``; :mod:`.pruning` and :mod:`.quantization` apply the steps; :mod:`.controller`
is the controller, which delegates to :mod:`.masking` (masks, levels), :mod:`.statistics`, :mod:`.export`
and :mod:`.state` (resuming); :mod:`.compat` holds NNCF 2.x's script helpers, :mod:`.accuracy_aware` its
accuracy-aware loops; :mod:`.wrapping` is the only module that touches NNCF internals; :mod:`.cli` is
``mm-prune nncf``.
"""

from mm_plugin.config_schema import strip_comments
from mm_plugin.deploy import ExportReport
from mm_plugin.planning import CompressionStatistics, LayerStatistic, Scheduler, SparsitySchedule

from .accuracy_aware import (
    AdaptiveCompressionTrainingLoop,
    EarlyExitCompressionTrainingLoop,
    TrainingLoopStatistics,
    Trial,
    create_accuracy_aware_training_loop,
)
from .cli import add_cli, run_cli
from .compat import (
    QUANTIZATION_BITS,
    BNAdaptationInitArgs,
    CompressionStage,
    ExecutionParameters,
    FillerInputInfo,
    HWConfigType,
    ModelEvaluationArgs,
    NNCFConfig,
    NNCFExtraConfigStruct,
    QuantizationPrecisionInitArgs,
    QuantizationRangeInitArgs,
    default_criterion_fn,
    get_rank,
    get_world_size,
    is_accuracy_aware_training,
    is_dist_avail_and_initialized,
    is_main_process,
    manual_seed,
    register_default_init_args,
    safe_thread_call,
)
from .config import CompressionConfig, load_config, schema
from .controller import CompressionController
from .create import create_compressed_model
from .export import count_tensors, generate_input_names_list, generate_output_names_list, get_export_args
from .state import load_state
from .statistics import prepare_for_tensorboard
from .wrapping import unwrap_model

#: NNCF 2.x's name of the controller type (``nncf.api.compression.CompressionAlgorithmController``).
CompressionAlgorithmController = CompressionController

__all__ = [
    "QUANTIZATION_BITS",
    "AdaptiveCompressionTrainingLoop",
    "BNAdaptationInitArgs",
    "CompressionAlgorithmController",
    "CompressionConfig",
    "CompressionController",
    "CompressionStage",
    "CompressionStatistics",
    "EarlyExitCompressionTrainingLoop",
    "ExecutionParameters",
    "ExportReport",
    "FillerInputInfo",
    "HWConfigType",
    "LayerStatistic",
    "ModelEvaluationArgs",
    "NNCFConfig",
    "NNCFExtraConfigStruct",
    "QuantizationPrecisionInitArgs",
    "QuantizationRangeInitArgs",
    "Scheduler",
    "SparsitySchedule",
    "TrainingLoopStatistics",
    "Trial",
    "add_cli",
    "count_tensors",
    "create_accuracy_aware_training_loop",
    "create_compressed_model",
    "default_criterion_fn",
    "generate_input_names_list",
    "generate_output_names_list",
    "get_export_args",
    "get_rank",
    "get_world_size",
    "is_accuracy_aware_training",
    "is_dist_avail_and_initialized",
    "is_main_process",
    "load_config",
    "load_state",
    "manual_seed",
    "prepare_for_tensorboard",
    "register_default_init_args",
    "run_cli",
    "safe_thread_call",
    "schema",
    "strip_comments",
    "unwrap_model",
]
