"""NNCF 2.14's classification sample, replayed on the plugin.

This module follows the control flow of ``examples/torch/classification/main.py`` (``main_worker``,
``train``, ``train_epoch``, ``validate``) and of ``examples/torch/common/`` (``optimizer.py``,
``model_loader.py``'s checkpoint helpers, ``export.py``, ``restricted_pickle_module.py``) at tag v2.14.0 of
github.com/openvinotoolkit/nncf. Two things change, as docs/nncf.md lists: the ``from nncf... import``
lines are the one import block below, and the config's algorithm ``magnitude_sparsity`` is
``mix_and_match``. Argument parsing, logging and data sets are left out: a tiny CNN on random batches
(labels a fixed function of the input), a config file shaped like the sample's
``configs/sparsity/resnet34_cifar_magnitude_sparsity.json`` (multistep schedule), a few seconds per run.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from shutil import copyfile
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR, ReduceLROnPlateau

pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")

# --- the sample's ``from nncf... import`` lines, pointed at the plugin (one block) ---------------------
from mm_plugin.adapters.nncf import (
    CompressionStage,
    ExecutionParameters,
    FillerInputInfo,
    NNCFConfig,
    count_tensors,
    create_compressed_model,
    default_criterion_fn,
    generate_input_names_list,
    get_export_args,
    is_main_process,
    load_state,
    prepare_for_tensorboard,
    register_default_init_args,
)
from mm_plugin.adapters.nncf.wrapping import mask_hooks

torch.set_num_threads(2)
MODEL_STATE_ATTR, COMPRESSION_STATE_ATTR = "state_dict", "compression_state"  # examples/torch/common/model_loader.py
CONFIG_TEXT = """{
    "model": "tiny_cnn",
    "input_info": {"sample_size": [1, 3, 16, 16]},
    "pretrained": false,
    "num_classes": 4,
    "batch_size": 16,
    "epochs": 4,
    "optimizer": {"type": "SGD", "base_lr": 0.05, "weight_decay": 1e-4, "schedule_type": "multistep", "steps": [3]},
    "compression": {
        "algorithm": "mix_and_match",  // NNCF 2.14: "magnitude_sparsity"
        "sparsity_init": 0.2,
        "params": {"schedule": "multistep", "multistep_steps": [1, 2],
                   "multistep_sparsity_levels": [0.2, 0.4, 0.6], "sparsity_freeze_epoch": 3}
    }
}"""
LEVELS = [0.2, 0.4, 0.6, 0.6]  # the level each of the 4 epochs trains at


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def batches(n: int, seed: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images; the label is a fixed linear function of the channel means (learnable)."""
    gen, proj = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(99)
    w = torch.randn(3, 4, generator=proj)
    out = []
    for _ in range(n):
        x = torch.randn(16, 3, size, size, generator=gen) + torch.randn(16, 3, 1, 1, generator=gen)
        out.append((x, (x.mean((2, 3)) @ w).argmax(1)))
    return out


class Board:
    """``config.tb``: records what the sample writes to TensorBoard."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[float]] = {}

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.scalars.setdefault(key, []).append(float(value))


class RestrictedUnpickler(pickle.Unpickler):
    """The allow-list of examples/torch/common/restricted_pickle_module.py (v2.14.0), re-implemented."""

    allowed: ClassVar[set[tuple[str, str]]] = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
               ("torch", "FloatStorage"), ("torch", "LongStorage"), ("torch", "IntStorage"), ("_codecs", "encode"),
               ("builtins", "set"), ("builtins", "dict"), ("numpy", "dtype"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")
        return super().find_class(module, name)


restricted_pickle_module = ModuleType("restricted_pickle_module")
restricted_pickle_module.Unpickler, restricted_pickle_module.load = RestrictedUnpickler, pickle.load


# --- examples/torch/common: optimizer.py, model_loader.py -----------------------------------------------
def get_parameter_groups(model, config):
    optim = config.get("optimizer", {})
    return [{"lr": optim.get("base_lr", 1e-4), "weight_decay": optim.get("weight_decay", 1e-4), "params": model.parameters()}]


def make_optimizer(params_to_optimize, config):
    optim_config = config.get("optimizer", {})
    optim = torch.optim.SGD(params_to_optimize, **optim_config.get("optimizer_params", {"momentum": 0.9}))
    return optim, MultiStepLR(optim, optim_config.get("steps"), gamma=optim_config.get("gamma", 0.1))


def load_resuming_checkpoint(path):
    return torch.load(path, map_location="cpu", pickle_module=restricted_pickle_module)


def extract_model_and_compression_states(resuming_checkpoint):
    if resuming_checkpoint is None:
        return None, None
    return resuming_checkpoint.get(MODEL_STATE_ATTR), resuming_checkpoint.get(COMPRESSION_STATE_ATTR)


# --- examples/torch/classification/main.py -------------------------------------------------------------
def accuracy(output, target):
    return float((output.argmax(1) == target).float().mean() * 100)


def train_epoch(train_loader, model, criterion, criterion_fn, optimizer, compression_ctrl, epoch, config):
    compression_scheduler = compression_ctrl.scheduler
    model.train()
    for i, (input_, target) in enumerate(train_loader):
        compression_scheduler.step()
        output = model(input_)
        criterion_loss = criterion_fn(output, target, criterion)
        compression_loss = compression_ctrl.loss()
        loss = criterion_loss + compression_loss
        comp_loss_val = compression_loss.item() if isinstance(compression_loss, torch.Tensor) else compression_loss
        assert comp_loss_val == 0.0  # magnitude masks are not trained
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if is_main_process():
            global_step = len(train_loader) * epoch
            statistics = compression_ctrl.statistics(quickly_collected_only=True)
            for stat_name, stat_value in prepare_for_tensorboard(statistics).items():
                config.tb.add_scalar(f"train/statistics/{stat_name}", stat_value, i + global_step)


def validate(val_loader, model, criterion, config, epoch=0):
    model.eval()
    top1, losses = [], []
    with torch.no_grad():
        for input_, target in val_loader:
            output = model(input_)
            losses.append(float(default_criterion_fn(output, target, criterion)))
            top1.append(accuracy(output, target))
    return float(np.mean(top1)), None, float(np.mean(losses))


def train(config, compression_ctrl, model, criterion, criterion_fn, lr_scheduler, model_name, optimizer,
          train_loader, val_loader, best_acc1=0):
    best_compression_stage = CompressionStage.UNCOMPRESSED
    for epoch in range(config.start_epoch, config.epochs):
        compression_ctrl.scheduler.epoch_step()
        train_epoch(train_loader, model, criterion, criterion_fn, optimizer, compression_ctrl, epoch, config)
        lr_scheduler.step(epoch if not isinstance(lr_scheduler, ReduceLROnPlateau) else best_acc1)
        statistics = compression_ctrl.statistics()
        acc1, _, _ = validate(val_loader, model, criterion, config, epoch=epoch)
        compression_stage = compression_ctrl.compression_stage()
        is_best_by_accuracy = acc1 > best_acc1 and compression_stage == best_compression_stage
        is_best = is_best_by_accuracy or compression_stage > best_compression_stage
        if is_best:
            best_acc1 = acc1
        best_compression_stage = max(compression_stage, best_compression_stage)
        if is_main_process():
            checkpoint_path = Path(config.checkpoint_save_dir) / "tiny_cnn_last.pth"
            checkpoint = {
                "epoch": epoch + 1,
                "arch": model_name,
                MODEL_STATE_ATTR: model.state_dict(),
                COMPRESSION_STATE_ATTR: compression_ctrl.get_compression_state(),
                "best_acc1": best_acc1,
                "acc1": acc1,
                "optimizer": optimizer.state_dict(),
            }
            torch.save(checkpoint, checkpoint_path)
            if is_best:  # make_additional_checkpoints
                copyfile(checkpoint_path, Path(config.checkpoint_save_dir) / "tiny_cnn_best.pth")
            copyfile(checkpoint_path, Path(config.checkpoint_save_dir) / f"epoch_{epoch + 1}.pth")
            for key, value in prepare_for_tensorboard(statistics).items():
                config.tb.add_scalar(f"compression/statistics/{key}", value, len(train_loader) * epoch)
        config.history.append({"epoch": epoch, "level": compression_ctrl.scheduler.current_sparsity_level,
                               "stage": compression_stage, "is_best": is_best, "acc1": acc1,
                               "masks": {n: h.binary_mask.clone() for n, h in mask_hooks(compression_ctrl.model).items()}})


def main_worker(config, resuming_checkpoint_path=None):
    criterion = nn.CrossEntropyLoss()
    train_criterion_fn = default_criterion_fn
    nncf_config = config.nncf_config
    train_loader, val_loader = batches(4, seed=1), batches(2, seed=2)
    init_loader = list(train_loader)

    def model_eval_fn(model):
        return validate(val_loader, model, criterion, config)[0]

    nncf_config = register_default_init_args(
        nncf_config, init_loader, criterion=criterion, criterion_fn=train_criterion_fn,
        validate_fn=lambda *x: validate(*x)[::2], val_loader=val_loader, model_eval_fn=model_eval_fn,
        device="cpu", execution_parameters=ExecutionParameters(True, None))
    torch.manual_seed(0)  # load_model: the same initial weights in every run
    model = TinyCNN(config["num_classes"])
    resuming_checkpoint = None
    if resuming_checkpoint_path is not None:
        resuming_checkpoint = load_resuming_checkpoint(resuming_checkpoint_path)
    model_state_dict, compression_state = extract_model_and_compression_states(resuming_checkpoint)
    compression_ctrl, model = create_compressed_model(model, nncf_config, compression_state)
    if model_state_dict is not None:
        load_state(model, model_state_dict, is_resume=True)
    config.resumed = {"epoch": compression_ctrl.scheduler.current_epoch,
                      "level": compression_ctrl.scheduler.current_sparsity_level,
                      "masks": {n: h.binary_mask.clone() for n, h in mask_hooks(model).items()}}
    params_to_optimize = get_parameter_groups(model, config)
    optimizer, lr_scheduler = make_optimizer(params_to_optimize, config)
    best_acc1 = 0
    if resuming_checkpoint_path is not None:
        config.start_epoch = resuming_checkpoint["epoch"]
        best_acc1 = resuming_checkpoint["best_acc1"]
        optimizer.load_state_dict(resuming_checkpoint["optimizer"])
    if is_main_process():
        assert compression_ctrl.statistics().to_str()
    train(config, compression_ctrl, model, criterion, train_criterion_fn, lr_scheduler, config["model"], optimizer,
          train_loader, val_loader, best_acc1)
    validate(val_loader, model, criterion, config)
    return compression_ctrl, model


class Config(SimpleNamespace):
    def __getitem__(self, key):
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)


def sample_config(path: Path, out: Path, epochs: int) -> Config:
    """examples/common/sample_config.py: the training keys, and the config itself as an NNCFConfig."""
    loaded = json.loads("\n".join(line.split("//")[0] for line in path.read_text().splitlines()))
    nncf_config = NNCFConfig.from_json(path)  # comments allowed, as NNCF 2.x's jstyleson read them
    nncf_config["log_dir"] = str(out)  # examples/common/paths.py
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    return Config(**{**loaded, "epochs": epochs}, nncf_config=nncf_config, start_epoch=0, tb=Board(),
                  checkpoint_save_dir=str(out / "checkpoints"), history=[], no_strip_on_export=False)


# --- examples/torch/common/export.py ------------------------------------------------------------------
def export_model(ctrl, config) -> None:
    model = ctrl.model if config.no_strip_on_export else ctrl.strip()
    model = model.eval().cpu()
    export_args = get_export_args(model, device="cpu")
    input_names = generate_input_names_list(count_tensors(export_args))
    input_tensor_list, input_shape_list = [], []
    for info in model.nncf.input_infos.elements:
        input_shape = tuple([1] + info.shape[1:])
        input_tensor_list.append(torch.rand(input_shape))
        input_shape_list.append(input_shape)
    if len(input_tensor_list) == 1:
        input_tensor_list, input_shape_list = input_tensor_list[0], input_shape_list[0]
    model_path = Path(config.export_model_path)
    model_path.parent.mkdir(exist_ok=True, parents=True)
    ov_model = ov.convert_model(model, example_input=input_tensor_list, input=tuple(input_shape_list))
    for input_node, input_name in zip(ov_model.inputs, input_names):
        input_node.node.set_friendly_name(input_name)
    ov.save_model(ov_model, model_path)  # OpenVINO's default: FP16 weights


# --- the runs -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sample three times: 4 epochs straight; 2 epochs, then resumed from its last checkpoint to 4."""
    tmp = tmp_path_factory.mktemp("sample")
    path = tmp / "tiny_cnn_magnitude_sparsity.json"
    path.write_text(CONFIG_TEXT)
    straight = sample_config(path, tmp / "straight", epochs=4)
    ctrl, model = main_worker(straight)
    first = sample_config(path, tmp / "first", epochs=2)
    main_worker(first)
    resumed = sample_config(path, tmp / "resumed", epochs=4)
    ctrl2, model2 = main_worker(resumed, Path(first.checkpoint_save_dir) / "tiny_cnn_last.pth")
    return SimpleNamespace(tmp=tmp, straight=straight, first=first, resumed=resumed, ctrl=ctrl, model=model,
                           ctrl2=ctrl2, model2=model2)


def test_the_sample_trains_under_the_multistep_schedule(runs):
    history = runs.straight.history
    assert [h["level"] for h in history] == pytest.approx(LEVELS)
    assert [h["stage"] for h in history] == [CompressionStage.PARTIALLY_COMPRESSED] * 2 + \
        [CompressionStage.FULLY_COMPRESSED] * 2
    assert history[2]["is_best"]  # the first fully compressed epoch is best, whatever its accuracy
    stat = runs.ctrl.statistics()
    assert stat.source == "nncf.pruning_statistic" and stat.pruning_ratio == pytest.approx(0.6, abs=2e-3)
    tb = runs.straight.tb.scalars
    assert tb["compression/statistics/mix_and_match/target_sparsity_level"] == pytest.approx(LEVELS)
    assert tb["train/statistics/mix_and_match/sparsity_level_for_sparsified_layers"][-1] == pytest.approx(0.6, abs=2e-3)
    assert history[-1]["acc1"] > 40  # it learns (chance: 25 %)


def test_a_resumed_run_continues_the_schedule_with_the_saved_masks(runs):
    saved = load_resuming_checkpoint(Path(runs.first.checkpoint_save_dir) / "tiny_cnn_last.pth")  # restricted
    assert saved["epoch"] == 2
    resumed = runs.resumed.resumed
    assert resumed["epoch"] == 1 and resumed["level"] == pytest.approx(0.4)  # where the first run stopped
    at_stop = runs.first.history[-1]["masks"]
    assert set(resumed["masks"]) == set(at_stop)
    assert all(torch.equal(resumed["masks"][n], at_stop[n]) for n in at_stop)
    assert [h["epoch"] for h in runs.resumed.history] == [2, 3]
    assert [h["level"] for h in runs.resumed.history] == pytest.approx(LEVELS[2:])
    # the resumed run ends where the straight one does: same masks, same weights
    for a, b in zip(runs.straight.history[2:], runs.resumed.history):
        assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])
    for (name, a), b in zip(runs.model.state_dict().items(), runs.model2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_the_compression_state_is_plain_data_a_restricted_unpickler_reads(runs):
    buffer = io.BytesIO()
    torch.save({"compression_state": runs.ctrl2.get_compression_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, pickle_module=restricted_pickle_module)["compression_state"]
    assert set(state) == {"builder_state", "ctrl_state"}
    assert state["ctrl_state"]["mix_and_match"]["scheduler_state"] == {"current_epoch": 3, "current_step": 15}


def test_export_model_onnx_and_the_samples_ir_export_keep_the_planned_zeros(runs):
    onnx = runs.ctrl2.export_model(str(runs.tmp / "export" / "model.onnx"))
    assert onnx.exact and Path(onnx.path).suffix == ".onnx"
    runs.resumed.export_model_path = str(runs.tmp / "export" / "model.xml")
    export_model(runs.ctrl2, runs.resumed)  # the sample's own exporter, on ctrl.strip()
    report = runs.ctrl2.verify_export(runs.resumed.export_model_path)  # FP16 keeps zeros; no weight is below 6e-8
    assert report.exact and len(report.matches) == 3
    assert sum(m.ir_zeros for m in report.matches) == sum(m.expected_zeros for m in report.matches) > 0
    core = ov.Core().compile_model(runs.resumed.export_model_path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = batches(1, seed=5)[0][0][:1]
    expected = runs.ctrl2.strip().eval()(x).detach().numpy()
    assert np.allclose(core(x.numpy())[0], expected, atol=2e-2)  # FP16 weights
    assert FillerInputInfo.from_nncf_config(runs.resumed.nncf_config).elements[0].shape[-1] == 16  # create_datasets
