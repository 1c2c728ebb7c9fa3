"""The exact reference search: the true optimum on small plain 2:4 problems, refusals elsewhere."""

import itertools

import pytest
import torch

from mm_plugin.errors import ValidationError
from mm_plugin.flexhinm import PERMUTATIONS, ChannelProblem, LayerTerm, hybrid_partition, matrix_problem
from mm_plugin.flexhinm.exact import exact_search


def _brute_force(problem: ChannelProblem) -> float:
    """Best objective over every split of 12 channels into 3 groups of 4."""
    c, best = problem.size, float("-inf")
    for a in itertools.combinations(range(1, c), 3):
        first = [0, *a]
        rest = [x for x in range(c) if x not in first]
        for b in itertools.combinations(rest[1:], 3):
            second = [rest[0], *b]
            third = [x for x in rest if x not in second]
            best = max(best, problem.objective(torch.tensor(first + second + third)))
    return best


def test_exact_search_finds_the_brute_force_optimum_and_no_search_beats_it():
    torch.manual_seed(0)
    w = torch.randn(10, 12).abs()
    problem = matrix_problem(w)
    result = exact_search(problem)
    assert result.proven and result.candidates == 495
    assert sorted(result.perm.tolist()) == list(range(12))
    assert result.value == pytest.approx(_brute_force(problem), rel=1e-6)
    assert problem.objective(result.perm) == pytest.approx(result.value, rel=1e-6)
    for name in ("none", "greedy", "asp", "gyro"):
        assert problem.objective(PERMUTATIONS.get(name)(problem, seed=0)) <= result.value * (1 + 1e-6)


def test_exact_search_refuses_hybrid_and_large_problems():
    torch.manual_seed(0)
    w = torch.rand(16, 32)
    counts = hybrid_partition(w, 0.6, None).counts
    assert counts.mixed
    hybrid = ChannelProblem(32, [LayerTerm("fc", w, "consumer", counts, None)])
    with pytest.raises(ValidationError, match="plain 2:4 problems only.*'gyro'"):
        exact_search(hybrid)
    with pytest.raises(ValidationError, match=r"C\(80, 4\).*limit"):
        PERMUTATIONS.get("exact")(matrix_problem(torch.rand(4, 80)))
