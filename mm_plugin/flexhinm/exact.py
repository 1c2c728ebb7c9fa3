"""The exact optimum of a plain 2:4 channel problem, for layers small enough to enumerate.

Every set of 4 input channels is a candidate group worth the importance its rows keep (top 2 of 4,
summed over the layers that read the channel); a set packing MILP (``scipy.optimize.milp``, HiGHS)
picks the groups. It tells how much any search could recover, where the per-row bound (each row
keeping its best half anywhere) overstates it. Registered as ``exact`` in
:data:`~.permutation.PERMUTATIONS`; hybrid problems (labels that depend on the order) are refused.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csc_array

from ..errors import ValidationError
from .layout import M, N, as_rows
from .permutation import PERMUTATIONS, ChannelProblem

log = logging.getLogger(__name__)

#: Most candidate groups (sets of 4 channels) the exact search enumerates: C(64, 4) = 635,376.
MAX_CANDIDATES = 700_000


@dataclass(frozen=True)
class ExactResult:
    """The optimum of a plain 2:4 problem (``proven`` False when the time limit stopped HiGHS first)."""

    perm: torch.Tensor
    value: float
    upper_bound: float
    proven: bool
    candidates: int


def _group_values(problem: ChannelProblem, quads: np.ndarray) -> np.ndarray:
    """Importance every candidate set of 4 channels keeps, summed over the problem's layers."""
    values = np.zeros(len(quads))
    idx = torch.from_numpy(quads)
    for term in problem.consumers:
        rows = as_rows(term.score)
        if term.counts.n_pruned == term.counts.n_groups:
            continue
        if term.counts.n_dense == term.counts.n_groups:
            keep = rows[:, idx].sum(-1)
        else:
            step = max(1, (1 << 24) // max(1, rows.shape[0] * M))
            keep = torch.cat([rows[:, idx[s:s + step]].topk(N, dim=-1).values.sum(-1)
                              for s in range(0, len(quads), step)], dim=1)
        values += keep.sum(0).double().numpy()
    return values


def exact_search(problem: ChannelProblem, time_limit: float = 120.0) -> ExactResult:
    """Solve a plain 2:4 channel problem exactly (see module doc); raises on problems it cannot do."""
    mixed = [t.name for t in problem.consumers if t.counts.n_nm not in (0, t.counts.n_groups)
             or (t.counts.n_pruned and t.counts.n_dense)]
    if problem.producer_sensitive or mixed:
        raise ValidationError(
            f"the exact search solves plain 2:4 problems only; {mixed or [problem.producer.name]} mix regions "
            "whose labels depend on the order: use 'gyro', 'asp' or 'greedy' for hybrid layers"
        )
    c = problem.size
    n = math.comb(c, M)
    if n > MAX_CANDIDATES:
        raise ValidationError(
            f"the exact search enumerates C({c}, 4) = {n:,} candidate groups, over its limit of "
            f"{MAX_CANDIDATES:,} (about 64 channels); use 'gyro', 'asp' or 'greedy' for this layer"
        )
    quads = _combinations(c)
    values = _group_values(problem, quads)
    a = csc_array((np.ones(quads.size), (quads.reshape(-1), np.repeat(np.arange(len(quads)), M))),
                  shape=(c, len(quads)))
    # "at most once" finds incumbents at once and has the same optimum: every group is worth > 0, so
    # an optimal packing of a multiple of 4 channels leaves none out
    res = milp(-values, constraints=LinearConstraint(a, 0, 1), integrality=np.ones(len(quads)),
               bounds=Bounds(0, 1), options={"time_limit": time_limit})
    if res.x is None:
        raise ValidationError(f"the exact search found no solution within {time_limit} s; raise time_limit")
    chosen = quads[res.x > 0.5]
    if len(chosen) * M != c:
        raise ValidationError(f"the exact search stopped at {time_limit} s before covering every channel; "
                              "raise time_limit")
    perm = torch.from_numpy(chosen.reshape(-1).copy())
    bound = -float(getattr(res, "mip_dual_bound", res.fun))
    return ExactResult(perm, float(values[res.x > 0.5].sum()), bound, res.status == 0, len(quads))


def _combinations(c: int) -> np.ndarray:
    """All ``(C(c, 4), 4)`` sorted 4-subsets of ``range(c)``, in lexicographic order."""
    out = np.empty((math.comb(c, M), M), dtype=np.int64)
    k = 0
    for a in range(c):
        for b in range(a + 1, c):
            rest = np.array(np.triu_indices(c - b - 1, 1)).T + b + 1  # all (x, y) with b < x < y
            out[k:k + len(rest)] = np.column_stack([np.full(len(rest), a), np.full(len(rest), b), rest])
            k += len(rest)
    return out


@PERMUTATIONS.register("exact")
def exact_permutation(problem: ChannelProblem, *, seed: int = 0, effort: int = 1) -> torch.Tensor:
    """The optimal order of a plain 2:4 problem of at most about 64 channels (``exact_search``)."""
    result = exact_search(problem, time_limit=120.0 * effort)
    if not result.proven:
        log.warning("exact permutation search hit its time limit: the order may not be optimal "
                    "(value %.6g, upper bound %.6g)", result.value, result.upper_bound)
    return result.perm
