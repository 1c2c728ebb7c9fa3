"""finetune is seeded, keeps the best validation state, stops early, and respects masks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mm_plugin.errors import ValidationError
from mm_plugin.masks import apply_masks_
from mm_plugin.training import evaluate, finetune, seed_everything


def _blobs(n: int, seed: int) -> TensorDataset:
    """Four noisy Gaussian clusters in 8-D: learnable in a few epochs, not perfectly."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(99))
    return TensorDataset(centers[y] + 1.5 * torch.randn(n, 8, generator=g), y)


@pytest.fixture
def loaders() -> tuple[DataLoader, DataLoader]:
    return DataLoader(_blobs(256, 0), batch_size=32, shuffle=True), DataLoader(_blobs(128, 1), batch_size=64)


def _mlp(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))


def test_evaluate_counts_top1_and_restores_mode():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # always predicts class 1
    y = torch.tensor([1, 1, 1, 0, 2, 1, 0, 0])
    loader = DataLoader(TensorDataset(torch.randn(8, 2), y), batch_size=3)
    model.train()
    assert evaluate(model, loader) == pytest.approx(4 / 8)
    assert model.training


def test_finetune_learns_and_restores_best_val_state(loaders):
    train, val = loaders
    model = _mlp()
    result = finetune(model, train, val, epochs=6, lr=1e-2, patience=None, progress=False)
    assert result.epochs_run == 6 and len(result.history) == 7
    assert result.best_val_accuracy > 0.6
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history)
    assert result.history[result.best_epoch]["val_accuracy"] == result.best_val_accuracy
    assert evaluate(model, val) == result.best_val_accuracy


def test_keep_trained_keeps_the_untrained_state_only_on_evidence(loaders):
    """A model chosen on validation before training keeps a trained epoch where training on noise (shuffled
    labels here) leaves it a little below its start, and its start where training ruins it beyond McNemar's
    test; the default keeps the start either way."""
    train, val = loaders
    trained = _mlp()
    finetune(trained, train, val, epochs=4, lr=1e-2, patience=None, progress=False)
    x, y = train.dataset.tensors
    noise = DataLoader(TensorDataset(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]),
                       batch_size=32, shuffle=True)
    results = {}
    for keep, lr in (("best", 3e-3), ("trained", 3e-3), ("trained", 5e-2)):
        model = copy.deepcopy(trained)
        results[keep, lr] = finetune(model, noise, val, epochs=2, lr=lr, patience=None, progress=False, keep=keep)
        assert evaluate(model, val) == results[keep, lr].best_val_accuracy
    start = results["best", 3e-3].history[0]["val_accuracy"]
    assert results["best", 3e-3].best_epoch == 0 and results["best", 3e-3].best_val_accuracy == start
    slightly = results["trained", 3e-3]  # a few samples lost: no evidence against training
    assert slightly.best_epoch >= 1 and start - 0.05 < slightly.best_val_accuracy < start
    assert slightly.best_val_accuracy == max(h["val_accuracy"] for h in slightly.history[1:])
    ruined = results["trained", 5e-2]
    assert max(h["val_accuracy"] for h in ruined.history[1:]) < start - 0.2
    assert ruined.best_epoch == 0 and ruined.best_val_accuracy == start
    untrained = finetune(copy.deepcopy(trained), noise, val, epochs=0, progress=False, keep="trained")
    assert untrained.best_epoch == 0 and untrained.best_val_accuracy == start  # nothing trained: nothing else to keep


def test_finetune_is_deterministic_for_a_seed(loaders):
    train, val = loaders
    states = []
    for _ in range(2):
        model = _mlp()
        finetune(model, train, val, epochs=2, seed=5, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_early_stopping_without_improvement(loaders):
    train, val = loaders
    model = nn.Linear(8, 4)  # no BatchNorm: with lr=0 nothing changes, so val never improves
    result = finetune(model, train, val, epochs=10, lr=0.0, patience=2, progress=False)
    assert result.epochs_run == 2 and result.best_epoch == 0


def test_masked_weights_stay_zero_and_the_rest_trains(loaders):
    train, val = loaders
    model = _mlp()
    mask = torch.rand(32, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    apply_masks_(model, {"0.weight": mask})
    before = model[0].weight.detach().clone()
    finetune(model, train, val, epochs=2, lr=1e-2, patience=None, progress=False)
    after = model[0].weight.detach()
    assert torch.all(after[~mask] == 0)
    assert not torch.equal(after[mask], before[mask])


class _NanOnSecondTrainingBatch(nn.Linear):
    def __init__(self) -> None:
        super().__init__(8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == 2:
                out = out * float("nan")
        return out


def test_divergence_is_reported_and_best_state_restored(loaders):
    train, val = loaders
    model = _NanOnSecondTrainingBatch()
    original = model.weight.detach().clone()
    with pytest.raises(ValidationError, match="at epoch 1; lower the learning rate"):
        finetune(model, train, val, epochs=1, lr=0.1, progress=False)
    assert torch.equal(model.weight, original)  # one step was taken, then undone


def test_bad_arguments(loaders):
    train, val = loaders
    with pytest.raises(ValidationError):
        finetune(nn.Linear(8, 4), train, val, epochs=-1, progress=False)
    with pytest.raises(ValidationError):
        finetune(nn.Linear(8, 4), train, val, epochs=1, patience=0, progress=False)
    with pytest.raises(ValidationError, match="keep must be one of"):
        finetune(nn.Linear(8, 4), train, val, epochs=1, keep="first", progress=False)



def test_hooks_steer_training_and_keep_last():
    """A hook sees every step before the forward pass and its penalty enters the loss."""
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8)

    class Shrink:
        def __init__(self, model):
            self.model, self.steps = model, []

        def on_step(self, m, step):
            self.steps.append(step)

        def penalty(self):
            return 100.0 * self.model.weight.pow(2).sum()

    norms = {}
    for name in ("plain", "hooked"):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        hook = Shrink(model)
        result = finetune(model, loader, loader, epochs=2, lr=0.05, patience=None, progress=False,
                          hooks=(hook,) if name == "hooked" else (), keep="last")
        norms[name] = float(model.weight.norm())
    assert hook.steps == list(range(8))
    assert norms["hooked"] < 0.5 * norms["plain"]  # the penalty entered the loss
    assert result.best_epoch == 2  # keep="last": the final state, not the best one


def test_macro_f1_is_sklearns():
    from sklearn.metrics import f1_score

    from mm_plugin.training import macro_f1

    gen = torch.Generator().manual_seed(0)
    true = torch.randint(0, 4, (200,), generator=gen)
    pred = torch.where(torch.rand(200, generator=gen) < 0.6, true, torch.randint(0, 4, (200,), generator=gen))
    pred[pred == 3] = 2  # a class never predicted counts 0, as in sklearn with zero_division=0
    assert macro_f1(pred, true, 4) == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
