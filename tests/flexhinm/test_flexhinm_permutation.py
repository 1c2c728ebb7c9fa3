"""Gyro-Permutation vs greedy vs none, and function-preserving folding (MLP, ResNet, ViT)."""

import pytest
import torch
from torch import nn

from mm_plugin.errors import ConfigError, ValidationError
from mm_plugin.flexhinm import (
    PERMUTATIONS,
    ChannelProblem,
    FlexHiNMConfig,
    LayerTerm,
    find_channel_groups,
    flexhinm_permute_,
    flexhinm_sparsify_,
    fold_permutation_,
    hybrid_partition,
    matrix_problem,
    validate_nm,
)
from mm_plugin.flexhinm.folding import model_outputs, same_outputs
from mm_plugin.masks import apply_masks_

timm = pytest.importorskip("timm")


def structured_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A matrix with a hidden perfect 2:4 arrangement (2 big, 2 tiny per row and group), shuffled."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(rows, cols // 4, 4, generator=g).argsort(-1) < 2
    w = torch.where(
        big,
        1 + torch.rand(rows, cols // 4, 4, generator=g),
        0.1 * torch.rand(rows, cols // 4, 4, generator=g),
    )
    return w.reshape(rows, cols)[:, torch.randperm(cols, generator=g)]


def recovered(problem: ChannelProblem, perm: torch.Tensor, total: float) -> float:
    base = problem.objective(torch.arange(problem.size))
    return (problem.objective(perm) - base) / (total - base)


def test_gyro_beats_asp_beats_greedy_beats_none_on_a_structured_matrix():
    w = structured_matrix(32, 128, seed=0)
    problem = matrix_problem(w)
    share = {}
    for name in ("none", "greedy", "asp", "gyro"):
        perm = PERMUTATIONS.get(name)(problem, seed=0)
        assert torch.equal(perm.sort().values, torch.arange(128))
        share[name] = recovered(problem, perm, float(w.sum()))
    assert share["none"] == 0.0
    assert share["greedy"] > share["none"] + 0.1
    assert share["gyro"] >= share["asp"] >= share["greedy"]
    small = matrix_problem(structured_matrix(8, 32, seed=1))
    assert torch.equal(PERMUTATIONS.get("gyro")(small, seed=0), PERMUTATIONS.get("gyro")(small, seed=0))


def test_gyro_improves_a_coupled_hybrid_problem():
    torch.manual_seed(0)
    prod = torch.rand(64, 32) * torch.rand(64, 1) ** 2  # producer rows of very different importance
    cons = torch.rand(24, 64) * torch.rand(1, 64) ** 2
    cp, cc = hybrid_partition(prod, 0.7, 16).counts, hybrid_partition(cons, 0.6, 8).counts
    problem = ChannelProblem(
        64, [LayerTerm("c", cons, "consumer", cc, 8)], LayerTerm("p", prod, "producer", cp, 16)
    )
    assert problem.producer_sensitive
    perm = PERMUTATIONS.get("gyro")(problem, seed=1)
    identity = torch.arange(64)
    assert problem.objective(perm) > problem.objective(identity)
    assert problem.producer_value(perm) >= problem.producer_value(identity) - 1e-4
    assert problem.consumer_value(perm) >= problem.consumer_value(identity) - 1e-4


def _mlp():
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.GELU(), nn.Dropout(0.0), nn.Linear(24, 8)
    )


def _fold_random_and_compare(model, inputs, expect_groups):
    model.eval()
    ref = model_outputs(model, inputs)
    found = find_channel_groups(model, inputs)
    assert sorted(g.producer for g in found.groups) == sorted(expect_groups)
    gen = torch.Generator().manual_seed(0)
    for group in found.groups:
        fold_permutation_(model, group, torch.randperm(group.size, generator=gen))
    out = model_outputs(model, inputs)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    return found


def test_folding_preserves_an_mlp():
    found = _fold_random_and_compare(_mlp(), (torch.randn(5, 16),), ["0", "2"])
    assert "model output" in found.skipped["5"]


def test_folding_preserves_a_resnet():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    inner = [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    found = _fold_random_and_compare(model, (torch.randn(2, 3, 32, 32),), inner)
    assert "add" in found.skipped["layer1.0.conv2"]  # residual stream: not permuted
    group = next(g for g in found.groups if g.producer == "layer1.0.conv1")
    assert group.consumers == ("layer1.0.conv2",) and group.channelwise == ("layer1.0.bn1",)


def test_folding_preserves_a_vit():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
    )
    found = _fold_random_and_compare(
        model, (torch.randn(2, 3, 32, 32),), ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    )
    assert "reshape" in found.skipped["blocks.0.attn.qkv"]  # attention heads
    assert "add" in found.skipped["blocks.0.mlp.fc2"]  # residual stream


def test_permute_stage_keeps_the_function_and_sparsify_gives_valid_masks():
    torch.manual_seed(0)
    model = _mlp()
    x = (torch.randn(7, 16),)
    ref = model_outputs(model, x)
    sparsity = {"0.weight": 0.5, "2.weight": 0.6, "5.weight": 0.5}
    report = flexhinm_permute_(model, sparsity, FlexHiNMConfig(permutation="gyro", tile_rows=8), example_inputs=x)
    assert report.applied  # something was worth permuting
    for stats in report.applied.values():
        assert stats["retained_after"] > stats["retained_before"]
    for a, b in zip(ref, model_outputs(model, x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    model2 = _mlp()
    res = flexhinm_sparsify_(model2, sparsity, FlexHiNMConfig(permutation="gyro", tile_rows=8), example_inputs=x)
    assert validate_nm(model2, regions=res).ok
    assert {n for n, p in res.partitions.items()} == set(sparsity)


def test_gyro_retains_at_least_as_much_as_no_permutation_in_a_model():
    torch.manual_seed(0)
    sparsity = {"0.weight": 0.5, "2.weight": 0.5, "5.weight": 0.5}
    retained = {}
    for method in ("none", "gyro"):
        torch.manual_seed(0)
        model = _mlp()
        res = flexhinm_sparsify_(model, sparsity, FlexHiNMConfig(permutation=method, tile_rows=None))
        retained[method] = sum(p.retained for p in res.partitions.values())
    assert retained["gyro"] > retained["none"]


def test_folding_refuses_masked_weights_and_bad_permutations():
    model = _mlp()
    group = find_channel_groups(model).groups[0]
    with pytest.raises(ValidationError, match="not a permutation"):
        fold_permutation_(model, group, torch.zeros(group.size, dtype=torch.long))
    apply_masks_(model, {"2.weight": torch.ones(24, 32, dtype=torch.bool)})
    with pytest.raises(ValidationError, match="before masking"):
        fold_permutation_(model, group, torch.randperm(group.size))


def test_config_validates_names():
    with pytest.raises(ValidationError, match="allowed values: asp, exact, greedy, gyro, none"):
        FlexHiNMConfig(permutation="tetris")
    with pytest.raises(ConfigError, match="tile_rows"):
        FlexHiNMConfig(tile_rows=6)
    assert FlexHiNMConfig.from_dict(FlexHiNMConfig(seed=3).to_dict()).seed == 3
    assert same_outputs([torch.ones(2)], [torch.ones(2) + 1e-7])


def test_a_model_fx_cannot_trace_warns_what_is_not_permuted(caplog):
    """A fallback that changes what is computed is a WARNING naming what and why."""
    import logging

    from torch import nn

    from mm_plugin.flexhinm.folding import find_channel_groups

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else -self.body(x)  # fx cannot trace a data-dependent branch

    caplog.set_level(logging.WARNING, logger="mm_plugin.flexhinm")
    found = find_channel_groups(DataDependent())
    assert found.groups  # the children are still searched
    assert "<model>: torch.fx cannot trace it" in caplog.text and "are not permuted" in caplog.text
