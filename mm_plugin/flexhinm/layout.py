"""The N:M weight layout NVIDIA's sparse tensor cores expect, in one place.

NVIDIA 2:4 groups are 4 *consecutive input channels* for a fixed output channel and kernel
position. Every FlexHiNM module views a weight through the same lens:

* Linear ``(O, I)`` -> rows ``O``, columns ``I``.
* ConvNd ``(O, I, *k)`` -> rows ``O * prod(k)`` (row ``o * prod(k) + kernel_position``), columns ``I``.

Columns are then cut into groups of ``m`` (``I // m`` groups per row). Output channels are cut into
*tiles* of ``tile_rows`` consecutive channels; a conv row belongs to the tile of its output channel
*and* its kernel position, so each (tile, kernel position) pair is one independent "row tile".
"""

from __future__ import annotations

import math

import torch
from torch import nn

M = 4  # group size of NVIDIA's 2:4 sparsity; the whole subpackage is written for 2:4
N = 2


def kernel_positions(shape: tuple[int, ...]) -> int:
    """Number of kernel positions of a weight of this shape (1 for Linear)."""
    return int(math.prod(shape[2:])) if len(shape) > 2 else 1


def as_rows(w: torch.Tensor) -> torch.Tensor:
    """``(O, I, *k) -> (O * prod(k), I)``: input channels last, so groups of 4 are contiguous."""
    if w.dim() == 2:
        return w
    return w.movedim(1, -1).reshape(-1, w.shape[1])


def from_rows(rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`as_rows` for a weight of ``shape``."""
    if len(shape) == 2:
        return rows.reshape(shape)
    o, i, *k = shape
    return rows.reshape(o, *k, i).movedim(-1, 1).contiguous()


def as_groups(w: torch.Tensor, m: int = M) -> torch.Tensor:
    """``(rows, I // m, m)`` view of a weight (see module docstring)."""
    rows = as_rows(w)
    return rows.reshape(rows.shape[0], rows.shape[1] // m, m)


def from_groups(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return from_rows(g.reshape(g.shape[0], -1), shape)


def row_tile_ids(shape: tuple[int, ...], tile_rows: int | None) -> tuple[torch.Tensor, int]:
    """Row-tile id of every row of :func:`as_rows` and the number of row tiles.

    ``tile_rows=None`` (or >= O) makes the whole layer one tile per kernel position.
    """
    o = shape[0]
    kpos = kernel_positions(shape)
    t = o if not tile_rows or tile_rows >= o else int(tile_rows)
    n_out_tiles = -(-o // t)
    out_tile = torch.arange(o) // t
    ids = (out_tile[:, None] * kpos + torch.arange(kpos)[None, :]).reshape(-1)
    return ids, n_out_tiles * kpos


def in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def nm_ineligibility(module: nn.Module, m: int = M, min_groups: int = 2) -> str | None:
    """Why this module's weight cannot carry an N:M pattern (None when it can).

    Only dense GEMM-shaped weights qualify: Linear and ConvNd with ``groups == 1`` whose input
    dimension is a multiple of ``m`` and holds at least ``min_groups`` groups. Grouped and depthwise
    convolutions are refused because no N:M sparse kernel (cuSPARSELt, TensorRT) runs them.
    """
    if isinstance(module, nn.Linear):
        n_in = module.in_features
    elif isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return "transposed convolution: no N:M kernel for its weight layout"
        if module.groups != 1:
            return f"grouped/depthwise convolution (groups={module.groups}): no N:M sparse kernel"
        n_in = module.in_channels
    else:
        return f"{type(module).__name__} is not a Linear or Conv weight"
    if n_in % m:
        return f"input dimension {n_in} is not a multiple of {m}"
    if n_in // m < min_groups:
        return f"input dimension {n_in} holds fewer than {min_groups} groups of {m}"
    return None
