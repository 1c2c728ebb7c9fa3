import pytest
import timm
import torch
from torch import nn

import mm_plugin
from mm_plugin.errors import NoPrunableLayersError

X32 = torch.randn(1, 3, 32, 32)


def kinds(inv):
    return {layer.module: layer.kind for layer in inv.units}


def test_resnet_kinds_and_order(resnet):
    inv = mm_plugin.inventory(resnet, X32)
    k = kinds(inv)
    assert k["conv1"] == "conv" and k["fc"] == "head"
    assert inv.units[0].module == "conv1" and inv.units[-1].module == "fc"
    assert inv.units[0].depth == 0.0 and inv.units[-1].depth == 1.0
    assert all(s.reason.startswith("normalization") for s in inv.skipped if ".bn" in s.name and s.name.endswith("weight"))
    assert inv["layer3.1.conv2.weight"].stage == "layer3" and inv["layer3.1.conv2.weight"].block == "layer3.1"
    assert inv.total_params == sum(p.numel() for n, p in resnet.named_parameters() if n in inv.names)


def test_swin_kinds_and_skips(tiny_swin):
    inv = mm_plugin.inventory(tiny_swin, X32)
    k = kinds(inv)
    assert k["patch_embed.proj"] == "patch_embedding"
    assert k["layers.0.blocks.0.attn.qkv"] == "attention"
    assert k["layers.1.blocks.1.mlp.fc1"] == "mlp"
    assert k["head.fc"] == "head"
    skipped = {s.name for s in inv.skipped}
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in skipped
    assert not any("norm" in layer.module for layer in inv.units)
    assert inv["layers.1.blocks.0.mlp.fc2.weight"].stage == "layers.1"


@pytest.mark.parametrize("name,expect", [
    ("vit_tiny_patch16_224", {"patch_embed.proj": "patch_embedding", "blocks.0.attn.qkv": "attention",
                              "blocks.0.mlp.fc1": "mlp", "head": "head"}),
    ("efficientnet_b0", {"conv_stem": "conv", "blocks.1.0.conv_dw": "depthwise_conv", "classifier": "head"}),
    ("convnext_atto", {"stem.0": "patch_embedding", "stages.0.blocks.0.conv_dw": "depthwise_conv", "head.fc": "head"}),
])
def test_timm_families(name, expect):
    kw = {"img_size": 32} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
    k = kinds(mm_plugin.inventory(model, X32))
    for module, kind in expect.items():
        assert k[module] == kind, module


def test_mlp_without_example_inputs(mlp):
    inv = mm_plugin.inventory(mlp)
    assert [layer.kind for layer in inv.units] == ["linear", "linear", "head"]


def test_no_prunable_layers():
    with pytest.raises(NoPrunableLayersError, match="no Conv, Linear or Embedding"):
        mm_plugin.inventory(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))


def test_embedding_kind():
    model = nn.Sequential(nn.Embedding(100, 16), nn.Flatten(), nn.Linear(16 * 4, 5))
    inv = mm_plugin.inventory(model, torch.randint(0, 100, (2, 4)))
    assert [layer.kind for layer in inv.units] == ["embedding", "head"]


class TransformerClassifier(nn.Module):
    """nn.MultiheadAttention's packed in_proj_weight is its largest weight; its out_proj never runs as a
    module (the functional attention reads its weight), so module order alone would label it the head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_multihead_attention_is_planned_per_weight_with_the_head_right():
    torch.manual_seed(0)
    model, x = TransformerClassifier(), torch.randn(2, 5, 16)
    units = mm_plugin.inventory(model, x).units
    names = [u.name for u in units]
    assert names[1:4] == ["encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.0.self_attn.out_proj.weight",
                          "encoder.layers.0.linear1.weight"]  # out_proj right after its attention, not last
    assert {u.name: u.kind for u in units}["encoder.layers.1.self_attn.in_proj_weight"] == "attention"
    assert [u.name for u in units if u.kind == "head"] == ["head.weight"]
    p = mm_plugin.plan(model, x, default_rules=False)
    mm_plugin.prune_(model, p.rescale("balanced", 0.8))
    packed = model.encoder.layers[0].self_attn.in_proj_weight
    assert 0 < float((packed == 0).float().mean()) < 1 and model(x).shape == (2, 10)


def test_torch_transformer_has_every_weight_and_no_false_head():
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
                           batch_first=True)
    units = mm_plugin.inventory(model, (torch.randn(2, 5, 32), torch.randn(2, 3, 32))).units
    assert sum(u.name.endswith("in_proj_weight") for u in units) == 3  # encoder self, decoder self and cross
    assert len(units) == 10 and not any(u.kind == "head" for u in units)  # a LayerNorm makes the output
