"""The Torch-Pruning internals the adapter relies on, all in ``mm_plugin.adapters.torch_pruning.tp_internals``,
checked against the installed Torch-Pruning. They were written for Torch-Pruning 1.6.0 (tag v1.6.0 of
github.com/VainF/Torch-Pruning, ``torch_pruning/pruner/algorithms/base_pruner.py`` and ``torch_pruning/ops.py``);
when a test here fails after an upgrade, re-read that file and fix the helper, not the callers.
"""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from mm_plugin.adapters.torch_pruning import tp_internals, tp_support
from packaging.version import Version
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore:Unwrapped parameters detected")


def small_cnn(width: int = 37) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 16, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())  # ends in a reshape: the output is an _OutputOp


def small_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=10).eval()


def test_written_for_torch_pruning_1_6_0():
    assert tp_internals.WRITTEN_FOR == "1.6.0"
    installed = Version(tp.__version__)
    assert installed.release[:2] == Version(tp_internals.WRITTEN_FOR).release[:2], (
        f"tp_internals was written for Torch-Pruning {tp_internals.WRITTEN_FOR}, {installed} is installed: re-check "
        "every helper in adapters/torch_pruning/tp_internals.py against its base_pruner.py, then update WRITTEN_FOR "
        "and the pin in pyproject.toml")


def test_group_helpers_list_attention_groups_as_base_pruner_does():
    model, x = small_vit(), torch.randn(1, 3, 32, 32)
    support = tp_support(model, [model.head])
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.0, **support)
    attention, other = 0, 0
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        assert tp_internals.group_is_prunable(pruner, group) is True
        is_attn, qkv = tp_internals.attention_group(pruner, group)
        if is_attn:
            attention += 1
            assert qkv == [model.blocks[0].attn.qkv]
            rooted = tp_internals.attention_root(pruner, group)
            assert rooted[0].dep.target.module is model.blocks[0].attn.proj  # re-rooted at the projection
            assert pruner.DG.is_in_channel_pruning_fn(rooted[0].dep.handler)
            assert tp_internals.channel_groups(pruner, rooted) == 2  # heads
        else:
            other += 1
            assert tp_internals.channel_groups(pruner, group) == 1
    assert attention == 1 and other >= 2


def test_is_output_op_marks_the_model_output():
    model, x = small_cnn(), torch.randn(1, 3, 16, 16)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    outputs = [m for m in dg.module2node if tp_internals.is_output_op(m)]
    assert len(outputs) == 1
    assert not tp_internals.is_output_op(model[0])


@pytest.mark.parametrize("round_to", [None, 8])
def test_ratio_for_keeps_exactly_the_count_asked(round_to):
    for n in range(1, 200):
        for kept in range(1, n + 1):
            assert int(n * (1 - tp_internals.ratio_for(kept, n))) == kept, (kept, n)
    # and BasePruner keeps it, also through its round_to when the count is a multiple
    kept = 24 if round_to else 21
    model, x = small_cnn(37), torch.randn(1, 3, 16, 16)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.0,
                                  pruning_ratio_dict={model[0]: tp_internals.ratio_for(kept, 37)}, round_to=round_to,
                                  ignored_layers=[model[3]])
    pruner.step()
    assert model[0].out_channels == kept


def test_stop_rounding_switches_base_pruners_rounding_off():
    for stop, want in ((False, 16), (True, 21)):
        model, x = small_cnn(37), torch.randn(1, 3, 16, 16)
        pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.0,
                                      pruning_ratio_dict={model[0]: tp_internals.ratio_for(21, 37)}, round_to=8,
                                      ignored_layers=[model[3]])
        if stop:
            assert tp_internals.stop_rounding(pruner) == 8 and pruner.round_to is None
        pruner.step()
        assert model[0].out_channels == want  # TP floors 21 to 16 while its round_to is on


class Seen(dict):
    """A ratio dict that records which pruner reads it, and what that pruner had set by then."""

    def __iter__(self):
        pruner = tp_internals.pruner_reading_ratio_dict()
        self.seen = None if pruner is None else (pruner, pruner.round_to, pruner.global_pruning, pruner.isomorphic,
                                                   pruner.max_pruning_ratio, pruner.iterative_steps, pruner.model)
        return super().__iter__()


@pytest.mark.parametrize("cls", [tp.pruner.BasePruner, tp.pruner.GroupNormPruner])
def test_pruner_reading_ratio_dict_finds_the_pruner_being_built(cls):
    model, x = small_cnn(), torch.randn(1, 3, 16, 16)
    ratios = Seen({model[0]: 0.25})
    list(ratios)
    assert ratios.seen is None  # read by anyone else: no pruner
    pruner = cls(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio_dict=ratios, round_to=4,
                 max_pruning_ratio=0.7, iterative_steps=3, ignored_layers=[model[3]])
    assert ratios.seen == (pruner, 4, False, False, 0.7, 3, model)  # all set before BasePruner reads the dict
