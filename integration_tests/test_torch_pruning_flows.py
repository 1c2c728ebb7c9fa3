"""Torch-Pruning's own scripts with the Mix-and-Match ratio dict: each ends on the plan's widths or logs one
WARNING naming the groups off plan and the fix.

Each test replays one stock script of Torch-Pruning v1.6.0 (github.com/VainF/Torch-Pruning, tag ``v1.6.0``):
the same pruner class and arguments, stepped the same way, with the one line docs/torch_pruning.md says to
change. Tiny models and random inputs (no pretrained weights, no dataset) keep each test under a minute.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
import torch_pruning as tp
from mm_plugin.adapters.torch_pruning import MixAndMatchScheduler, kept_channels, update_attention_
from torchvision.models import resnet18

from mm_plugin.errors import ValidationError
from mm_plugin.training.zoo import resnet8

torch.set_num_threads(2)
LOGGER = "mm_plugin.adapters.torch_pruning"


def planned_widths(scheduler: MixAndMatchScheduler, round_to: int | None) -> dict[str, int]:
    """Channels (all heads) each group keeps under the plan, rounded as the pruner rounds."""
    plan = scheduler.plan_
    kept = plan.kept(scheduler.strategy_, round_to)
    return {u.name: kept[u.name] * u.copies for u in plan.units}


def plan_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith(LOGGER) and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------ README quick start
@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_readme_quickstart_with_round_to_8_ends_on_the_plan(caplog):
    """README.md @ v1.6.0, "Quickstart / High-level Pruners": torchvision resnet18, GroupMagnitudeImportance(p=2),
    the classifier ignored, ``BasePruner(..., round_to=8)``, one ``pruner.step()`` between the print_tool calls.
    Changed line: ``pruning_ratio=0.5,`` -> ``pruning_ratio_dict=MixAndMatchScheduler(...).ratio_dict(...)``.
    Stand-ins: random weights (the script loads pretrained ones), 10 classes, 64x64 inputs."""
    caplog.set_level(logging.WARNING)
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10)
    example_inputs = torch.randn(1, 3, 64, 64)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    ignored_layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == 10:
            ignored_layers.append(m)
    scheduler = MixAndMatchScheduler("balanced")
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=imp,
        pruning_ratio_dict=scheduler.ratio_dict(model, example_inputs, ignored_layers),  # the changed line
        ignored_layers=ignored_layers,
        round_to=8,
    )
    base_macs, base_nparams = tp.utils.count_ops_and_params(model, example_inputs)
    tp.utils.print_tool.before_pruning(model)
    pruner.step()
    tp.utils.print_tool.after_pruning(model)
    macs, nparams = tp.utils.count_ops_and_params(model, example_inputs)

    want = planned_widths(scheduler, 8)
    assert len(want) == 12  # 4 residual streams + 8 block-internal groups
    assert kept_channels(model, scheduler.plan_) == want  # before: TP floored the unrounded plan (9 of 12 off)
    assert all(k % 8 == 0 or k == scheduler.plan_.units[i].items for i, k in enumerate(want.values()))
    assert scheduler.round_to_ == 8 and scheduler.report(model).ok
    assert macs < base_macs and nparams < base_nparams and model(example_inputs).shape == (1, 10)
    assert plan_warnings(caplog) == []


# ------------------------------------------------------------------------------------ timm example
def _timm_script(model, example_inputs, scheduler, global_pruning):
    """examples/timm_models/prune_timm_models.py @ v1.6.0, ``main()``: ignored head, num_heads for every timm
    Attention, ``BasePruner(global_pruning=args.global_pruning, iterative_steps=1, pruning_ratio=...,
    num_heads=..., round_to=8)``, then ``for g in pruner.step(interactive=True): g.prune()``."""
    imp = tp.importance.GroupMagnitudeImportance()
    ignored_layers = []
    if hasattr(model, "head"):
        if isinstance(model.head, torch.nn.Linear):
            ignored_layers.append(model.head)
        else:
            last_linear = None
            for m in model.head.modules():
                if isinstance(m, torch.nn.Linear):
                    last_linear = m
            if last_linear is not None:
                ignored_layers.append(last_linear)
    num_heads = {}
    for m in model.modules():
        if isinstance(m, timm.models.vision_transformer.Attention):
            num_heads[m.qkv] = m.num_heads
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        global_pruning=global_pruning,
        importance=imp,
        iterative_steps=1,
        pruning_ratio=0.5,
        pruning_ratio_dict=scheduler.ratio_dict(model, example_inputs, ignored_layers),  # the changed line
        num_heads=num_heads,
        ignored_layers=ignored_layers,
        round_to=8,
    )
    for g in pruner.step(interactive=True):
        g.prune()
    # the script then sets num_heads / head_dim on each Attention and swaps in a forward that reads them
    # (not copied here); update_attention_ does the same for timm's own forward
    update_attention_(model)
    return model(example_inputs)


TIMM_MODELS = {
    # name: (timm.create_model arguments, input size); the script reads the input size from default_cfg (224)
    "resnet18": ({"model_name": "resnet18"}, 64),
    "vit": ({"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 2}, 32),
    # head dim 20: TP's own round_to=8 rounds an attention group's total width (40), which moves per-head counts
    "vit-head-dim-20": ({"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 2,
                         "embed_dim": 40, "num_heads": 2}, 32),
}


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected", "ignore:Cannot find the output layer")
@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_example_ends_on_the_plan_and_refuses_global_pruning(caplog, name):
    """examples/timm_models/prune_timm_models.py @ v1.6.0 (``main()``), without and with ``--global_pruning``.
    Changed line: ``pruning_ratio_dict=pruning_ratio_dict,`` -> the scheduler's dict. Without the flag every
    group ends on the plan rounded to 8 (resnet18: 12 groups; ViTs: head dims rounded per head, also where
    TP's own rounding of the total width would not keep them); with it, the pruner refuses at construction
    (TP would rank each group alone, so the flag would be ignored)."""
    caplog.set_level(logging.WARNING)
    kwargs, size = TIMM_MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(pretrained=False, no_jit=True, **kwargs).eval()
    example_inputs = torch.randn(1, 3, size, size)
    scheduler = MixAndMatchScheduler("balanced")
    out = _timm_script(model, example_inputs, scheduler, global_pruning=False)
    assert out.shape == (1, 1000)
    want = planned_widths(scheduler, 8)
    assert kept_channels(model, scheduler.plan_) == want
    if name != "resnet18":
        attention = [u for u in scheduler.plan_.units if u.kind == "attention"]
        assert len(attention) == 2 and all(want[u.name] < u.items * u.copies for u in attention)
        assert all((want[u.name] // u.copies) % 8 == 0 for u in attention)  # per head
    assert plan_warnings(caplog) == []

    model = timm.create_model(pretrained=False, no_jit=True, **kwargs).eval()
    with pytest.raises(ValidationError, match=r"global_pruning=True.*silently ignored.*global_pruning=False"):
        _timm_script(model, example_inputs, MixAndMatchScheduler("balanced"), global_pruning=True)


# ------------------------------------------------------------------------------------ reproduce/main.py
NUM_CLASSES = 10


def _train_model(model, pruner, batches):
    """reproduce/main.py's ``train_model`` for the sparsity-learning stage: SGD without weight decay when a
    pruner is given, ``loss.backward()``, ``pruner.regularize(model)``, ``optimizer.step()``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0)
    model.train()
    for data, target in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        pruner.regularize(model)
        optimizer.step()


def _progressive_pruning(pruner, model, speed_up, example_inputs):
    """reproduce/main.py's ``progressive_pruning`` (not ``obdc``): step until the speed-up is reached or the
    pruner's last step."""
    model.eval()
    base_ops, _ = tp.utils.count_ops_and_params(model, example_inputs=example_inputs)
    current_speed_up = 1
    while current_speed_up < speed_up:
        pruner.step()
        pruned_ops, _ = tp.utils.count_ops_and_params(model, example_inputs=example_inputs)
        current_speed_up = float(base_ops) / pruned_ops
        if pruner.current_step == pruner.iterative_steps:
            break
    return current_speed_up


def _reproduce_group_sl(speed_up, iterative_steps=8, max_pruning_ratio=1.0):
    """reproduce/main.py @ v1.6.0 with ``--mode prune --method group_sl``: ``get_pruner`` (GroupNormPruner,
    GroupMagnitudeImportance(p=2, normalizer='max'), outputs ignored, iterative_steps, pruning_ratio=1.0,
    max_pruning_ratio), sparsity learning through ``train_model``, ``progressive_pruning``, then ``del pruner``.
    Stand-ins: a CIFAR ResNet-8 (16/32/64 channels, like the script's registry ResNets) at 32x32, two random
    batches of sparsity learning, 8 steps instead of 400."""
    torch.manual_seed(0)
    model = resnet8(num_classes=NUM_CLASSES, in_chans=3)
    example_inputs = torch.randn(1, 3, 32, 32)
    imp = tp.importance.GroupMagnitudeImportance(p=2, normalizer="max")
    pruner_entry = partial(tp.pruner.GroupNormPruner, reg=5e-4, global_pruning=False)
    unwrapped_parameters = []
    ignored_layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == NUM_CLASSES:  # noqa: SIM114 (the script's shape)
            ignored_layers.append(m)
        elif isinstance(m, torch.nn.modules.conv._ConvNd) and m.out_channels == NUM_CLASSES:
            ignored_layers.append(m)
    scheduler = MixAndMatchScheduler("balanced")
    pruner = pruner_entry(
        model,
        example_inputs,
        importance=imp,
        iterative_steps=iterative_steps,
        pruning_ratio=1.0,
        pruning_ratio_dict=scheduler.ratio_dict(model, example_inputs, ignored_layers),  # the changed line
        max_pruning_ratio=max_pruning_ratio,
        ignored_layers=ignored_layers,
        unwrapped_parameters=unwrapped_parameters,
    )
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (4,), generator=g))
               for _ in range(2)]
    _train_model(model, pruner, batches)
    model.eval()
    reached = _progressive_pruning(pruner, model, speed_up, example_inputs)
    steps = pruner.current_step
    del pruner  # the script's own line after progressive_pruning: the pruner is released here
    return model, scheduler, reached, steps


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_reproduce_group_sl_progressive_reaches_the_plan_or_warns_once(caplog):
    """reproduce/main.py @ v1.6.0, ``--method group_sl`` (``get_pruner``, ``train_model``, ``progressive_pruning``).
    Changed line: ``pruning_ratio_dict=pruning_ratio_dict,`` -> the scheduler's dict. A ``--speed-up`` below the
    plan's stops the loop early: one WARNING when the script releases the pruner (``del pruner``), naming the
    groups still off plan and the fix. A ``--speed-up`` above the plan's lets the loop run to the last step,
    which ends exactly on the plan."""
    caplog.set_level(logging.WARNING)
    model, scheduler, reached, steps = _reproduce_group_sl(speed_up=1.5)
    assert reached >= 1.5 and steps < 8
    off = [r.group for r in scheduler.report(model).mismatches()]
    assert off
    (message,) = plan_warnings(caplog)
    assert f"GroupNormPruner was released at step {steps} of 8, before its last step" in message
    assert all(f"'{g}'" in message for g in off[:6])
    assert "step the pruner to its last step" in message and "--speed-up" in message

    caplog.clear()
    model, scheduler, reached, steps = _reproduce_group_sl(speed_up=100.0)
    assert steps == 8 and reached < 100.0
    assert kept_channels(model, scheduler.plan_) == planned_widths(scheduler, None)
    assert plan_warnings(caplog) == []


@pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")
def test_reproduce_group_sl_with_a_lower_max_pruning_ratio_warns_once_at_the_last_step(caplog):
    """reproduce/main.py @ v1.6.0, ``--method group_sl --max-pruning-ratio 0.4`` (below the plan's largest
    ratios): TP caps those groups, so the last ``step()`` logs one WARNING naming them and the fix."""
    caplog.set_level(logging.WARNING)
    model, scheduler, _reached, steps = _reproduce_group_sl(speed_up=100.0, max_pruning_ratio=0.4)
    assert steps == 8
    off = scheduler.report(model).mismatches()
    assert off and all(r.ratio > 0.4 for r in off)
    (message,) = plan_warnings(caplog)
    assert "GroupNormPruner ended its last step (8 of 8)" in message
    assert all(f"'{r.group}'" in message for r in off[:6])
    assert f"raise max_pruning_ratio to at least {max(r.ratio for r in off):.3f}" in message
