import json

import numpy as np
import pytest
import torch
from conftest import batches

import mm_plugin
from mm_plugin.errors import (
    CalibrationRequiredError,
    NoPrunableLayersError,
    UnknownNameError,
    ValidationError,
)

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet_plan():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return model, mm_plugin.plan(model, X)


def test_ranges_valid(resnet_plan):
    _, p = resnet_plan
    assert ((0 <= p.lo) & (p.lo <= p.hi) & (p.hi <= 1)).all()
    assert p.config["allocations"] == ["global_magnitude", "lamp", "erk"]  # data-free without calibration
    assert any(p.hi > p.lo)


def test_json_round_trip(resnet_plan, tmp_path):
    _, p = resnet_plan
    path = p.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert {"name", "kind", "params", "min", "max"} <= set(data["units"][0]) and data["unit_kind"] == "weight"
    assert {"name", "global_sparsity", "sparsity"} <= set(data["strategies"][0])
    q = mm_plugin.Plan.load(path)
    assert q.units == p.units and np.array_equal(q.lo, p.lo) and np.array_equal(q.hi, p.hi)
    assert [s.sparsity for s in q.strategies] == [s.sparsity for s in p.strategies]
    assert q.to_dict() == p.to_dict()


def test_load_errors(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        mm_plugin.Plan.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"format": 1}')
    with pytest.raises(ValidationError, match="not a valid plan"):
        mm_plugin.Plan.load(tmp_path / "bad.json")


def test_unknown_signal_and_strategy(resnet_plan, mlp):
    with pytest.raises(UnknownNameError, match="unknown signal 'magnitud'.*magnitude"):
        mm_plugin.plan(mlp, signal="magnitud")
    with pytest.raises(UnknownNameError, match="unknown strategy 'nope'.*balanced"):
        resnet_plan[1].strategy("nope")
    with pytest.raises(UnknownNameError, match="unknown allocation 'gmp'"):
        mm_plugin.plan(mlp, allocations=["gmp"])


@pytest.mark.parametrize("targets", [(0.7, 1.0), (-0.2,)])
def test_targets_outside(mlp, targets):
    with pytest.raises(ValidationError, match=r"range target must lie in \[0, 1\)"):
        mm_plugin.plan(mlp, targets=targets)


@pytest.mark.parametrize("signal", ["gradient", "product"])
def test_gradient_signal_without_data(mlp, signal):
    with pytest.raises(CalibrationRequiredError, match="needs calibration data"):
        mm_plugin.plan(mlp, signal=signal)


def test_gradient_signal_with_data(mlp):
    data = batches(2, shape=(16, 64))
    p = mm_plugin.plan(mlp, signal="product", calibration=data)
    assert p.config["allocations"] == ["global_magnitude", "lamp", "snip"]
    q = mm_plugin.plan(mlp, signal="gradient", calibration=data, range_mode="signal", rules=[], default_rules=False)
    assert q.config["range_mode"] == "signal" and len(q.strategies) >= 3


def test_rule_min_above_max_in_plan(mlp):
    with pytest.raises(mm_plugin.RuleError, match="min 0.9 > max 0.1"):
        mm_plugin.plan(mlp, rules=[{"name": "x", "min": 0.9, "max": 0.1}])


def test_ignored_scope(resnet_plan):
    model, _ = resnet_plan
    p = mm_plugin.plan(model, X, ignored_scope={"names": ["fc"], "patterns": [r"layer1\..*"]})
    names = {layer.module for layer in p.units}
    assert "fc" not in names and not any(n.startswith("layer1.") for n in names) and "layer2.0.conv1" in names
    with pytest.raises(ValidationError, match=r"match no prunable unit: names \['fcc'\] \(closest: fc"):
        mm_plugin.plan(model, X, ignored_scope={"names": ["fcc"]})
    with pytest.raises(NoPrunableLayersError):
        mm_plugin.plan(model, X, ignored_scope={"types": ["conv2d", "linear"]})


def test_ignored_scope_has_nncf_semantics(resnet_plan):
    """As nncf.scopes: patterns use re.match (anchored at the start only), types are op types."""
    model, _ = resnet_plan
    p = mm_plugin.plan(model, X, ignored_scope={"patterns": ["layer1"], "names": ["fc.weight"]})
    names = {u.module for u in p.units}
    assert not any(n.startswith("layer1.") for n in names) and "fc" not in names and "layer2.0.conv1" in names
    p = mm_plugin.plan(model, X, ignored_scope={"patterns": ["conv"]})  # re.match: "layer1.0.conv1" is not hit
    assert "layer1.0.conv1" in {u.module for u in p.units} and "conv1" not in {u.module for u in p.units}
    assert {u.module for u in mm_plugin.plan(model, X, ignored_scope={"types": ["linear"]}).units} == \
        ({u.module for u in p.units} | {"conv1"}) - {"fc"}
    with pytest.raises(ValidationError, match=r"types \['Conv2d'\].*op types such as conv2d, linear"):
        mm_plugin.plan(model, X, ignored_scope={"types": ["Conv2d"]})
    kept = mm_plugin.plan(model, X, ignored_scope={"names": ["nope"], "validate": False}).units
    assert len(kept) == len(p.units) + 1


def test_any_requested_target_is_reachable_or_a_rule_is_named():
    """Ranges follow the targets a user asks for; only a rule may stop one, and the error names it."""
    from mm_plugin.planning import around
    from mm_plugin.training import create_model

    model, x = create_model("resnet8", num_classes=10, in_chans=1), torch.randn(1, 1, 28, 28)
    assert around([0.9]) == (0.85, 0.9, 0.9333)
    for t in (0.3, 0.7, 0.9, 0.95):
        p = mm_plugin.plan(model, x, targets=around([t]), reach=[t])
        assert abs(p.global_sparsity(p.rescale("feature-heavy", t)) - t) < 1e-3
    with pytest.raises(ValidationError, match=r"target 0.99 is outside .*bind it most: .*rules .*tiny-layers"):
        mm_plugin.plan(model, x, targets=around([0.99]), reach=[0.99]).rescale("balanced", 0.99)
    relaxed = [{"name": "tiny-layers", "enabled": False}, {"name": "first-layer", "enabled": False},
               {"name": "classifier-head", "enabled": False}]
    p = mm_plugin.plan(model, x, rules=relaxed, targets=around([0.99]), reach=[0.99])
    assert abs(p.global_sparsity(p.rescale("balanced", 0.99)) - 0.99) < 1e-3


def test_tiny_layers_scale_with_the_model():
    """Under 10 K weights AND under 1 % of the planned weights: a small model's layers are not all tiny."""
    from mm_plugin.planning import DEFAULT_RULES

    tiny = next(r for r in DEFAULT_RULES if r.name == "tiny-layers")
    unit = mm_plugin.Unit("w", "m", "conv", (8, 8), 5_000, 0, 0.0)
    assert tiny.matches(unit, total_params=10_000_000) and not tiny.matches(unit, total_params=100_000)
