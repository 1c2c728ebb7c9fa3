import dataclasses

import numpy as np
import pytest
import timm
import torch
from conftest import batches

import mm_plugin
from mm_plugin.errors import CalibrationRequiredError, ValidationError
from mm_plugin.planning.allocations import AllocationInputs, allocate, list_allocations
from mm_plugin.planning.signals import mean_abs_gradients


@pytest.fixture(scope="module")
def shared_inputs():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    layers = mm_plugin.inventory(model, torch.randn(1, 3, 32, 32)).units
    weights = {layer.name: model.get_submodule(layer.module).weight.detach() for layer in layers}
    grads = mean_abs_gradients(model, [layer.name for layer in layers], batches(1))
    return AllocationInputs(layers, weights, grads)


@pytest.fixture
def inputs(shared_inputs):
    return dataclasses.replace(shared_inputs)  # a test may drop gradients; the sort cache is shared


@pytest.mark.parametrize("name", ["global_magnitude", "lamp", "snip", "uniform", "uniform_plus", "erk"])
@pytest.mark.parametrize("target", [0.3, 0.7, 0.9])
def test_meets_target_within_one_weight_per_layer(inputs, name, target):
    s = allocate(name, inputs, target)
    sizes = inputs.sizes
    assert s.shape == (len(inputs.units),)
    assert ((s >= 0) & (s <= 1)).all()
    pruned = (s * sizes).round()
    assert abs(pruned.sum() - target * sizes.sum()) <= len(sizes)
    assert np.allclose(pruned, s * sizes)  # whole weights


def test_registry_lists_all():
    assert set(list_allocations()) >= {"global_magnitude", "lamp", "snip", "uniform", "uniform_plus", "erk"}


def test_min_density_guard_prevents_collapse(inputs):
    s = allocate("global_magnitude", inputs, 0.95)
    kept = (1 - s) * inputs.sizes
    assert (kept >= np.maximum(np.ceil(0.01 * inputs.sizes), 1) - 1e-9).all()


def test_uniform_plus_keeps_first_dense_and_caps_last(inputs):
    s = allocate("uniform_plus", inputs, 0.8)
    assert s[0] == 0.0 and s[-1] <= 0.8 + 1e-9


def test_erk_prunes_large_layers_more(inputs):
    s = allocate("erk", inputs, 0.8)
    big, small = int(np.argmax(inputs.sizes)), int(np.argmin(inputs.sizes))
    assert s[big] > s[small]


def test_global_magnitude_uses_one_threshold(inputs):
    s = allocate("global_magnitude", inputs, 0.5)
    thresholds = []
    for layer, sp in zip(inputs.units, s):
        w = inputs.weights[layer.name].abs().flatten().sort().values
        k = int(round(sp * w.numel()))
        if 0 < k < w.numel():
            thresholds.append((w[k - 1].item(), w[k].item()))
    lo = max(t[0] for t in thresholds)
    hi = min(t[1] for t in thresholds)
    assert lo <= hi  # every layer's cut lies on the same global threshold


def test_snip_without_gradients(inputs):
    inputs.gradients = None
    with pytest.raises(CalibrationRequiredError, match="calibration"):
        allocate("snip", inputs, 0.5)


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_target_outside_range(inputs, target):
    with pytest.raises(ValidationError, match=r"\[0, 1\)"):
        allocate("lamp", inputs, target)
