"""Measured sensitivity as data: curves, the measured allocation, and rules as priors."""

import numpy as np
import pytest
import torch

import mm_plugin
from mm_plugin.errors import RuleError, ValidationError
from mm_plugin.planning import DEFAULT_RULES, Rule, Sensitivity, measured_bounds, min_rise_allocation
from mm_plugin.planning.allocations import ALLOCATIONS, AllocationInputs
from mm_plugin.planning.rules import apply_rules

GRID = (0.3, 0.5, 0.7, 0.9)


def flat(rise_at_09: float, base: float = 1.0) -> tuple[float, ...]:
    """A curve that rises only at the grid's last point."""
    return (base, base, base, base + rise_at_09)


def test_rises_are_monotone_and_a_stream_excess_is_shared_by_weight():
    s = Sensitivity(grid=GRID, base_loss=1.0,
                    loss={"a": (1.0, 1.2, 1.1, 1.5), "b": flat(0.1)},  # a's dip at 0.7 is noise
                    params={"a": 300, "b": 100}, groups={"stream": ("a", "b")},
                    group_loss={"stream": (1.0, 1.2, 1.1, 2.4)})
    assert s.rise("a").tolist() == pytest.approx([0.0, 0.2, 0.2, 0.5 + 0.75 * 0.8])
    assert s.rise("b").tolist() == pytest.approx([0.0, 0.0, 0.0, 0.1 + 0.25 * 0.8])
    assert all(np.diff(s.rise(u)).min() >= 0 for u in s.units)


def test_tolerance_is_where_the_rise_crosses_the_reference():
    s = Sensitivity(grid=GRID, base_loss=0.0, loss={"u": (0.0, 0.1, 0.3, 0.9), "robust": (0.0, 0.0, 0.0, 0.0)})
    assert s.tolerance("u", 0.2) == pytest.approx(0.6)
    assert s.tolerance("robust", 0.2) == pytest.approx(0.9)  # never crosses: the grid's last point
    assert s.reference(0.7) == pytest.approx(0.15)  # the median of 0.3 and 0.0


def test_the_measured_allocation_meets_the_count_and_spares_the_sensitive_unit():
    s = Sensitivity(grid=GRID, base_loss=0.0, loss={"sensitive": (0.1, 0.3, 0.6, 1.0), "robust": flat(0.05, 0.0)})
    sizes = np.array([1000.0, 1000.0])
    out = min_rise_allocation(s, ["sensitive", "robust"], sizes, 1000, np.ones(2))
    assert (out * sizes).sum() == pytest.approx(1000)
    assert out[1] == pytest.approx(0.9) and out[0] == pytest.approx(0.1)  # robust first, up to its cheap part
    with pytest.raises(ValidationError, match="minimum-density guard"):
        min_rise_allocation(s, ["sensitive", "robust"], sizes, 1900, np.full(2, 0.9))


def test_the_sensitivity_allocation_is_exact_and_needs_a_measurement(mlp):
    units = mm_plugin.inventory(mlp, torch.randn(1, 64)).units
    s = Sensitivity(grid=GRID, base_loss=0.0,
                    loss={u.name: tuple(g ** (1 + i) for g in GRID) for i, u in enumerate(units)})
    inputs = AllocationInputs(units, {}, None, 0.01, s)
    sizes = np.array([u.params for u in units])
    ratios = ALLOCATIONS.get("sensitivity")(inputs, 0.6)
    assert round((ratios * sizes).sum()) == round(0.6 * sizes.sum())
    with pytest.raises(ValidationError, match="needs measured sensitivity"):
        ALLOCATIONS.get("sensitivity")(AllocationInputs(units, {}, None, 0.01), 0.6)


def test_rules_declare_how_far_measurement_may_move_them():
    with pytest.raises(RuleError, match="measured_max 0.05 is below max 0.1"):
        Rule("r", max=0.1, measured_max=0.05)
    with pytest.raises(RuleError, match="measured_min 0.95 must lie between min 0.0 and widen_max 0.9"):
        Rule("r", widen_max=0.9, measured_min=0.95)
    assert Rule("r", max=0.1, measured_max=0.5).measured and not Rule("r", max=0.1).measured


def test_measurement_relaxes_and_tightens_rules_within_their_limits(mlp):
    """The MLP's first layer is capped at 0.10 by first-layer, which measurement may relax to 0.50; its head
    is widened to 0.90 by classifier-head, which measurement may tighten to 0.50."""
    units = mm_plugin.inventory(mlp, torch.randn(1, 64)).units
    first, head = units[0], next(u for u in units if u.kind == "head")
    median = (0.0, 0.1, 0.2, 0.4)

    def moves(first_curve, head_curve):
        loss = {u.name: median for u in units} | {first.name: first_curve, head.name: head_curve}
        return measured_bounds(units, DEFAULT_RULES, Sensitivity(grid=GRID, base_loss=0.0, loss=loss), 0.7)

    moved, records = moves((0.0, 0.0, 0.0, 0.0), (0.3, 0.6, 0.9, 1.2))  # a robust first layer, a fragile head
    assert moved[first.name] == {"first-layer": 0.5} and moved[head.name] == {"classifier-head": 0.5}
    (relaxed,), (tightened,) = records[first.name], records[head.name]
    assert relaxed["change"] == "relaxed" and relaxed["limited"] and relaxed["from"] == 0.1
    assert tightened["change"] == "tightened" and tightened["limited"] and tightened["from"] == 0.9
    lo, hi = apply_rules(units, np.full(len(units), 0.6), np.full(len(units), 0.8), DEFAULT_RULES, moved)
    assert hi[0] == 0.5 and lo[0] == 0.5  # was 0.10 as written
    moved, records = moves((0.02, 0.05, 0.1, 0.3), median)  # rise 0.2 (the median's at 0.7) crossed at 0.8
    assert moved[first.name] == {"first-layer": 0.5} and head.name in moved
    moved, _ = moves((0.9, 1.0, 1.1, 1.2), median)  # the median's rise already at 0.07: no measured_min, so
    assert first.name not in moved  # the written 0.10 stays (measurement never tightens this rule)
    assert moved[head.name] == {"classifier-head": 0.7}  # as sensitive as the median: its tolerance is the target


def test_a_plan_with_a_measurement_says_what_moved_and_why(mlp):
    x = torch.randn(1, 64)
    units = mm_plugin.inventory(mlp, x).units
    s = Sensitivity(grid=GRID, base_loss=0.0, loss={u.name: (0.0, 0.0, 0.01, 0.02) for u in units},
                    params={u.name: u.params for u in units})
    measured = mm_plugin.plan(mlp, x, sensitivity=s)
    plain = mm_plugin.plan(mlp, x)
    first = units[0].name
    assert measured.measured[first] and not plain.measured
    assert "Rules moved by measured sensitivity" in measured.table() and "first-layer" in measured.table()
    assert "sensitivity" in measured.config["allocations"] and measured.config["sensitivity"]["moved"] >= 1
    assert plain.hi[0] <= 0.1 < measured.hi[0]
    assert mm_plugin.Plan.from_dict(measured.to_dict()).measured == measured.measured


def test_a_measurement_round_trips_and_a_bad_file_is_one_line(tmp_path):
    s = Sensitivity(grid=GRID, base_loss=0.5, loss={"a": (0.6, 0.7, 0.8, 0.9)}, kinds={"a": "conv"},
                    params={"a": 10}, key="k")
    back = Sensitivity.load(s.save(tmp_path / "s.json"))
    assert back.loss == s.loss and back.key == "k" and back.rise("a").tolist() == s.rise("a").tolist()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValidationError, match="bad.json"):
        Sensitivity.load(tmp_path / "bad.json")
    with pytest.raises(ValidationError, match="1.2 is not a sparsity"):
        Sensitivity(grid=(0.5, 1.2), base_loss=0.0, loss={})
    with pytest.raises(ValidationError, match="no curve for unit 'b'"):
        s.rise("b")
