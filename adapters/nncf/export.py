"""Stripping and exporting a compressed model: ``nncf.strip``, OpenVINO IR or ONNX by the file's extension,
and the file's zeros checked against the plan (through the core's deployment registry; the OpenVINO
backend reads both formats). Also NNCF 2.x's exporter helpers that its samples import
(``get_export_args``, ``count_tensors``, ``generate_input_names_list``), which read ``model.nncf.input_infos``
as 2.x did, with no NNCF internals."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mm_plugin.deploy import ExportReport, backend, check_export, export_checked
from mm_plugin.errors import ConfigError, UnsupportedModelError, one_line

from .compat import FillerInputInfo, attach_interface
from .wrapping import bake_mask_hooks, hook_storage, nncf_hooks, unwrap_model

if TYPE_CHECKING:
    from .controller import CompressionController

#: The ONNX opset NNCF 2.x exported with by default.
ONNX_OPSET = 13


def strip(ctrl: CompressionController, do_copy: bool = True) -> nn.Module:
    """``nncf.strip``: masks baked into the weights (``StripFormat.IN_PLACE``); with int8, quantizers become
    native torch FakeQuantize (``StripFormat.NATIVE``) after the masks are baked."""
    import nncf

    ctrl.harden()
    model = copy.deepcopy(ctrl.model) if do_copy else ctrl.model
    if hook_storage(model) is None:
        return model
    if any(not is_mask for *_, is_mask in nncf_hooks(model)):
        bake_mask_hooks(model)
        model = nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.NATIVE, example_input=ctrl.example_inputs)
    else:
        model = nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE)
    attach_interface(model, ctrl.config.raw)
    return model


def ready_for_export(model: nn.Module) -> nn.Module:
    """In place: masks baked; then a plain module (pruning only) or, with int8, the NNCF model whose
    quantizer hooks ``openvino.convert_model`` turns into FakeQuantize ops (NNCF's own export path)."""
    import nncf

    if hook_storage(model) is None:
        return model
    if any(not is_mask for *_, is_mask in nncf_hooks(model)):
        bake_mask_hooks(model)
        return model
    return unwrap_model(nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE))


def export_ir(ctrl: CompressionController, path: str | os.PathLike, *, compress_to_fp16: bool = False,
              verify: bool = True, backend_name: str = "openvino") -> ExportReport:
    """A stripped copy exported with the deployment backend (OpenVINO IR by default), its zeros checked."""
    ctrl.harden()
    t = time.perf_counter()
    model = ready_for_export(copy.deepcopy(ctrl.model))
    ctrl.timed("strip", t)
    report = export_checked(model, ctrl.example_inputs, path, ctrl.planned_zeros, backend_name=backend_name,
                            compress_to_fp16=compress_to_fp16, verify=verify, quantized=ctrl.quantized,
                            seconds={"strip": ctrl.seconds["strip"]})
    ctrl.seconds.update(report.seconds)
    return report


def export_model(ctrl: CompressionController, save_path: str | os.PathLike, save_format: str | None = None,
                 input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                 model_args: tuple | None = None) -> ExportReport:
    """NNCF 2.x's ``ctrl.export_model``: ``.onnx`` (or ``save_format`` ``onnx`` / ``onnx_<opset>``) through
    torch's TorchScript ONNX exporter, ``.xml`` (or ``openvino``) as OpenVINO IR; then the file's zeros
    are checked against the plan."""
    path = Path(save_path)
    kind, opset = _format(save_format, path)
    if kind == "openvino":
        if input_names or output_names or model_args:
            raise ConfigError("export_model: input_names, output_names and model_args apply to ONNX files; the IR "
                              "takes the example inputs from input_info")
        return export_ir(ctrl, path)
    ctrl.harden()
    t = time.perf_counter()
    model = ready_for_export(copy.deepcopy(ctrl.model)).eval().cpu()
    ctrl.timed("strip", t)
    args = _onnx_args(ctrl.example_inputs, model_args)
    names = list(input_names) if input_names is not None else generate_input_names_list(count_tensors(args))
    t = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            outputs = output_names if output_names is not None else generate_output_names_list(
                count_tensors(model(*args[:-1], **args[-1])))
            torch.onnx.export(model, args, str(path), input_names=names, output_names=list(outputs),
                              opset_version=opset, dynamo=False)
    except Exception as e:
        raise UnsupportedModelError(f"export to {path}: torch.onnx.export failed: {one_line(e)}") from e
    ctrl.timed("convert", t)
    return verify_export(ctrl, path)


def verify_export(ctrl: CompressionController, path: str | os.PathLike, *, verify: bool = True) -> ExportReport:
    """Check any exported file (OpenVINO IR or ONNX, e.g. written by the script's own exporter) against
    the plan: every planned zero must be a zero of its weight constant."""
    t = time.perf_counter()
    constants = backend("openvino").weight_constants(Path(path))
    ctrl.timed("verify", t)
    return check_export(Path(path), constants, ctrl.planned_zeros, verify=verify, quantized=ctrl.quantized,
                        seconds={k: ctrl.seconds[k] for k in ("strip", "convert", "verify") if k in ctrl.seconds})


def _format(save_format: str | None, path: Path) -> tuple[str, int]:
    fmt = save_format or {".onnx": "onnx", ".xml": "openvino"}.get(path.suffix.lower())
    if fmt == "openvino":
        return "openvino", 0
    if fmt is not None and fmt.startswith("onnx"):
        opset = fmt.partition("_")[2]
        if opset and not opset.isdigit():
            raise ConfigError(f"export_model: save_format {save_format!r}: expected 'onnx' or 'onnx_<opset>'")
        return "onnx", int(opset) if opset else ONNX_OPSET
    raise ConfigError(f"export_model: {path.name}: the file must end in .xml (OpenVINO IR) or .onnx, or pass "
                      "save_format='openvino' / 'onnx' / 'onnx_<opset>'")


def _onnx_args(example_inputs: Any, model_args: tuple | None) -> tuple:
    """``(*positional, {keywords})``, torch.onnx.export's form: the example inputs, then ``model_args`` in
    NNCF 2.x's form (positional values, then a dict of keyword values)."""
    args = list(example_inputs) if isinstance(example_inputs, tuple) else [example_inputs]
    kwargs: dict[str, Any] = {}
    if model_args is not None:
        args += list(model_args[:-1])
        kwargs.update(model_args[-1])
    return (*args, kwargs)


# --- NNCF 2.x's exporter helpers (``nncf.torch.exporter``), for scripts that export on their own -------
def generate_input_names_list(num_inputs: int) -> list[str]:
    return [f"input.{i}" for i in range(num_inputs)]


def generate_output_names_list(num_outputs: int) -> list[str]:
    return [f"output.{i}" for i in range(num_outputs)]


def count_tensors(obj: Any) -> int:
    """Tensors inside any nesting of tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, Mapping):
        return sum(count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(count_tensors(v) for v in obj)
    return 0


def get_export_args(model: nn.Module, model_args: tuple | None = None, device: str | None = None) -> tuple:
    """``(*positional, {keywords})`` for ``torch.onnx.export``: one-sample tensors built from the
    ``input_info`` of a model that ``create_compressed_model`` (or ``ctrl.strip()``) returned, then
    ``model_args``."""
    infos = getattr(getattr(model, "nncf", None), "input_infos", None)
    if not isinstance(infos, FillerInputInfo):
        raise ConfigError(f"get_export_args: {type(model).__name__} has no model.nncf.input_infos; pass the model "
                          "create_compressed_model or ctrl.strip() returned")
    args, kwargs = infos.get_forward_inputs(device)
    if model_args is not None:
        args = (*args, *model_args[:-1])
        kwargs.update(model_args[-1])
    one = lambda x: x[0:1] if isinstance(x, torch.Tensor) else x
    return (*(one(a) for a in args), {k: one(v) for k, v in kwargs.items()})
