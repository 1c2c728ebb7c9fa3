"""Structured Mix-and-Match through Torch-Pruning on timm ResNet, ViT and Swin (random init, CPU).

Small inputs keep the whole file well under three minutes on two cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torch_pruning as tp
from mm_plugin.adapters import torch_pruning as mtp
from torch import nn

import mm_plugin
from mm_plugin.deploy import latency_front
from mm_plugin.errors import (
    CalibrationRequiredError,
    UnknownNameError,
    UnsupportedModelError,
    ValidationError,
)

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------- models
def make_resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval(), torch.randn(1, 3, 64, 64)


def make_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)
    return model.eval(), torch.randn(2, 3, 32, 32)


def make_swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(
        img_size=32,
        patch_size=2,
        window_size=4,
        embed_dim=32,
        depths=(2, 2),
        num_heads=(2, 4),
        num_classes=10,
    )
    return model.eval(), torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet_plan():
    model, x = make_resnet()
    return model, x, mtp.plan_groups(model, x, [model.fc])


def _attn(model):
    return [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]


# ---------------------------------------------------------------------------------------- planning
def test_plan_has_ten_distinct_strategies_inside_ranges(resnet_plan):
    _model, _x, plan = resnet_plan
    units = plan.units
    assert len(units) == 12  # resnet18: 4 residual streams + 8 inner block groups
    assert all(isinstance(u, mm_plugin.Unit) for u in units) and plan.unit_kind == "channel_group"
    assert len(plan.strategies) == 10
    vectors = {tuple(round(s.sparsity[u.name], 6) for u in units) for s in plan.strategies}
    assert len(vectors) == 10
    assert np.all(plan.lo <= plan.hi + 1e-12)
    for s in plan.strategies:
        for u, lo, hi in zip(units, plan.lo, plan.hi, strict=True):
            assert lo - 1e-9 <= s.sparsity[u.name] <= hi + 1e-9
    # the stem's group (conv1 + layer1's residual stream) runs first and is protected by the first-layer rule
    assert units[0].name == "conv1" and units[0].order == 0
    assert plan.hi[0] <= 0.10 + 1e-12 and "first-layer" in plan.rules["conv1"]
    # the ranges vary by group: Mix-and-Match is not uniform pruning
    assert plan.hi.max() - plan.hi.min() > 0.2
    assert plan.config["range_importances"] == ["magnitude", "lamp", "filter_l1"]


def test_head_output_group_is_never_pruned():
    model, x = make_resnet()
    plan = mtp.plan_groups(model, x, range_importances=("magnitude",))  # head not ignored: its group comes back fixed
    assert plan.config["fixed_groups"] == ["fc"]
    assert "fc" not in {u.name for u in plan.units}
    ratios = mtp.ratio_dict(model, plan, "aggressive")
    assert ratios[model.fc] == 0.0
    pruner = tp.pruner.BasePruner(
        model, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, pruning_ratio_dict=ratios
    )
    pruner.step()
    assert model.fc.out_features == 10
    assert model(x).shape == (1, 10)


def test_rules_bind_groups_and_plan_round_trips(tmp_path):
    from mm_plugin.planning.rules import Rule

    model, x = make_vit()
    plan = mtp.plan_groups(model, x, [model.head], rules=[Rule("gentle-mlp", kinds=("mlp",), max=0.2)])
    mlp = [i for i, u in enumerate(plan.units) if u.kind == "mlp"]
    assert len(mlp) == 2 and all(plan.hi[i] <= 0.2 + 1e-12 for i in mlp)
    assert all("gentle-mlp" in plan.rules[plan.units[i].name] for i in mlp)
    assert {u.kind for u in plan.units} == {"patch_embedding", "attention", "mlp"}
    loaded = mm_plugin.Plan.load(plan.save(tmp_path / "plan.json"))  # units come back as planned
    assert loaded.units == plan.units
    for s in plan.strategies:
        assert loaded.kept(s.name) == plan.kept(s)


# ------------------------------------------------------------------------------------ the one-line changes
def test_ratio_dict_one_line_change_with_plain_basepruner():
    model, x = make_resnet()
    ignored = [model.fc]
    scheduler = mtp.MixAndMatchScheduler("balanced")
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        ignored_layers=ignored,
        pruning_ratio_dict=scheduler.ratio_dict(model, x, ignored),
    )
    pruner.step()
    assert model(x).shape == (1, 10)
    report = scheduler.report(model)
    assert report.ok, report.table()
    assert report.params_after < 0.8 * sum(p.numel() for p in make_resnet()[0].parameters())
    kept = {r.group: r.actual / r.channels for r in report.rows}
    assert max(kept.values()) - min(kept.values()) > 0.2  # different ratios per group
    # channel counts match the ratio dict to TP's rounding: kept = channels - round(ratio * channels)
    for r in report.rows:
        assert r.actual == r.channels - round(r.ratio * r.channels)


def test_mixandmatch_pruner_round_to_and_rescale():
    model, x = make_resnet()
    pruner = mtp.MixAndMatchPruner(
        model,
        x,
        tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.4,
        ignored_layers=[model.fc],
        round_to=8,
        strategy="feature-heavy",
        range_importances=("magnitude", "lamp"),
    )
    assert isinstance(pruner, tp.pruner.BasePruner)
    assert pruner.mm_strategy.name == "feature-heavy@0.4"
    assert abs(pruner.mm_plan.global_sparsity(pruner.mm_strategy) - 0.4) < 1e-3
    pruner.step()
    report = pruner.report
    assert report.ok and report.rows
    for r in report.rows:
        assert r.actual % 8 == 0 or r.actual == r.channels, r
    assert model.fc.out_features == 10 and model(x).shape == (1, 10)


def test_scheduler_rescales_to_a_multiply_add_budget():
    model, x = make_resnet()
    by_macs = mtp.MixAndMatchScheduler("feature-heavy", pruning_ratio=0.3, cost="macs")
    by_macs.ratio_dict(model, x, [model.fc])
    plan = by_macs.plan_
    assert all(u.macs > 0 for u in plan.units)
    assert plan.global_sparsity(by_macs.strategy_, "macs") == pytest.approx(0.3, abs=1e-3)
    assert by_macs.strategy_.name == "feature-heavy@0.3 macs"
    by_params = mtp.MixAndMatchScheduler("feature-heavy", pruning_ratio=0.3)
    by_params.ratio_dict(model, x, [model.fc])
    assert by_params.strategy_.sparsity != by_macs.strategy_.sparsity
    pruned, _ = mtp.prune_structured(model, x, "feature-heavy", plan=plan, pruning_ratio=0.3, cost="macs",
                                     ignored_layers=[model.fc])
    removed = 1 - mtp.macs_of(pruned, x) / mtp.macs_of(model, x)
    assert 0.3 <= removed < 0.6  # the linear count is a lower bound: a conv loses inputs and outputs


def test_pruner_rejects_conflicting_arguments():
    model, x = make_vit()
    with pytest.raises(ValidationError, match="global_pruning"):
        mtp.MixAndMatchPruner(model, x, ignored_layers=[model.head], global_pruning=True)
    with pytest.raises(UnknownNameError, match="strategy"):
        mtp.MixAndMatchPruner(model, x, ignored_layers=[model.head], strategy="no-such-strategy")


def test_taylor_needs_calibration_and_uses_it():
    model, x = make_vit()
    with pytest.raises(CalibrationRequiredError):
        mtp.plan_groups(model, x, [model.head], signal="product")
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))]
    pruned, report = mtp.prune_structured(
        model, x, "balanced", ignored_layers=["head"], signal="product", calibration=calib
    )
    assert report.ok and pruned(x).shape == (2, 10)
    assert "taylor" in mtp.plan_groups(model, x, [model.head], calibration=calib).config["range_importances"]
    assert all(p.grad is None for p in pruned.parameters())  # gradients cleaned up
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------- transformers
def test_vit_heads_and_dims_consistent_after_pruning():
    model, x = make_vit()
    pruned, report = mtp.prune_structured(model, x, "aggressive", ignored_layers=["head"])
    assert report.ok, report.table()
    assert pruned.head.out_features == 10 and pruned(x).shape == (2, 10)
    embed = [r for r in report.rows if r.kind == "patch_embedding"]
    assert len(embed) == 1 and embed[0].ratio <= 0.10 + 1e-12  # the patch embedding is protected
    for attn in _attn(pruned):
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
        assert attn.proj.in_features == attn.attn_dim < 64
        assert math.isclose(attn.scale, attn.head_dim**-0.5)
    # the fused (SDPA) and explicit attention paths agree: the dense temperature was folded into q
    outs = []
    for fused in (True, False):
        for attn in _attn(pruned):
            attn.fused_attn = fused
        with torch.no_grad():
            outs.append(pruned(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_update_attention_keeps_the_dense_temperature():
    model, _x = make_vit()
    attn = _attn(model)[0]
    q_before = attn.qkv.weight[: attn.attn_dim].clone()
    old_scale = attn.scale
    # prune one head dim by hand, then update: q rows rescale by old/new scale
    keep = [i for i in range(attn.qkv.out_features) if i % attn.head_dim != 0]
    attn.qkv.weight = nn.Parameter(attn.qkv.weight.data[keep])
    attn.qkv.bias = nn.Parameter(attn.qkv.bias.data[keep])
    attn.qkv.out_features = len(keep)
    assert mtp.update_attention_(model) == ["blocks.0.attn"]
    assert attn.head_dim == 31 and attn.attn_dim == 62
    factor = old_scale / attn.scale
    expect = q_before[[i for i in range(64) if i % 32 != 0]] * factor
    torch.testing.assert_close(attn.qkv.weight[:62], expect)
    assert mtp.update_attention_(model) == []  # idempotent


def test_swin_attention_and_patch_merging_pruned():
    model, x = make_swin()
    dense_qkv = [a.qkv.out_features for a in _attn(model)]
    tables = [a.relative_position_bias_table.shape for a in _attn(model)]
    pruned, report = mtp.prune_structured(model, x, "aggressive", ignored_layers=["head.fc"])
    assert report.ok, report.table()
    assert pruned(x).shape == (2, 10)
    attn_rows = [r for r in report.rows if r.kind == "attention"]
    assert len(attn_rows) == 4  # one group per WindowAttention: none left out
    for a, before, table in zip(_attn(pruned), dense_qkv, tables, strict=True):
        assert a.qkv.out_features < before  # every attention layer actually lost head dims
        assert a.qkv.out_features == 3 * a.proj.in_features
        assert a.relative_position_bias_table.shape == table  # per-head table kept whole
    merge = pruned.layers[1].downsample
    stage0 = pruned.layers[0].blocks[-1].mlp.fc2.out_features
    assert merge.norm.normalized_shape[0] == merge.reduction.in_features == 4 * stage0
    assert merge.reduction.out_features == pruned.layers[1].blocks[0].norm1.normalized_shape[0]


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_swin_without_support_would_leave_attention_unpruned_and_is_caught():
    """Plain TP on Swin with the bias tables coupled in: our report notices, instead of staying silent."""
    model, x = make_swin()
    plan = mtp.plan_groups(model, x, [model.head.fc])
    ratios = mtp.ratio_dict(model, plan, "aggressive")
    support = mtp.tp_support(model, [model.head.fc])
    tables = [p for p in support["ignored_layers"] if isinstance(p, nn.Parameter)]
    assert len(tables) == 4
    ignored = [m for m in support["ignored_layers"] if not isinstance(m, nn.Parameter)]
    pruner = tp.pruner.BasePruner(
        model,
        x,
        tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=ignored,
        num_heads=support["num_heads"],
        customized_pruners=support["customized_pruners"],
        in_channel_groups={},
        out_channel_groups={},
    )
    pruner.step()
    report = mtp.channel_report(model, plan, "aggressive")
    assert not report.ok
    assert any(r.kind == "attention" for r in report.mismatches())
    with pytest.raises(UnsupportedModelError, match="silently left unpruned.*num_heads"):
        report.check(plan, mtp.pruner.TP_HINT)


# ---------------------------------------------------------------------------------------- export and save
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("make", [make_resnet, make_vit, make_swin], ids=["resnet18", "vit", "swin"])
def test_openvino_convert_matches_torch(make, resnet_plan):
    ov = pytest.importorskip("openvino")
    model, x = make()
    ignored = ["fc"] if hasattr(model, "fc") else ["head"]
    plan = resnet_plan[2] if make is make_resnet else None
    pruned, report = mtp.prune_structured(model, x, "balanced", plan=plan, ignored_layers=ignored)
    assert report.ok
    ov_model = ov.convert_model(pruned.eval(), example_input=x)
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled([x.numpy()])[0]
    with torch.no_grad():
        want = pruned(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fmt", ["state_dict", "module"])
def test_save_and_reload_give_equal_outputs(tmp_path, fmt):
    model, x = make_vit()
    pruned, _ = mtp.prune_structured(model, x, "balanced", ignored_layers=["head"])
    with torch.no_grad():
        want = pruned(x)
    path = mtp.save_pruned(pruned, tmp_path / "pruned.pt", format=fmt)
    fresh = make_vit()[0] if fmt == "state_dict" else None
    loaded = mtp.load_pruned(path, fresh).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want)
    assert [a.head_dim for a in _attn(loaded)] == [a.head_dim for a in _attn(pruned)]


def test_load_state_dict_needs_the_architecture(tmp_path):
    model, _x = make_resnet()
    path = mtp.save_pruned(model, tmp_path / "m.pt")
    with pytest.raises(ValidationError, match="pass model="):
        mtp.load_pruned(path)


# ---------------------------------------------------------------------------------------- unsupported layers
class RawConv(nn.Module):
    """A convolution written with F.conv2d on a bare parameter: TP cannot see its channels."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


class NetWithRawConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.raw = RawConv(16, 32)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.raw(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


def test_unsupported_layer_error_names_the_module():
    torch.manual_seed(0)
    model, x = NetWithRawConv().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(UnsupportedModelError, match=r"module 'raw' \(RawConv\)") as info:
        mtp.MixAndMatchPruner(model, x, ignored_layers=[model.fc])
    assert "customized_pruners" in str(info.value)


# ----------------------------------------------------------------------------------- baselines and latency
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_tp_baselines_run_and_time():
    model, x = make_vit()
    for method in ("uniform", "global"):
        pruned, info = mtp.prune_baseline(model, x, method, 0.3, ignored_layers=["head"])
        assert pruned(x).shape == (2, 10)
        assert info["params_after"] < info["params_before"]
    pruned = {"tp-uniform@0.5": mtp.prune_baseline(model, x, "uniform", 0.5, ignored_layers=["head"])[0]}
    base = latency_front(model, x, pruned, warmup=1, rounds=3, runs=3)
    assert base[0].name == "tp-uniform@0.5" and base[0].latency_ratio > 0 and base[0].params_ratio < 0.5


def test_latency_front_measures_each_strategy(resnet_plan):
    pytest.importorskip("openvino")
    model, x, plan = resnet_plan
    pruned = {name: mtp.prune_structured(model, x, name, plan=plan, ignored_layers=["fc"])[0]
              for name in ("conservative", "aggressive")}
    points = latency_front(model, x, pruned, warmup=2, rounds=5, runs=3)
    assert [p.name for p in points] == ["conservative", "aggressive"]
    assert all(p.latency_ms > 0 and p.dense_latency_ms > 0 for p in points)
    # aggressive removes far more channels; OpenVINO must see it (measured, not assumed)
    assert points[1].params_ratio < points[0].params_ratio
    assert points[1].latency_ratio < points[0].latency_ratio
