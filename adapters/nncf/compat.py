"""NNCF 2.x's helpers for training scripts, which NNCF 3.x removed: the config object, the init
arguments, the compression stage, the distributed and seeding utilities and the input description that
2.x samples import (``examples/torch/classification/main.py`` and ``examples/torch/common/`` of NNCF
2.14). Written here, not copied: same names, same call conventions, the plugin's validation.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mm_plugin.config_schema import read_json
from mm_plugin.errors import ConfigError
from mm_plugin.model import InputInfo

from .config import CompressionConfig, load_config, schema

#: NNCF 2.x's default quantizer width (``nncf.config.schemata.defaults.QUANTIZATION_BITS``), read by its samples.
QUANTIZATION_BITS = 8
#: Batches of the init loader that the gradient signals read (``register_default_init_args``'s loader is
#: usually the whole training set; NNCF 2.x's initializers read a few batches of it too).
GRADIENT_BATCHES = 8


class CompressionStage(IntEnum):
    """How far the compression has got (NNCF 2.x's ``nncf.api.compression.CompressionStage``): compare
    it every epoch to decide which checkpoint is best."""

    UNCOMPRESSED = 0
    PARTIALLY_COMPRESSED = 1
    FULLY_COMPRESSED = 2

    def __add__(self, other: CompressionStage) -> CompressionStage:  # two algorithms' common stage
        return self if self == other else CompressionStage.PARTIALLY_COMPRESSED


class HWConfigType(Enum):
    """The target devices NNCF 2.x's samples offer on ``--target-device``."""

    CPU = "CPU"
    GPU = "GPU"
    NPU = "NPU"


# --- the config and its extra structures ------------------------------------------------------
class NNCFExtraConfigStruct:
    """A non-JSON object a script attaches to the config (data loaders, callbacks), found by its id."""

    ID: ClassVar[str] = ""

    @classmethod
    def get_id(cls) -> str:
        if not cls.ID:
            raise NotImplementedError(f"{cls.__name__} names no ID")
        return cls.ID


@dataclass
class _LoaderArgs(NNCFExtraConfigStruct):
    data_loader: Iterable
    device: str | None = None


class QuantizationRangeInitArgs(_LoaderArgs):
    ID: ClassVar[str] = "quantization_range_init_args"


class BNAdaptationInitArgs(_LoaderArgs):
    ID: ClassVar[str] = "bn_adaptation_init_args"


@dataclass
class QuantizationPrecisionInitArgs(NNCFExtraConfigStruct):
    ID: ClassVar[str] = "quantization_precision_init_args"
    criterion_fn: Callable
    criterion: Callable
    data_loader: Iterable
    device: str | None = None


@dataclass
class ModelEvaluationArgs(NNCFExtraConfigStruct):
    ID: ClassVar[str] = "model_evaluation_args"
    eval_fn: Callable


@dataclass
class TrainingInitArgs(NNCFExtraConfigStruct):
    """The training callbacks ``register_default_init_args`` receives (NNCF 2.x gave them to LeGR and
    AutoQ, which the plugin does not run); kept for scripts that read them back."""

    ID: ClassVar[str] = "training_init_args"
    train_steps_fn: Callable | None = None
    validate_fn: Callable | None = None
    val_loader: Iterable | None = None
    autoq_eval_fn: Callable | None = None
    distributed_callbacks: Any = None
    execution_parameters: Any = None
    legr_train_optimizer: Any = None


class NNCFConfig(dict):
    """NNCF 2.x's config object: the JSON config as a dict, validated against the adapter's schema, with
    extra structures (data loaders, callbacks) attached by :func:`register_default_init_args`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extra_structs: dict[str, NNCFExtraConfigStruct] = {}

    @classmethod
    def from_dict(cls, nncf_dict: Mapping[str, Any]) -> NNCFConfig:
        """Validate (one-line ``ConfigError`` naming the JSON path) and copy; the config's notes are
        logged when it compresses a model."""
        cls.validate(nncf_dict)
        return cls(copy.deepcopy(dict(nncf_dict)))

    @classmethod
    def from_json(cls, path: Any) -> NNCFConfig:
        """Load a JSON file (``//`` and ``/* */`` comments and trailing commas allowed, as in 2.x)."""
        return cls.from_dict(read_json(path))

    @staticmethod
    def validate(loaded_json: Mapping[str, Any]) -> CompressionConfig:
        return load_config(loaded_json, log_notes=False)

    @staticmethod
    def schema() -> dict[str, Any]:
        return schema()

    def register_extra_structs(self, struct_list: Iterable[NNCFExtraConfigStruct]) -> None:
        for struct in struct_list:
            if struct.get_id() in self._extra_structs:
                raise ConfigError(f"{struct.get_id()} is already registered on this NNCFConfig "
                                  "(register_default_init_args was called twice)")
            self._extra_structs[struct.get_id()] = struct

    def get_extra_struct(self, struct_cls: type[NNCFExtraConfigStruct]) -> NNCFExtraConfigStruct:
        return self._extra_structs[struct_cls.get_id()]

    def has_extra_struct(self, struct_cls: type[NNCFExtraConfigStruct]) -> bool:
        return struct_cls.get_id() in self._extra_structs

    def get_all_extra_structs(self) -> list[NNCFExtraConfigStruct]:
        return list(self._extra_structs.values())

    def __deepcopy__(self, memo: dict) -> NNCFConfig:
        out = NNCFConfig(copy.deepcopy(dict(self), memo))
        out._extra_structs = dict(self._extra_structs)  # loaders and callbacks are shared, not copied
        return out


def default_criterion_fn(outputs: Any, target: Any, criterion: Callable) -> torch.Tensor:
    return criterion(outputs, target)


def register_default_init_args(
    nncf_config: Mapping[str, Any],
    train_loader: Iterable,
    criterion: Callable | None = None,
    criterion_fn: Callable | None = None,
    train_steps_fn: Callable | None = None,
    validate_fn: Callable | None = None,
    val_loader: Iterable | None = None,
    autoq_eval_fn: Callable | None = None,
    model_eval_fn: Callable | None = None,
    distributed_callbacks: Any = None,
    execution_parameters: Any = None,
    legr_train_optimizer: Any = None,
    device: str | None = None,
) -> NNCFConfig:
    """Attach the data and callbacks ``create_compressed_model`` may need (NNCF 2.x's signature): the
    loader's first batches calibrate gradient signals and int8 ranges, ``criterion`` (through
    ``criterion_fn``) is the gradient signals' loss. Returns the config (an :class:`NNCFConfig`)."""
    config = nncf_config if isinstance(nncf_config, NNCFConfig) else NNCFConfig.from_dict(nncf_config)
    config.register_extra_structs([QuantizationRangeInitArgs(train_loader, device), BNAdaptationInitArgs(train_loader, device)])
    if criterion is not None:
        config.register_extra_structs([QuantizationPrecisionInitArgs(criterion_fn or default_criterion_fn, criterion,
                                                                     train_loader, device)])
    if model_eval_fn is not None:
        config.register_extra_structs([ModelEvaluationArgs(model_eval_fn)])
    config.register_extra_structs([TrainingInitArgs(train_steps_fn, validate_fn, val_loader, autoq_eval_fn,
                                                    distributed_callbacks, execution_parameters, legr_train_optimizer)])
    return config


class InitBatches:
    """The first ``limit`` batches of a loader, read again on every pass (moved to ``device``)."""

    def __init__(self, loader: Iterable, limit: int, device: str | None = None) -> None:
        self.loader, self.limit, self.device = loader, limit, device

    def __iter__(self) -> Iterator[Any]:
        for batch in itertools.islice(iter(self.loader), self.limit):
            yield _to(batch, self.device)


def _to(batch: Any, device: str | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def init_data(config: Any, cfg: CompressionConfig) -> tuple[Iterable | None, Callable | None]:
    """(calibration batches, loss function) from the structures ``register_default_init_args`` attached:
    enough batches for the gradient signals and for ``nncf.quantize``'s ``subset_size``."""
    if not isinstance(config, NNCFConfig) or not config.has_extra_struct(QuantizationRangeInitArgs):
        return None, None
    init = config.get_extra_struct(QuantizationRangeInitArgs)
    batch = getattr(init.data_loader, "batch_size", None) or 1
    limit = max([GRADIENT_BATCHES] + [math.ceil(s.get("subset_size") / batch) for s in cfg.steps
                                      if s.algorithm == "quantization"])
    loss_fn = None
    if config.has_extra_struct(QuantizationPrecisionInitArgs):
        precision = config.get_extra_struct(QuantizationPrecisionInitArgs)
        loss_fn = lambda outputs, targets: precision.criterion_fn(outputs, targets, precision.criterion)
    return InitBatches(init.data_loader, limit, init.device), loss_fn


def is_accuracy_aware_training(nncf_config: Mapping[str, Any]) -> bool:
    return nncf_config.get("accuracy_aware_training") is not None


# --- inputs, as NNCF 2.x described them ---------------------------------------------------------
@dataclass
class FillerInputElement:
    shape: list[int]
    type: str = "float"
    filler: str = "ones"
    keyword: str | None = None

    def get_tensor_for_input(self) -> torch.Tensor:
        return InputInfo(tuple(self.shape), self.type, self.filler, self.keyword).make()


@dataclass
class FillerInputInfo:
    """``input_info`` as a list of elements (``.shape`` as a list), and the forward arguments they make."""

    elements: list[FillerInputElement] = field(default_factory=list)

    @classmethod
    def from_nncf_config(cls, config: Mapping[str, Any]) -> FillerInputInfo:
        if "input_info" not in config:
            raise ConfigError('input_info: is required; describe the model\'s input, e.g. '
                              '"input_info": {"sample_size": [1, 3, 224, 224]}')
        return cls([FillerInputElement(list(i.sample_size), i.type, i.filler, i.keyword)
                    for i in InputInfo.parse(config["input_info"])])

    def get_forward_inputs(self, device: str | torch.device | None = None) -> tuple[tuple, dict[str, torch.Tensor]]:
        args = tuple(e.get_tensor_for_input().to(device or "cpu") for e in self.elements if e.keyword is None)
        kwargs = {e.keyword: e.get_tensor_for_input().to(device or "cpu") for e in self.elements if e.keyword}
        return args, kwargs


class NNCFInterface:
    """``model.nncf`` on a compressed model: what NNCF 2.x scripts read there (``input_infos``)."""

    def __init__(self, input_infos: FillerInputInfo) -> None:
        self.input_infos = input_infos


def attach_interface(model: nn.Module, raw: Mapping[str, Any]) -> None:
    """Give ``model`` (and so its stripped copies) NNCF 2.x's ``model.nncf.input_infos``, unless it has an
    attribute of that name already."""
    existing = model.__dict__.get("nncf")
    if (existing is not None and not isinstance(existing, NNCFInterface)) or "nncf" in model._modules \
            or hasattr(type(model), "nncf"):
        return
    model.nncf = NNCFInterface(FillerInputInfo.from_nncf_config(raw))


@dataclass
class ExecutionParameters:
    cpu_only: bool
    current_gpu: int | None


# --- processes and seeds ------------------------------------------------------------------------
def is_dist_avail_and_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    return torch.distributed.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def safe_thread_call(main_call_fn: Callable[[], Any], after_barrier_call_fn: Callable[[], Any] | None = None) -> Any:
    """Run ``main_call_fn`` on the main process first (e.g. a download), then on the others after a
    barrier (``after_barrier_call_fn`` if given)."""
    if not is_dist_avail_and_initialized():
        return main_call_fn()
    result = main_call_fn() if is_main_process() else None
    torch.distributed.barrier()
    if not is_main_process():
        result = (after_barrier_call_fn or main_call_fn)()
    return result


def manual_seed(seed: int) -> None:
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
