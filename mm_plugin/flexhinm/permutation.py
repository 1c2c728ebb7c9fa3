"""Channel permutations that move important weights to where the hybrid pattern keeps them.

A permutation here always acts on ONE channel dimension shared by a producer layer (its output
rows) and one or more consumer layers (their input columns), because that is what can be folded
into a network without changing its function (see ``folding``). Its quality is the importance the
hybrid partition retains, summed over the layers it touches (:meth:`ChannelProblem.objective`).

Three methods share the signature ``method(problem, *, seed=0, effort=1) -> perm`` (``perm[p]`` is
the channel placed at position ``p``) and are registered in :data:`PERMUTATIONS`:

* ``none`` - identity, the baseline of plain N:M pruning;
* ``greedy`` - pairwise channel swaps, each sweep moving every channel to its best swap partner
  (in the spirit of NVIDIA ASP's channel-swap search);
* ``gyro`` - Gyro-Permutation (Yu et al. 2024, FlexHiNM-GP): alternates an *output-channel* step
  (rows of the producer regrouped into tiles, which decides what vector pruning can remove) and an
  *input-channel* step (channels regrouped into groups of 4, which decides what 2:4 keeps). Each
  step **samples** a few channels from every tile/group, **clusters** them with balanced k-means,
  and **assigns** clusters to tiles/groups with the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``); a proposal is kept only if the objective improves.

Deviation from the paper, on purpose: the paper permutes input channels *per tile* and relies on
its own gather kernel. A per-tile order cannot be folded into a dense weight, and TensorRT /
cuSPARSELt need the 2:4 groups to be consecutive in the stored weight, so here one input order per
layer is used. To keep the two steps from undoing each other, the output step moves whole groups
of 4 channels between producer tiles (consumer groups stay intact, so the consumers' value is
unchanged) and the input step only exchanges channels inside a producer tile (tile membership is
unchanged, so the producer's value is unchanged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ValidationError
from ..registry import Registry
from .layout import M, as_rows, row_tile_ids
from .partition import (
    DENSE,
    NM,
    RegionCounts,
    label_vectors,
    nm_only_counts,
    row_vector_values,
    tile_sum,
    vector_values,
)


@dataclass
class LayerTerm:
    """One layer's share of a channel objective: its importance and its region counts."""

    name: str
    score: torch.Tensor  # non-negative, weight-shaped, in the current channel order
    role: str  # "consumer": the channel is its input dim (1); "producer": its output dim (0)
    counts: RegionCounts
    tile_rows: int | None = 64

    def __post_init__(self) -> None:
        if self.role not in ("consumer", "producer"):
            raise ValidationError(f"{self.name}: role must be 'consumer' or 'producer', got {self.role!r}")
        self.score = self.score.detach().float()
        self.tile_ids, self.n_tiles = row_tile_ids(tuple(self.score.shape), self.tile_rows)

    @property
    def dim(self) -> int:
        return 1 if self.role == "consumer" else 0

    def permuted(self, perm: torch.Tensor) -> torch.Tensor:
        return self.score.index_select(self.dim, perm)

    def labels_and_value(self, perm: torch.Tensor) -> tuple[torch.Tensor, float]:
        dense, nm = vector_values(self.permuted(perm), self.tile_ids, self.n_tiles)
        labels, value = label_vectors(dense, nm, self.counts)
        return labels, float(value.sum())

    def value(self, perm: torch.Tensor) -> float:
        return self.labels_and_value(perm)[1]

    @property
    def out_tile(self) -> int:
        o = self.score.shape[0]
        return o if not self.tile_rows or self.tile_rows >= o else int(self.tile_rows)

    @property
    def row_sensitive(self) -> bool:
        """True when reordering this layer's output rows can change what it retains."""
        return self.score.shape[0] > self.out_tile and self.counts.mixed


@dataclass
class ChannelProblem:
    """What one channel permutation must optimize: a producer (or none) and its consumers."""

    size: int
    consumers: list[LayerTerm] = field(default_factory=list)
    producer: LayerTerm | None = None

    def __post_init__(self) -> None:
        for t in self.consumers:
            if t.role != "consumer" or t.score.shape[1] != self.size:
                raise ValidationError(f"{t.name}: not a consumer of a {self.size}-channel dimension")
            if self.size % M:
                raise ValidationError(f"{t.name}: {self.size} input channels are not a multiple of {M}")
        if self.producer is not None and (
            self.producer.role != "producer" or self.producer.score.shape[0] != self.size
        ):
            raise ValidationError(f"{self.producer.name}: not a producer of a {self.size}-channel dimension")

    def consumer_value(self, perm: torch.Tensor) -> float:
        return sum(t.value(perm) for t in self.consumers)

    def producer_value(self, perm: torch.Tensor) -> float:
        return self.producer.value(perm) if self.producer is not None else 0.0

    def objective(self, perm: torch.Tensor) -> float:
        """Importance retained by the hybrid partition over every layer this permutation touches."""
        return self.consumer_value(perm) + self.producer_value(perm)

    @property
    def producer_sensitive(self) -> bool:
        return self.producer is not None and self.producer.row_sensitive

    def blocks(self) -> list[tuple[int, int]]:
        """Position ranges the input step may shuffle within (producer tiles, or everything)."""
        if not self.producer_sensitive:
            return [(0, self.size)]
        t = self.producer.out_tile
        return [(s, min(s + t, self.size)) for s in range(0, self.size, t)]


PermutationMethod = Callable[..., torch.Tensor]


PERMUTATIONS: Registry[PermutationMethod] = Registry("permutation method")


def matrix_problem(
    score: torch.Tensor, counts: RegionCounts | None = None, tile_rows: int | None = None
) -> ChannelProblem:
    """A single layer whose input channels may be permuted freely (its producer ignored).

    The default counts are plain 2:4 everywhere: the setting of NVIDIA ASP's permutation study.
    """
    score = score.detach().float()
    counts = counts or nm_only_counts(score.shape[1] // M)
    return ChannelProblem(score.shape[1], [LayerTerm("matrix", score, "consumer", counts, tile_rows)])


# ------------------------------------------------------------------------------------------------
# machinery the searches share

CHUNK = 1 << 22  # elements per temporary tensor in cost computations (16 MiB of float32)


def single_thread(fn: PermutationMethod) -> PermutationMethod:
    """Run a search on one intra-op thread: its many small tensor ops are 5-10x slower with
    thread hand-offs, above all on a busy machine."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper




class ConsumerState:
    """Consumer rows in the current order with cached per-tile vector values.

    A proposal only touches a few groups of 4 columns, so its value is found by recomputing those
    groups' tile values and relabeling the tiles, not by re-scoring whole weights.
    """

    def __init__(self, problem: ChannelProblem, perm: torch.Tensor) -> None:
        self.terms = problem.consumers
        self.x = [as_rows(t.permuted(perm)).contiguous() for t in self.terms]
        self.d, self.s = [], []
        for t, x in zip(self.terms, self.x):
            dense, nm = row_vector_values(x)
            self.d.append(tile_sum(dense, t.tile_ids, t.n_tiles))
            self.s.append(tile_sum(nm, t.tile_ids, t.n_tiles))
        self.value = self._value(self.d, self.s)
        self._matrix = None
        self._pending = None

    def _value(self, ds, ss) -> float:
        return sum(float(label_vectors(d, s, t.counts)[1].sum()) for t, d, s in zip(self.terms, ds, ss))

    def try_order(self, order: np.ndarray) -> float:
        """Value after reordering positions (``new[:, p] = old[:, order[p]]``); remembered for commit."""
        groups = np.unique(np.nonzero(order != np.arange(order.size))[0] // M)
        cols = torch.from_numpy((groups[:, None] * M + np.arange(M)).reshape(-1))
        src = torch.from_numpy(order)[cols]
        g = torch.from_numpy(groups)
        ds, ss = [], []
        for t, x, d, s in zip(self.terms, self.x, self.d, self.s):
            dense, nm = row_vector_values(x[:, src])
            d2, s2 = d.clone(), s.clone()
            d2[:, g] = tile_sum(dense, t.tile_ids, t.n_tiles)
            s2[:, g] = tile_sum(nm, t.tile_ids, t.n_tiles)
            ds.append(d2)
            ss.append(s2)
        value = self._value(ds, ss)
        self._pending = (order, ds, ss, value)
        return value

    def commit(self) -> None:
        order, self.d, self.s, self.value = self._pending
        idx = torch.from_numpy(order)
        self.x = [x[:, idx] for x in self.x]
        self._matrix = self._pending = None

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacked rows ``X (R, C)`` and per-(row, group) weights of the 2:4 and dense regions."""
        if self._matrix is None:
            ws, wd = [], []
            for t, d, s in zip(self.terms, self.d, self.s):
                lab = label_vectors(d, s, t.counts)[0].long()[t.tile_ids]
                ws.append((lab == NM).float())
                wd.append((lab == DENSE).float())
            self._matrix = (torch.cat(self.x), torch.cat(ws), torch.cat(wd))
        return self._matrix


def row_chunks(rows: int, per_row: int) -> list[slice]:
    step = max(1, CHUNK // max(1, per_row))
    return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]


@PERMUTATIONS.register("none")
def no_permutation(problem: ChannelProblem, *, seed: int = 0, effort: int = 1) -> torch.Tensor:
    """Identity: plain N:M pruning in the model's own channel order."""
    return torch.arange(problem.size)


def permute_layer(
    score: torch.Tensor,
    counts: RegionCounts,
    tile_rows: int | None = 64,
    method: str = "gyro",
    *,
    seed: int = 0,
    effort: int = 1,
    rounds: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-layer analysis with BOTH the output and the input order free (``(row_perm, col_perm, value)``).

    This is the paper's setting, where a gather kernel absorbs the orders; inside a model the output
    order of one layer is the input order of the next, which :func:`flexhinm_sparsify_` handles.
    The output step is Gyro's (``greedy`` and ``none`` leave rows alone, like NVIDIA ASP).
    """
    fn = PERMUTATIONS.get(method)
    rows, cols = torch.arange(score.shape[0]), torch.arange(score.shape[1])
    for r in range(rounds):
        cur = score.index_select(0, rows).index_select(1, cols)
        prod = ChannelProblem(score.shape[0], [], LayerTerm("rows", cur, "producer", counts, tile_rows))
        if prod.producer_sensitive:
            rows = rows[fn(prod, seed=seed + r, effort=effort)]
        cur = score.index_select(0, rows).index_select(1, cols)
        cons = ChannelProblem(score.shape[1], [LayerTerm("cols", cur, "consumer", counts, tile_rows)])
        cols = cols[fn(cons, seed=seed + r, effort=effort)]
    final = LayerTerm(
        "layer", score.index_select(0, rows).index_select(1, cols), "consumer", counts, tile_rows
    )
    return rows, cols, final.value(torch.arange(score.shape[1]))
