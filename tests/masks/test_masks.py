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
    mm_plugin.prune(tiny_swin, s, plan=p)
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
    mm_plugin.prune(mlp, "aggressive", plan=p)
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
    mm_plugin.prune(mlp, {"body.0.weight": 0.5, "head.weight": 0.25})
    x = torch.randn(3, 64)
    before, zeros = mlp(x), {r.name: r.zeros for r in measure_sparsity(mlp)}
    bake_masks_(mlp)
    assert not any("parametrizations" in k for k in mlp.state_dict())
    assert torch.allclose(mlp(x), before)
    assert {r.name: r.zeros for r in measure_sparsity(mlp, list(zeros))} == zeros == {
        "body.0.weight": 64 * 128 // 2, "head.weight": 64 * 10 // 4}


def test_gradient_signal_prunes_by_gradient(mlp):
    data = batches(2, shape=(16, 64))
    mm_plugin.prune(mlp, {"body.0.weight": 0.5}, signal="gradient", calibration=data)
    report = measure_sparsity(mlp)
    assert report[0].sparsity == 0.5 and global_sparsity(report) == 0.5


def test_bad_masks(mlp):
    with pytest.raises(ValidationError, match="has shape"):
        apply_masks_(mlp, {"head.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValidationError, match="no module 'nope'"):
        apply_masks_(mlp, {"nope.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValidationError, match="not a prunable weight"):
        mm_plugin.prune(mlp, {"body.1.weight": 0.5})


def test_baking_a_deep_copy_leaves_the_original_masked(mlp):
    import copy

    mm_plugin.prune(mlp, {"body.0.weight": 0.5})
    x = torch.randn(2, 64)
    before = mlp(x)
    twin = bake_masks_(copy.deepcopy(mlp))
    assert torch.allclose(mlp(x), before) and torch.allclose(twin(x), before)
    assert "body.0.weight" in current_masks(mlp) and not current_masks(twin)
