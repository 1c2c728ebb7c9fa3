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


def test_the_planned_target_does_not_depend_on_what_was_measured_before():
    """A resumed run, or a cluster's worker, measures the strategies in another order than one uninterrupted
    process: each must still land on the same planned target, so that the same job prunes the same model."""
    def planned_in(order: list[float]) -> dict[float, float]:
        ctx = RunContext(RunConfig(targets=(0.3,)), dense=1.0, example=None, calibration=None, plans={})

        def planned(share: float) -> float:  # pruning t removes about t * (1.8 + share) of the cost, in steps
            job = Job("search", "magnitude", f"magnitude/tpe-{share}", 0.3, 0, {"a": share}, 0)
            return Pattern().planned_target_at(job, ctx, cost=lambda m: m,
                                               pruned=lambda t: 1.0 - round(t * (1.8 + share), 2), bounds=(0.0, 0.5))
        return {share: planned(share) for share in order}

    shares = [0.0, 0.05, 0.3, 0.6]
    forward, backward = planned_in(shares), planned_in(shares[::-1])
    assert forward == backward
    assert all(abs(round(t * (1.8 + share), 2) - 0.3) <= 0.005 for share, t in forward.items())
