"""The NNCF 2.x surface one piece at a time: ``NNCFConfig``, ``register_default_init_args``,
``create_compressed_model``'s positional order, ``load_state``, the compression state and its refusals,
``CompressionStage``, the controller's 2.x members and helpers (names and call conventions as in NNCF
2.14's ``nncf/api/compression.py``, ``nncf/config/``, ``nncf/torch/{initialization,checkpoint_loading,
utils,exporter}.py``). A small conv net at 8x8: a few seconds in all."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from torch import nn

pytest.importorskip("nncf")

from mm_plugin.adapters import nncf as mnncf
from mm_plugin.adapters.nncf import (
    CompressionStage,
    FillerInputInfo,
    HWConfigType,
    NNCFConfig,
    QuantizationRangeInitArgs,
    create_accuracy_aware_training_loop,
    create_compressed_model,
    get_export_args,
    is_main_process,
    load_state,
    manual_seed,
    prepare_for_tensorboard,
    register_default_init_args,
    safe_thread_call,
)
from mm_plugin.adapters.nncf.wrapping import mask_hooks

from mm_plugin.errors import CalibrationRequiredError, ConfigError

torch.set_num_threads(2)
INPUT = {"sample_size": [1, 3, 8, 8]}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x))))).mean((2, 3)))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Net().eval()


def loader(n: int = 2):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 8, (4,), generator=gen)) for _ in range(n)]


def multistep(**extra):
    return {"input_info": INPUT, **extra, "compression": {
        "algorithm": "mix_and_match",
        "params": {"schedule": "multistep", "multistep_steps": [1, 2], "multistep_sparsity_levels": [0.2, 0.4, 0.6]}}}


# --- NNCFConfig and the init args ------------------------------------------------------------------------
def test_nncf_config_reads_commented_json_and_fails_early_with_the_path(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"input_info": {"sample_size": [1, 3, 8, 8]}, // a comment\n "compression": '
                    '{"algorithm": "mix_and_match", "target_sparsity": 0.5,}}')
    config = NNCFConfig.from_json(path)
    assert isinstance(config, dict) and config["compression"]["target_sparsity"] == 0.5
    with pytest.raises(ConfigError, match=r"^compression\.target_sparsity: 1\.5 is out of range"):
        NNCFConfig.from_dict({"input_info": INPUT, "compression": {"algorithm": "mix_and_match", "target_sparsity": 1.5}})
    config = register_default_init_args(config, loader())
    assert config.has_extra_struct(QuantizationRangeInitArgs) and copy.deepcopy(config).has_extra_struct(QuantizationRangeInitArgs)
    with pytest.raises(ConfigError, match="already registered"):
        register_default_init_args(config, loader())
    assert isinstance(register_default_init_args(dict(config), loader()), NNCFConfig)  # a plain dict is converted


@pytest.mark.parametrize("params, message", [
    ({"maximal_relative_accuracy_degradation": 1, "maximal_absolute_accuracy_degradation": 1},
     r"^accuracy_aware_training\.params: both accuracy budget"),
    ({}, r"^accuracy_aware_training\.params: no accuracy budget"),
    ({"maximal_absolute_accuracy_degradation": 1, "patience_epochs": 3},
     r"^accuracy_aware_training\.params\.patience_epochs: an adaptive_compression_level option in early_exit mode"),
    ({"maximal_absolute_accuracy_degradation": 1, "patience": 3}, r"^accuracy_aware_training\.params\.patience: unknown key"),
])
def test_accuracy_aware_sections_are_checked_with_their_path(params, message):
    with pytest.raises(ConfigError, match=message):
        NNCFConfig.from_dict({**multistep(), "accuracy_aware_training": {"mode": "early_exit", "params": params}})


def test_register_default_init_args_feeds_gradient_signals_and_their_criterion():
    calls = []

    def criterion(outputs, targets):
        calls.append(1)
        return nn.functional.cross_entropy(outputs, targets)

    config = {"input_info": INPUT, "compression": {"algorithm": "mix_and_match", "signal": "gradient", "target_sparsity": 0.5}}
    with pytest.raises(CalibrationRequiredError, match="register_default_init_args"):
        create_compressed_model(net(), config)
    ctrl, _ = create_compressed_model(net(), register_default_init_args(NNCFConfig.from_dict(config), loader(),
                                                                         criterion=criterion))
    assert calls and ctrl.statistics().pruning_ratio == pytest.approx(0.5, abs=2e-3)


# --- create_compressed_model, resuming, load_state ------------------------------------------------------
def test_create_compressed_model_takes_nncf2s_positional_order_and_refuses_tracing_hooks():
    ctrl, model = create_compressed_model(net(), multistep(), None)
    state = ctrl.get_compression_state()
    ctrl2, _ = create_compressed_model(net(1), multistep(), state)  # another init: the saved masks, not new ones
    assert all(torch.equal(mask_hooks(model)[n].binary_mask, h.binary_mask) for n, h in mask_hooks(ctrl2.model).items())
    with pytest.raises(ConfigError, match=r"dummy_forward_fn is NNCF 2\.x's tracing hook; pass example_inputs"):
        create_compressed_model(net(), multistep(), None, lambda m: m(torch.ones(1, 3, 8, 8)))


def test_a_compression_state_that_does_not_fit_is_one_line():
    ctrl, _ = create_compressed_model(net(), multistep())
    state = ctrl.get_compression_state()
    flex = {"input_info": INPUT, "compression": {"algorithm": "flexhinm", "target_sparsity": 0.5}}
    with pytest.raises(ConfigError, match=r"^compression_state: saved for mix_and_match; this config's pruning step is flexhinm"):
        create_compressed_model(net(), flex, state)
    with pytest.raises(ConfigError, match=r"^compression_state: expected the dict ctrl\.get_compression_state\(\) returned"):
        create_compressed_model(net(), multistep(), [1, 2])
    structured = copy.deepcopy(state)
    structured["builder_state"]["mix_and_match"]["structured"] = True
    with pytest.raises(ConfigError, match=r"^compression_state: filter-pruning options removed channels"):
        create_compressed_model(net(), multistep(), structured)
    other = copy.deepcopy(state)
    other["builder_state"]["mix_and_match"]["masks"]["fc.weight"]["shape"] = [4, 64]
    with pytest.raises(ConfigError, match=r"^compression_state: the mask of fc\.weight is \[4, 64\], the weight \[8, 32\]"):
        create_compressed_model(net(), multistep(), other)


def test_load_state_matches_wrapper_prefixes_and_refuses_a_mismatch_on_resume(caplog):
    ctrl, model = create_compressed_model(net(), multistep())
    saved = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from a DataParallel model
    _, fresh = create_compressed_model(net(1), multistep(), ctrl.get_compression_state())
    assert load_state(fresh, saved, is_resume=True) == len(saved)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)
    del saved["module.fc.bias"]
    with pytest.raises(ConfigError, match=r"^load_state: the checkpoint does not match the model: missing \(1\): fc\.bias"):
        load_state(fresh, saved, is_resume=True)
    with caplog.at_level(logging.WARNING):
        assert load_state(fresh, saved) == len(saved)
    assert "missing (1): fc.bias" in caplog.text


# --- the controller's 2.x members ---------------------------------------------------------------------
def test_compression_stage_rate_and_disable_scheduler():
    assert CompressionStage.UNCOMPRESSED < CompressionStage.PARTIALLY_COMPRESSED < CompressionStage.FULLY_COMPRESSED
    assert CompressionStage.FULLY_COMPRESSED + CompressionStage.UNCOMPRESSED == CompressionStage.PARTIALLY_COMPRESSED
    ctrl, _ = create_compressed_model(net(), multistep())
    assert ctrl.name == "mix_and_match" and ctrl.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    ctrl.scheduler.epoch_step(2)
    assert ctrl.compression_rate == pytest.approx(0.6) and ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert 0.6 < ctrl.maximal_compression_rate < 1
    ctrl.compression_rate = 0.3  # the adaptive loop's setter: a new level, and the new full target
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.3, abs=2e-3)
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    ctrl.disable_scheduler()
    ctrl.scheduler.epoch_step()
    assert ctrl.compression_rate == pytest.approx(0.3) and ctrl.scheduler.current_epoch == 3
    assert ctrl.get_state() == {"mix_and_match": {"scheduler_state": {"current_epoch": 3, "current_step": -1},
                                                  "scheduler_disabled": True, "compression_stage": 2}}
    ctrl.load_state({"mix_and_match": {"scheduler_state": {"current_epoch": 1, "current_step": 5}}})
    assert ctrl.scheduler.current_step == 5


def test_statistics_quickly_collected_and_the_tensorboard_scalars():
    ctrl, _ = create_compressed_model(net(), multistep())
    full, quick = ctrl.statistics(), ctrl.statistics(quickly_collected_only=True)
    assert quick.source == "masks" and full.source == "nncf.pruning_statistic"
    assert quick.pruning_ratio == pytest.approx(full.pruning_ratio) and quick.nncf is None
    scalars = prepare_for_tensorboard(full)
    assert scalars["mix_and_match/target_sparsity_level"] == pytest.approx(0.2)
    assert set(scalars) == {f"mix_and_match/{k}" for k in ("sparsity_level_for_model", "planned_sparsity_level",
                                                          "sparsity_level_for_sparsified_layers", "target_sparsity_level")}


def test_export_model_names_the_formats_and_get_export_args_reads_input_info(tmp_path):
    ctrl, _ = create_compressed_model(net(), {"input_info": INPUT, "compression": {
        "algorithm": "mix_and_match", "target_sparsity": 0.5}})
    with pytest.raises(ConfigError, match=r"model\.pt: the file must end in \.xml \(OpenVINO IR\) or \.onnx"):
        ctrl.export_model(tmp_path / "model.pt")
    assert ctrl.export_model(tmp_path / "m", save_format="onnx_13").exact
    args = get_export_args(ctrl.strip(), device="cpu")
    assert len(args) == 2 and args[0].shape == (1, 3, 8, 8) and args[1] == {}
    with pytest.raises(ConfigError, match="has no model.nncf.input_infos"):
        get_export_args(net())


def test_distributed_broadcasts_masks_in_a_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ctrl, _ = create_compressed_model(net(), multistep())
        ctrl.distributed()
        ctrl.set_sparsity_level(0.5)
        assert ctrl.is_distributed and ctrl.statistics().pruning_ratio == pytest.approx(0.5, abs=2e-3)
        assert is_main_process() and safe_thread_call(lambda: 7) == 7
    finally:
        torch.distributed.destroy_process_group()


def test_adaptive_mode_on_a_step_that_prunes_once_runs_early_exit_with_a_note(caplog):
    config = {"input_info": INPUT, "compression": {"algorithm": "flexhinm", "target_sparsity": 0.5},
              "accuracy_aware_training": {"mode": "adaptive_compression_level",
                                          "params": {"maximal_relative_accuracy_degradation": 1.0}}}
    with caplog.at_level(logging.WARNING):
        ctrl, _ = create_compressed_model(net(), config)
    assert "accuracy_aware_training.mode: adaptive_compression_level: flexhinm prunes once" in caplog.text
    loop = create_accuracy_aware_training_loop(config, ctrl, 90.0)
    assert type(loop).__name__ == "EarlyExitCompressionTrainingLoop"


def test_the_script_helpers():
    info = FillerInputInfo.from_nncf_config({"input_info": [{"sample_size": [2, 4]}, {"sample_size": [2], "type": "long",
                                                                                      "keyword": "mask"}]})
    args, kwargs = info.get_forward_inputs()
    assert args[0].shape == (2, 4) and kwargs["mask"].dtype == torch.long
    assert [t.value for t in HWConfigType] == ["CPU", "GPU", "NPU"] and mnncf.QUANTIZATION_BITS == 8
    manual_seed(5)
    a = torch.rand(2)
    manual_seed(5)
    assert torch.equal(a, torch.rand(2)) and json.dumps(mnncf.is_accuracy_aware_training({}))
