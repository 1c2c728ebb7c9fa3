"""Hand-off to NVIDIA 2:4 back ends: validation, ONNX export, and (CUDA only) semi-structured tensors.

Every NVIDIA path (TensorRT ``--sparsity=enable``, cuSPARSELt, ``torch.sparse.to_sparse_semi_structured``)
takes *dense* weights in which every group of 4 consecutive input channels, for each output
channel and kernel position, holds at least 2 zeros. TensorRT only picks its sparse kernels for a
layer whose *whole* weight satisfies that, so a FlexHiNM layer with a dense region stays a dense
GEMM unless it is split; :attr:`NMReport.fully_nm` lists the layers TensorRT can accelerate as is.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UnsupportedModelError, ValidationError
from .layout import M, N, as_groups, nm_ineligibility

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NMLayerReport:
    name: str
    shape: tuple[int, ...]
    groups_checked: int  # groups of m consecutive input channels examined (the 2:4 region if given)
    violations: int  # groups with fewer than m - n zeros
    all_groups_ok: bool  # the whole weight is N:M (what TensorRT needs to use sparse kernels)
    skipped: str | None = None  # why the layer could not be checked

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.violations == 0


@dataclass(frozen=True)
class NMReport:
    n: int
    m: int
    layers: tuple[NMLayerReport, ...]

    @property
    def ok(self) -> bool:
        """No checked layer breaks the pattern in its checked region."""
        return all(r.violations == 0 for r in self.layers if r.skipped is None)

    @property
    def offenders(self) -> list[str]:
        return [r.name for r in self.layers if r.skipped is None and r.violations]

    @property
    def fully_nm(self) -> list[str]:
        return [r.name for r in self.layers if r.skipped is None and r.all_groups_ok]

    def __str__(self) -> str:
        lines = [f"{self.n}:{self.m} check: {'OK' if self.ok else 'FAILED'}"]
        for r in self.layers:
            if r.skipped:
                lines.append(f"  {r.name}: skipped ({r.skipped})")
            else:
                state = (
                    "ok"
                    if not r.violations
                    else f"{r.violations}/{r.groups_checked} groups break {self.n}:{self.m}"
                )
                lines.append(
                    f"  {r.name} {list(r.shape)}: {state}{'' if r.all_groups_ok else ' (has dense groups)'}"
                )
        return "\n".join(lines)


def _check_weight(name: str, w: torch.Tensor, n: int, m: int, region: torch.Tensor | None) -> NMLayerReport:
    shape = tuple(w.shape)
    if w.dim() < 2 or w.shape[1] % m:
        return NMLayerReport(name, shape, 0, 0, False, f"input dimension not a multiple of {m}")
    zeros = (as_groups(w.detach(), m) == 0).sum(-1)  # (rows, groups)
    good = zeros >= m - n
    if region is not None:
        if tuple(region.shape) != shape:
            raise ValidationError(f"region for {name!r} has shape {tuple(region.shape)}, the weight {shape}")
        checked = as_groups(region.to(torch.bool), m).any(-1)
    else:
        checked = torch.ones_like(good)
    return NMLayerReport(name, shape, int(checked.sum()), int((checked & ~good).sum()), bool(good.all()))


def _regions(regions) -> Mapping[str, torch.Tensor] | None:
    if regions is None:
        return None
    return getattr(regions, "nm_regions", regions)  # a FlexHiNMResult or a plain mapping


def _model_weights(
    model: nn.Module, layers: Iterable[str] | None, m: int = M
) -> Iterable[tuple[str, torch.Tensor | None, str | None]]:
    wanted = None if layers is None else {l if l.endswith(".weight") else f"{l}.weight" for l in layers}
    found = set()
    for mod_name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        name = f"{mod_name}.weight" if mod_name else "weight"
        if wanted is not None and name not in wanted:
            continue
        found.add(name)
        reason = nm_ineligibility(module, m, min_groups=1)
        yield name, (None if reason else module.weight), reason
    for missing in sorted((wanted or set()) - found):
        raise ValidationError(f"validate_nm: the model has no Linear/Conv weight {missing!r}")


def _onnx_weights(
    path: Path, layers: Iterable[str] | None
) -> Iterable[tuple[str, torch.Tensor | None, str | None]]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - onnx is an optional extra
        raise UnsupportedModelError(
            "validating an ONNX file needs the 'onnx' package (pip install mm-plugin[nvidia])"
        ) from exc
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    wanted = None if layers is None else set(layers)
    for node in model.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        raw = inits[node.input[1]].name
        w = torch.from_numpy(numpy_helper.to_array(inits[raw]).copy())
        if node.op_type == "Conv":
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            torch_name = raw
            reason = None if groups == 1 else f"grouped convolution (group={groups})"
        else:
            trans_b = (
                next((a.i for a in node.attribute if a.name == "transB"), 0) if node.op_type == "Gemm" else 0
            )
            if not trans_b:
                w = w.t()  # ONNX B is (in, out); torch layout is (out, in)
            # the TorchScript exporter names MatMul weights "onnx::MatMul_..."; use the node's scope
            torch_name = raw
            if raw.startswith("onnx::") and node.name.startswith("/"):
                torch_name = ".".join(p for p in node.name.strip("/").split("/")[:-1]) + ".weight"
            reason = None if w.dim() == 2 else f"{w.dim()}-D MatMul weight"
        if wanted is not None and torch_name not in wanted and raw not in wanted:
            continue
        yield torch_name, (None if reason else w), reason


def validate_nm(
    model_or_onnx_path: nn.Module | str | os.PathLike,
    n: int = N,
    m: int = M,
    layers: Iterable[str] | None = None,
    regions=None,
) -> NMReport:
    """Check the N:M pattern of a model's (or an ONNX file's) Linear / Conv / Gemm / MatMul weights.

    A group is ``m`` consecutive input channels of one output channel and kernel position; it passes
    with at least ``m - n`` zeros. ``regions`` (a :class:`FlexHiNMResult` or ``{name: bool tensor}``)
    restricts the check to each layer's 2:4 region, so a hybrid layer passes when its 2:4 part is
    right (a layer it does not name has none); without it every group is checked. Masked (parametrized) weights are checked as the model
    computes with them. Layers that cannot carry the pattern are listed with the reason.
    """
    if not (0 < n < m):
        raise ValidationError(f"need 0 < n < m, got n={n}, m={m}")
    regions = _regions(regions)
    if isinstance(model_or_onnx_path, nn.Module):
        items = _model_weights(model_or_onnx_path, layers, m)
    else:
        path = Path(model_or_onnx_path)
        if not path.is_file():
            raise ValidationError(f"validate_nm: no ONNX file at {str(path)!r}")
        items = _onnx_weights(path, layers)
    reports = []
    for name, w, reason in items:
        if w is None:
            reports.append(NMLayerReport(name, (), 0, 0, False, reason))
            continue
        # with regions, a layer they do not name has no 2:4 region (the pattern left it dense)
        region = None if regions is None else regions.get(name, torch.zeros(w.shape, dtype=torch.bool))
        reports.append(_check_weight(name, w, n, m, region))
    return NMReport(n, m, tuple(reports))


def plain_copy(model: nn.Module) -> nn.Module:
    """Deep copy with every mask folded into a plain weight; ``model`` itself is left untouched.

    Why not ``bake_masks_(copy.deepcopy(model))``: a deep copy shares the class that
    ``torch.nn.utils.parametrize`` creates per module, and removing the parametrization from the
    copy deletes the ``weight`` property from that shared class, which breaks the original model.
    """
    clone = copy.deepcopy(model)
    for module in list(clone.modules()):
        if not parametrize.is_parametrized(module):
            continue
        values = {attr: getattr(module, attr).detach().clone() for attr in module.parametrizations}
        was_param = {  # the stored tensor(s) under the parametrizations (one, or several for weight_norm)
            attr: any(isinstance(t, nn.Parameter) for t in plist.parameters(recurse=False))
            for attr, plist in module.parametrizations.items()
        }
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]  # parametrize subclasses the original class
        for attr, value in values.items():
            if was_param[attr]:
                module.register_parameter(attr, nn.Parameter(value))
            else:
                module.register_buffer(attr, value)
    return clone


def export_onnx(
    model: nn.Module, example_inputs: Sequence, path: str | os.PathLike, *, opset: int = 17, **kwargs
) -> Path:
    """Export a copy of ``model`` with masks baked into dense weights (the form TensorRT expects).

    Build the engine with ``trtexec --onnx=PATH --sparsity=enable --fp16`` (or
    ``BuilderFlag.SPARSE_WEIGHTS``). The legacy TorchScript exporter is used (no ``onnxscript``
    needed); the dynamo exporter is tried if it fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = plain_copy(model).eval()
    args = tuple(example_inputs)
    try:
        torch.onnx.export(plain, args, str(path), opset_version=opset, dynamo=False, **kwargs)
    except Exception as first:  # noqa: BLE001 - exporter-specific errors; pragma: no cover
        log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter instead", first)
        try:
            torch.onnx.export(plain, args, str(path), opset_version=opset, dynamo=True, **kwargs)
        except Exception as second:  # noqa: BLE001
            raise UnsupportedModelError(f"ONNX export of {type(model).__name__} failed: {second}") from first
    return path


# ------------------------------------------------------------------------------------------------
# CUDA only


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise UnsupportedModelError(f"{what} needs a CUDA device (torch.cuda.is_available() is False)")


def _semi_structured_min_shape(dtype: torch.dtype) -> tuple[int, int]:
    """Smallest weight tile the active semi-structured backend accepts (rows, cols)."""
    try:
        from torch.sparse import SparseSemiStructuredTensor as S
        from torch.sparse.semi_structured import SparseSemiStructuredTensorCUSPARSELT as L
        from torch.sparse.semi_structured import SparseSemiStructuredTensorCUTLASS as C

        cls = C if S._FORCE_CUTLASS else L
        c = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
        return c.sparse_min_rows, c.sparse_min_cols
    except Exception:  # noqa: BLE001 - private API moved: use the strictest fp16 constraint
        return 32, 64


def to_semi_structured_(
    model: nn.Module, layers: Iterable[str] | None = None, dtype: torch.dtype = torch.float16
) -> dict[str, str]:
    """Swap eligible Linear weights for ``torch.sparse.to_sparse_semi_structured`` tensors, in place.

    Bake masks first. A Linear qualifies when it lives on CUDA in ``dtype`` (fp16/bf16), its whole
    weight is 2:4 and both dimensions are multiples of the backend's tile (e.g. 32 x 64 for fp16 on
    cuSPARSELt). Returns ``{layer: "converted" or the reason it was left dense}``.
    """
    _require_cuda("to_semi_structured_")
    from torch.sparse import to_sparse_semi_structured

    if dtype not in (torch.float16, torch.bfloat16):
        raise ValidationError(f"semi-structured sparsity here supports float16/bfloat16, got {dtype}")
    rows_min, cols_min = _semi_structured_min_shape(dtype)
    wanted = None if layers is None else set(layers)
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (wanted is not None and name not in wanted):
            continue
        w = module.weight
        if w.device.type != "cuda" or w.dtype != dtype:
            out[name] = f"weight is {w.dtype} on {w.device}, needs {dtype} on cuda"
        elif w.shape[0] % rows_min or w.shape[1] % cols_min:
            out[name] = f"shape {tuple(w.shape)} is not a multiple of ({rows_min}, {cols_min})"
        elif not _check_weight(name, w, N, M, None).all_groups_ok:
            out[name] = "weight is not 2:4 everywhere"
        else:
            module.weight = nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
            out[name] = "converted"
    return out


def benchmark_matmul(
    m: int = 4096, k: int = 4096, n: int = 4096, dtype: torch.dtype = torch.float16, iters: int = 50
) -> dict[str, float]:
    """Time ``W @ X`` with a dense 2:4-pruned ``W (m x k)`` against its semi-structured form (CUDA)."""
    _require_cuda("benchmark_matmul")
    from torch.sparse import to_sparse_semi_structured

    dev = torch.device("cuda")
    w = torch.randn(m, k, device=dev, dtype=dtype)
    keep = torch.zeros_like(as_groups(w), dtype=torch.bool).scatter_(
        -1, as_groups(w).abs().topk(N, -1).indices, True
    )
    w = w * keep.reshape(m, k)
    x = torch.randn(k, n, device=dev, dtype=dtype)
    ws = to_sparse_semi_structured(w)

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / iters * 1e3

    dense_ms = timed(lambda: torch.mm(w, x))
    sparse_ms = timed(lambda: torch.mm(ws, x))
    max_err = float((torch.mm(w, x) - torch.mm(ws, x)).abs().max())
    return {"m": m, "k": k, "n": n, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
            "speedup": dense_ms / sparse_ms, "max_abs_err": max_err}  # fmt: skip
