"""Least-squares reconstruction of kept weights: it must lower the layer's output error, never touch
the mask, and agree with a direct least-squares solve for Linear and (unfolded) Conv2d layers."""

import copy

import pytest
import torch
from torch import nn

import mm_plugin
from mm_plugin.errors import ValidationError
from mm_plugin.flexhinm import FlexHiNMConfig, GradualFlexHiNM, flexhinm_sparsify_, validate_nm
from mm_plugin.masks import apply_masks_, capture_inputs, current_masks, reconstruct_


def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose features share a low-rank part, so kept weights can stand in for pruned ones."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 4, generator=g) @ torch.randn(4, dim, generator=g)
    return shared + 0.1 * torch.randn(n, dim, generator=g)


def lstsq_row(x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept weights of one row that best reproduce ``x @ w`` (ordinary least squares)."""
    return torch.linalg.lstsq(x[:, keep].double(), (x.double() @ w.double())[:, None]).solution[:, 0]


def test_linear_reconstruction_is_the_least_squares_solution_and_keeps_the_mask():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 8))
    x = correlated_inputs(512, 16)
    dense = layer[0].weight.detach().clone()
    captured = capture_inputs(layer, ["0.weight"], [x[:256], (x[256:], None)])
    mask = torch.rand(8, 16) > 0.6
    apply_masks_(layer, {"0.weight": mask})
    report = reconstruct_(layer, captured, damp=1e-8)
    w = layer[0].weight.detach()
    assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))  # the mask is untouched
    assert torch.equal(current_masks(layer)["0.weight"], mask)
    for r in range(8):
        expected = lstsq_row(x, dense[r], mask[r])
        torch.testing.assert_close(w[r, mask[r]].double(), expected, atol=1e-4, rtol=1e-4)
    assert report["0.weight"]["after"] < 0.5 * report["0.weight"]["before"]


def test_conv_reconstruction_solves_on_unfolded_patches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2))
    x = correlated_inputs(8 * 10 * 10, 4).reshape(8, 10, 10, 4).permute(0, 3, 1, 2).contiguous()
    dense = model[0].weight.detach().clone()
    captured = capture_inputs(model, ["0.weight"], [x])
    mask = torch.rand(dense.shape) > 0.5
    apply_masks_(model, {"0.weight": mask})
    with torch.no_grad():
        before = (model(x) - nn.functional.conv2d(x, dense, model[0].bias, 2, 1)).pow(2).sum()
    reconstruct_(model, captured, damp=1e-8)
    with torch.no_grad():
        after = (model(x) - nn.functional.conv2d(x, dense, model[0].bias, 2, 1)).pow(2).sum()
    assert torch.equal(model[0].weight.detach()[~mask], torch.zeros(int((~mask).sum())))
    assert after < 0.5 * before
    cols = nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 36)
    flat, keep = dense.reshape(6, -1), mask.reshape(6, -1)
    torch.testing.assert_close(model[0].weight.detach().reshape(6, -1)[0, keep[0]].double(),
                               lstsq_row(cols, flat[0], keep[0]), atol=1e-4, rtol=1e-4)


def test_prune_with_reconstruct_lowers_the_output_error(mlp):
    x = correlated_inputs(256, 64)
    reference = mlp(x).detach()
    plain = mm_plugin.prune_(copy.deepcopy(mlp), {"body.0.weight": 0.7})
    solved = mm_plugin.prune_(mlp, {"body.0.weight": 0.7}, calibration=[x], reconstruct=True)
    assert torch.equal(current_masks(plain)["body.0.weight"], current_masks(solved)["body.0.weight"])
    assert (solved(x) - reference).pow(2).mean() < (plain(x) - reference).pow(2).mean()
    with pytest.raises(ValidationError, match="calibration"):
        mm_plugin.prune_(mlp, {"body.0.weight": 0.7}, reconstruct=True)


def test_flexhinm_with_calibration_keeps_exact_two_of_four():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    x = correlated_inputs(256, 32)
    sparsity = {"0.weight": 0.6, "2.weight": 0.75}
    one_shot = flexhinm_sparsify_(model, sparsity, FlexHiNMConfig(permutation="none"), calibration=[x])
    assert validate_nm(model, regions=one_shot.nm_regions).ok
    assert torch.equal(current_masks(model)["0.weight"], one_shot.masks["0.weight"])

    gradual = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    before = {n: p.detach().clone() for n, p in gradual.named_parameters()}
    sched = GradualFlexHiNM(gradual, sparsity, FlexHiNMConfig(permutation="none"), total_steps=4,
                            calibration=[x])
    moved = gradual[0].parametrizations.weight.original.detach() != before["0.weight"]
    assert bool(moved.any())  # kept weights re-solved before training
    assert not bool((moved & ~sched.gates["0.weight"].hard_mask()).any())  # only where the first masks keep
    regions = sched.nm_regions
    sched.harden_()
    assert validate_nm(gradual, regions=regions).ok


def test_reconstruction_arguments_are_checked():
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValidationError, match="at least one calibration batch"):
        capture_inputs(model, ["0.weight"], [])
    captured = capture_inputs(model, ["0.weight"], [torch.randn(4, 8)])
    with pytest.raises(ValidationError, match="damping"):
        reconstruct_(model, captured, damp=0.0)
    assert reconstruct_(model, captured) == {}  # nothing is masked: nothing to solve
