"""The planned target a measured figure needs: found in a few measurements (each one prunes a copy)."""

import pytest

from mm_plugin.errors import ConfigError
from mm_plugin.planning import planned_target_for


def _counted(figure):
    calls = []

    def removed(t: float) -> float:
        calls.append(t)
        return figure(t)
    return removed, calls


@pytest.mark.parametrize("figure, most", [
    (lambda t: 1.8 * t, 2),  # multiply-adds of consumers removed too: an estimate off by a factor
    (lambda t: 1 - (1 - t) ** 2, 4),  # a channel ratio on both sides of each layer
    (lambda t: round(64 * 1.7 * t) / 64, 3),  # whole channels: a staircase
])
def test_a_figure_near_proportional_to_the_planned_target_takes_few_measurements(figure, most):
    removed, calls = _counted(figure)
    t = planned_target_for(removed, 0.3, 0.0, 0.9, what="strategy 'x'")
    assert abs(figure(t) - 0.3) <= 0.005 and len(calls) <= most  # bisection from the ends took 8 or more


def test_a_figure_the_steps_cannot_follow_falls_back_to_bisection_between_what_they_measured():
    removed, calls = _counted(lambda t: 0.0 if t < 0.5 else 0.2 + 0.5 * t)  # nothing removed below 0.5
    t = planned_target_for(removed, 0.5, 0.0, 0.9, what="strategy 'x'")
    assert abs(0.2 + 0.5 * t - 0.5) <= 0.005 and t >= 0.5
    assert len(calls) == len(set(calls))  # no planned target measured twice


def test_an_unreachable_goal_names_the_span():
    removed, _ = _counted(lambda t: 0.5 * t)
    with pytest.raises(ConfigError, match=r"baseline 'tp_uniform' cannot remove 0.6 .* spans 0.000 to 0.450"):
        planned_target_for(removed, 0.6, 0.0, 0.9, what="baseline 'tp_uniform'")


def test_a_first_guess_near_the_answer_saves_measurements():
    removed, calls = _counted(lambda t: 1.8 * t)
    t = planned_target_for(removed, 0.3, 0.0, 0.9, what="strategy 'x'", start=0.3 / 1.8)
    assert abs(1.8 * t - 0.3) <= 0.005 and len(calls) == 1  # from the goal itself it takes two


def test_where_no_measurement_lands_within_tolerance_the_target_is_met_not_undercut():
    """A staircase (whole heads) with a step from 0.23 to 0.30 around a goal of 0.25: the closest measurement
    removes 0.23, less than the budget asks; the planned target chosen must remove at least 0.25."""
    def figure(t: float) -> float:
        return 0.0 if t < 0.1 else 0.23 if t < 0.5 else 0.30 if t < 0.7 else 0.5
    removed, _ = _counted(figure)
    t = planned_target_for(removed, 0.25, 0.0, 0.9, what="strategy 'x'")
    assert figure(t) == 0.30
