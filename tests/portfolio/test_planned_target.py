"""A cost-matched pattern bisects once per thing pruned: never reused for another thing of the same name."""

from mm_plugin.portfolio import Pattern, RunConfig
from mm_plugin.portfolio.jobs import Job, RunContext


def test_the_planned_target_follows_what_is_pruned_not_the_name():
    ctx = RunContext(RunConfig(targets=(0.5,)), dense=1.0, example=None, calibration=None, plans={})

    def planned(job: Job) -> float:
        share = job.sparsity.get("a", 0.0)  # a made-up cost: pruning t removes t * (1 + share) of it
        return Pattern().planned_target_at(job, ctx, cost=lambda m: m, pruned=lambda t: 1.0 - t * (1 + share),
                                           bounds=(0.0, 1.0))

    seed0 = Job("search", "magnitude", "magnitude/tpe-010", 0.5, 0, {"a": 0.2, "b": 0.4}, 0)
    seed1 = Job("search", "magnitude", "magnitude/tpe-010", 0.5, 1, {"a": 0.6, "b": 0.1}, 0)  # same name, other seed
    t0, t1 = planned(seed0), planned(seed1)
    assert abs(t0 * 1.2 - 0.5) <= 0.005 and abs(t1 * 1.6 - 0.5) <= 0.005
    rung2 = Job("search", "magnitude", "magnitude/tpe-010", 0.5, 0, {"a": 0.2, "b": 0.4}, 2)
    known = dict(ctx.cache["planned_targets"])
    assert len(known) == 2 and planned(rung2) == t0 and ctx.cache["planned_targets"] == known  # no second bisection


def test_a_strategy_starts_from_the_ratio_the_last_one_measured():
    """Estimates are off by about the same factor for every strategy: once one planned target is found, the
    next strategy's first measurement uses that ratio and lands within the tolerance."""
    ctx = RunContext(RunConfig(targets=(0.3,)), dense=1.0, example=None, calibration=None, plans={})
    measured = []

    def planned(job: Job) -> float:
        share = job.sparsity["a"]  # pruning t removes t * (1.8 + share) of the cost

        def pruned(t: float) -> float:
            measured.append(t)
            return 1.0 - t * (1.8 + share)
        return Pattern().planned_target_at(job, ctx, cost=lambda m: m, pruned=pruned, bounds=(0.0, 0.5))

    first = planned(Job("search", "magnitude", "magnitude/tpe-010", 0.3, 0, {"a": 0.0}, 0))
    assert len(measured) == 2 and abs(first * 1.8 - 0.3) <= 0.005  # the goal, then the measured ratio
    measured.clear()
    second = planned(Job("search", "magnitude", "magnitude/tpe-011", 0.3, 0, {"a": 0.01}, 0))
    assert len(measured) == 1 and abs(second * 1.81 - 0.3) <= 0.005
