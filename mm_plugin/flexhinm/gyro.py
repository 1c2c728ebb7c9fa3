"""The permutation searches: Gyro-Permutation (sample, balanced k-means, Hungarian assignment) and the
greedy channel-swap search, registered in :data:`~.permutation.PERMUTATIONS` (see that module)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ValidationError
from .layout import M, N, as_rows
from .partition import DENSE, NM, label_vectors, row_vector_values, tile_sum
from .permutation import PERMUTATIONS, ChannelProblem, LayerTerm, PermutationMethod

_CHUNK = 1 << 22  # elements per temporary tensor in cost computations (16 MiB of float32)


def _one_thread(fn: PermutationMethod) -> PermutationMethod:
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




class _Consumers:
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


def _chunks(rows: int, per_row: int) -> list[slice]:
    step = max(1, _CHUNK // max(1, per_row))
    return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]


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
        for sl in _chunks(r, k * k):
            cost += (w_s[sl, :, None] * torch.relu(cv[sl, None, :] - b[sl, :, None])).sum(0)
    else:  # n_ext == 2: top-2 of two sorted pairs (a >= b) and (c >= d)
        a, b = rem_sorted[..., 0], rem_sorted[..., 1]
        cs = cvals.sort(dim=-1, descending=True).values
        c, d = cs[..., 0], cs[..., 1]
        for sl in _chunks(r, k * k):
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
    state = _Consumers(problem, perm)
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
# the three methods


@PERMUTATIONS.register("gyro")
@_one_thread
def gyro_permutation(problem: ChannelProblem, *, seed: int = 0, effort: int = 1) -> torch.Tensor:
    """Gyro-Permutation: alternate output- and input-channel steps until neither improves."""
    rng = np.random.default_rng(seed)
    perm = torch.arange(problem.size)
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


@PERMUTATIONS.register("greedy")
@_one_thread
def greedy_permutation(problem: ChannelProblem, *, seed: int = 0, effort: int = 1) -> torch.Tensor:
    """Greedy channel swaps: each sweep moves every channel to its best swap partner (if it helps).

    Gains are exact for the current vector labels; labels are refreshed after every sweep and the
    sweep is kept only if the true objective improved. Only input-channel swaps are searched (like
    ASP), inside the same blocks as Gyro's input step.
    """
    rng = np.random.default_rng(seed)
    perm = torch.arange(problem.size)
    if not problem.consumers:
        return perm
    value = problem.consumer_value(perm)
    for _ in range(2 * effort):
        x, ws, wd = _Consumers(problem, perm).matrix()
        order = _greedy_sweep(x.clone(), ws, wd, problem.blocks(), rng)
        cand = perm[torch.from_numpy(order)]
        v = problem.consumer_value(cand)
        if v > value * (1 + 1e-9) + 1e-12:
            perm, value = cand, v
        else:
            break
    return perm


def _group_parts(xg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every (row, group, slot): largest, 2nd largest and sum of the group's OTHER 3 entries."""
    others = torch.stack([xg[..., [j for j in range(M) if j != q]] for q in range(M)], dim=2)  # (R,G,4,3)
    srt = others.sort(dim=-1, descending=True).values
    return srt[..., 0], srt[..., 1], others.sum(-1)


def _greedy_sweep(
    x: torch.Tensor,
    ws: torch.Tensor,
    wd: torch.Tensor,
    blocks: Sequence[tuple[int, int]],
    rng: np.random.Generator,
) -> np.ndarray:
    r, c = x.shape
    g = c // M
    order = np.arange(c)
    xg = x.view(r, g, M)
    t1, t2, t3 = _group_parts(xg)

    def group_value(idx: list[int]) -> torch.Tensor:
        sub = xg[:, idx]
        top2 = sub.topk(N, dim=-1).values.sum(-1)
        return (ws[:, idx] * top2 + wd[:, idx] * sub.sum(-1)).sum(0)

    val = group_value(list(range(g)))
    ws_pos, wd_pos = ws.repeat_interleave(M, dim=1), wd.repeat_interleave(M, dim=1)
    scale = float(val.abs().sum()) or 1.0
    for i in rng.permutation(c):
        blk = next(b for b in blocks if b[0] <= i < b[1])
        s, e = blk[0], blk[0] + ((blk[1] - blk[0]) // M) * M
        if i >= e:
            continue
        a, qi = i // M, i % M
        cols = x[:, s:e]
        xi = x[:, i : i + 1]
        gain_in = (ws[:, a : a + 1] * (t1[:, a, qi, None] + torch.maximum(t2[:, a, qi, None], cols))).sum(0)
        gain_in += (wd[:, a : a + 1] * (t3[:, a, qi, None] + cols)).sum(0)
        t1f, t2f, t3f = (t.reshape(r, c)[:, s:e] for t in (t1, t2, t3))
        gain_out = (ws_pos[:, s:e] * (t1f + torch.maximum(t2f, xi))).sum(0)
        gain_out += (wd_pos[:, s:e] * (t3f + xi)).sum(0)
        groups = torch.arange(s, e) // M
        gain = gain_in + gain_out - val[a] - val[groups]
        gain[groups == a] = float("-inf")
        j = int(torch.argmax(gain)) + s
        if float(gain[j - s]) <= 1e-7 * scale / g:
            continue
        b = j // M
        x[:, [i, j]] = x[:, [j, i]]
        order[[i, j]] = order[[j, i]]
        p1, p2, p3 = _group_parts(xg[:, [a, b]])
        t1[:, [a, b]], t2[:, [a, b]], t3[:, [a, b]] = p1, p2, p3
        val[[a, b]] = group_value([a, b])
    return order
