"""Model specs resolve to the right modules, mistakes are ConfigErrors, and demo models are cached."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mm_plugin.errors import ConfigError
from mm_plugin.training import zoo
from mm_plugin.training.data import DataSplits
from mm_plugin.training.zoo import create_model, pretrained_demo_model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet8_shape_and_size():
    model = create_model("resnet8")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert 70_000 < _n_params(model) < 90_000
    assert create_model("resnet8", num_classes=3, in_chans=3)(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_swin_tiny_mnist_shape():
    model = create_model("swin_tiny_mnist", num_classes=5, img_size=28)
    assert type(model).__name__ == "SwinTransformer"
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)


def test_timm_spec_passes_only_accepted_arguments():
    # timm's ResNet takes no img_size: it must be dropped, not crash
    model = create_model("timm:test_resnet", num_classes=3, in_chans=1, img_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    vit = create_model("timm:test_vit", num_classes=2, in_chans=1, img_size=32)
    assert vit(torch.randn(1, 1, 32, 32)).shape == (1, 2)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="resnet8, swin_tiny_mnist"):
        create_model("resnet9")
    with pytest.raises(ConfigError, match="unknown timm model 'resnt18'.*resnet18"):
        create_model("timm:resnt18")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def plain():
            return nn.Linear(4, 2)

        def sized(num_classes, in_chans=1):
            return nn.Linear(in_chans, num_classes)

        def broken():
            raise ValueError("no weights here")

        def not_a_model():
            return "model"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_models"


def test_user_factories(user_module):
    assert create_model(f"{user_module}:plain", num_classes=9).out_features == 2
    model = create_model(f"{user_module}:sized", num_classes=9, in_chans=5, img_size=28)
    assert (model.in_features, model.out_features) == (5, 9)


@pytest.mark.parametrize(
    ("name", "message"), [("broken", "failed: ValueError: no weights here"), ("not_a_model", "returned str"),
                          ("absent", "has no attribute 'absent'")]
)
def test_bad_user_factories(user_module, name, message):
    spec = f"{user_module}:{name}"
    with pytest.raises(ConfigError) as info:
        create_model(spec)
    assert repr(spec) in str(info.value) and message in str(info.value)


def _tiny_data() -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.arange(48) % 3

    def loader(part: slice) -> DataLoader:
        return DataLoader(TensorDataset(x[part], y[part]), batch_size=16)

    train, val, test = loader(slice(0, 32)), loader(slice(32, 40)), loader(slice(40, 48))
    return DataSplits(train, val, test, num_classes=3, input_shape=(1, 8, 8), name="tiny")


def test_demo_model_is_trained_once_then_loaded(tmp_path, monkeypatch):
    data = _tiny_data()
    model, val = pretrained_demo_model("resnet8", data, cache_dir=tmp_path, epochs=1)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].startswith("resnet8-tiny-") and files[0].endswith(".json")
    record = json.loads((tmp_path / files[0]).read_text())
    assert record["val_accuracy"] == val and record["epochs"] == 1 and 0 <= record["test_accuracy"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("cache hit must not retrain")

    monkeypatch.setattr(zoo, "finetune", no_training)
    cached, cached_val = pretrained_demo_model("resnet8", data, cache_dir=tmp_path, epochs=1)
    assert cached_val == val
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), cached.state_dict().values()))
    with pytest.raises(AssertionError, match="must not retrain"):  # another seed is another cache entry
        pretrained_demo_model("resnet8", data, cache_dir=tmp_path, epochs=1, seed=1)


def test_cache_dir_defaults_to_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_PLUGIN_CACHE", str(tmp_path / "c"))
    assert zoo.default_cache_dir() == tmp_path / "c"
    pretrained_demo_model("resnet8", _tiny_data(), epochs=1)
    assert len(list((tmp_path / "c").glob("resnet8-tiny-*.pt"))) == 1


def test_bundled_demo_weights_seed_an_empty_cache(tmp_path, monkeypatch):
    """The shipped ResNet-8 loads into a fresh cache without training, with its recorded accuracy."""
    import json

    from mm_plugin.training import zoo
    from mm_plugin.training.data import load_data

    def no_training(*args, **kwargs):
        raise AssertionError("the bundled weights should have been used")

    monkeypatch.setattr(zoo, "finetune", no_training)
    data = load_data("mnist")
    _, val = zoo.pretrained_demo_model("resnet8", data, cache_dir=tmp_path)
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("resnet8-*.json")]
    assert val == record["val_accuracy"] > 0.95
