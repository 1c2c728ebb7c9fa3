"""NNCF 2.x configs through the NNCF adapter with only the algorithm renamed ``mix_and_match``.

The configs below are written here to use every key NNCF 2.14's torch classification samples use
(training-script keys at the root, ``//`` comments, schedules, filter pruning, 2.x scope strings, int8
initializers, knowledge distillation). A ResNet-shaped model with NNCF 2.x's module names (about 170 K
weights) keeps every test to a few seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re

import pytest
import torch
from torch import nn

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from mm_plugin.adapters import nncf as mnncf
from mm_plugin.adapters.nncf import SparsitySchedule
from mm_plugin.adapters.nncf.scopes import legacy_name, op_nodes, translate
from mm_plugin.adapters.nncf.wrapping import build_graph, mask_hooks
from nncf.torch.function_hook.wrapper import wrap_model

import mm_plugin
from mm_plugin.errors import ConfigError

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------- a model
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet layout in miniature, so NNCF 2.x names look like the samples' own."""

    def __init__(self, num_classes: int = 10, width: int = 48) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return ResNet(num_classes).eval()


# ---------------------------------------------------------------------------------------- configs
TRAINING_KEYS = {  # what the samples carry for their training scripts
    "model": "resnet18", "pretrained": True, "weights": "https://example.invalid/r.pth", "eval_only": False,
    "num_classes": 10, "batch_size": 256, "epochs": 40, "dataset": "CIFAR100", "multiprocessing_distributed": True,
    "checkpoint_save_dir": "results/snapshots",
    "optimizer": {"type": "Adam", "base_lr": 0.001, "schedule_type": "multistep", "steps": [15, 20, 25],
                  "optimizer_params": {"momentum": 0.9, "nesterov": True},
                  "parameter_groups": [{"lr": 1e-4, "re": ".*\\._mask"}]},
}
INPUT = {"sample_size": [1, 3, 32, 32]}
MAGNITUDE = {  # magnitude_sparsity, renamed
    **TRAINING_KEYS, "input_info": INPUT,
    "compression": {"algorithm": "mix_and_match", "sparsity_init": 0.1,
                    "params": {"schedule": "multistep", "multistep_steps": [1, 2, 3],
                               "multistep_sparsity_levels": [0.1, 0.2, 0.4, 0.6], "sparsity_freeze_epoch": 3}},
}
RB = {  # rb_sparsity (+ int8), renamed; quantization ignores the 2.x name of the model's first operation
    **TRAINING_KEYS, "input_info": INPUT,
    "compression": [
        {"algorithm": "mix_and_match", "sparsity_init": 0.02,
         "params": {"sparsity_target": 0.61, "sparsity_target_epoch": 5, "sparsity_freeze_epoch": 10},
         "ignored_scopes": ["{re}ResNet/Sequential\\[layer2\\]/BasicBlock\\[0\\]/Sequential\\[downsample\\]/.*"]},
        {"algorithm": "quantization", "ignored_scopes": ["ResNet/NNCFConv2d[conv1]/conv2d_0"],
         "initializer": {"range": {"num_init_samples": 4, "type": "min_max"}}},
    ],
}
ADAPTIVE = {**TRAINING_KEYS, "input_info": INPUT,
            "compression": {"algorithm": "mix_and_match", "sparsity_init": 0.3,
                            "params": {"schedule": "adaptive", "patience": 3, "sparsity_target": 0.9,
                                       "sparsity_target_epoch": 5, "sparsity_freeze_epoch": 300}}}
FILTER = {  # filter_pruning (+ knowledge distillation), renamed; small inputs: Torch-Pruning counts MACs often
    **TRAINING_KEYS, "input_info": {"sample_size": [1, 3, 16, 16]},
    "accuracy_aware_training": {"mode": "adaptive_compression_level",
                                "params": {"maximal_relative_accuracy_degradation": 1.0,
                                           "initial_training_phase_epochs": 100, "patience_epochs": 30}},
    "compression": [
        {"algorithm": "mix_and_match", "pruning_init": 0.1,
         "params": {"schedule": "exponential", "pruning_flops_target": 0.3, "pruning_target": 0.4,
                    "pruning_steps": 15, "filter_importance": "geometric_median",
                    "interlayer_ranking_type": "learned_ranking", "legr_params": {"generations": 200, "max_pruning": 0.3}}},
        {"algorithm": "knowledge_distillation", "type": "softmax"},
    ],
}


def _notes(cfg) -> dict[str, str]:
    return {n.path: n.text for n in cfg.notes}


# ---------------------------------------------------------------------------------------- reading
def test_json_with_comments_and_trailing_commas_loads_and_strings_stay():
    text = """{ // NNCF 2.x read configs with jstyleson
        "model": "resnet18", /* a training-script key */
        "weights": "https://host//path/*not a comment*/",
        "input_info": {"sample_size": [1, 3, 32, 32],},
        "compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5, // or mse
        },
    }"""
    cfg = mnncf.load_config(text)
    assert cfg.raw["weights"] == "https://host//path/*not a comment*/"
    assert cfg.steps[0].target == 0.5
    with pytest.raises(ConfigError, match=r"not valid JSON at line 2"):
        mnncf.load_config('{\n "input_info": {"sample_size": [1]} "compression": {}}')


def test_training_script_keys_at_the_root_are_kept_and_ignored_silently(caplog):
    config = {**TRAINING_KEYS, "input_info": INPUT, "compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5}}
    with caplog.at_level(logging.WARNING):
        cfg = mnncf.load_config(config)
    assert not caplog.records and cfg.notes == ()
    assert cfg.raw["optimizer"] == TRAINING_KEYS["optimizer"]


def test_sparsity_options_become_a_schedule():
    magnitude = mnncf.load_config(MAGNITUDE).steps[0]
    assert magnitude.schedule == SparsitySchedule("multistep", 0.1, 0.6, freeze_epoch=3, steps=(1, 2, 3), levels=(0.1, 0.2, 0.4, 0.6))
    assert magnitude.target == 0.6 and magnitude.target_path.endswith("multistep_sparsity_levels[3]")
    cfg = mnncf.load_config(RB)
    rb, quant = cfg.steps
    assert (rb.schedule.kind, rb.schedule.init, rb.schedule.target, rb.schedule.target_epoch, rb.schedule.freeze_epoch) \
        == ("polynomial", 0.02, 0.61, 5, 10)
    assert quant.options["subset_size"] == 4  # initializer.range.num_init_samples
    assert set(_notes(cfg)) == {"compression[0].params.schedule", "compression[1].initializer.range.type"}
    assert "'polynomial' is used" in _notes(cfg)["compression[0].params.schedule"]
    adaptive = mnncf.load_config(ADAPTIVE).steps[0].schedule
    assert [round(adaptive.sparsity_at(e), 4) for e in (-1, 0, 1, 2, 5, 30, 60)] == [0.3, 0.3, 0.3, 0.35, 0.4, 0.8, 0.9]


def test_schedules_follow_nncf2():
    poly = SparsitySchedule("polynomial", 0.02, 0.61, target_epoch=5, freeze_epoch=10)
    assert poly.sparsity_at(-1) == pytest.approx(0.02) and poly.sparsity_at(0) == pytest.approx(0.02)
    assert poly.sparsity_at(1) == pytest.approx(0.61 - 0.59 * 0.8 ** 0.9) and poly.sparsity_at(7) == pytest.approx(0.61)
    exp = SparsitySchedule("exponential", 0.0, 0.5, target_epoch=4)
    assert exp.sparsity_at(2) == pytest.approx(1 - 0.5 ** 0.5) and exp.sparsity_at(9) == pytest.approx(0.5)
    steps = SparsitySchedule("multistep", 0.1, 0.6, steps=(5, 10), levels=(0.1, 0.3, 0.6))
    assert [steps.sparsity_at(e) for e in (-1, 4, 5, 9, 10)] == [0.1, 0.1, 0.3, 0.3, 0.6]
    per_step = SparsitySchedule("polynomial", 0.0, 0.5, target_epoch=2, concave=False, power=1, steps_per_epoch=4)
    assert per_step.sparsity_at(0, 2) == pytest.approx(0.125)
    assert SparsitySchedule("polynomial", 0.0, 0.5, freeze_epoch=3).final_level == pytest.approx(
        SparsitySchedule("polynomial", 0.0, 0.5).sparsity_at(2))


def test_filter_pruning_options_select_structured_with_notes():
    cfg = mnncf.load_config(FILTER)
    step, kd = cfg.steps
    assert step.structured and step.target == 0.3 and step.target_path == "compression[0].params.pruning_flops_target"
    assert kd.algorithm == "knowledge_distillation"
    assert set(_notes(cfg)) == {
        "accuracy_aware_training.mode", "compression[0].params.pruning_target", "compression[0].pruning_init",
        "compression[0].params.schedule", "compression[0].params.pruning_steps", "compression[0].params.filter_importance",
        "compression[0].params.interlayer_ranking_type", "compression[0].params.legr_params", "compression[1]"}
    only_filters = copy.deepcopy(FILTER)
    del only_filters["compression"][0]["params"]["pruning_flops_target"]
    note = _notes(mnncf.load_config(only_filters))["compression[0].params.pruning_target"]
    assert "used as the fraction of multiply-adds" in note


def test_notes_are_logged_once_each(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = mnncf.load_config(FILTER)
    assert [r.getMessage() for r in caplog.records] == [str(n) for n in cfg.notes]
    assert len(set(caplog.messages)) == len(caplog.messages)


def _cfg(**step):
    return {"input_info": INPUT, "compression": {"algorithm": "mix_and_match", **step}}


@pytest.mark.parametrize("config, message", [
    (_cfg(), r'^compression: no target: add "target_sparsity"'),
    (_cfg(strategy="aggressive"), r"^compression: no target"),
    (_cfg(sparsity_init=0.1), r'^compression\.params: no target: add "sparsity_target"'),
    (_cfg(params={"schedule": "multistep"}), r"^compression\.params\.multistep_sparsity_levels: no target"),
    (_cfg(params={"schedule": "multistep", "multistep_steps": [5], "multistep_sparsity_levels": [0.1, 0.2, 0.3]}),
     r"^compression\.params\.multistep_sparsity_levels: 3 levels for 1 multistep_steps; give 2"),
    (_cfg(pruning_init=0.1), r'^compression\.params: no target: add "pruning_flops_target"'),
    (_cfg(sparsity_init=0.1, params={"pruning_target": 0.4}),
     r"^compression\.params\.pruning_target: a filter_pruning option beside compression\.sparsity_init"),
    (_cfg(target_sparsity=0.5, params={"sparsity_target": 0.6}),
     r"^compression\.target_sparsity: 0\.5 differs from compression\.params\.sparsity_target 0\.6"),
    (_cfg(target_sparsity=0.5, params={"pruning_flops_target": 0.3}),
     r"^compression\.target_sparsity: a fraction of the weights beside filter_pruning options"),
    (_cfg(params={"sparsity_target": 0.5, "warmup": 3}), r"^compression\.params\.warmup: unknown key"),
    ({"input_info": INPUT}, r"^\$\.compression: is required; this config compresses nothing"),
    ({"input_info": INPUT, "compresion": {}}, r"^\$\.compression: is required; did you mean 'compresion'"),
    ({"input_info": INPUT, "compression": {"algorithm": "rb_sparsity"}},
     r"^compression\.algorithm: unknown algorithm 'rb_sparsity' \(rename it to mix_and_match"),
    ({"input_info": INPUT, "compression": {"algorithm": "knowledge_distillation"}},
     r"^compression\.type: is required; allowed values: mse, softmax"),
    ({"input_info": INPUT, "target_device": "VPU", "compression": _cfg(target_sparsity=0.5)["compression"]},
     r"^target_device: unknown value 'VPU'"),
])
def test_config_mistakes_are_one_line_with_the_path(config, message):
    with pytest.raises(ConfigError) as info:
        mnncf.load_config(config)
    assert re.search(message, str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- schedules at work
def test_scheduler_remasks_to_each_level_with_the_core_masks():
    ctrl, model = mnncf.create_compressed_model(tiny_resnet(), MAGNITUDE)
    assert ctrl.scheduler.current_epoch == -1 and ctrl.statistics().pruning_ratio == pytest.approx(0.1, abs=1e-4)
    assert float(ctrl.loss()) == 0.0
    seen = []
    for _ in range(5):
        ctrl.scheduler.epoch_step()
        seen.append(round(ctrl.statistics().pruning_ratio, 4))
        assert ctrl.strategy.name == f"balanced@{ctrl.scheduler.current_sparsity_level:g}"
        expected = mm_plugin.compute_masks(model, ctrl.strategy, plan=ctrl.plan)
        hooks = mask_hooks(model)
        assert all(torch.equal(hooks[n].binary_mask, keep) for n, keep in expected.items())
    assert seen == [0.1, 0.2, 0.4, 0.4, 0.4]  # frozen from sparsity_freeze_epoch 3 on
    ctrl.set_sparsity_level(0.6)  # NNCF 2.x's controller method
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.6, abs=1e-4)


def test_levels_below_the_ranges_scale_the_strategy_down():
    ctrl, _ = mnncf.create_compressed_model(tiny_resnet(), {"input_info": INPUT, "compression": RB["compression"][0]})
    low = ctrl.plan.reach()[0]
    assert 0.02 < low  # the ranges are planned around 0.61
    floor = ctrl.plan.rescale(ctrl.strategy.name.split("@")[0], low).sparsity
    assert ctrl.strategy.sparsity == pytest.approx({n: s * 0.02 / low for n, s in floor.items()})
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.02, abs=1e-3)
    assert ctrl.ignored == ("layer2.0.downsample.0.weight",)  # the 2.x {re} scope, translated


def test_one_shot_configs_get_a_counting_scheduler():
    ctrl, _ = mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=0.5))
    ctrl.scheduler.epoch_step()
    ctrl.scheduler.step()
    assert ctrl.schedule is None and ctrl.scheduler.current_sparsity_level is None
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.5, abs=1e-4)


# ---------------------------------------------------------------------------------------- targets
def test_high_targets_run_and_an_unreachable_one_names_what_binds_it():
    ctrl, _ = mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=0.95))
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.95, abs=1e-4)
    with pytest.raises(ConfigError) as info:
        mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=0.99))
    text = str(info.value)
    assert re.match(r"compression\.target_sparsity: target 0\.99 is outside what the ranges allow: at most 0\.9\d+ "
                    r"for this model, bound by conv1\.weight at most 0\.10 \(first-layer", text), text
    largest = float(re.search(r"lower the target to (0\.\d+)", text)[1])
    ctrl, _ = mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=largest))
    assert ctrl.statistics().pruning_ratio == pytest.approx(largest, abs=1e-4)


def test_range_targets_above_the_guard_name_their_path():
    with pytest.raises(ConfigError, match=r"^compression\.range_targets\[1\]: 0\.995 is more than the minimum-density "
                                          r"guard allows"):
        mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=0.9, range_targets=[0.9, 0.995]))


# ---------------------------------------------------------------------------------------- structured
def test_filter_pruning_removes_channels_through_the_structured_pattern(tmp_path):
    ctrl, model = mnncf.create_compressed_model(tiny_resnet(), FILTER)
    assert ctrl.channels is not None and ctrl.plan.unit_kind == "channel_group"
    st = ctrl.statistics()
    assert st.structured and st.source == "torch_pruning" and abs(st.pruning_ratio - 0.3) <= 0.02
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny_resnet().parameters())
    assert "MULTIPLY-ADDS" in st.to_str()
    report = ctrl.export(tmp_path / "model.xml")
    assert report.path.exists() and report.exact


# ---------------------------------------------------------------------------------------- scopes
def test_nncf2_names_translate_to_nncf3_nodes():
    assert translate("ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0") == "layer1/0/conv1/conv2d/0"
    assert translate("Inception3/__add___0") == "/add/0"
    assert translate("ResNet/Sequential[layer1]/BasicBlock[0]/__iadd___0") == "layer1/0/add_/0"
    assert translate("layer1/0/conv1/conv2d/0") is None and translate("fc") is None
    model = wrap_model(tiny_resnet())
    graph = build_graph(model, torch.ones(1, 3, 32, 32))
    names = {n: legacy_name(model, n) for n in op_nodes(graph)}
    assert names["layer2/0/downsample/0/conv2d/0"] == \
        "ResNet/Sequential[layer2]/BasicBlock[0]/Sequential[downsample]/NNCFConv2d[0]/conv2d_0"
    assert all(translate(old) == new for new, old in names.items())


@pytest.mark.parametrize("scopes, ignored", [
    ({"ignored_scopes": "ResNet/NNCFLinear[fc]/linear_0"}, ("fc.weight",)),  # one string, 2.x name
    ({"ignored_scopes": ["{re}.*downsample.*", "conv1/conv2d/0"]}, ("conv1.weight", "layer2.0.downsample.0.weight")),
    ({"target_scopes": ["{re}Sequential\\[layer2\\]"]}, ("conv1.weight", "fc.weight", "layer1.0.conv1.weight",
                                                         "layer1.0.conv2.weight")),
    ({"ignored_scopes": ["ResNet/NNCFConv2d[conv9]/conv2d_0"], "validate_scopes": False}, ()),
])
def test_scopes_in_every_form(scopes, ignored):
    ctrl, _ = mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=0.5, **scopes))
    assert ctrl.ignored == ignored


@pytest.mark.parametrize("scopes, message", [
    ({"ignored_scopes": ["fc/linear/0", "ResNet/NNCFConv2d[conv9]/conv2d_0"]},
     (r"^compression\.ignored_scopes\[1\]: 'ResNet/NNCFConv2d\[conv9\]/conv2d_0' is NNCF 2\.x's name of "
     r"'conv9/conv2d/0', which is no node of the NNCF graph; closest by module path: conv1/conv2d/0")),
    ({"ignored_scopes": "layer1.0.conv3"}, (r"^compression\.ignored_scopes: 'layer1\.0\.conv3' matches no node.*"
                                           r"closest by module path: layer1/0/conv1/conv2d/0, layer1/0/conv2/conv2d/0")),
    ({"target_scopes": ["{re}layer9"]}, r"^compression\.target_scopes\[0\]: '\{re\}layer9' matches no node"),
    ({"ignored_scopes": {"names": ["layer2/0/conv2/conv2d/1"]}},
     r"^compression\.ignored_scopes\.names\[0\]: .*closest by module path: layer2/0/conv2/conv2d/0"),
])
def test_a_scope_matching_nothing_names_the_closest_module_paths(scopes, message):
    with pytest.raises(ConfigError) as info:
        mnncf.create_compressed_model(tiny_resnet(), _cfg(target_sparsity=0.5, **scopes))
    assert re.search(message, str(info.value)), str(info.value)


# ---------------------------------------------------------------------------------------- inputs
class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x, scale=None, mask=None):
        h = self.fc1(x) * (1 if scale is None else scale)
        return self.fc2(h if mask is None else h * mask)


def test_input_info_keyword_goes_to_its_position():
    infos = [{"sample_size": [1, 64]}, {"sample_size": [1, 128], "keyword": "scale"},
             {"sample_size": [1, 128], "keyword": "mask", "filler": "zeros"}]
    config = {"input_info": infos, "compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5,
                                                   "default_rules": False}}
    ctrl, _ = mnncf.create_compressed_model(Masked(), config)
    assert [t.shape[-1] for t in ctrl.example_inputs] == [64, 128, 128]
    with pytest.raises(ConfigError, match=r"^input_info\[1\]\.keyword: 'mask' comes after 'scale' in forward\(\)"):
        mnncf.create_compressed_model(Masked(), {**config, "input_info": [infos[0], infos[2]]})
    with pytest.raises(ConfigError, match=r"^input_info\[1\]\.keyword: 'maks' is not a free positional parameter of "
                                          r"forward\(\); allowed values: scale, mask"):
        mnncf.create_compressed_model(Masked(), {**config, "input_info": [infos[0], {**infos[2], "keyword": "maks"}]})


@pytest.mark.parametrize("info", [{"sample_size": [1, 1, 32, 32]}, {"sample_size": [1, 3]},
                                  {"sample_size": [1, 3, 32, 32], "type": "long"}])
def test_an_input_the_model_cannot_take_is_one_line(info):
    model = tiny_resnet()
    with pytest.raises(ConfigError) as e:
        mnncf.create_compressed_model(model, {"input_info": info, "compression": _cfg(target_sparsity=0.5)["compression"]})
    assert re.match(r"input_info: ResNet fails on (float|long) \[.*\]: .*; give the inputs its forward\(\) takes",
                    str(e.value)) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- the CLI
def _cli(argv, capsys):
    from mm_plugin.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("mm-prune")]


def test_cli_list_scopes_prints_the_names_a_config_can_use(capsys):
    code, out, _ = _cli(["nncf", "--list-scopes", "test_nncf_legacy:tiny_resnet", "--img-size", "32"], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("layer2/0/downsample/0/conv2d/0"))
    assert row.split()[1:] == ["conv2d", "Conv2d",
                               "ResNet/Sequential[layer2]/BasicBlock[0]/Sequential[downsample]/NNCFConv2d[0]/conv2d_0",
                               "layer2.0.downsample.0.weight"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "rb.json").write_text(json.dumps(RB))
    code, _, errors = _cli(["nncf", "--config", str(tmp_path / "rb.json"), "--model", "test_nncf_legacy:tiny_resnet",
                            "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(errors) == 1 and "compression[1]: 'quantization' needs calibration data: pass --data" \
        in errors[0]
    code, _, errors = _cli(["nncf", "--config", str(tmp_path / "nope.json"), "--model", "x", "--out", "o"], capsys)
    assert code == 2 and errors == [(f"mm-prune: error: config file {tmp_path / 'nope.json'} does not exist (pass a "
                                    "dict, a JSON file path or JSON text)")]
    code, _, errors = _cli(["nncf", "--model", "x"], capsys)
    assert code == 2 and errors == [("mm-prune: error: mm-prune nncf: --config, --out missing; give --config, --model "
                                    "and --out (or --list-scopes MODEL)")]


def test_cli_applies_the_schedule_final_level(tmp_path, capsys):
    (tmp_path / "magnitude.json").write_text("// NNCF 2.x sample, renamed\n" + json.dumps(MAGNITUDE))
    parser = argparse.ArgumentParser(prog="mm-prune")
    mnncf.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["nncf", "--config", str(tmp_path / "magnitude.json"), "--model",
                              "test_nncf_legacy:tiny_resnet", "--out", str(tmp_path / "out"), "--no-export"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["statistics"]["pruning_ratio"] == pytest.approx(0.4, abs=1e-4)  # frozen at epoch 3: level 0.4
    assert summary["schedule"]["kind"] == "multistep" and summary["notes"] == []
