import pytest
import torch
from conftest import batches

import mm_plugin
from mm_plugin.errors import ValidationError
from mm_plugin.masks import apply_masks_, bake_masks_, current_masks, global_sparsity, measure_sparsity


def test_prune_matches_strategy_and_leaves_norms(tiny_swin):
    x = torch.randn(2, 3, 32, 32)
    p = mm_plugin.plan(tiny_swin, x[:1])
    norms_before = {n: t.clone() for n, t in tiny_swin.state_dict().items() if "norm" in n}
    s = p.strategy("aggressive")
    mm_plugin.prune_(tiny_swin, s, plan=p)
    report = {r.name: r for r in measure_sparsity(tiny_swin)}
    assert set(report) == {layer.name for layer in p.units}
    for layer in p.units:
        assert report[layer.name].zeros == round(s.sparsity[layer.name] * layer.params)
    for n, t in tiny_swin.state_dict().items():
        if n in norms_before:
            assert torch.equal(t, norms_before[n])
    assert tiny_swin(x).shape == (2, 10)


def test_masks_exact_after_adamw_with_weight_decay(mlp):
    p = mm_plugin.plan(mlp)
    mm_plugin.prune_(mlp, "aggressive", plan=p)
    masks = current_masks(mlp)
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-2, weight_decay=0.1)
    for x, y in batches(20, shape=(16, 64)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mlp(x), y).backward()
        opt.step()
    for name, keep in masks.items():
        w = mlp.get_submodule(name.rpartition(".")[0]).weight
        assert (w[~keep] == 0).all(), name
        assert (w[keep] != 0).float().mean() > 0.99, name  # the kept ones did train


def test_bake_gives_plain_weights_with_same_zeros(mlp):
    mm_plugin.prune_(mlp, {"body.0.weight": 0.5, "head.weight": 0.25})
    x = torch.randn(3, 64)
    before, zeros = mlp(x), {r.name: r.zeros for r in measure_sparsity(mlp)}
    bake_masks_(mlp)
    assert not any("parametrizations" in k for k in mlp.state_dict())
    assert torch.allclose(mlp(x), before)
    assert {r.name: r.zeros for r in measure_sparsity(mlp, list(zeros))} == zeros == {
        "body.0.weight": 64 * 128 // 2, "head.weight": 64 * 10 // 4}


def test_gradient_signal_prunes_by_gradient(mlp):
    data = batches(2, shape=(16, 64))
    mm_plugin.prune_(mlp, {"body.0.weight": 0.5}, signal="gradient", calibration=data)
    report = measure_sparsity(mlp)
    assert report[0].sparsity == 0.5 and global_sparsity(report) == 0.5


def test_bad_masks(mlp):
    with pytest.raises(ValidationError, match="has shape"):
        apply_masks_(mlp, {"head.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValidationError, match="no module 'nope'"):
        apply_masks_(mlp, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValidationError, match="not a prunable weight"):
        mm_plugin.prune_(mlp, {"body.1.weight": 0.5})


def test_baking_a_deep_copy_leaves_the_original_masked(mlp):
    import copy

    mm_plugin.prune_(mlp, {"body.0.weight": 0.5})
    x = torch.randn(2, 64)
    before = mlp(x)
    twin = bake_masks_(copy.deepcopy(mlp))
    assert torch.allclose(mlp(x), before) and torch.allclose(twin(x), before)
    assert "body.0.weight" in current_masks(mlp) and not current_masks(twin)


class _Scaled(torch.nn.Module):
    """A user's own parametrization, with a right_inverse as torch's docs write them."""

    def forward(self, w):
        return 2 * w

    def right_inverse(self, w):
        return w / 2


class _Symmetric(torch.nn.Module):
    """One that cannot hold a masked weight: it keeps the upper triangle only."""

    def forward(self, w):
        return w.triu() + w.triu(1).transpose(-1, -2)

    def right_inverse(self, w):
        return w.triu()


def _user_parametrized(mlp, kind):
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    if kind == "weight_norm":
        weight_norm(mlp.body[0])
        return "body.0.weight", mlp.body[0]
    square = torch.nn.Linear(64, 64)
    mlp.body.insert(0, square)
    parametrize.register_parametrization(square, "weight", {"user": _Scaled, "symmetric": _Symmetric}[kind]())
    return "body.0.weight", square


@pytest.mark.parametrize("kind", ["weight_norm", "user"])
def test_masks_sit_beside_a_users_parametrization(mlp, kind):
    """The mask masks what the user's parametrization computes; baking removes the mask only."""
    name, module = _user_parametrized(mlp, kind)
    theirs = type(module.parametrizations.weight[0])
    x = torch.randn(3, 64)
    mm_plugin.prune_(mlp, {name: 0.5, "head.weight": 0.25})
    keep = current_masks(mlp)[name]
    assert type(module.parametrizations.weight[0]) is theirs  # theirs stays first
    assert (module.weight[~keep] == 0).all() and int((module.weight == 0).sum()) == keep.numel() // 2
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-2, weight_decay=0.1)
    for xb, yb in batches(5, shape=(16, 64)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mlp(xb), yb).backward()
        opt.step()
    assert (module.weight[~keep] == 0).all()
    before = mlp(x)
    bake_masks_(mlp)
    assert [type(p) for p in module.parametrizations.weight] == [theirs]  # only the mask was removed
    assert not current_masks(mlp)
    assert torch.allclose(mlp(x), before, atol=1e-5)
    assert torch.equal(module.weight == 0, ~keep)
    assert not hasattr(mlp.head, "parametrizations")  # a weight with the mask alone is plain again


def test_baking_into_a_parametrization_that_cannot_hold_the_mask_is_refused_and_changes_nothing(mlp):
    name, _ = _user_parametrized(mlp, "symmetric")
    mm_plugin.prune_(mlp, {name: 0.5})
    x = torch.randn(3, 64)
    before = mlp(x)
    with pytest.raises(ValidationError, match="_Symmetric.*do not reproduce it exactly"):
        bake_masks_(mlp)
    assert name in current_masks(mlp) and torch.equal(mlp(x), before)


def test_reconstruction_refuses_a_weight_under_a_users_parametrization(mlp):
    name, _ = _user_parametrized(mlp, "weight_norm")
    with pytest.raises(ValidationError, match="weight_norm|_WeightNorm.*remove them first"):
        mm_plugin.prune_(mlp, {name: 0.5}, calibration=batches(2, shape=(16, 64)), reconstruct=True)


def test_a_strategy_prunes_by_the_signal_it_was_planned_with(mlp):
    import copy

    data = batches(2, shape=(16, 64))
    p = mm_plugin.plan(mlp, torch.randn(1, 64), signal="gradient", calibration=data)
    s = p.rescale("balanced", 0.5)
    assert s.signal == "gradient" and all(t.signal == "gradient" for t in p.strategies)
    assert mm_plugin.Plan.from_dict(p.to_dict()).strategy("balanced").signal == "gradient"
    by_default = current_masks(mm_plugin.prune_(copy.deepcopy(mlp), s, calibration=data))
    by_gradient = current_masks(mm_plugin.prune_(copy.deepcopy(mlp), s, signal="gradient", calibration=data))
    by_magnitude = current_masks(mm_plugin.prune_(copy.deepcopy(mlp), s, signal="magnitude"))
    assert all(torch.equal(by_default[n], by_gradient[n]) for n in by_default)
    assert any(not torch.equal(by_default[n], by_magnitude[n]) for n in by_default)
