"""``CompressionController``: what ``create_compressed_model`` returns beside the model, NNCF 2.x's
controller. It holds the compression's state and delegates every job: masks and levels to :mod:`.masking`,
reports to :mod:`.statistics`, strip and export to :mod:`.export`, resuming to :mod:`.state`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_plugin.deploy import ExportReport
from mm_plugin.errors import MMError
from mm_plugin.flexhinm import GradualFlexHiNM
from mm_plugin.planning import CompressionStatistics, Plan, Scheduler, SparsitySchedule, Strategy
from mm_plugin.portfolio.channels import ChannelPruning
from mm_plugin.training import optimizer_groups

from . import export, masking, state, statistics
from .compat import CompressionStage
from .config import CompressionConfig, PruningStep
from .wrapping import mask_hooks


class CompressionController:
    """What ``create_compressed_model`` returns beside the model (the NNCF 2.x controller's role)."""

    def __init__(self, model: nn.Module, config: CompressionConfig, example_inputs: Any) -> None:
        self.model, self.config, self.example_inputs = model, config, example_inputs
        self.plan: Plan | None = None
        self.base: Strategy | None = None  # the plan's strategy that levels are taken from
        self.strategy: Strategy | None = None  # the strategy the masks hold now
        self.level: float | None = None  # the global level the masks hold now (None: as planned, or structured)
        self.target_level: float | None = None  # the level that counts as fully compressed
        self.step: PruningStep | None = None
        self.quantized = False
        self.weights: dict[str, tuple[str, ...]] = {}  # weight -> NNCF metatypes of the ops using it
        self.unplanned: tuple[str, ...] = ()
        self.ignored: tuple[str, ...] = ()
        self.seconds: dict[str, float] = {}
        self.left_dense: dict[str, str] = {}  # FlexHiNM: planned weights it could not give the pattern
        self.flexhinm_result: Any = None
        self.learning: GradualFlexHiNM | None = None  # flexhinm with "gradual": the gates, until harden()
        self.channels: ChannelPruning | None = None  # filter_pruning options: what Torch-Pruning removed
        self.scheduler: Any = Scheduler(None, self.set_sparsity_level)
        self.scheduler_disabled = False
        self.is_distributed = False
        self.calibration: Iterable | None = None  # what the plan's signal reads, kept for re-masking
        self.loss_fn: Callable | None = None
        self.planned_zeros: dict[str, np.ndarray] = {}  # param -> flat bool "must be zero"

    # --- what it is ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The pruning algorithm (``mix_and_match`` or ``flexhinm``), else the config's first algorithm."""
        return self.step.algorithm if self.step is not None else self.config.steps[0].algorithm

    @property
    def notes(self) -> tuple:
        """The config's NNCF 2.x options that are not honoured as NNCF 2.x did (logged when loaded)."""
        return self.config.notes

    @property
    def schedule(self) -> SparsitySchedule | None:
        """The NNCF 2.x gradual schedule (``sparsity_at(epoch)``, ``final_level``), or None: one shot."""
        return self.scheduler.schedule

    def timed(self, what: str, start: float) -> None:
        self.seconds[what] = time.perf_counter() - start

    # --- training -------------------------------------------------------------------------
    def loss(self) -> torch.Tensor:
        """NNCF 2.x's compression loss term: the learned 2:4 gates' penalty while they learn (zero for
        the default pattern gates), otherwise zero: the masks are not trained."""
        return self.learning.penalty() if self.learning is not None else torch.zeros(())

    def param_groups(self) -> list[dict]:
        """Optimizer groups for the compressed model: its weights, then the learned gates' own group
        (their learning rate, no weight decay), e.g. ``torch.optim.AdamW(ctrl.param_groups(), lr=...)``."""
        return optimizer_groups(self.model, (self.learning,) if self.learning is not None else ())

    def harden(self) -> None:
        """End the learned path: every gate's current 2:4 choice becomes a fixed NNCF mask hook. The
        scheduler calls it after the schedule's last step; strip and export call it first."""
        masking.harden(self)

    def set_sparsity_level(self, level: float) -> None:
        """NNCF 2.x's ``set_sparsity_level``: re-mask every planned weight for a new global level (the
        plan's strategy at that level, the core's masks for it, written into the NNCF hooks). Pruned raw
        weights are set to zero, before the new level is scored and after; a weight that comes back
        starts from zero."""
        masking.apply(self, level)

    def distributed(self) -> None:
        """Call once the model is wrapped for distributed training: masks written from now on (and the
        current ones) are rank 0's on every process."""
        self.is_distributed = True
        hooks = mask_hooks(self.model)
        if hooks and torch.distributed.is_available() and torch.distributed.is_initialized():
            masking.write(self, {name: hook.binary_mask.clone() for name, hook in hooks.items()})

    def disable_scheduler(self) -> None:
        """Keep the level as it is: the scheduler goes on counting epochs and steps but re-masks no more."""
        frozen = Scheduler(None, self.set_sparsity_level)
        frozen.load_state(self.scheduler.get_state())
        self.scheduler, self.scheduler_disabled = frozen, True

    # --- how compressed ---------------------------------------------------------------------
    def compression_stage(self) -> CompressionStage:
        """UNCOMPRESSED at level 0, FULLY_COMPRESSED at the target (one-shot, structured, hardened and
        int8-only configs: at once), PARTIALLY_COMPRESSED on the way (and while gradual gates learn)."""
        if self.learning is not None:
            return CompressionStage.PARTIALLY_COMPRESSED
        if self.plan is None or self.level is None or self.target_level is None:
            return CompressionStage.FULLY_COMPRESSED
        if self.level <= 0.0:
            return CompressionStage.UNCOMPRESSED
        if self.level >= self.target_level - 1e-9:
            return CompressionStage.FULLY_COMPRESSED
        return CompressionStage.PARTIALLY_COMPRESSED

    @property
    def compression_rate(self) -> float:
        """The global level the masks hold (structured: the fraction of multiply-adds removed)."""
        if self.plan is None:
            return 0.0
        if self.channels is not None:
            return 1.0 - float(self.channels.record["macs_ratio"])
        return self.level if self.level is not None else self.plan.global_sparsity(self.strategy)

    @compression_rate.setter
    def compression_rate(self, rate: float) -> None:
        """Re-mask at ``rate``, which becomes the level that counts as fully compressed."""
        masking.apply(self, rate, what="compression_rate")
        self.target_level = rate

    @property
    def maximal_compression_rate(self) -> float:
        """The highest global level the plan reaches (its ranges' maximum)."""
        if self.plan is None or self.channels is not None or self.step.algorithm != "mix_and_match":
            return self.compression_rate
        return float(self.plan.reach()[1])

    def statistics(self, quickly_collected_only: bool = False) -> CompressionStatistics:
        """The plan beside what the model computes with, per weight (see :mod:`.statistics`)."""
        return statistics.collect(self, quickly_collected_only)

    # --- strip and export ----------------------------------------------------------------------
    def strip(self, do_copy: bool = True) -> nn.Module:
        """``nncf.strip``: masks baked (``IN_PLACE``); with int8, quantizers become torch FakeQuantize
        (``NATIVE``) after the masks are baked. Learned gates are hardened first."""
        return export.strip(self, do_copy)

    def strip_model(self, model: nn.Module, do_copy: bool = False) -> nn.Module:
        """NNCF 2.x's ``strip_model``: strip the controller's model (``model`` must be it)."""
        if model is not self.model:
            raise MMError("strip_model: pass the model create_compressed_model returned (ctrl.model)")
        return export.strip(self, do_copy)

    def prepare_for_export(self) -> nn.Module:
        """Bake the masks in place; without quantizers the model is unwrapped into a plain ``nn.Module``.
        ``self.model`` is replaced by the result, which is also returned."""
        self.harden()
        self.model = export.ready_for_export(self.model)
        return self.model

    def export(self, path: str | os.PathLike, *, compress_to_fp16: bool = False, verify: bool = True,
               backend_name: str = "openvino") -> ExportReport:
        """Export a stripped copy (``self.model`` is left as it is) with the deployment backend (OpenVINO
        IR by default), then check the file's zeros against the plan."""
        return export.export_ir(self, path, compress_to_fp16=compress_to_fp16, verify=verify,
                                backend_name=backend_name)

    def export_model(self, save_path: str | os.PathLike, save_format: str | None = None,
                     input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                     model_args: tuple | None = None) -> ExportReport:
        """NNCF 2.x's ``export_model``: ONNX (``.onnx``) or OpenVINO IR (``.xml``) by the extension, the
        file's zeros checked against the plan."""
        return export.export_model(self, save_path, save_format, input_names, output_names, model_args)

    def verify_export(self, path: str | os.PathLike, *, verify: bool = True) -> ExportReport:
        """Check a file exported by other means (an ``.xml`` or ``.onnx``) against the plan's zeros."""
        return export.verify_export(self, path, verify=verify)

    # --- resuming --------------------------------------------------------------------------------
    def get_compression_state(self) -> dict[str, Any]:
        """Plain data to save in a checkpoint and give back as ``create_compressed_model(model, config,
        compression_state)``: the plan, the strategy and level, the masks, the scheduler's position."""
        return state.compression_state(self)

    def get_state(self) -> dict[str, Any]:
        """NNCF 2.x's controller state: ``{algorithm: {"scheduler_state": ...}}``."""
        return state.compression_state(self)["ctrl_state"]

    def load_state(self, ctrl_state: dict[str, Any]) -> None:
        """Restore the scheduler's position from :meth:`get_state` (the masks are not changed)."""
        entry = ctrl_state.get(self.name, {})
        if "scheduler_state" in entry:
            self.scheduler.load_state(entry["scheduler_state"])
