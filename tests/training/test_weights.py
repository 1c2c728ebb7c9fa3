"""A user's checkpoint into a model: every common file form, a classifier of another size, clear errors."""

import logging

import pytest
import torch
from torch import nn

from mm_plugin.errors import ConfigError
from mm_plugin.training import create_model, load_weights


def small(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("form", ["state_dict", "checkpoint", "ddp", "safetensors", "pickled"])
def test_every_checkpoint_form_loads_exactly(tmp_path, form):
    trained = small()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(trained.state_dict(), str(path))
    else:
        payload = {"state_dict": trained.state_dict(), "epoch": 7} if form == "checkpoint" else \
            {f"module.{k}": v for k, v in trained.state_dict().items()} if form == "ddp" else \
            trained if form == "pickled" else trained.state_dict()
        torch.save(payload, path)
    assert same(load_weights(small(), path), trained)


def test_a_classifier_of_another_size_is_replaced_and_said_so(tmp_path, caplog):
    torch.save(small(num_classes=1000).state_dict(), tmp_path / "imagenet.pt")
    caplog.set_level(logging.WARNING)
    model = load_weights(small(num_classes=3), tmp_path / "imagenet.pt")
    assert model[-1].out_features == 3
    assert torch.equal(model[0].weight, small(num_classes=1000)[0].weight)  # the backbone came from the file
    lines = [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()]
    assert len(lines) == 1 and "'4' has 1000 outputs there and 3 here: it is replaced" in lines[0]


def test_a_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    torch.save(nn.Sequential(nn.Linear(4, 4)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"does not fit Sequential \(missing: 4.bias, 4.weight; other shapes: 0.bias"):
        load_weights(small(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="weights file .*nope.pt does not exist"):
        load_weights(small(), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot"):
        load_weights(small(), tmp_path / "junk.pt")


def test_torchvision_models_by_name_with_their_weights(tmp_path):
    model = create_model("torchvision:resnet18", num_classes=4)
    assert model.fc.out_features == 4
    torch.save(create_model("torchvision:resnet18", num_classes=1000).state_dict(), tmp_path / "r18.pt")
    assert load_weights(model, tmp_path / "r18.pt").fc.out_features == 4
    with pytest.raises(ConfigError, match="unknown torchvision model 'resnet19'; close matches: resnet18"):
        create_model("torchvision:resnet19")
