"""Hard Concrete gates: exact 2:4 after hardening, the 2-of-4 penalty, schedules, callback API."""

import pytest
import torch
from torch import nn

from mm_plugin import flexhinm
from mm_plugin.errors import ValidationError
from mm_plugin.flexhinm import FlexHiNMConfig, GradualFlexHiNM, HardConcreteGate, cubic_sparsity, validate_nm
from mm_plugin.flexhinm.layout import as_groups
from mm_plugin.masks import WeightMask, mask_module, measure_sparsity, set_mask_module_


def _gate_on(weight: torch.Tensor) -> HardConcreteGate:
    gate = HardConcreteGate(weight)
    gate.set_regions_(
        weight, torch.ones_like(weight, dtype=torch.bool), torch.ones_like(weight, dtype=torch.bool)
    )
    return gate


def test_penalty_is_zero_at_two_of_four_and_decreases_towards_it():
    w = torch.randn(8, 16)
    gate = _gate_on(w)
    p_open = float(gate.penalty().detach())  # gates start open: ~4 of 4 expected
    with torch.no_grad():
        g = as_groups(gate.log_alpha.data)
        g[..., :3] = 10.0
        g[..., 3:] = -10.0
    p_three = float(gate.penalty().detach())
    with torch.no_grad():
        g[..., :2] = 10.0
        g[..., 2:] = -10.0
    p_two = float(gate.penalty().detach())
    assert p_open > p_three > p_two
    assert p_two == pytest.approx(0.0, abs=1e-3)
    assert float(gate.expected_l0().detach().min()) >= 0.0 and float(gate.expected_l0().detach().max()) <= 1.0


def test_gate_samples_in_unit_interval_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    gate = _gate_on(w)
    z = gate(torch.ones_like(w)).detach()
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    gate.eval()
    a, b = gate(w), gate(w)
    assert torch.equal(a, b)
    assert bool((as_groups(a != 0).sum(-1) == 2).all())  # eval = the deployable exact 2:4 model


def test_gradual_schedule_hardens_to_exact_two_of_four():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    sparsity = {"0.weight": 0.5, "2.weight": 0.7, "4.weight": 0.5}
    sched = GradualFlexHiNM(
        model, sparsity, FlexHiNMConfig(permutation="none", tile_rows=8), total_steps=40, update_every=4
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)  # created after the gates: includes log_alpha
    assert any(p is sched.gates["0.weight"].log_alpha for g in opt.param_groups for p in g["params"])
    first_pen = None
    for step in range(40):
        flexhinm.on_step(model, step)  # callback-style API
        loss = nn.functional.cross_entropy(model(x), y) + flexhinm.penalty(model)
        if step == 20:
            first_pen = float(sched.penalty().detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sched.sparsity_at(20) == pytest.approx(sparsity)
    assert float(sched.penalty().detach()) < first_pen  # the pull towards 2 of 4 works
    masks = sched.harden_()
    for name, mask in masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert isinstance(mask_module(module), WeightMask)
    for rep in measure_sparsity(model):
        assert rep.sparsity == pytest.approx(sparsity[rep.name], abs=1 / 16)
    for name, mask in masks.items():  # every group is 0:4, 2:4 or 4:4, nothing in between
        kept = as_groups(mask).sum(-1)
        assert bool(((kept == 0) | (kept == 2) | (kept == 4)).all())
    assert validate_nm(model, layers=["0"]).ok  # 50 % on a random layer: plain 2:4 everywhere
    with pytest.raises(ValidationError, match="no GradualFlexHiNM"):
        flexhinm.on_step(model, 41)
    sched.step(41)  # scheduler-style alias still works on the object


def test_hardening_fraction_freezes_the_most_confident_groups():
    w = torch.randn(4, 16)
    gate = _gate_on(w)
    with torch.no_grad():
        g = as_groups(gate.log_alpha.data)
        g.copy_(torch.tensor([5.0, 4.0, -4.0, -5.0]))  # very confident
        g[0, 0] = torch.tensor([1.0, 0.9, 0.8, 0.7])  # one unsure group
    n = gate.harden_fraction_(0.9)
    assert n == 15  # ceil(0.9 * 16) groups, the unsure one stays learnable
    assert gate.n_region_groups() == 1
    assert bool(gate.region[0, :4].all())
    gate.harden_fraction_(1.0)
    assert gate.n_region_groups() == 0
    assert bool((as_groups(gate.hard_mask()).sum(-1) == 2).all())


def test_cubic_schedule_and_argument_checks():
    assert cubic_sparsity(0.8, 0, 0, 100) == 0.0
    assert cubic_sparsity(0.8, 100, 0, 100) == pytest.approx(0.8)
    assert cubic_sparsity(0.8, 50, 0, 100) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(0.8, 500, 0, 100) == pytest.approx(0.8)
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValidationError, match="hardening must start after"):
        GradualFlexHiNM(model, {"0.weight": 0.5}, total_steps=10, ramp=(0.0, 0.8), harden=(0.5, 0.9))
    with pytest.raises(ValidationError, match="divisible by 4"):
        set_mask_module_(model, "0.weight", HardConcreteGate(torch.randn(4, 6)))
