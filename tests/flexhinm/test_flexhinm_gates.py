"""Learnable 2:4 gates and the gradual schedule: gates that move under the optimizer, a late phase whose
training masks are the evaluation masks, exact 2:4 after hardening, the penalty, the callback API."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mm_plugin import flexhinm
from mm_plugin.errors import ConfigError, ValidationError
from mm_plugin.flexhinm import (
    FlexHiNMConfig,
    GradualConfig,
    GradualFlexHiNM,
    HardConcreteGate,
    PatternGate,
    cubic_sparsity,
    sampling,
    validate_nm,
)
from mm_plugin.flexhinm.gates import top2
from mm_plugin.flexhinm.layout import as_groups
from mm_plugin.masks import WeightMask, mask_module, measure_sparsity, set_mask_module_
from mm_plugin.training import evaluate, finetune

SPARSITY = {"0.weight": 0.5, "2.weight": 0.7, "4.weight": 0.5}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _data(n: int = 256, batch: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 0).long()) % 4
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def _gate_on(cls, weight: torch.Tensor, **options):
    gate = cls(weight, **options)
    everywhere = torch.ones_like(weight, dtype=torch.bool)
    gate.set_regions_(weight, everywhere, everywhere)
    return gate


@pytest.mark.parametrize("gate", ["patterns", "hard_concrete"])
def test_gates_move_under_finetune_in_their_own_optimizer_group(gate):
    """The bug this replaces: gates shared the weights' AdamW group (lr 5e-4), so over a short budget
    they moved ~lr per step and hardening applied the initial magnitude order."""
    model, data = _mlp(), _data()
    steps = 2 * len(data)
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps,
                            schedule=GradualConfig(gate=gate))
    (group,) = sched.param_groups(model)
    assert group["weight_decay"] == 0.0 and group["lr"] == GradualConfig().gate_lr
    before = [p.detach().clone() for p in sched.parameters()]
    lr = 5e-4
    finetune(model, data, data, epochs=2, lr=lr, weight_decay=0.1, patience=None, progress=False,
             hooks=(sched,), keep="last")
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(sched.parameters(), before))
    assert moved > 20 * lr * steps  # far beyond what the weights' learning rate allows (< lr per step)
    assert sched.diagnostics()["hardened_share"] == 1.0


def test_late_phase_trains_with_the_masks_evaluation_uses():
    model, data = _mlp(), _data()
    steps = 2 * len(data)
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps,
                            probe=lambda m: float(m(next(iter(data))[0]).argmax(1).float().mean()))
    history = finetune(model, data, data, epochs=2, lr=1e-3, patience=None, progress=False, hooks=(sched,),
                       keep="last").history
    assert history[1]["hardened_share"] == 0.0 and history[2]["hardened_share"] == 1.0  # diagnostics per epoch
    assert history[2]["train_eval_gap"] == 0.0
    sched.on_step(model, sched.harden_steps[1])  # late phase: every group frozen to its choice
    x = next(iter(data))[0]
    model.train()
    with torch.no_grad():
        train_out = model(x)
        with sampling(model):
            sampled_out = model(x)
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    assert torch.equal(train_out, eval_out) and torch.equal(sampled_out, eval_out)
    late = {n: g.hard_mask().clone() for n, g in sched.gates.items()}
    masks = sched.harden_()
    assert all(torch.equal(masks[n], late[n]) for n in masks)  # hardening changes nothing the weights saw
    with torch.no_grad():
        assert torch.equal(model(x), eval_out)


def test_sampled_gates_differ_from_the_evaluation_mask_before_the_late_phase():
    """With Gumbel noise (``noise=True``), training samples differ from the evaluation mask early on; the
    gap diagnostic sees it, and it closes once the groups are hardened."""
    model = _mlp()
    sampled = GradualConfig(gate_options={"noise": True, "straight_through": False})
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=100,
                            schedule=sampled)
    x = torch.randn(8, 16)
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(model(x), model.eval()(x))
    assert sched.diagnostics()["gates_open"] == pytest.approx(2.0)


def test_default_gates_train_with_the_evaluation_masks_at_every_step_and_still_learn():
    """The default (straight-through, no noise): the forward pass is each group's current choice from step 0,
    exactly what evaluation and hardening use, while the relaxed gradient still changes choices."""
    model, data = _mlp(), _data()
    steps = 2 * len(data)
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps)
    x = next(iter(data))[0]
    gaps = []

    class Check:
        def on_step(self, m: nn.Module, step: int) -> None:
            m.train()
            with torch.no_grad():
                train_out = m(x)
                m.eval()
                gaps.append(float((train_out - m(x)).abs().max()))
                m.train()

        def penalty(self) -> torch.Tensor:
            return torch.zeros(())

    finetune(model, data, data, epochs=2, lr=1e-2, patience=None, progress=False, hooks=(sched, Check()))
    assert len(gaps) == steps and max(gaps) == 0.0
    assert sched.history[0]["changed_vs_magnitude"] > 0  # learning moved some 2:4 choices off magnitude's


def test_finetune_keeps_the_best_checkpoint_only_when_every_state_meets_the_targets():
    """Without a ramp every evaluated state is a deployable exact 2:4 model, so ``keep="best"`` holds and
    hardening the restored gates gives the model validation picked; a ramp forces the last state."""
    model, data = _mlp(), _data()
    steps = 2 * len(data)
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps)
    assert sched.checkpoints_final
    ft = finetune(model, data, data, epochs=2, lr=1e-2, patience=None, progress=False, hooks=(sched,))
    picked = evaluate(model, data)
    regions = sched.nm_regions
    sched.harden_()
    assert evaluate(model, data) == picked == ft.best_val_accuracy
    assert validate_nm(model, regions=regions).ok
    ramped = _mlp()
    sched = GradualFlexHiNM(ramped, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps,
                            schedule=GradualConfig(ramp=(0.0, 0.4)))
    assert not sched.checkpoints_final
    ft = finetune(ramped, data, data, epochs=2, lr=1e-2, patience=None, progress=False, hooks=(sched,))
    assert ft.best_epoch == 2  # the last state, whatever validation preferred


def test_a_ramp_from_the_target_only_relabels_vectors_and_keeps_every_checkpoint_final():
    """``ramp_from=1``: every re-partition holds each layer's target (so any checkpoint is deployable),
    and with movement scores a re-partition can move which vectors are pruned."""
    model, data = _mlp(), _data()
    steps = 2 * len(data)
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps,
                            schedule=GradualConfig(ramp=(0.0, 0.4), ramp_from=1.0, partition_signal="movement"))
    assert sched.checkpoints_final
    assert all(sched.sparsity_at(step) == sched.targets for step in range(0, steps, 3))
    gate = sched.gates["2.weight"]
    before = gate.hard_mask().clone()
    assert sched.diagnostics()["vectors_relabelled"] == 0.0
    finetune(model, data, data, epochs=1, lr=1e-2, patience=None, progress=False, hooks=(sched,))
    row_tile, group = slice(0, 8), slice(0, 4)
    kept = bool(before[row_tile, group].any())
    gate.movement[row_tile, group] = (-1e3 if kept else 1e3) * gate.movement.abs().max()
    sched._repartition(sched.ramp[1])
    assert bool(gate.hard_mask()[row_tile, group].any()) != kept
    assert sched.diagnostics()["vectors_relabelled"] > 0.0  # the diagnostic sees the boundary move
    report = {r.name: r.zeros / r.numel for r in measure_sparsity(model.eval(), list(SPARSITY))}
    assert all(abs(report[n] - t) <= 1 / 16 for n, t in SPARSITY.items())
    with pytest.raises(ConfigError, match="ramp_from must be a fraction"):
        GradualConfig(ramp_from=1.5)


def test_pattern_gate_samples_two_of_four_and_starts_from_magnitude():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    gate = _gate_on(PatternGate, w)
    z = as_groups(gate.sample().detach())
    assert torch.allclose(z.sum(-1), torch.full(z.shape[:2], 2.0), atol=1e-5)  # every sample keeps 2 of 4
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0 + 1e-6  # a mixture of 0/1 patterns
    assert torch.equal(gate.choice(), top2(w.abs()))
    assert torch.equal(gate.initial, top2(w.abs()))
    assert torch.allclose(gate.expected_open(), torch.full((8, 4), 2.0))
    gate.eval()
    assert bool((as_groups(gate(w) != 0).sum(-1) == 2).all())


def test_straight_through_pattern_gate_trains_on_binary_two_of_four_samples():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    gate = _gate_on(PatternGate, w, straight_through=True)
    z = gate.sample()
    assert torch.allclose(z.detach(), z.detach().round(), atol=1e-6)  # binary up to rounding
    assert bool((as_groups(z.detach().round()).sum(-1) == 2).all())
    (z * torch.randn_like(z)).sum().backward()  # the mixture's gradient reaches the logits
    assert gate.logits.grad is not None and float(gate.logits.grad.abs().sum()) > 0


def test_hard_concrete_penalty_is_zero_at_two_of_four_and_decreases_towards_it():
    w = torch.randn(8, 16)
    gate = _gate_on(HardConcreteGate, w)
    p_open = float(gate.penalty().detach())  # gates start open: ~4 of 4 expected
    la = gate.log_alpha.data.view(8, 4, 4)
    la[..., :3], la[..., 3:] = 10.0, -10.0
    p_three = float(gate.penalty().detach())
    la[..., :2], la[..., 2:] = 10.0, -10.0
    p_two = float(gate.penalty().detach())
    assert p_open > p_three > p_two
    assert p_two == pytest.approx(0.0, abs=1e-3)
    gate.eval()
    assert bool((as_groups(gate(w) != 0).sum(-1) == 2).all())  # eval = the deployable exact 2:4 model


def test_hard_concrete_reaches_two_open_gates_per_group_before_hardening():
    model, data = _mlp(), _data()
    steps = 4 * len(data)
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=steps,
                            schedule=GradualConfig(gate="hard_concrete"))
    assert sched.diagnostics()["gates_open"] > 3.5  # gates start open
    finetune(model, data, data, epochs=2, lr=1e-3, patience=None, progress=False, hooks=(sched,), keep="last")
    assert sched.diagnostics()["gates_open"] == pytest.approx(2.0, abs=0.25)  # step 2 * len(data) < harden start


def test_gradual_schedule_hardens_to_exact_two_of_four():
    model = _mlp()
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=40,
                            schedule=GradualConfig(ramp=(0.0, 0.4), updates=5))
    opt = torch.optim.Adam([{"params": [p for n, p in model.named_parameters() if "original" in n or "bias" in n]},
                            *sched.param_groups()], lr=1e-2)
    for step in range(40):
        flexhinm.on_step(model, step)  # callback-style API
        loss = nn.functional.cross_entropy(model(x), y) + flexhinm.penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sched.sparsity_at(0) == {n: 0.0 for n in SPARSITY}
    assert sched.sparsity_at(16) == pytest.approx(SPARSITY)
    regions = sched.nm_regions
    masks = sched.harden_()
    for name in masks:
        assert isinstance(mask_module(model.get_submodule(name.rsplit(".", 1)[0])), WeightMask)
    for rep in measure_sparsity(model):
        assert rep.sparsity == pytest.approx(SPARSITY[rep.name], abs=1 / 16)
    for mask in masks.values():  # every group is 0:4, 2:4 or 4:4, nothing in between
        kept = as_groups(mask).sum(-1)
        assert bool(((kept == 0) | (kept == 2) | (kept == 4)).all())
    assert validate_nm(model, regions=regions).ok
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)  # any optimizer, after hardening
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert validate_nm(model, regions=regions).ok
    with pytest.raises(ValidationError, match="no GradualFlexHiNM"):
        flexhinm.on_step(model, 41)


def test_hardening_fraction_freezes_the_most_confident_groups():
    w = torch.randn(4, 16)
    gate = _gate_on(HardConcreteGate, w)
    la = gate.log_alpha.data.view(4, 4, 4)
    la.copy_(torch.tensor([5.0, 4.0, -4.0, -5.0]))  # very confident
    la[0, 0] = torch.tensor([1.0, 0.9, 0.8, 0.7])  # one unsure group
    assert gate.harden_fraction_(0.9) == 15  # ceil(0.9 * 16) groups, the unsure one stays learnable
    assert gate.n_region_groups() == 1 and bool(gate.region[0, :4].all())
    gate.harden_fraction_(1.0)
    assert gate.n_region_groups() == 0
    assert bool((as_groups(gate.hard_mask()).sum(-1) == 2).all())


def test_cubic_schedule_and_argument_checks():
    assert cubic_sparsity(0.8, 0, 0, 100) == 0.0
    assert cubic_sparsity(0.8, 100, 0, 100) == pytest.approx(0.8)
    assert cubic_sparsity(0.8, 50, 0, 100) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(0.8, 500, 0, 100) == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="hardening must start after"):
        GradualConfig(ramp=(0.0, 0.8), harden=(0.5, 0.9))
    with pytest.raises(ConfigError, match="unknown field"):
        GradualConfig.from_dict({"gates": "patterns"})
    with pytest.raises(ValidationError, match="learnable 2:4 gate"):
        GradualConfig(gate="concrete")
    with pytest.raises(ValidationError, match="not a multiple of 4"):
        set_mask_module_(nn.Sequential(nn.Linear(6, 4)), "0.weight", HardConcreteGate(torch.randn(4, 6)))


def test_movement_scores_reach_pruned_weights_and_move_the_boundaries():
    """With ``partition_signal="movement"`` the ramp's re-partitions rank vectors by what training learned:
    pruned weights still collect a score (the gradient is taken at the masked weight), and a weight whose
    presence training kept raising the loss leaves the kept regions."""
    model, data = _mlp(), _data()
    steps = 4 * len(data)
    config = FlexHiNMConfig(permutation="none", tile_rows=8)
    sched = GradualFlexHiNM(model, SPARSITY, config, total_steps=steps,
                            schedule=GradualConfig(ramp=(0.0, 0.4), partition_signal="movement"))
    finetune(model, data, data, epochs=1, lr=1e-3, patience=None, progress=False, hooks=(sched,), keep="last")
    gate = sched.gates["2.weight"]
    dropped = ~gate.hard_mask()
    assert bool(dropped.any()) and bool((gate.movement[dropped] != 0).any())
    # a vector training found harmful (large negative movement) is pruned at the next re-partition
    row_tile, group = slice(0, 8), slice(0, 4)
    gate.movement[row_tile, group] = -1e3 * gate.movement.abs().max()
    sched._repartition(sched.ramp[1])
    assert not bool(gate.hard_mask()[row_tile, group].any())
    with pytest.raises(ConfigError, match="give a ramp"):
        GradualConfig(partition_signal="movement")
    with pytest.raises(ConfigError, match="partition_signal must be one of"):
        GradualConfig(partition_signal="wanda", ramp=(0.0, 0.4))


@pytest.mark.parametrize("pruned_gradient", [False, True])
def test_pruned_weights_train_only_with_pruned_gradient_and_the_forward_value_is_the_same(pruned_gradient):
    """``pruned_gradient`` (SR-STE): the layer still sees exactly the masked weight, but pruned weights get
    the gradient they would have if kept, so a magnitude re-partition can regrow them; without it they
    get none."""
    model, (x, y) = _mlp(), next(iter(_data()))
    sched = GradualFlexHiNM(model, SPARSITY, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=10,
                            schedule=GradualConfig(pruned_gradient=pruned_gradient))
    gate, layer = sched.gates["2.weight"], model[2]
    model.train()
    seen = layer.weight.detach().clone()
    assert torch.equal(seen, layer.parametrizations.weight.original.detach() * gate.hard_mask())
    nn.functional.cross_entropy(model(x), y).backward()
    grad = layer.parametrizations.weight.original.grad
    pruned = ~gate.hard_mask()
    assert bool(pruned.any()) and bool((grad[~pruned] != 0).any())
    assert bool((grad[pruned] != 0).any()) == pruned_gradient
