"""FlexHiNM hybrid partition: targets, exact 2:4 in the 2:4 region, split search, eligibility."""

import logging

import pytest
import torch
from torch import nn

from mm_plugin.errors import ValidationError
from mm_plugin.flexhinm import FlexHiNMConfig, flexhinm_sparsify_, hybrid_partition
from mm_plugin.flexhinm.layout import as_groups, row_tile_ids
from mm_plugin.flexhinm.partition import DENSE, NM, PRUNED, split_candidates
from mm_plugin.masks import current_masks


@pytest.mark.parametrize("shape", [(64, 128), (48, 40), (32, 16, 3, 3)])
@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0])
def test_partition_meets_target_and_follows_the_region_formula(shape, target):
    torch.manual_seed(0)
    score = torch.randn(shape).abs()
    part = hybrid_partition(score, target, tile_rows=16)
    groups = shape[1] // 4
    # rounding to the nearest half vector per row tile
    assert abs(part.sparsity - target) <= 1 / (4 * groups) + 1e-9
    assert part.sparsity == pytest.approx(part.counts.sparsity)
    v, s = part.vector_fraction, part.sparsity
    if v < 1:
        assert part.nm_fraction == pytest.approx(2 * (s - v) / (1 - v))
    assert part.retained == pytest.approx(float((score * part.mask).sum()), rel=1e-5)


def test_regions_keep_exactly_two_four_or_zero_of_every_group():
    torch.manual_seed(1)
    score = torch.randn(64, 8, 3, 3).abs()
    part = hybrid_partition(score, 0.6, tile_rows=16)
    kept = as_groups(part.mask).sum(-1)
    tile_ids, _ = row_tile_ids(tuple(score.shape), 16)
    labels = part.labels.long()[tile_ids]
    assert bool((kept[labels == NM] == 2).all())
    assert bool((kept[labels == DENSE] == 4).all())
    assert bool((kept[labels == PRUNED] == 0).all())
    # the kept two are the two most important of their four
    g = as_groups(score)
    nm = labels == NM
    assert torch.equal((g * as_groups(part.mask)).sum(-1)[nm], g.topk(2, dim=-1).values.sum(-1)[nm])
    # every row tile has the same counts
    for tile in range(part.labels.shape[0]):
        row = part.labels[tile]
        assert int((row == PRUNED).sum()) == part.counts.n_pruned
        assert int((row == NM).sum()) == part.counts.n_nm


def test_search_returns_the_best_candidate_split():
    torch.manual_seed(2)
    score = torch.randn(32, 64).abs() * torch.rand(1, 64) ** 3  # strong channel structure
    best = hybrid_partition(score, 0.55, tile_rows=16)
    for counts in split_candidates(0.55, 16):
        other = hybrid_partition(score, 0.55, tile_rows=16, counts=counts)
        assert best.retained >= other.retained - 1e-4


def test_structured_channels_prefer_vector_pruning_over_plain_nm():
    torch.manual_seed(3)
    score = torch.rand(32, 64)
    score[:, 32:] *= 1e-3  # half the input channels are nearly useless
    part = hybrid_partition(score, 0.5, tile_rows=None)
    assert part.counts.n_pruned > 0  # drop the useless vectors, keep the useful ones dense
    assert (
        part.retained_fraction
        > hybrid_partition(score, 0.5, None, counts=split_candidates(0.5, 16)[0]).retained_fraction
    )


def test_given_scores_drive_the_mask():
    w = torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)
    reverse = w.max() + 1 - w  # prefers the small weights
    part = hybrid_partition(reverse, 0.5, tile_rows=None)
    assert float((w * part.mask).sum()) < float((w * hybrid_partition(w, 0.5, None).mask).sum())


def test_ineligible_layers_are_left_dense_with_a_reason(caplog):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 3 input channels
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise
        nn.Conv2d(8, 16, 1),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 6),
        nn.Linear(6, 4),  # 6 inputs
    )
    sparsity = {"0.weight": 0.5, "1.weight": 0.5, "2.weight": 0.5, "4.weight": 0.7, "5.weight": 0.5}
    with caplog.at_level(logging.INFO, logger="mm_plugin.flexhinm"):
        res = flexhinm_sparsify_(model, sparsity, FlexHiNMConfig(permutation="none"))
    assert set(res.partitions) == {"2.weight", "4.weight"}
    assert "multiple of 4" in res.skipped["0.weight"]
    assert "depthwise" in res.skipped["1.weight"]
    assert "multiple of 4" in res.skipped["5.weight"]
    assert set(current_masks(model)) == {"2.weight", "4.weight"}
    assert "5.weight" in caplog.text


def test_bad_targets_and_names_raise_validation_errors():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValidationError, match="sparsity"):
        flexhinm_sparsify_(model, {"0.weight": 1.5})
    with pytest.raises(ValidationError, match="nope"):
        flexhinm_sparsify_(model, {"nope.weight": 0.5})
    with pytest.raises(ValidationError, match="multiple of 4"):
        hybrid_partition(torch.rand(4, 6), 0.5)


def test_achievable_targets_are_met_exactly_and_keep_the_global_target():
    from mm_plugin.flexhinm.partition import achievable_targets

    shapes = {"a": (16, 16, 3, 3), "b": (32, 16, 3, 3), "c": (64, 64, 3, 3), "d": (10, 64)}
    size = {n: torch.Size(s).numel() for n, s in shapes.items()}
    for asked in ({"a": 0.8, "b": 0.7, "c": 0.76, "d": 0.9}, {"a": 0.3, "b": 0.55, "c": 0.5, "d": 0.05}):
        got = achievable_targets(asked, shapes)
        for n, t in got.items():
            assert hybrid_partition(torch.rand(shapes[n]), t).sparsity == pytest.approx(t)  # met exactly
            assert abs(t - asked[n]) <= 2 / shapes[n][1] + 1e-9  # within one step of half a vector
        total = {k: sum(size[n] * v[n] for n in v) / sum(size.values()) for k, v in (("asked", asked), ("got", got))}
        biggest_step = max(size[n] * 2 / shapes[n][1] for n in shapes) / sum(size.values())
        assert abs(total["got"] - total["asked"]) <= biggest_step / 2 + 1e-9
    rounded_alone = {n: round(t * shapes[n][1] / 2) / (shapes[n][1] / 2) for n, t in {"a": 0.8, "b": 0.8}.items()}
    kept = achievable_targets({"a": 0.8, "b": 0.8}, shapes)
    assert sorted(kept.values()) == [0.75, 0.875] != sorted(rounded_alone.values())  # one up, one down: total kept
    assert achievable_targets({"a": 0.0, "d": 1.0}, shapes) == {"a": 0.0, "d": 1.0}


def test_region_shares_count_dense_nm_and_vector_groups():
    from mm_plugin.flexhinm.partition import region_shares

    w = torch.rand(64, 32)
    part = hybrid_partition(w, 0.7, tile_rows=16)
    shares = region_shares({"w": part.mask})
    c = part.counts
    assert shares == pytest.approx({"share_dense": c.n_dense / c.n_groups, "share_24": c.n_nm / c.n_groups,
                                    "share_vector": c.n_pruned / c.n_groups})
    assert shares["share_vector"] + shares["share_24"] / 2 == pytest.approx(part.sparsity)
    both = region_shares({"w": part.mask, "dense": torch.ones(64, 32, dtype=torch.bool)})
    assert both["share_dense"] == pytest.approx((1 + shares["share_dense"]) / 2)
