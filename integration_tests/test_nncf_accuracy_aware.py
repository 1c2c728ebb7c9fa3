"""NNCF 2.14's accuracy-aware training, replayed on the plugin in both modes.

This module follows the ``is_accuracy_aware_training(config)`` branch of ``main_worker`` in
``examples/torch/classification/main.py`` at tag v2.14.0 of github.com/openvinotoolkit/nncf: the
uncompressed accuracy measured with ``model_eval_fn`` before ``create_compressed_model``, the sample's
``validate_fn(model, epoch)``, ``train_epoch_fn(compression_ctrl, model, epoch, optimizer, **kwargs)`` and
``configure_optimizers_fn()``, then ``create_accuracy_aware_training_loop(nncf_config, compression_ctrl,
uncompressed_model_accuracy)`` and ``loop.run(model, train_epoch_fn=..., validate_fn=...,
configure_optimizers_fn=..., tensorboard_writer=config.tb, log_dir=config.log_dir)``. The import block and
``train_epoch`` / ``validate`` are the sample replay's (test_nncf_sample.py); the model is the tiny CNN,
trained dense first (the sample's pretrained weights), on random batches with learnable labels.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from mm_plugin.adapters.nncf import (
    CompressionStage,
    NNCFConfig,
    create_accuracy_aware_training_loop,
    create_compressed_model,
    default_criterion_fn,
    is_accuracy_aware_training,
    register_default_init_args,
)
from test_nncf_sample import (
    Board,
    Config,
    TinyCNN,
    batches,
    get_parameter_groups,
    make_optimizer,
    train_epoch,
    validate,
)

torch.set_num_threads(2)
SIZE = 8  # 8x8 images: the adaptive loop validates every candidate strategy at every level it tries
BUDGET = 4.0  # maximal_absolute_accuracy_degradation, in accuracy points (the metric is top-1 in %)


def config_text(mode: str, params: dict) -> str:
    """A magnitude-sparsity sample config with a multistep schedule (0.3, then 0.5), renamed mix_and_match."""
    return json.dumps({
        "model": "tiny_cnn", "input_info": {"sample_size": [1, 3, SIZE, SIZE]}, "num_classes": 4, "epochs": 20,
        "optimizer": {"type": "SGD", "base_lr": 0.02, "weight_decay": 1e-4, "schedule_type": "multistep", "steps": [100]},
        "compression": {"algorithm": "mix_and_match", "sparsity_init": 0.3,
                        "params": {"schedule": "multistep", "multistep_steps": [1], "multistep_sparsity_levels": [0.3, 0.5]}},
        "accuracy_aware_training": {"mode": mode, "params": {"maximal_absolute_accuracy_degradation": BUDGET, **params}},
    })


def pretrained(train_loader) -> nn.Module:
    """The dense model the sample would load with ``pretrained=True``."""
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model


def main_worker(tmp_path, mode: str, params: dict):
    path = tmp_path / "config.json"
    path.write_text(config_text(mode, params))
    nncf_config = NNCFConfig.from_json(path)
    config = Config(**json.loads(path.read_text()), nncf_config=nncf_config, tb=Board(), log_dir=str(tmp_path / "log"))
    criterion, train_criterion_fn = nn.CrossEntropyLoss(), default_criterion_fn
    train_loader, val_loader = batches(6, seed=1, size=SIZE), batches(3, seed=2, size=SIZE)

    def model_eval_fn(model):
        return validate(val_loader, model, criterion, config)[0]

    nncf_config = register_default_init_args(nncf_config, list(train_loader), criterion=criterion,
                                             criterion_fn=train_criterion_fn, val_loader=val_loader,
                                             model_eval_fn=model_eval_fn, device="cpu")
    model = pretrained(train_loader)
    assert is_accuracy_aware_training(config)  # "train" in config.mode
    uncompressed_model_accuracy = model_eval_fn(model)
    compression_ctrl, model = create_compressed_model(model, nncf_config, None)

    def validate_fn(model, epoch):
        top1, _, _ = validate(val_loader, model, criterion, config, epoch=epoch)
        return top1

    def train_epoch_fn(compression_ctrl, model, epoch, optimizer, **kwargs):
        return train_epoch(train_loader, model, criterion, train_criterion_fn, optimizer, compression_ctrl, epoch, config)

    def configure_optimizers_fn():
        params_to_optimize = get_parameter_groups(model, config)
        optimizer, lr_scheduler = make_optimizer(params_to_optimize, config)
        return optimizer, lr_scheduler

    acc_aware_training_loop = create_accuracy_aware_training_loop(nncf_config, compression_ctrl,
                                                                  uncompressed_model_accuracy)
    model = acc_aware_training_loop.run(model, train_epoch_fn=train_epoch_fn, validate_fn=validate_fn,
                                        configure_optimizers_fn=configure_optimizers_fn, tensorboard_writer=config.tb,
                                        log_dir=config.log_dir)
    assert acc_aware_training_loop.statistics.to_str().startswith("Uncompressed model accuracy")
    return acc_aware_training_loop, compression_ctrl, model, validate_fn, config


def test_early_exit_stops_at_the_full_target_within_the_budget(tmp_path):
    loop, ctrl, model, validate_fn, _ = main_worker(tmp_path, "early_exit", {"maximal_total_epochs": 4})
    assert type(loop).__name__ == "EarlyExitCompressionTrainingLoop"
    stats = loop.statistics
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED and ctrl.compression_rate == pytest.approx(0.5)
    assert stats.accuracy_budget >= 0 and stats.compressed_accuracy >= loop.minimal_tolerable
    assert stats.compressed_accuracy == pytest.approx(validate_fn(model, 0))  # the model returned is the one reported
    assert loop.cumulative_epoch_count <= 4
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.5, abs=2e-3)
    assert (tmp_path / "log" / "accuracy_aware.json").exists()


def test_adaptive_finds_the_sparsest_level_within_the_budget_the_mix_and_match_way(tmp_path):
    loop, ctrl, model, validate_fn, config = main_worker(tmp_path, "adaptive_compression_level", {
        "initial_training_phase_epochs": 2, "patience_epochs": 1, "initial_compression_rate_step": 0.2,
        "minimal_compression_rate_step": 0.1, "maximal_total_epochs": 7})
    assert type(loop).__name__ == "AdaptiveCompressionTrainingLoop"
    assert loop.trials, "the loop tried no level"
    names = {s.name for s in ctrl.plan.strategies}
    for trial in loop.trials:  # each level: the plan's strategies scored one-shot, best first, the best fine-tuned
        scores = [score for _, score in trial.candidates]
        assert scores == sorted(scores, reverse=True) and len(trial.candidates) >= 2
        assert {name for name, _ in trial.candidates} <= names and trial.strategy == trial.candidates[0][0]
        assert trial.meets_budget == (trial.best >= loop.minimal_tolerable)
    initial = [h["level"] for h in loop.history  # the config's own target, reached in the initial phase
               if h["phase"] == "initial" and h["level"] == pytest.approx(0.5) and h["metric"] >= loop.minimal_tolerable]
    feasible = [t.level for t in loop.trials if t.meets_budget] + initial
    stats = loop.statistics
    assert stats.compression_rate == pytest.approx(max(feasible))  # the sparsest level that met the budget
    assert stats.accuracy_budget >= 0 and validate_fn(model, 0) == pytest.approx(stats.compressed_accuracy)
    assert ctrl.compression_rate == pytest.approx(stats.compression_rate) and stats.compression_rate > 0.5
    assert ctrl.statistics().pruning_ratio == pytest.approx(stats.compression_rate, abs=2e-3)
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert loop.cumulative_epoch_count <= 7
    report = json.loads((tmp_path / "log" / "accuracy_aware.json").read_text())
    assert [t["level"] for t in report["trials"]] == [t.level for t in loop.trials]
    assert "val/accuracy_aware/metric_value" in config.tb.scalars
