"""Level changes during training (NNCF 2.x schedules through ``ctrl.scheduler``): what a pruned weight's
value is when the masks are rewritten.

The masks are NNCF hooks on the raw parameters; every time the adapter writes masks it zeroes the raw
value of each weight they prune. So a weight pruned before a rising level change is still pruned after it
with value 0, and a weight that comes back when the level falls starts from 0, never from the stale value
it held before it was pruned. A small conv net, a few optimizer steps per epoch: a few seconds in all.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("nncf")

import nncf
from mm_plugin.adapters import nncf as mnncf
from mm_plugin.adapters.nncf.wrapping import mask_hooks

torch.set_num_threads(2)
INPUT = {"sample_size": [1, 3, 16, 16]}
STEPS_PER_EPOCH = 3


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def _multistep(levels, steps, **step):
    return {"input_info": INPUT, "compression": {
        "algorithm": "mix_and_match", "signal": step.pop("signal", "magnitude"),
        "params": {"schedule": "multistep", "multistep_steps": list(steps), "multistep_sparsity_levels": list(levels)},
        **step}}


def _batches(n=2, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(n)]


def _snapshot(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{weight: (raw value, keep-mask)} for every masked weight."""
    return {n: (model.get_parameter(n).detach().clone(), h.binary_mask.clone()) for n, h in mask_hooks(model).items()}


def _effective(model, name) -> torch.Tensor:
    """What the model computes with: NNCF's mask hook applied to the raw parameter."""
    return mask_hooks(model)[name](model.get_parameter(name)).detach()


def _train_epoch(ctrl, model, opt, data) -> None:
    for i in range(STEPS_PER_EPOCH):
        ctrl.scheduler.step()
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + ctrl.loss()
        loss.backward()
        opt.step()


def _run(ctrl, model, opt, data, epochs, on_epoch) -> None:
    """An NNCF 2.x training loop; ``on_epoch(epoch, before, after)`` sees the weights around each
    ``epoch_step()`` (the level change), before the next optimizer step."""
    model.train()
    for epoch in range(epochs):
        before = _snapshot(model)
        ctrl.scheduler.epoch_step()
        on_epoch(epoch, before, _snapshot(model))
        _train_epoch(ctrl, model, opt, data)


@pytest.mark.parametrize("signal", ["magnitude", "product"])
def test_rising_levels_keep_pruned_weights_pruned_at_zero(signal):
    """0.2 -> 0.4 -> 0.6 with SGD momentum and weight decay: every pruned weight's raw value is exactly 0
    after each change, and under magnitude each weight pruned before a change is still pruned after it
    (it scores 0). Under |w*g| it scores 0 too, but so does a live weight whose gradient is 0 on these
    batches; the stable sort may then prune that one instead, and the weight that returns starts from 0."""
    data = _batches()
    cfg = _multistep([0.2, 0.4, 0.6], [1, 2], signal=signal)
    ctrl, model = mnncf.create_compressed_model(_net(), cfg, calibration=data if signal != "magnitude" else None,
                                                loss_fn=nn.functional.cross_entropy)
    first = _snapshot(model)
    assert first, "no mask hooks"
    for name, (raw, keep) in first.items():  # the first masking zeroes the pruned raw values too
        left = int((raw[~keep] != 0).sum())
        assert left == 0, f"{name}: creation left {left} of {int((~keep).sum())} pruned weights non-zero"
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    levels = []

    def check(epoch, before, after):
        levels.append(ctrl.scheduler.current_sparsity_level)
        for name, (_, keep_before) in before.items():
            raw, keep = after[name]
            revived = keep & ~keep_before
            if signal == "magnitude":
                assert not revived.any(), f"epoch {epoch}, {name}: {int(revived.sum())} pruned weights came back"
            assert torch.all(_effective(model, name)[revived] == 0), (
                f"epoch {epoch}, {name}: {int((raw[revived] != 0).sum())} of {int(revived.sum())} revived weights came "
                "back with their stale value, not 0")
            pruned = ~keep
            assert torch.all(raw[pruned] == 0), (
                f"epoch {epoch}, {name}: {int((raw[pruned] != 0).sum())} of {int(pruned.sum())} pruned weights keep a "
                f"non-zero raw value (max |w| {float(raw[pruned].abs().max()):.3g})")
            assert torch.all(_effective(model, name)[pruned] == 0)

    _run(ctrl, model, opt, data, 3, check)
    assert levels == [0.2, 0.4, 0.6]
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.6, abs=1e-3)
    for name, (raw, keep) in _snapshot(model).items():  # pruned since the last change: the optimizer moved none
        assert torch.all(_effective(model, name)[~keep] == 0), name


def test_a_falling_level_revives_weights_at_zero_not_at_their_stale_value():
    """0.6 then 0.3 with AdamW: the weights that come back have effective value exactly 0 right after the
    change, before the next optimizer step, and then train."""
    data = _batches()
    ctrl, model = mnncf.create_compressed_model(_net(), _multistep([0.6, 0.3], [1], range_targets=[0.3, 0.6]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    revived_at: dict[str, torch.Tensor] = {}

    def check(epoch, before, after):
        if epoch != 1:
            return
        assert ctrl.scheduler.current_sparsity_level == 0.3
        for name, (_, keep_before) in before.items():
            revived = after[name][1] & ~keep_before
            revived_at[name] = revived
            eff = _effective(model, name)[revived]
            assert torch.all(eff == 0), (
                f"{name}: {int((eff != 0).sum())} of {int(revived.sum())} revived weights came back with their stale "
                f"value (max |w| {float(eff.abs().max()):.3g}), not 0")

    _run(ctrl, model, opt, data, 2, check)
    assert sum(int(r.sum()) for r in revived_at.values()) > 0.25 * sum(r.numel() for r in revived_at.values())
    assert ctrl.statistics().pruning_ratio == pytest.approx(0.3, abs=1e-3)
    moved = sum(int((_effective(model, n)[r] != 0).sum()) for n, r in revived_at.items())
    assert moved > 0  # the revived weights train from zero


def test_set_sparsity_level_down_and_up_directly():
    """NNCF 2.x's controller method, outside a schedule: down revives at 0, up again re-prunes at 0."""
    ctrl, model = mnncf.create_compressed_model(_net(), _multistep([0.3, 0.6], [1], range_targets=[0.3, 0.6]),
                                                final_level=True)
    high = _snapshot(model)
    ctrl.set_sparsity_level(0.3)
    for name, (raw, keep) in _snapshot(model).items():
        revived = keep & ~high[name][1]
        assert revived.any() and torch.all(raw[revived] == 0), name
        assert torch.all(raw[~keep] == 0), name
    ctrl.set_sparsity_level(0.6)
    for name, (raw, keep) in _snapshot(model).items():
        assert torch.equal(keep, high[name][1]), name  # the zeros score lowest again: the same masks
        assert torch.all(raw[~keep] == 0), name


def test_one_shot_raw_weights_agree_with_the_masks_and_strip_keeps_them():
    ctrl, model = mnncf.create_compressed_model(_net(), {"input_info": INPUT, "compression": {
        "algorithm": "mix_and_match", "target_sparsity": 0.5}})
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masked = model(x)
    for name, (raw, keep) in _snapshot(model).items():
        assert torch.all(raw[~keep] == 0) and torch.all(raw[keep] != 0), name
    stat = ctrl.statistics()
    assert stat.pruning_ratio == pytest.approx(0.5, abs=1e-3)
    stripped = ctrl.strip()
    with torch.no_grad():
        assert torch.allclose(stripped(x), masked, atol=1e-6)
    assert nncf.pruning_statistic(model).pruning_ratio == pytest.approx(0.5, abs=1e-3)
