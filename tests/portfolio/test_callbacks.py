"""The search as a library verb over the user's own objects: a segmentation task with its own loss and
metric, resumed by its run id; and the training loops NNCF and Torch-Pruning users already have."""

import importlib.util
import math
from pathlib import Path

import factories
import pytest
import torch
import torch.nn.functional as F

import mm_plugin
from mm_plugin.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "segmentation.py"
FAST = {"candidates": 4, "baselines": ("global_magnitude",), "epochs": 1, "progress": False}


def _example():
    spec = importlib.util.spec_from_file_location("segmentation_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    out = tmp_path_factory.mktemp("segmentation")
    return _example(), out, _example().main(str(out), **FAST)


def test_a_segmentation_task_goes_through_the_search_with_its_own_metric(segmentation):
    _, _, result = segmentation
    (picks,) = result.picks.values()
    (pick,) = picks
    assert abs(pick["sparsity"] - 0.7) < 0.01 and 0.0 <= pick["test_score"] <= 1.0
    assert pick["val_loss"] is not None  # evaluate's loss breaks ties
    assert pick["dense_test_score"] > 0.5  # IoU of the dense network: the task was learned
    report = result.report.read_text()
    assert "Dense test IoU: " in report and "SegNet on synthetic shapes" in report and "%" not in report.split("\n")[4]
    assert all(r["test_score"] is None for r in result.records if r.get("rung") in (0, 1))


def test_the_run_id_resumes_and_no_run_id_is_refused_in_one_line(segmentation):
    example, out, result = segmentation
    seen = []
    again = example.main(str(out), on_record=seen.append, **FAST)
    assert not seen and [r["key"] for r in again.records] == [r["key"] for r in result.records]
    task = example.Segmentation()
    with pytest.raises(ConfigError, match="pass run_id='<a name for this data and training>'"):
        mm_plugin.search(example.dense_model(task), torch.zeros(1, 1, 32, 32), finetune=task.finetune,
                         evaluate=task.evaluate, targets=(0.7,), budget=2, out=str(out),
                         calibration=list(task.loaders["train"])[:2], **FAST)


def test_a_loop_that_removes_the_masks_is_stopped(tmp_path):
    from torch import nn

    from mm_plugin.masks import bake_masks_

    data = factories.small_digits()

    def careless(model: nn.Module, epochs: float) -> None:
        bake_masks_(model)

    with pytest.raises(ConfigError, match="finetune removed the masks of"):
        mm_plugin.portfolio(factories.trained_mlp(), torch.zeros(1, 1, 8, 8), finetune=careless,
                            evaluate=lambda m, split: 0.5, targets=(0.5,), strategies=("balanced",), baselines=(),
                            out=tmp_path, calibration=list(data["train"])[:2], progress=False)


# --- the loops users already have -----------------------------------------------------------------
# Shaped like the training functions of NNCF 2.x's classification sample (examples/torch/classification/
# main.py: train_epoch(train_loader, model, criterion, criterion_fn, optimizer, compression_ctrl, epoch,
# config) and validate(val_loader, model, criterion, config) -> top1, top5, loss) and of Torch-Pruning's
# reproduce/main.py (train_model(model, train_loader, test_loader, epochs, lr, lr_decay_milestones) and
# eval(model, test_loader) -> acc, loss): each user wraps theirs in two lines and calls the search.

def nncf_style_train_epoch(train_loader, model, criterion, criterion_fn, optimizer, compression_ctrl, epoch, config):
    model.train()
    for x, y in train_loader:
        loss = criterion_fn(model(x), y, criterion) + (compression_ctrl.loss() if compression_ctrl else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def nncf_style_validate(val_loader, model, criterion, config):
    model.eval()
    right = total = loss = 0.0
    with torch.no_grad():
        for x, y in val_loader:
            out = model(x)
            loss += float(criterion(out, y)) * len(y)
            right += float((out.argmax(1) == y).sum())
            total += len(y)
    return 100 * right / total, 100.0, loss / total


def tp_style_train_model(model, train_loader, test_loader, epochs, lr, lr_decay_milestones):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    milestones = [int(m) for m in lr_decay_milestones.split(",")]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        scheduler.step()


def tp_style_eval(model, test_loader):
    model.eval()
    with torch.no_grad():
        outs = [(model(x), y) for x, y in test_loader]
    right = sum(float((o.argmax(1) == y).sum()) for o, y in outs)
    total = sum(len(y) for _, y in outs)
    return right / total, sum(float(F.cross_entropy(o, y, reduction="sum")) for o, y in outs) / total


def tp_style_evaluate(loaders):
    """``evaluate(model, split)`` over Torch-Pruning's ``eval``: the accuracy as the score, the loss."""
    def evaluate(model, split):
        accuracy, loss = tp_style_eval(model, loaders[split])
        return {"score": accuracy, "loss": loss}
    return evaluate


def search_digits(finetune, evaluate, loaders, out, **options):
    """The search over the user's loop on the digits at 80 %, a budget of 2."""
    return mm_plugin.search(factories.trained_mlp(), torch.zeros(1, 1, 8, 8), finetune=finetune, evaluate=evaluate,
                            targets=(0.8,), budget=2, out=out, calibration=list(loaders["train"])[:2],
                            rules=[{"name": "first-layer", "enabled": False}], **FAST, **options)


@pytest.mark.parametrize("style", ["nncf", "torch_pruning"])
def test_the_loops_toolkit_users_already_have_call_the_search(tmp_path, style):
    data = factories.small_digits()
    loaders = {"train": data["train"], "val": data["val"], "test": data["test"]}
    if style == "nncf":
        criterion = torch.nn.CrossEntropyLoss()

        def finetune(model, epochs):
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for epoch in range(math.ceil(epochs)):
                nncf_style_train_epoch(loaders["train"], model, criterion, lambda out, y, c: c(out, y), optimizer,
                                       None, epoch, None)

        def evaluate(model, split):
            top1, _, loss = nncf_style_validate(loaders[split], model, criterion, None)
            return {"score": top1 / 100, "loss": loss}
    else:
        def finetune(model, epochs):
            tp_style_train_model(model, loaders["train"], loaders["val"], math.ceil(epochs), 0.01, "60,80")

        evaluate = tp_style_evaluate(loaders)

    result = search_digits(finetune, evaluate, loaders, tmp_path, run_id=f"{style}-digits", metric="accuracy")
    (pick,) = result.picks[0.8]
    assert abs(pick["sparsity"] - 0.8) < 0.01 and pick["test_score"] > 0.5
    assert {r["method"] for r in result.records} == {"search", "mix_and_match", "baseline"}


def test_a_loop_that_keeps_its_best_epoch_is_told_which_models_validation_already_chose(tmp_path):
    """``keep="trained"`` reaches the fine-tunes of a search's candidates (chosen on validation one-shot, so their
    untrained state must not be kept on that score again); the baselines' fine-tunes get ``keep="best"``."""
    data = factories.small_digits()
    asked: list[str] = []

    def finetune(model, epochs, *, keep="best"):
        asked.append(keep)
        tp_style_train_model(model, data["train"], data["val"], math.ceil(epochs), 0.01, "60,80")

    result = search_digits(finetune, tp_style_evaluate(data), data, tmp_path)
    candidates = sum(r.get("rung") in (1, 2) for r in result.records)  # short and full fine-tunes
    baselines = sum(r["method"] == "baseline" for r in result.records)
    assert candidates >= 1 and baselines == 1
    assert sorted(asked) == ["best"] * baselines + ["trained"] * candidates
