"""Example inputs from descriptions (shape, type, filler, and the ``forward`` parameter a tensor feeds),
as NNCF's ``input_info`` lists them, put in ``forward``'s positional order."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class InputInfo:
    """One model input, as in NNCF 2.x ``input_info``; ``path`` names it in errors."""

    sample_size: tuple[int, ...]
    type: str = "float"
    filler: str = "ones"
    keyword: str | None = None
    path: str = "input_info"

    @classmethod
    def parse(cls, value: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str = "input_info"
              ) -> tuple[InputInfo, ...]:
        """One input (an object) or several (a list of them), as validated JSON gives them."""
        entries = [(v, f"{path}[{i}]") for i, v in enumerate(value)] if isinstance(value, list) else [(value, path)]
        known = {f.name for f in fields(cls)} - {"path"}
        return tuple(cls(**{k: (tuple(v) if k == "sample_size" else v) for k, v in entry.items() if k in known},
                         path=where) for entry, where in entries)

    def make(self, device: torch.device | str = "cpu") -> torch.Tensor:
        dtype = torch.float32 if self.type == "float" else torch.long
        if self.filler != "random":
            return (torch.ones if self.filler == "ones" else torch.zeros)(self.sample_size, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(0)
        if dtype == torch.long:
            return torch.randint(0, 2, self.sample_size, generator=gen).to(device)
        return torch.randn(self.sample_size, generator=gen).to(device)

    def describe(self) -> str:
        return f"{self.type} {list(self.sample_size)}" + (f" as {self.keyword}=" if self.keyword else "")


def to_numpy(inputs: Any) -> Any:
    """Tensors as numpy arrays, inside any nesting of dicts, lists and tuples (what runtimes take)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.detach().cpu().numpy()
    if isinstance(inputs, Mapping):
        return {k: to_numpy(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return [to_numpy(v) for v in inputs]
    return inputs


def make_inputs(infos: Sequence[InputInfo], device: torch.device | str = "cpu",
                forward: Callable | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The inputs ``infos`` describe, in ``forward``'s positional order (a ``keyword`` input goes to the
    position of its parameter)."""
    tensors = [info.make(device) for info in infos]
    if forward is not None and any(info.keyword for info in infos):
        tensors = _by_position(infos, tensors, forward)
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _by_position(infos: Sequence[InputInfo], tensors: list[torch.Tensor], forward: Callable) -> list[torch.Tensor]:
    params = [p.name for p in inspect.signature(forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    ordered = [t for info, t in zip(infos, tensors) if not info.keyword]
    by_name = {info.keyword: (info, t) for info, t in zip(infos, tensors) if info.keyword}
    for name, (info, _) in by_name.items():
        if name not in params[len(ordered):]:
            taken = " (that position is taken by an input without keyword)" if name in params else ""
            raise ConfigError(f"{info.path}.keyword: {name!r} is not a free positional parameter of forward()"
                              f"{taken}; allowed values: {', '.join(params[len(ordered):]) or 'none'}")
    for name in params[len(ordered):]:
        if name not in by_name:
            break
        ordered.append(by_name.pop(name)[1])
    if by_name:
        info = next(iter(by_name.values()))[0]
        raise ConfigError(f"{info.path}.keyword: {info.keyword!r} comes after {params[len(ordered)]!r} in forward(), "
                          f"which has no input; add an input_info entry for {params[len(ordered)]!r}")
    return ordered
