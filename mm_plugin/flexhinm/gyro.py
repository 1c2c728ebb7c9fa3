"""Gyro-Permutation (FlexHiNM-GP): sample, cluster (balanced k-means), assign (Hungarian), registered in
:data:`~.permutation.PERMUTATIONS` (see that module), with a swap polish and bounded-regression escapes."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ValidationError
from .layout import M, as_rows
from .partition import label_vectors, row_vector_values
from .permutation import PERMUTATIONS, ChannelProblem, ConsumerState, LayerTerm, row_chunks, single_thread
from .swaps import descend, escape


def _assign(cost: torch.Tensor) -> np.ndarray:
    """Hungarian assignment maximizing ``cost[slot, item]``; returns the item for each slot."""
    _, cols = linear_sum_assignment(cost.double().numpy(), maximize=True)
    return cols


def balanced_kmeans(x: torch.Tensor, k: int, rng: np.random.Generator, iters: int = 6) -> np.ndarray:
    """Cluster ``x (k*size, d)`` into ``k`` clusters of exactly equal size; returns cluster ids.

    The assignment step is a Hungarian matching of points to ``size`` copies of every centroid,
    which is what keeps the clusters balanced.
    """
    n = x.shape[0]
    if n % k:
        raise ValidationError(f"balanced k-means: {n} points do not split into {k} equal clusters")
    size = n // k
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if size == 1:
        return np.arange(n)
    x = x.double()
    centroids = x[torch.from_numpy(rng.choice(n, k, replace=False))]
    ids = None
    for _ in range(iters):
        dist = torch.cdist(x, centroids).pow(2)
        _, cols = linear_sum_assignment(dist.repeat_interleave(size, dim=1).numpy())
        new = cols // size
        if ids is not None and np.array_equal(new, ids):
            break
        ids = new
        centroids = torch.zeros_like(centroids).index_add_(0, torch.from_numpy(ids), x) / size
    return ids


# ------------------------------------------------------------------------------------------------
# input-channel step: channels -> groups of 4 inside a block


def _input_proposal(
    x: torch.Tensor,
    ws: torch.Tensor,
    wd: torch.Tensor,
    block: tuple[int, int],
    n_ext: int,
    rng: np.random.Generator,
    max_groups: int = 96,
) -> np.ndarray | None:
    """New position order for one block.

    Sample up to ``max_groups`` groups of the block and ``n_ext`` channels from each, cluster the
    sampled channels into sets of ``n_ext`` (balanced k-means), then give every sampled group the
    set that maximizes its value (Hungarian), keeping the group's other channels in place.
    """
    s, e = block
    gb = (e - s) // M
    if gb < 2:
        return None
    sel = np.sort(rng.choice(gb, size=min(gb, max_groups), replace=False))
    k = len(sel)
    r = x.shape[0]
    gsel = torch.from_numpy(s // M + sel)  # absolute group ids (blocks start at multiples of M)
    xg = x.reshape(r, -1, M)[:, gsel]  # (R, k, M)
    slots = np.argsort(rng.random((k, M)), axis=1)
    ext_slots, rem_slots = slots[:, :n_ext], slots[:, n_ext:]
    ar = torch.arange(k)[:, None]
    rem = xg[:, ar, torch.from_numpy(rem_slots)]  # (R, k, M - n_ext)
    ext = xg[:, ar, torch.from_numpy(ext_slots)]  # (R, k, n_ext)
    w_s, w_d = ws[:, gsel], wd[:, gsel]
    ext_pos = (M * (s // M + sel)[:, None] + ext_slots).reshape(-1)  # positions of sampled channels
    feats = ext.reshape(r, k * n_ext)  # item i = (sampled group i // n_ext, slot i % n_ext)
    clusters = balanced_kmeans(feats.t(), k, rng) if n_ext > 1 else np.arange(k)
    members = np.argsort(clusters, kind="stable").reshape(k, n_ext)  # items of each cluster
    cvals = feats[:, torch.from_numpy(members.reshape(-1))].reshape(r, k, n_ext)
    rem_sorted = rem.sort(dim=-1, descending=True).values
    # value of group g holding cluster c, up to a per-group constant (irrelevant to the assignment)
    cost = w_d.t() @ cvals.sum(-1)  # dense vectors: linear in the cluster
    if n_ext == 1:  # top-2 of {a, b, c, x} (a >= b >= c) = a + max(b, x) = a + b + relu(x - b)
        b = rem_sorted[..., 1]
        cv = cvals[..., 0]
        for sl in row_chunks(r, k * k):
            cost += (w_s[sl, :, None] * torch.relu(cv[sl, None, :] - b[sl, :, None])).sum(0)
    else:  # n_ext == 2: top-2 of two sorted pairs (a >= b) and (c >= d)
        a, b = rem_sorted[..., 0], rem_sorted[..., 1]
        cs = cvals.sort(dim=-1, descending=True).values
        c, d = cs[..., 0], cs[..., 1]
        for sl in row_chunks(r, k * k):
            aa, bb = a[sl, :, None], b[sl, :, None]
            cc, dd = c[sl, None, :], d[sl, None, :]
            top2 = torch.maximum(aa, cc) + torch.where(aa >= cc, torch.maximum(bb, cc), torch.maximum(aa, dd))
            cost += (w_s[sl, :, None] * top2).sum(0)
    chosen = _assign(cost)  # chosen[g] = cluster placed into sampled group g
    order = np.arange(x.shape[1])
    dst = ext_pos.reshape(k, n_ext)  # group g keeps its sampled slots, refilled by its cluster
    order[dst.reshape(-1)] = ext_pos[members[chosen].reshape(-1)]
    return order


def _input_step(
    problem: ChannelProblem, perm: torch.Tensor, rng: np.random.Generator, tries: int, patience: int
) -> tuple[torch.Tensor, bool]:
    """Rounds of proposals over every block; a proposal is kept only if the consumers gain."""
    state = ConsumerState(problem, perm)
    blocks = problem.blocks()
    improved, fails = False, 0
    for attempt in range(tries):
        n_ext = 2 if attempt % 4 == 3 else 1  # mostly single moves, a clustered pair move every 4th round
        accepted = False
        for bi in rng.permutation(len(blocks)):
            x, ws, wd = state.matrix()
            order = _input_proposal(x, ws, wd, blocks[bi], n_ext, rng)
            if order is None or np.array_equal(order, np.arange(order.size)):
                continue
            if state.try_order(order) > state.value * (1 + 1e-9) + 1e-12:
                state.commit()
                perm = perm[torch.from_numpy(order)]
                accepted = improved = True
        fails = 0 if accepted else fails + 1
        if fails >= patience:
            break
    return perm, improved


# ------------------------------------------------------------------------------------------------
# output-channel step: units (groups of 4 channels, or single channels) -> producer tiles


class _Producer:
    """Per-unit contributions to the producer's tile values, in the current unit order."""

    def __init__(self, term: LayerTerm, perm: torch.Tensor, unit: int) -> None:
        self.term, self.unit = term, unit
        rows = as_rows(term.permuted(perm))
        c = term.score.shape[0]
        kpos = rows.shape[0] // c
        dense, nm = row_vector_values(rows)  # (c * kpos, G)
        self.d = dense.reshape(c // unit, unit, kpos, -1).sum(1)  # (units, kpos, G)
        self.s = nm.reshape(c // unit, unit, kpos, -1).sum(1)
        self.t_units = term.out_tile // unit
        self.n_full = c // term.out_tile
        self.value = self.value_of(self.d, self.s)

    def tiles(self, d: torch.Tensor) -> torch.Tensor:
        return d[: self.n_full * self.t_units].reshape(self.n_full, self.t_units, *d.shape[1:]).sum(1)

    def value_of(self, d: torch.Tensor, s: torch.Tensor) -> float:
        # the ragged last tile (if any) never changes in this step: leave it out of the comparison
        return float(label_vectors(self.tiles(d), self.tiles(s), self.term.counts)[1].sum())

    def propose(self, n_ext: int, rng: np.random.Generator) -> np.ndarray | None:
        """New unit order: ``n_ext`` sampled units per tile, clustered, clusters assigned to tiles."""
        nf, tu = self.n_full, self.t_units
        if nf < 2 or not 1 <= n_ext <= tu:
            return None
        shape = self.d.shape[1:]
        d_full = self.d[: nf * tu].reshape(nf, tu, *shape)
        s_full = self.s[: nf * tu].reshape(nf, tu, *shape)
        picks = np.argsort(rng.random((nf, tu)), axis=1)[:, :n_ext]
        ar, pk = torch.arange(nf)[:, None], torch.from_numpy(picks)
        ext_d = d_full[ar, pk].reshape(nf * n_ext, *shape)
        ext_s = s_full[ar, pk].reshape(nf * n_ext, *shape)
        rem_d = d_full.sum(1) - d_full[ar, pk].sum(1)
        rem_s = s_full.sum(1) - s_full[ar, pk].sum(1)
        clusters = balanced_kmeans(ext_s.reshape(nf * n_ext, -1), nf, rng) if n_ext > 1 else np.arange(nf)
        members = np.argsort(clusters, kind="stable").reshape(nf, n_ext)
        mt = torch.from_numpy(members)
        cl_d, cl_s = ext_d[mt].sum(1), ext_s[mt].sum(1)  # (clusters, kpos, G)
        # value of tile i holding cluster j: relabel the tile with the producer's counts
        _, val = label_vectors(rem_d[:, None] + cl_d[None], rem_s[:, None] + cl_s[None], self.term.counts)
        chosen = _assign(val.reshape(nf, nf, -1).sum(-1))
        order = np.arange(self.d.shape[0])
        ext_units = (np.arange(nf)[:, None] * tu + picks).reshape(-1)
        order[ext_units] = ext_units[members[chosen].reshape(-1)]
        return order

    def try_commit(self, order: np.ndarray) -> bool:
        idx = torch.from_numpy(order)
        d, s = self.d[idx], self.s[idx]
        v = self.value_of(d, s)
        if v > self.value * (1 + 1e-9) + 1e-12:
            self.d, self.s, self.value = d, s, v
            return True
        return False


def _output_step(
    problem: ChannelProblem, perm: torch.Tensor, rng: np.random.Generator, tries: int, patience: int
) -> tuple[torch.Tensor, bool]:
    """HiNM-style: move ever smaller sets of units between tiles while the producer gains."""
    unit = M if problem.consumers else 1
    state = _Producer(problem.producer, perm, unit)
    unit_perm = np.arange(state.d.shape[0])
    improved = False
    sizes, e = [], state.t_units // 2
    while e >= 1:
        sizes.append(e)
        e //= 2
    for n_ext in sizes:
        fails = 0
        for _ in range(tries):
            order = state.propose(n_ext, rng)
            if order is None:
                break
            if state.try_commit(order):
                unit_perm, improved, fails = unit_perm[order], True, 0
            else:
                fails += 1
                if fails >= patience:
                    break
    channels = torch.from_numpy((unit_perm[:, None] * unit + np.arange(unit)[None, :]).reshape(-1))
    return perm[channels], improved


# ------------------------------------------------------------------------------------------------
# the method


def _alternate(problem: ChannelProblem, perm: torch.Tensor, rng: np.random.Generator, effort: int) -> torch.Tensor:
    """The paper's loop: output- and input-channel steps in turn until neither improves."""
    for _ in range(3 * effort):
        improved = False
        if problem.producer_sensitive:
            perm, imp = _output_step(problem, perm, rng, tries=16 * effort, patience=4 * effort)
            improved |= imp
        if problem.consumers:
            perm, imp = _input_step(problem, perm, rng, tries=48 * effort, patience=8 * effort)
            improved |= imp
        if not improved:
            break
    return perm


@PERMUTATIONS.register("gyro")
@single_thread
def gyro_permutation(problem: ChannelProblem, *, seed: int = 0, effort: int = 1, escapes: int = 12,
                     regression: float = 2e-3) -> torch.Tensor:
    """Gyro-Permutation, then a swap polish and ``escapes * effort`` bounded-regression escapes.

    The sampling/clustering/assignment steps make large moves the swaps cannot, and the swaps settle
    what the sampled proposals leave; each escape perturbs the best order (random swaps losing at most
    ``regression`` of the consumers' value), runs the input step and the polish again, and is kept
    only if it ends better. Swaps stay inside producer tiles, so the producer's value never changes.
    """
    rng = np.random.default_rng(seed)
    perm = _alternate(problem, torch.arange(problem.size), rng, effort)
    if not problem.consumers:
        return perm
    best, best_value = descend(problem, perm, problem.consumer_value(perm), rng)
    for _ in range(escapes * effort):
        cand = escape(problem, best, best_value * regression, rng)
        cand, _ = _input_step(problem, cand, rng, tries=48 * effort, patience=8 * effort)
        cand, value = descend(problem, cand, problem.consumer_value(cand), rng)
        if value > best_value * (1 + 1e-9) + 1e-12:
            best, best_value = cand, value
    return best
