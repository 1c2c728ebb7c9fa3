import numpy as np
import pytest
import torch

import mm_plugin
from mm_plugin.errors import ValidationError
from mm_plugin.planning.strategies import NAMED_STRATEGIES, build_strategies


@pytest.fixture(scope="module")
def swin_plan():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(img_size=32, patch_size=2, num_classes=10, window_size=4, embed_dim=32,
                            depths=(2, 2), num_heads=(2, 4))
    return mm_plugin.plan(model, torch.randn(1, 3, 32, 32))


def counts(strategy, plan):
    return tuple(round(strategy.sparsity[layer.name] * layer.params) for layer in plan.units)


def test_ten_distinct_strategies_inside_ranges(swin_plan):
    p = swin_plan
    assert len(p.strategies) == 10
    assert len({counts(s, p) for s in p.strategies}) == 10
    assert len({s.name for s in p.strategies}) == 10
    for s in p.strategies:
        for layer, lo, hi in zip(p.units, p.lo, p.hi):
            k = s.sparsity[layer.name] * layer.params
            assert lo * layer.params - 1 <= k <= hi * layer.params + 1, (s.name, layer.name)


def test_duplicate_interpolation_replaced(swin_plan):
    names = [s.name for s in swin_plan.strategies]
    assert "balanced" in names and "interp-0.50" not in names  # 0.5 repeats the midpoint
    assert "interp-0.10" in names


def test_named_strategies_order_sparsity(swin_plan):
    g = {s.name: swin_plan.global_sparsity(s) for s in swin_plan.strategies}
    assert g["conservative"] < g["interp-0.30"] < g["balanced"] < g["interp-0.70"] < g["aggressive"]


def test_classifier_vs_feature_heavy(swin_plan):
    p = swin_plan
    early = [layer for layer in p.units if layer.depth < 0.3 and p.hi[p.units.index(layer)] > p.lo[p.units.index(layer)]]
    late = [layer for layer in p.units if layer.depth > 0.7 and p.hi[p.units.index(layer)] > p.lo[p.units.index(layer)]]
    ch, fh = p.strategy("classifier-heavy"), p.strategy("feature-heavy")
    assert all(ch.sparsity[x.name] < fh.sparsity[x.name] for x in early)
    assert all(ch.sparsity[x.name] > fh.sparsity[x.name] for x in late)


@pytest.mark.parametrize("where", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("name", ["balanced", "feature-heavy"])
def test_rescale_exact_and_inside(swin_plan, where, name):
    p = swin_plan
    low, high = p.global_sparsity("conservative"), p.global_sparsity("aggressive")
    target = low + where * (high - low)
    s = p.rescale(name, target)
    total = sum(layer.params for layer in p.units)
    pruned = sum(round(s.sparsity[layer.name] * layer.params) for layer in p.units)
    assert abs(pruned - target * total) <= len(p.units)
    for layer, lo, hi in zip(p.units, p.lo, p.hi):
        k = s.sparsity[layer.name] * layer.params
        assert lo * layer.params - 1 <= k <= hi * layer.params + 1


def test_rescale_unreachable(swin_plan):
    with pytest.raises(ValidationError, match="outside what the ranges allow"):
        swin_plan.rescale("balanced", 0.99)


def test_samples_seeded_and_inside(swin_plan):
    p = swin_plan
    a, b, c = p.sample(5, seed=1), p.sample(5, seed=1), p.sample(5, seed=2)
    assert [s.sparsity for s in a] == [s.sparsity for s in b] != [s.sparsity for s in c]
    for s in a:
        v = np.array([s.sparsity[layer.name] for layer in p.units])
        assert ((p.lo - 1e-12 <= v) & (v <= p.hi + 1e-12)).all()


def test_narrow_ranges_give_fewer_distinct(swin_plan):
    p = swin_plan
    flat = build_strategies(p.units, p.lo, p.lo, p.signal)
    assert len(flat) == 1 and flat[0].name == "conservative"
    assert len(NAMED_STRATEGIES) == 10


def test_rescale_by_another_cost_weighs_units_by_it():
    from dataclasses import dataclass

    from mm_plugin.planning.budget import rescale, unit_costs
    from mm_plugin.planning.strategies import Strategy

    @dataclass(frozen=True)
    class Unit:
        name: str
        kind: str
        params: int
        depth: float
        macs: int

    units = [Unit("a", "conv", 100, 0.0, 9000), Unit("b", "conv", 900, 1.0, 1000)]
    s = Strategy("shaped", {"a": 0.1, "b": 0.4}, "magnitude")
    lo, hi = np.zeros(2), np.full(2, 0.9)
    by_params, by_macs = rescale(s, units, lo, hi, 0.5), rescale(s, units, lo, hi, 0.5, cost="macs")
    costs = unit_costs(units, "macs")
    assert sum(by_macs.sparsity[u.name] * c for u, c in zip(units, costs)) / costs.sum() == pytest.approx(0.5, abs=1e-3)
    assert sum(by_params.sparsity[u.name] * u.params for u in units) / 1000 == pytest.approx(0.5, abs=1e-3)
    assert by_macs.sparsity != by_params.sparsity and by_macs.name.endswith("macs")
    with pytest.raises(ValidationError, match="no positive 'flops'"):
        rescale(s, units, lo, hi, 0.5, cost="flops")
