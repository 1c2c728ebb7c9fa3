"""Did the exported file keep the plan's zeros? Weight constants of any exported file (a backend reads
them), matched back to parameters by name or by their zero pattern, and compared zero by zero;
:func:`export_checked` exports with a backend and checks in one call."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportVerificationError, MMError, UnsupportedModelError, one_line
from .backends import backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightConstant:
    """One weight constant of an exported file, with its zero count (zeros of the dequantized value for int8)."""

    name: str  # the constant's name in the file
    tensor_names: tuple[str, ...]
    consumers: tuple[str, ...]  # "<type>:<friendly name>" of the ops that use it as a weight
    shape: tuple[int, ...]
    dtype: str
    numel: int
    zeros: int
    zero_mask: np.ndarray = field(repr=False, compare=False)  # flat bool array, True = zero

    @classmethod
    def of(cls, name: str, values: np.ndarray, shape: Sequence[int], *, zero_points: Sequence[np.ndarray] = (),
           tensor_names: Sequence[str] = (), consumers: Sequence[str] = (), dtype: str = "") -> WeightConstant:
        """From a constant's stored values; with ``zero_points`` (int8 and lower), an entry counts as zero
        when its dequantized value is, i.e. when it equals the sum of the zero points subtracted from it."""
        values = np.asarray(values)
        if zero_points:
            values = values.astype(np.float64) - sum(np.asarray(z, dtype=np.float64) for z in zero_points)
        mask = (values == 0).reshape(-1)
        shape = tuple(int(d) for d in shape)
        return cls(name=name, tensor_names=tuple(tensor_names), consumers=tuple(consumers), shape=shape, dtype=dtype,
                   numel=int(np.prod(shape)), zeros=int(mask.sum()), zero_mask=mask)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("zero_mask")
        d["shape"], d["tensor_names"], d["consumers"] = list(self.shape), list(self.tensor_names), list(self.consumers)
        d["sparsity"] = self.sparsity
        return d


@dataclass(frozen=True)
class ParamMatch:
    """A parameter, the constant that holds it in the file, and how the zeros compare."""

    param: str
    constant: str | None
    by: str  # "name", "zero-pattern" or "none"
    expected_zeros: int
    ir_zeros: int | None
    numel: int
    lost_zeros: int | None  # expected zero positions that are not zero in the file (must be 0)

    @property
    def exact(self) -> bool:
        return self.constant is not None and self.ir_zeros == self.expected_zeros and self.lost_zeros == 0

    @property
    def kept(self) -> bool:
        """Every expected zero is still zero (the file may have more, e.g. int8 rounding)."""
        return self.constant is not None and self.lost_zeros == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exact": self.exact, "kept": self.kept}


def _torch_name(tensor_name: str) -> str:
    return tensor_name.removeprefix("self.")


def _aligned(zero_mask: np.ndarray, shape: tuple[int, ...], expected: np.ndarray) -> np.ndarray | None:
    """The file's zero mask laid out like ``expected`` (same order, or a transposed 2-D matrix)."""
    if zero_mask.size != expected.size:
        return None
    if len(shape) == 2 and expected.ndim == 2 and shape == expected.shape[::-1] and shape[0] != shape[1]:
        return zero_mask.reshape(shape).T.reshape(-1)
    return zero_mask


def match_params(
    constants: Sequence[WeightConstant],
    expected_zero_masks: Mapping[str, torch.Tensor | np.ndarray],
) -> list[ParamMatch]:
    """Find the constant of each parameter and compare zeros.

    ``expected_zero_masks``: ``{param name: bool tensor, True where the weight must be zero}``.
    A constant is matched by tensor name (``self.<param>``) when the exporter kept it, otherwise by
    content: the constant with the same number of elements whose zeros cover the expected ones, the
    one with the fewest extra zeros first (folding BatchNorm renames a weight but keeps its zeros).
    Each constant is used once.
    """
    by_name = {}
    for c in constants:
        for t in c.tensor_names:
            by_name.setdefault(_torch_name(t), c)
    used: set[str] = set()
    results: dict[str, ParamMatch] = {}
    expected = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(bool)
                for k, v in expected_zero_masks.items()}

    def record(param: str, c: WeightConstant | None, by: str) -> None:
        exp = expected[param]
        if c is None:
            results[param] = ParamMatch(param, None, "none", int(exp.sum()), None, int(exp.size), None)
            return
        used.add(c.name)
        ir = _aligned(c.zero_mask, c.shape, exp)
        lost = int((exp.reshape(-1) & ~ir).sum()) if ir is not None else int(exp.sum())
        results[param] = ParamMatch(param, c.name, by, int(exp.sum()), c.zeros, int(exp.size), lost)

    for param, exp in expected.items():
        c = by_name.get(param)
        if c is not None and c.name not in used and c.numel == exp.size:
            record(param, c, "name")
    # content matching, largest tensors first (they have the most distinctive zero patterns)
    for param in sorted((p for p in expected if p not in results), key=lambda p: -expected[p].size):
        exp = expected[param].reshape(-1)
        best, best_extra = None, None
        for c in constants:
            if c.name in used or c.numel != exp.size:
                continue
            ir = _aligned(c.zero_mask, c.shape, expected[param])
            if ir is None or (exp & ~ir).any():
                continue
            extra = int((ir & ~exp).sum())
            if best is None or extra < best_extra:
                best, best_extra = c, extra
                if extra == 0:
                    break
        record(param, best, "zero-pattern" if best is not None else "none")
    return [results[p] for p in expected]


@dataclass(frozen=True)
class ExportReport:
    """An exported file, every weight constant in it, and each planned parameter matched to its constant."""

    path: Any
    matches: tuple[ParamMatch, ...]
    constants: tuple[WeightConstant, ...]
    quantized: bool
    seconds: dict[str, float]

    @property
    def exact(self) -> bool:
        """Every planned weight's constant holds exactly the planned zeros."""
        return all(m.exact for m in self.matches)

    @property
    def kept(self) -> bool:
        """Every planned zero is a zero in the file (int8 rounding may add more)."""
        return all(m.kept for m in self.matches)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "quantized": self.quantized, "exact": self.exact, "kept": self.kept,
                "seconds": self.seconds, "planned_zeros": sum(m.expected_zeros for m in self.matches),
                "zeros_in_planned_constants": sum(m.ir_zeros or 0 for m in self.matches),
                "matches": [m.to_dict() for m in self.matches], "constants": [c.to_dict() for c in self.constants]}


def check_export(path: Any, constants: Sequence[WeightConstant], expected_zero_masks: Mapping[str, Any], *,
                 verify: bool = True, quantized: bool = False, seconds: dict[str, float] | None = None) -> ExportReport:
    """Match every planned parameter to its constant; a planned zero that is not zero in the file raises
    :class:`ExportVerificationError` (``verify=False`` only logs it). Extra zeros (int8 rounding, a folded
    BatchNorm with gamma = 0) are logged, never errors."""
    matches = tuple(match_params(constants, expected_zero_masks))
    report = ExportReport(path, matches, tuple(constants), quantized, dict(seconds or {}))
    lost = [m for m in matches if not m.kept]
    if lost:
        text = "; ".join(f"{m.param}: " + ("no constant found" if m.constant is None else
                                           f"{m.lost_zeros} planned zeros are non-zero in {m.constant}")
                         for m in lost[:5])
        if verify:
            raise ExportVerificationError(f"the exported file {path} does not keep the planned zeros: {text}")
        log.warning("the exported file %s does not keep the planned zeros: %s", path, text)
    extra = [m.param for m in matches if m.kept and not m.exact]
    if extra:
        log.info("%d weights have more zeros in the file than planned (int8 rounding or a folded BatchNorm with "
                 "gamma = 0): %s", len(extra), ", ".join(extra[:5]))
    return report


def export_checked(model: nn.Module, example_inputs: Any, path: str | os.PathLike,
                   expected_zero_masks: Mapping[str, Any], *, backend_name: str = "openvino",
                   compress_to_fp16: bool = False, verify: bool = True, quantized: bool = False,
                   seconds: dict[str, float] | None = None) -> ExportReport:
    """Export ``model`` (masks baked) with a deployment backend, then check the file's zeros
    (:func:`check_export`); the report's ``seconds`` add ``convert`` and ``verify`` to those given."""
    deploy = backend(backend_name)
    seconds = dict(seconds or {})
    start = time.perf_counter()
    try:
        file = deploy.export(model, example_inputs, path, compress_to_fp16=compress_to_fp16)
    except MMError:
        raise
    except Exception as e:
        raise UnsupportedModelError(f"export to {path}: {backend_name} conversion failed: {one_line(e)}") from e
    seconds["convert"] = time.perf_counter() - start
    start = time.perf_counter()
    constants = deploy.weight_constants(file)
    seconds["verify"] = time.perf_counter() - start
    return check_export(file, constants, expected_zero_masks, verify=verify, quantized=quantized, seconds=seconds)
