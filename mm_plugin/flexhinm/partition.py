"""Hybrid partition of one weight into dense (4:4), 2:4 and vector-pruned (0:4) regions.

Definitions (see ``layout`` for how a weight is viewed as rows and groups of 4 input channels):

* a **row tile** is ``tile_rows`` consecutive output channels at one kernel position;
* a **vector** is one group of 4 consecutive input channels across all rows of a row tile,
  i.e. a ``tile_rows x 4`` block. Every vector gets one label:

  - ``DENSE`` (4:4): all weights kept;
  - ``NM`` (2:4): each row keeps its 2 most important weights of the 4;
  - ``PRUNED`` (0:4): the whole vector is removed ("vector pruning").

Every row tile of a layer gets the same counts ``(n_pruned, n_nm, n_dense)`` so that a tiled
kernel has balanced work, and so that with ``tile_rows=None`` a layer simply splits into a 2:4
GEMM, a dense GEMM and dropped input channels. With ``G`` groups per row the layer sparsity is
``(4 n_pruned + 2 n_nm) / (4 G)``; writing ``v = n_pruned / G`` and ``p = n_nm / (G - n_pruned)``
gives the paper's ``p = 2 (t - v) / (1 - v)``. The split is found by a 1-D search over ``v``
(all integer ``n_pruned`` that can meet ``t``), keeping the one that retains most importance.

Label rule for fixed counts (per row tile, exact up to rare ties): vectors with the smallest 2:4
value are pruned (pruning costs what 2:4 would have kept), then among the kept vectors the
``n_dense`` with the largest gain ``dense - 2:4`` stay dense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ValidationError, check_fraction
from .layout import M, N, as_groups, as_rows, from_groups, row_tile_ids

PRUNED, NM, DENSE = 0, 1, 2


@dataclass(frozen=True)
class RegionCounts:
    """Vectors per row tile in each region."""

    n_pruned: int
    n_nm: int
    n_dense: int

    @property
    def n_groups(self) -> int:
        return self.n_pruned + self.n_nm + self.n_dense

    @property
    def sparsity(self) -> float:
        return (M * self.n_pruned + (M - N) * self.n_nm) / (M * self.n_groups)

    @property
    def mixed(self) -> bool:
        """More than one region in use: the row grouping into tiles then matters."""
        return sum(1 for c in (self.n_pruned, self.n_nm, self.n_dense) if c) > 1


@dataclass(frozen=True)
class HybridPartition:
    """Result of :func:`hybrid_partition` for one weight."""

    shape: tuple[int, ...]
    tile_rows: int | None
    target: float
    counts: RegionCounts
    labels: torch.Tensor  # (row tiles, groups) int8: PRUNED / NM / DENSE
    mask: torch.Tensor  # bool, weight-shaped, True = keep
    nm_region: torch.Tensor  # bool, weight-shaped, True = element of a 2:4 vector
    retained: float  # importance kept by ``mask``
    total: float  # importance of the whole weight

    @property
    def sparsity(self) -> float:
        return 1.0 - self.mask.float().mean().item()

    @property
    def vector_fraction(self) -> float:
        """``v``: share of vectors removed whole."""
        return self.counts.n_pruned / self.counts.n_groups

    @property
    def nm_fraction(self) -> float:
        """``p``: share of the surviving vectors that are 2:4."""
        kept = self.counts.n_groups - self.counts.n_pruned
        return self.counts.n_nm / kept if kept else 0.0

    @property
    def retained_fraction(self) -> float:
        return self.retained / self.total if self.total > 0 else 1.0

    def summary(self) -> dict:
        c = self.counts
        return {
            "shape": list(self.shape),
            "target": round(self.target, 6),
            "sparsity": round(self.sparsity, 6),
            "tile_rows": self.tile_rows,
            "vectors_per_tile": {"pruned": c.n_pruned, "nm": c.n_nm, "dense": c.n_dense},
            "v": round(self.vector_fraction, 6),
            "p": round(self.nm_fraction, 6),
            "retained_fraction": round(self.retained_fraction, 6),
        }


def split_candidates(target: float, n_groups: int) -> list[RegionCounts]:
    """Every per-tile split meeting ``target`` (rounded to the nearest half vector)."""
    half = round(2 * target * n_groups)  # 2:4 vectors lose 1 half, pruned ones 2
    return [
        RegionCounts(k_v, half - 2 * k_v, n_groups - k_v - (half - 2 * k_v))
        for k_v in range(max(0, half - n_groups), half // 2 + 1)
    ]


def row_vector_values(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and group of 4 columns: importance kept if dense and if 2:4, ``(rows, groups)`` each."""
    g = rows.float().reshape(rows.shape[0], -1, M)
    return g.sum(-1), g.topk(N, dim=-1).values.sum(-1)


def tile_sum(values: torch.Tensor, tile_ids: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """Sum per-row values ``(rows, groups)`` into row tiles ``(n_tiles, groups)``."""
    return torch.zeros(n_tiles, values.shape[1], dtype=values.dtype).index_add_(0, tile_ids, values)


def vector_values(
    score: torch.Tensor, tile_ids: torch.Tensor, n_tiles: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance each vector keeps if dense and if 2:4, shape ``(row tiles, groups)`` each."""
    dense, nm = row_vector_values(as_rows(score))
    return tile_sum(dense, tile_ids, n_tiles), tile_sum(nm, tile_ids, n_tiles)


def label_vectors(
    dense: torch.Tensor, nm: torch.Tensor, counts: RegionCounts
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``(..., groups)`` and retained value ``(...)`` for fixed counts (rule in module doc).

    Works on any leading batch shape, so permutation search can score many candidate tiles at once.
    """
    labels = torch.full(nm.shape, NM, dtype=torch.int8)
    if counts.n_pruned:
        idx = torch.argsort(nm, dim=-1, stable=True)[..., : counts.n_pruned]
        labels.scatter_(-1, idx, PRUNED)
    if counts.n_dense:
        gain = (dense - nm).masked_fill(labels == PRUNED, float("-inf"))
        idx = gain.topk(counts.n_dense, dim=-1).indices
        labels.scatter_(-1, idx, DENSE)
    value = torch.where(labels == DENSE, dense, torch.where(labels == NM, nm, torch.zeros_like(nm))).sum(-1)
    return labels, value


def search_split(
    dense: torch.Tensor, nm: torch.Tensor, target: float
) -> tuple[RegionCounts, torch.Tensor, float]:
    """1-D search over the vector-pruned share ``v``: the split retaining most importance."""
    best = None
    for counts in split_candidates(target, nm.shape[-1]):
        labels, value = label_vectors(dense, nm, counts)
        total = float(value.sum())
        if best is None or total > best[2] * (1 + 1e-9) + 1e-12:
            best = (counts, labels, total)
    assert best is not None  # split_candidates is never empty for target in [0, 1]
    return best


def masks_from_labels(
    score: torch.Tensor, labels: torch.Tensor, tile_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary keep-mask and 2:4-region mask (both weight-shaped) for given vector labels."""
    g = as_groups(score.float())
    lab = labels.long()[tile_ids]  # (rows, groups)
    top = g.topk(N, dim=-1).indices
    keep_nm = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True)
    keep = torch.where((lab == DENSE)[..., None], True, (lab == NM)[..., None] & keep_nm)
    region = (lab == NM)[..., None].expand_as(keep)
    return from_groups(keep, tuple(score.shape)), from_groups(region, tuple(score.shape))


def check_nm_shape(shape: tuple[int, ...], what: str = "weight") -> None:
    if len(shape) < 2:
        raise ValidationError(f"{what} of shape {tuple(shape)} has no input dimension to group")
    if shape[1] % M:
        raise ValidationError(f"{what} has input dimension {shape[1]}, not a multiple of {M}")


def hybrid_partition(
    score: torch.Tensor,
    target: float,
    tile_rows: int | None = 64,
    counts: RegionCounts | None = None,
) -> HybridPartition:
    """Split one weight into dense / 2:4 / vector-pruned regions meeting ``target`` sparsity.

    ``score`` is a non-negative importance of the weight's shape (``|w|`` or any saliency);
    ``counts`` fixes the split instead of searching it.
    """
    target = check_fraction(target, "target sparsity", upper_inclusive=True)
    shape = tuple(score.shape)
    check_nm_shape(shape)
    tile_ids, n_tiles = row_tile_ids(shape, tile_rows)
    dense, nm = vector_values(score, tile_ids, n_tiles)
    if counts is None:
        counts, labels, retained = search_split(dense, nm, target)
    else:
        if counts.n_groups != nm.shape[1]:
            raise ValidationError(f"counts cover {counts.n_groups} groups but the weight has {nm.shape[1]}")
        labels, value = label_vectors(dense, nm, counts)
        retained = float(value.sum())
    mask, region = masks_from_labels(score, labels, tile_ids)
    return HybridPartition(
        shape=shape,
        tile_rows=tile_rows,
        target=target,
        counts=counts,
        labels=labels,
        mask=mask,
        nm_region=region,
        retained=retained,
        total=float(score.float().sum()),
    )


def achievable_targets(targets: Mapping[str, float], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """Per-layer targets the partition meets exactly, each within one step of the one asked, their weighted
    total as near the asked total as those choices allow.

    A layer of ``I`` input channels splits every row tile the same way, in steps of half a vector: its
    sparsity moves in steps of ``1 / (I / 2)`` (12.5 % for 16 channels). Rounding each layer alone would
    move a global target by up to half a step of every small layer. So every layer starts rounded down, and
    the layers, largest steps first, are rounded up where that leaves a remainder the smaller ones can still
    make up (or brings the total nearer when they cannot)."""
    steps = {n: shapes[n][1] // N for n in targets}  # half-vector steps per row tile
    weight = {n: math.prod(shapes[n]) / steps[n] for n in targets}  # weights one step prunes
    k = {n: math.floor(t * steps[n] + 1e-9) for n, t in targets.items()}
    left = sum(weight[n] * (t * steps[n] - k[n]) for n, t in targets.items())
    order = [n for n in sorted(targets, key=lambda n: -weight[n]) if k[n] < steps[n]]

    def miss(rest: float, room: float) -> float:  # the least |remainder| the smaller layers can leave
        return -rest if rest < 0 else max(0.0, rest - room)

    for i, n in enumerate(order):
        room = sum(weight[m] for m in order[i + 1:])
        if miss(left - weight[n], room) < miss(left, room) - 1e-9:
            k[n] += 1
            left -= weight[n]
    return {n: k[n] / steps[n] for n in targets}


def region_shares(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Shares of all the weights of ``masks`` (keep-masks of hybrid-pruned layers) in each region: ``share_dense``
    (groups of 4 kept whole), ``share_24`` (2:4 groups: what cuSPARSELt / TensorRT run on sparse tensor cores)
    and ``share_vector`` (groups removed whole: a dense kernel skips them by dropping those input channels of
    the tile). Read from the masks alone, so a hardened, learned or one-shot pattern is counted the same way."""
    counts = torch.zeros(3, dtype=torch.long)  # vector-pruned, 2:4, dense weights
    for mask in masks.values():
        kept = as_groups(mask.bool()).sum(-1)  # (rows, groups): 0, 2 or 4 kept per group
        counts += torch.stack([(kept == 0).sum(), ((kept > 0) & (kept < M)).sum(), (kept == M).sum()]) * M
    total = max(1, int(counts.sum()))
    return {"share_dense": int(counts[2]) / total, "share_24": int(counts[1]) / total,
            "share_vector": int(counts[0]) / total}


def nm_only_counts(n_groups: int) -> RegionCounts:
    """Plain 2:4 everywhere (what NVIDIA ASP produces)."""
    return RegionCounts(0, n_groups, 0)
