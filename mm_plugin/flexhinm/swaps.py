"""Channel-swap searches: ``greedy`` (every channel to its best swap partner, sweep after sweep) and
``asp``, NVIDIA ASP-style swaps (Pool & Yu, NeurIPS 2021) that escape local optima by random swaps of
bounded regression; Gyro-Permutation reuses the descent and the escape. Registered in
:data:`~.permutation.PERMUTATIONS`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .layout import M, N
from .permutation import PERMUTATIONS, ChannelProblem, ConsumerState, single_thread


@PERMUTATIONS.register("greedy")
@single_thread
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
        x, ws, wd = ConsumerState(problem, perm).matrix()
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


@PERMUTATIONS.register("asp")
@single_thread
def asp_permutation(problem: ChannelProblem, *, seed: int = 0, effort: int = 1, escapes: int = 12,
                    regression: float = 2e-3) -> torch.Tensor:
    """Channel swaps with bounded-regression escapes (see module doc).

    ``escapes * effort`` escapes are tried; each applies up to ``M`` random swaps whose loss, for the
    current vector labels, is at most ``regression`` of the consumers' value, then sweeps again.
    """
    rng = np.random.default_rng(seed)
    perm = torch.arange(problem.size)
    if not problem.consumers:
        return perm
    best, best_value = perm, problem.consumer_value(perm)
    for attempt in range(escapes * effort + 1):
        perm, value = descend(problem, perm, problem.consumer_value(perm), rng)
        if value > best_value * (1 + 1e-9) + 1e-12:
            best, best_value = perm, value
        if attempt < escapes * effort:
            perm = escape(problem, best, best_value * regression, rng)
    return best


def descend(problem: ChannelProblem, perm: torch.Tensor, value: float, rng: np.random.Generator,
             max_sweeps: int = 50) -> tuple[torch.Tensor, float]:
    """Greedy swap sweeps until the true objective stops improving."""
    for _ in range(max_sweeps):
        x, ws, wd = ConsumerState(problem, perm).matrix()
        cand = perm[torch.from_numpy(_greedy_sweep(x.clone(), ws, wd, problem.blocks(), rng))]
        v = problem.consumer_value(cand)
        if v <= value * (1 + 1e-9) + 1e-12:
            break
        perm, value = cand, v
    return perm, value


def escape(problem: ChannelProblem, perm: torch.Tensor, budget: float, rng: np.random.Generator) -> torch.Tensor:
    """Up to ``M`` random swaps inside a block, each losing at most ``budget`` of the consumers' value."""
    blocks = [b for b in problem.blocks() if b[1] - b[0] >= 2 * M]
    if not blocks:
        return perm
    value = problem.consumer_value(perm)
    for _ in range(M):
        for _try in range(16):
            s, e = blocks[rng.integers(len(blocks))]
            i, j = rng.choice(np.arange(s, s + (e - s) // M * M), size=2, replace=False)
            if i // M == j // M:
                continue
            cand = perm.clone()
            cand[[i, j]] = cand[[j, i]]
            v = problem.consumer_value(cand)
            if value - v <= budget:
                perm, value = cand, v
                break
    return perm
