"""Mix-and-Match from NNCF-style configs through real NNCF 3.4 and OpenVINO (random-init timm models, CPU).

Small models and inputs keep the whole file under three minutes on two cores; the expensive objects
(compressed ResNet-18, tiny Swin, int8 Swin) are built once per module.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("nncf")
pytest.importorskip("openvino")
timm = pytest.importorskip("timm")

import nncf
import nncf.torch
from mm_plugin.adapters import nncf as mnncf
from mm_plugin.adapters import openvino as ovh
from nncf.torch.function_hook.wrapper import is_wrapped

import mm_plugin
from mm_plugin.errors import CalibrationRequiredError, ConfigError, UnsupportedModelError

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- models
def make_resnet() -> nn.Module:
    """timm ResNet-18 with BatchNorm statistics and affine params drawn at random, as after training
    (timm's zero-initialised last BN gamma would otherwise zero whole convolutions once OpenVINO folds
    BN into them)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def make_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2),
                           num_heads=(2, 4), num_classes=10).eval()


RESNET_CONFIG = {
    "input_info": {"sample_size": [1, 3, 64, 64]},
    "compression": {
        "algorithm": "mix_and_match",
        "signal": "magnitude",
        "strategy": "balanced",
        "target_sparsity": 0.5,
        "ignored_scopes": ["fc/linear/0"],  # NNCF 2.x list form: node names, '{re}' for patterns
    },
}
SWIN_CONFIG = {
    "input_info": {"sample_size": [1, 3, 32, 32]},
    "compression": [{
        "algorithm": "mix_and_match",
        "strategy": "classifier-heavy",
        "target_sparsity": 0.3,
        "ignored_scopes": {"patterns": ["layers/0/blocks/0/attn/"]},
        "rules": {"mlp-cap": {"kinds": ["mlp"], "max": 0.45}},  # keyed form; a new rule
    }],
}
SWIN_IGNORED = {"layers.0.blocks.0.attn.qkv.weight", "layers.0.blocks.0.attn.proj.weight"}


def _x(shape, seed=3):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "resnet.json"
    path.write_text(json.dumps(RESNET_CONFIG))
    ctrl, model = mnncf.create_compressed_model(make_resnet(), path)  # config from a JSON file
    return ctrl, model, make_resnet, _x((2, 3, 64, 64))


@pytest.fixture(scope="module")
def swin():
    ctrl, model = mnncf.create_compressed_model(make_swin(), json.dumps(SWIN_CONFIG))  # ... from JSON text
    return ctrl, model, make_swin, _x((2, 3, 32, 32))


@pytest.fixture(params=["resnet", "swin"])
def compressed(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------- the plan
def _planned_zeros(ctrl) -> dict[str, int]:
    sizes = ctrl.plan.sizes
    return {n: round(s * sizes[n]) for n, s in ctrl.strategy.sparsity.items()}


def test_pruning_statistic_equals_plan_per_tensor(compressed):
    ctrl, model, _, _ = compressed
    stat = nncf.pruning_statistic(model)
    by_name = {t.tensor_name: t for t in stat.pruned_tensors}
    assert set(by_name) == set(ctrl.strategy.sparsity)
    for name, ratio in ctrl.strategy.sparsity.items():
        t = by_name[name]
        numel = int(np.prod(t.shape))
        assert tuple(t.shape) == tuple(model.get_parameter(name).shape)
        assert abs(t.pruned_ratio * numel - ratio * numel) <= 1.0, name  # to one weight
    target = ctrl.step.get("target_sparsity")
    total = sum(ctrl.plan.sizes.values())
    assert abs(stat.pruning_ratio - target) <= 1.0 / total * len(by_name)


def test_ratios_are_the_core_plan_rescaled():
    """The adapter's per-layer ratios are exactly mm_plugin.plan(...).rescale(strategy, target) with the
    NNCF-ignored head left out: no second planning logic in the adapter."""
    ctrl, _ = mnncf.create_compressed_model(make_swin(), {
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": {"algorithm": "mix_and_match", "strategy": "feature-heavy", "target_sparsity": 0.45,
                        "range_targets": [0.35, 0.45, 0.55], "ignored_scopes": {"names": ["head/fc/linear/0"]}},
    })
    model = make_swin()
    plan = mm_plugin.plan(model, _x((1, 3, 32, 32)), targets=(0.35, 0.45, 0.55), ignored_scope=["head.fc.weight"])
    expected = plan.rescale("feature-heavy", 0.45).sparsity
    assert ctrl.strategy.sparsity == pytest.approx(expected, abs=1e-12)
    assert "head.fc.weight" not in ctrl.strategy.sparsity
    assert ctrl.ignored == ("head.fc.weight",)


def test_masks_are_nncf_hooks_and_ignored_weights_stay_dense(swin):
    ctrl, model, _, _ = swin
    hooks = mnncf.wrapping.mask_hooks(model)
    assert set(hooks) == set(ctrl.strategy.sparsity)
    assert all(type(h).__name__ == "UnstructuredPruningMask" for h in hooks.values())
    assert set(ctrl.ignored) == SWIN_IGNORED
    assert not SWIN_IGNORED & set(hooks)
    # the rule from the config bounds every MLP weight
    mlp = [i for i, layer in enumerate(ctrl.plan.units) if layer.kind == "mlp"]
    assert mlp and all(ctrl.plan.hi[i] <= 0.45 for i in mlp)
    assert all("mlp-cap" in ctrl.plan.rules[ctrl.plan.units[i].name] for i in mlp)
    assert all(ctrl.strategy.sparsity[ctrl.plan.units[i].name] <= 0.45 + 1e-9 for i in mlp)
    # the raw weights agree with the masks: kept ones untouched, pruned ones zero (as the core's apply_masks_)
    fresh = make_swin()
    for name, hook in hooks.items():
        keep = hook.binary_mask
        assert torch.equal(model.get_parameter(name), fresh.get_parameter(name) * keep), name
        assert torch.all(model.get_parameter(name)[keep] != 0), name


def test_controller_statistics_report_the_plan(compressed):
    ctrl, _, _, _ = compressed
    st = ctrl.statistics()
    assert st.source == "nncf.pruning_statistic"
    assert {s.name for s in st.layers} == set(ctrl.strategy.sparsity)
    planned = _planned_zeros(ctrl)
    for s in st.layers:
        assert s.zeros == planned[s.name], s.name
        assert s.metatype.startswith("PT")
    assert st.pruning_ratio == pytest.approx(ctrl.step.get("target_sparsity"), abs=1e-4)
    text = st.to_str()
    assert "PLANNED WEIGHTS" in text and ctrl.strategy.name in text
    json.dumps(st.to_dict())


def test_nncf_strip_bakes_the_planned_zeros(compressed):
    ctrl, model, _, x = compressed
    with torch.no_grad():
        expected = model(x)
    stripped = nncf.strip(model, do_copy=True, strip_format=nncf.StripFormat.IN_PLACE)
    assert not mnncf.wrapping.mask_hooks(stripped)
    hooks = mnncf.wrapping.mask_hooks(model)
    for name, zeros in _planned_zeros(ctrl).items():
        w = stripped.get_parameter(name)
        assert int((w == 0).sum()) == zeros, name
        assert torch.equal(w == 0, ~hooks[name].binary_mask), name
    with torch.no_grad():
        assert torch.allclose(stripped(x), expected, atol=1e-5)


def test_export_ir_zero_counts_match_plan(compressed, tmp_path):
    ctrl, model, _, x = compressed
    report = ctrl.export(tmp_path / "model.xml")
    assert report.path.exists() and report.path.with_suffix(".bin").exists()
    assert report.exact, [m for m in report.matches if not m.exact][:3]
    # independent count straight from the saved IR
    constants = ovh.weight_constants(report.path)
    planned = _planned_zeros(ctrl)
    matched = {m.param: m.constant for m in report.matches}
    assert set(matched) == set(planned) and len(set(matched.values())) == len(planned)
    by_name = {c.name: c for c in constants}
    assert {p: by_name[c].zeros for p, c in matched.items()} == planned
    # the zeros of the whole IR: the planned ones plus none elsewhere (random weights are never 0)
    assert sum(c.zeros for c in constants) == sum(planned.values())
    # the IR computes what the masked model computes; the controller's model is left as it was
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.allclose(ovh.infer(report.path, x)[0], expected, atol=1e-4, rtol=1e-4)
    assert mnncf.wrapping.mask_hooks(model)


def test_get_config_load_from_config_roundtrip(compressed):
    _, model, factory, x = compressed
    config = nncf.torch.get_config(model)
    state = copy.deepcopy(model.state_dict())
    restored = nncf.torch.load_from_config(factory(), json.loads(json.dumps(config)))  # JSON-serialisable
    restored.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    a = {t.tensor_name: t.pruned_ratio for t in nncf.pruning_statistic(model).pruned_tensors}
    b = {t.tensor_name: t.pruned_ratio for t in nncf.pruning_statistic(restored).pruned_tensors}
    assert a == b


def test_prepare_for_export_leaves_a_plain_model():
    ctrl, model = mnncf.create_compressed_model(make_swin(), SWIN_CONFIG)
    x = _x((1, 3, 32, 32))
    with torch.no_grad():
        expected = model(x)
    planned = _planned_zeros(ctrl)
    plain = ctrl.prepare_for_export()
    assert not is_wrapped(plain) and type(plain).forward is not None
    assert not any("__nncf_hooks" in k for k in plain.state_dict())
    assert "forward" not in plain.__dict__
    for name, zeros in planned.items():
        assert int((plain.get_parameter(name) == 0).sum()) == zeros
    with torch.no_grad():
        assert torch.allclose(plain(x), expected, atol=1e-5)
    st = ctrl.statistics()
    assert st.source == "weights" and {s.name: s.zeros for s in st.layers} == planned


def test_int8_quantization_after_pruning_keeps_the_zeros(tmp_path):
    config = copy.deepcopy(SWIN_CONFIG)
    config["compression"].append({"algorithm": "quantization", "subset_size": 4, "model_type": "transformer"})
    calibration = [_x((1, 3, 32, 32), seed=s) for s in range(4)]
    ctrl, model = mnncf.create_compressed_model(make_swin(), config, calibration=calibration)
    kinds = {type(h).__name__ for _, h in mnncf.wrapping.hook_storage(model).named_hooks()}
    assert {"UnstructuredPruningMask", "SymmetricQuantizer"} <= kinds
    planned = _planned_zeros(ctrl)
    st = ctrl.statistics()
    assert st.quantized and {s.name: s.zeros for s in st.layers} == planned
    stripped = ctrl.strip()  # masks baked, NNCF quantizers -> torch FakeQuantize (StripFormat.NATIVE)
    assert not mnncf.wrapping.mask_hooks(stripped) and mnncf.wrapping.mask_hooks(model)
    assert {type(h).__name__ for _, h in mnncf.wrapping.hook_storage(stripped).named_hooks()} <= {
        "FakeQuantize", "SQMultiply"}
    hooks = mnncf.wrapping.mask_hooks(model)
    for name, zeros in planned.items():  # NATIVE strip may fake-quantize a weight in place: rounding adds zeros
        w = stripped.get_parameter(name)
        assert bool((w[~hooks[name].binary_mask] == 0).all()) and int((w == 0).sum()) >= zeros, name
    report = ctrl.export(tmp_path / "int8.xml")
    assert report.kept  # every planned zero is still an exact zero of the int8 weight
    by_name = {c.name: c for c in report.constants}
    for m in report.matches:
        c = by_name[m.constant]
        assert c.dtype == "i8", (m.param, c.dtype)
        assert c.zeros >= planned[m.param] and m.lost_zeros == 0
    # and the int8 IR still computes roughly what the fake-quantized model does
    x = calibration[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(ovh.infer(report.path, x)[0] - expected).max() < 0.1 * np.abs(expected).max() + 0.05


def test_cli_runs_the_same_config(tmp_path):
    config = {"input_info": {"sample_size": [1, 1, 28, 28]},  # the strategy as planned at these range targets
              "compression": {"algorithm": "mix_and_match", "strategy": "aggressive", "range_targets": [0.7, 0.8, 0.9]}}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    parser = argparse.ArgumentParser(prog="mm-prune")
    mnncf.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["nncf", "--config", str(tmp_path / "cfg.json"), "--model", "swin_tiny_mnist",
                              "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["export"]["exact"] is True
    stats = summary["statistics"]
    assert stats["strategy"] == "aggressive"
    total = sum(layer["numel"] for layer in stats["layers"])  # each layer rounds to a whole weight
    assert stats["pruning_ratio"] == pytest.approx(stats["planned_ratio"], abs=0.5 * len(stats["layers"]) / total)
    assert all(abs(layer["zeros"] - layer["planned_ratio"] * layer["numel"]) <= 0.5 for layer in stats["layers"])
    assert (tmp_path / "out" / "model.xml").exists() and (tmp_path / "out" / "plan.json").exists()
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert "compression_state" in ckpt["nncf_config"]


# ---------------------------------------------------------------------------------------- bad configs
def _cfg(**compression):
    return {"input_info": {"sample_size": [1, 3, 32, 32]},
            "compression": [{"algorithm": "mix_and_match", "target_sparsity": 0.5, **compression}]}


BAD_CONFIGS = [
    pytest.param(_cfg(sparsity_target=0.5), [r"compression\[0\]\.sparsity_target: unknown key",
                                             r"params\.sparsity_target, or target_sparsity", "allowed keys: algorithm"],
                 id="nncf2-key"),
    pytest.param(_cfg(target_sparsity="0.5"), [r"compression\[0\]\.target_sparsity: expected a number, got string"],
                 id="wrong-type"),
    pytest.param(_cfg(target_sparsity=1.2), [r"compression\[0\]\.target_sparsity: 1.2 is out of range",
                                             r"numbers in \[0, 1\)"], id="sparsity-out-of-range"),
    pytest.param(_cfg(target_sparsity=-0.1), [r"compression\[0\]\.target_sparsity", r"\[0, 1\)"], id="negative"),
    pytest.param(_cfg(strategy="balancd"), [r"compression\[0\]\.strategy: unknown strategy 'balancd'",
                                            "allowed values: conservative, aggressive, balanced"],
                 id="unknown-strategy"),
    pytest.param(_cfg(strategy=3), [r"compression\[0\]\.strategy: expected a string, got number", "balanced"],
                 id="strategy-type"),
    pytest.param(_cfg(signal="hessian"), [r"compression\[0\]\.signal: unknown value 'hessian'",
                                          "allowed values: gradient, magnitude, product"], id="unknown-signal"),
    pytest.param(_cfg(range_targets=[0.5, 1.5]), [r"compression\[0\]\.range_targets\[1\]: 1.5 is out of range"],
                 id="range-target"),
    pytest.param(_cfg(allocations=["global_magnitude", "l0"]),
                 [r"compression\[0\]\.allocations\[1\]: unknown allocation 'l0'", "allowed values: erk"],
                 id="unknown-allocation"),
    pytest.param(_cfg(rules={"classifier-head": {"max": 2}}),
                 [r"compression\[0\]\.rules\.classifier-head: .*max must be a number in \[0, 1\]"], id="bad-rule"),
    pytest.param(_cfg(rules=[{"name": "x", "kinds": ["lstm"]}]),
                 [r"compression\[0\]\.rules\[0\]: .*unknown kinds \['lstm'\]", "allowed: conv"], id="rule-kind"),
    pytest.param(_cfg(ignored_scopes=3), [(r"compression\[0\]\.ignored_scopes: expected a string or an array or an "
                                          "object, got number")],
                 id="scope-type"),
    pytest.param(_cfg(ignored_scopes=["{re}(("]), [r"compression\[0\]\.ignored_scopes\[0\]: '\(\(' is not a valid"],
                 id="scope-regex"),
    pytest.param(_cfg(ignored_scopes={"nmes": ["x"]}), [r"compression\[0\]\.ignored_scopes\.nmes: unknown key",
                                                        "did you mean 'names'", "allowed keys: names, patterns"],
                 id="scope-key"),
    pytest.param({"input_info": {"sample_size": [1, "3", 32, 32]}, "compression": {"algorithm": "mix_and_match"}},
                 [r"input_info\.sample_size\[1\]: expected a positive integer"], id="sample-size"),
    pytest.param({"input_info": {"sample_size": [1, 3, 32, 32], "filler": "noise"},
                  "compression": {"algorithm": "mix_and_match"}},
                 [r"input_info\.filler: unknown value 'noise'", "allowed values: ones, zeros, random"], id="filler"),
    pytest.param({"compression": {"algorithm": "mix_and_match"}}, [r"\$\.input_info: is required"],
                 id="missing-input-info"),
    pytest.param({"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": {"algorithm": "magnitude_sparsity"}},
                 [r"compression\.algorithm: unknown algorithm 'magnitude_sparsity' \(rename it to mix_and_match",
                  "allowed values: mix_and_match, flexhinm, quantization, knowledge_distillation"],
                 id="unknown-algorithm"),
    pytest.param({"input_info": {"sample_size": [1, 3, 32, 32]},
                  "compression": [{"algorithm": "quantization"}, {"algorithm": "mix_and_match"}]},
                 [r"compression\[1\]\.algorithm: 'mix_and_match' must come before quantization"], id="order"),
    pytest.param({"input_info": {"sample_size": [1, 3, 32, 32]},
                  "compression": [{"algorithm": "quantization", "preset": "asymmetric"}]},
                 [r"compression\[0\]\.preset: unknown value 'asymmetric'", "allowed values: performance, mixed"],
                 id="quant-preset"),
    pytest.param('{"input_info": {"sample_size": [1, 3]}, "compression": [}', ["not valid JSON at line 1"],
                 id="bad-json"),
]


@pytest.mark.parametrize("config, messages", BAD_CONFIGS)
def test_bad_config_gets_its_message(config, messages):
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError) as info:
        mnncf.create_compressed_model(model, config)
    for pattern in messages:
        assert _search(pattern, str(info.value)), f"{pattern!r} not in {info.value}"
    assert not is_wrapped(model)  # refused before NNCF touched the model


def test_training_script_keys_at_the_root_are_accepted():
    """NNCF 2.x accepted any root key (training scripts read theirs); only compression steps are strict."""
    assert mnncf.load_config({**_cfg(), "epochs": 3, "optimizer": {"type": "SGD"}}).raw["epochs"] == 3


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_flexhinm_through_nncf_hooks():
    """"algorithm": "flexhinm": the Mix-and-Match plan's amounts, FlexHiNM's hybrid masks (with greedy
    channel permutations folded in), as NNCF hooks."""
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "flexhinm", "strategy": "balanced", "target_sparsity": 0.3,
                              "flexhinm": {"permutation": "greedy", "tile_rows": 32}}}
    ctrl, model = mnncf.create_compressed_model(make_swin(), config)
    result = ctrl.flexhinm_result
    assert result is not None and result.permutation.applied  # some permutation was found and folded
    assert ctrl.left_dense == {"patch_embed.proj.weight": "input dimension 3 is not a multiple of 4"}
    stat = {t.tensor_name: t for t in nncf.pruning_statistic(model).pruned_tensors}
    assert set(stat) == set(ctrl.strategy.sparsity)
    for name, t in stat.items():
        expected = int((~result.masks[name]).sum()) if name in result.masks else 0
        assert round(t.pruned_ratio * np.prod(t.shape)) == expected, name
    st = ctrl.statistics()
    assert st.algorithm == "flexhinm" and abs(st.pruning_ratio - 0.3) < 0.01
    assert "left by FlexHiNM: patch_embed.proj.weight" in st.to_str()
    stripped = nncf.strip(model, strip_format=nncf.StripFormat.IN_PLACE)
    for name, keep in result.masks.items():
        assert torch.equal(stripped.get_parameter(name) == 0, ~keep), name


def test_flexhinm_gradual_learns_the_24_choices_through_ctrl_scheduler():
    """``"gradual"``: the 2:4 choices are gates that an NNCF 2.x-style loop trains (``ctrl.scheduler``,
    ``ctrl.loss()``, ``ctrl.param_groups()`` for the gates' own learning rate); the first ``step()`` past
    the budget hardens exactly the choices the gates hold into NNCF mask hooks, exact 2:4 in the region."""
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "flexhinm", "strategy": "balanced", "target_sparsity": 0.5,
                              "flexhinm": {"permutation": "none"}, "gradual": {"epochs": 2, "steps_per_epoch": 4}}}
    ctrl, model = mnncf.create_compressed_model(make_swin(), config)
    sched = ctrl.learning
    assert sched is not None and sched.total_steps == 8 and not mnncf.wrapping.mask_hooks(model)
    assert ctrl.schedule is None and ctrl.scheduler.current_sparsity_level is None
    groups = ctrl.param_groups()
    gate_params = {id(p) for p in sched.parameters()}
    assert {id(p) for p in groups[1]["params"]} == gate_params and groups[1]["weight_decay"] == 0.0
    assert not gate_params & {id(p) for p in groups[0]["params"]}
    start = {n: g.logits.detach().clone() for n, g in sched.gates.items()}
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model.train()
    for _ in range(2):
        ctrl.scheduler.epoch_step()
        for _ in range(4):
            ctrl.scheduler.step()
            loss = nn.functional.cross_entropy(model(x), y) + ctrl.loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # at the weights' rate (1e-3) a logit would move by about 0.008 in 8 steps
    assert max(float((g.logits.detach() - start[n]).abs().max()) for n, g in sched.gates.items()) > 0.5
    learning = ctrl.statistics()
    assert learning.source == "gates" and abs(learning.pruning_ratio - 0.5) < 0.02
    choices, regions = {n: g.hard_mask().clone() for n, g in sched.gates.items()}, sched.nm_regions
    ctrl.scheduler.step()  # past the budget: hardened
    assert ctrl.learning is None and set(mnncf.wrapping.mask_hooks(model)) == set(ctrl.strategy.sparsity)
    hooks = mnncf.wrapping.mask_hooks(model)
    assert all(torch.equal(hooks[n].binary_mask, choices[n]) for n in choices)
    assert ctrl.statistics().pruning_ratio == pytest.approx(learning.pruning_ratio, abs=1e-6)
    stripped = ctrl.strip()
    assert mm_plugin.flexhinm.validate_nm(stripped, regions=regions).ok


@pytest.mark.parametrize("step, message", [
    ({"gradual": {"epochs": 2}}, r"compression\.gradual\.steps_per_epoch: is required"),
    ({"gradual": {"epochs": 2, "steps_per_epoch": 4, "harden": [0.9, 0.5]}},
     r"compression\.gradual: harden must be two fractions 0 <= start <= end <= 1"),
    ({"gradual": {"epochs": 2, "steps_per_epoch": 4, "gate": "coin"}},
     r"compression\.gradual\.gate: unknown value 'coin'; allowed values: hard_concrete, patterns"),
])
def test_bad_gradual_options_name_their_path(step, message):
    with pytest.raises(ConfigError, match=message):
        mnncf.load_config({"input_info": {"sample_size": [1, 3, 32, 32]},
                           "compression": {"algorithm": "flexhinm", "target_sparsity": 0.5, **step}})


def test_the_gradual_schema_accepts_every_gradual_config_field():
    """The schema is data, written by hand: a GradualConfig field it lacks would be refused in NNCF configs."""
    from dataclasses import fields

    from mm_plugin.flexhinm import GradualConfig

    gradual = mnncf.config.schema()["$defs"]["flexhinm"]["properties"]["gradual"]["properties"]
    assert set(gradual) - {"epochs", "steps_per_epoch"} == {f.name for f in fields(GradualConfig)}


def test_quantization_after_a_learned_flexhinm_step_is_refused():
    with pytest.raises(ConfigError, match=r"compression\[1\]: int8 calibration would run before the learned 2:4"):
        mnncf.load_config({"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": [
            {"algorithm": "flexhinm", "target_sparsity": 0.5, "gradual": {"epochs": 1, "steps_per_epoch": 4}},
            {"algorithm": "quantization"}]})


@pytest.mark.parametrize("params, message", [
    ({"permutation": "random"}, (r"compression\.flexhinm\.permutation: unknown value 'random'; allowed values: "
                                 r"(.*, )?greedy, gyro, none")),
    ({"tile_rows": 6}, r"compression\.flexhinm: tile_rows must be None or a positive multiple of 4"),
    ({"tile": 64}, r"compression\.flexhinm\.tile: unknown key .*allowed keys: effort, permutation"),
])
def test_bad_flexhinm_params_name_their_path(params, message):
    with pytest.raises(ConfigError, match=message):
        mnncf.load_config({"input_info": {"sample_size": [1, 3, 32, 32]},
                           "compression": {"algorithm": "flexhinm", "flexhinm": params}})


@pytest.mark.parametrize("scope, messages", [
    ({"names": ["layers.0.blocks.0.attn.qkv"]},
     [r"compression\[0\]\.ignored_scopes\.names\[0\]: 'layers.0.blocks.0.attn.qkv' matches no node",
      "closest by module path: layers/0/blocks/0/attn/qkv/linear/0"]),
    (["head.fc"], [r"compression\[0\]\.ignored_scopes\[0\]: 'head.fc' matches no node", "path: head/fc/linear/0"]),
    ({"types": ["Linear"]}, [r"compression\[0\]\.ignored_scopes\.types: \['Linear'\] match no operation type",
                             "allowed values: .*linear"]),
    ({"patterns": ["blocks/9/.*"]}, [r"compression\[0\]\.ignored_scopes\.patterns: \['blocks/9/\.\*'\] match no"]),
])
def test_ignored_scope_that_matches_nothing_names_its_path(scope, messages):
    with pytest.raises(ConfigError) as info:
        mnncf.create_compressed_model(make_swin(), _cfg(ignored_scopes=scope))
    for pattern in messages:
        assert _search(pattern, str(info.value)), f"{pattern!r} not in {info.value}"


def test_ignored_scope_types_and_validate_false():
    ctrl, _ = mnncf.create_compressed_model(make_swin(), _cfg(
        target_sparsity=0.3, ignored_scopes={"types": ["conv2d"], "names": ["nope"], "validate": False}))
    assert ctrl.ignored == ("patch_embed.proj.weight",)
    assert "patch_embed.proj.weight" not in ctrl.strategy.sparsity


def test_unreachable_target_names_the_path():
    with pytest.raises(ConfigError, match=r"compression\[0\]\.target_sparsity: target 0.2 is outside what the "
                                          r"ranges allow.*range_targets"):
        mnncf.create_compressed_model(make_swin(), _cfg(target_sparsity=0.2, range_targets=[0.7, 0.8, 0.9]))


def test_calibration_is_required_where_the_config_needs_it():
    model = make_swin()
    with pytest.raises(CalibrationRequiredError, match=r"compression\[0\]\.signal: 'gradient' needs calibration"):
        mnncf.create_compressed_model(model, _cfg(signal="gradient"))
    with pytest.raises(CalibrationRequiredError, match=r"compression\[0\]\.allocations: 'snip' needs calibration"):
        mnncf.create_compressed_model(model, _cfg(allocations=["snip", "lamp"]))
    config = _cfg()
    config["compression"].append({"algorithm": "quantization"})
    with pytest.raises(CalibrationRequiredError, match=r"compression\[1\]: 'quantization' needs calibration"):
        mnncf.create_compressed_model(model, config)
    assert not is_wrapped(model)  # refused before any step ran


class FunctionalProj(nn.Module):
    """A weight NNCF sees (F.linear on a bare Parameter) but the core inventory does not plan."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.proj = nn.Parameter(torch.randn(48, 64))
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(torch.nn.functional.linear(torch.relu(self.fc1(x)), self.proj))


def test_nncf_weights_outside_the_inventory_stay_dense_and_are_reported():
    ctrl, model = mnncf.create_compressed_model(FunctionalProj(), {
        "input_info": {"sample_size": [1, 32]},
        "compression": {"algorithm": "mix_and_match", "strategy": "aggressive", "default_rules": False,
                        "range_targets": [0.7, 0.8, 0.9]}})
    assert ctrl.unplanned == ("proj",)
    assert ctrl.weights["proj"] == ("PTLinearMetatype",)  # the kind NNCF's graph gives it
    assert set(mnncf.wrapping.mask_hooks(model)) == {"fc1.weight", "head.weight"}
    st = ctrl.statistics()
    assert st.unplanned == ("proj",) and "outside the Mix-and-Match inventory: proj" in st.to_str()


def test_bare_sequential_root_is_refused_with_a_fix():
    with pytest.raises(UnsupportedModelError, match="bare Sequential root.*own forward"):
        mnncf.create_compressed_model(nn.Sequential(nn.Linear(4, 4)), {
            "input_info": {"sample_size": [1, 4]}, "compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5}})


def test_torchao_comes_with_the_nncf_extra():
    """nncf.strip imports torchao, which NNCF 3.4 does not declare: the install must bring it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("torchao") for req in extras["nncf"])
    assert importlib.util.find_spec("torchao") is not None


def test_flexhinm_reconstruct_re_solves_kept_weights_on_calibration_data():
    """``"reconstruct": true``: the same hybrid masks, the kept weights re-solved on the calibration
    batches, so the compressed model's outputs stay closer to the dense model's; no data is a clear error."""
    config = {"input_info": {"sample_size": [1, 3, 32, 32]},
              "compression": {"algorithm": "flexhinm", "strategy": "balanced", "target_sparsity": 0.5,
                              "flexhinm": {"permutation": "none"}, "reconstruct": True}}
    dense = make_swin().eval()
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    with torch.no_grad():
        reference = torch.cat([dense(x) for x in batches])
    outputs, masks = {}, {}
    for solve in (False, True):
        cfg = copy.deepcopy(config)
        cfg["compression"]["reconstruct"] = solve
        ctrl, model = mnncf.create_compressed_model(copy.deepcopy(dense), cfg, calibration=batches)
        stripped = nncf.strip(model, strip_format=nncf.StripFormat.IN_PLACE).eval()
        with torch.no_grad():
            outputs[solve] = torch.cat([stripped(x) for x in batches])
        masks[solve] = ctrl.flexhinm_result.masks
    assert masks[True].keys() == masks[False].keys()
    assert all(torch.equal(masks[True][n], masks[False][n]) for n in masks[True])
    error = {s: float((outputs[s] - reference).pow(2).mean()) for s in outputs}
    assert error[True] < 0.5 * error[False]
    with pytest.raises(CalibrationRequiredError, match=r"compression\.reconstruct: .*calibration"):
        mnncf.create_compressed_model(make_swin(), config)
