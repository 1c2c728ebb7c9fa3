"""Built-in splits are fixed, disjoint and stratified; user factories fail with one clear ConfigError."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from mm_plugin.errors import ConfigError, ValidationError
from mm_plugin.training.data import DataSplits, ShiftedImages, load_data, stratified_split


@pytest.fixture(scope="module")
def mnist() -> DataSplits:
    return load_data("mnist", batch_size=64, seed=0)


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_stratified_split_is_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    train, val, test = stratified_split(labels, n_val=50, n_test=100, seed=0)
    assert (len(train), len(val), len(test)) == (350, 50, 100)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test])) == list(range(500))
    assert np.bincount(labels[val]).tolist() == [5] * 10
    assert np.bincount(labels[test]).tolist() == [10] * 10


def test_split_depends_only_on_seed():
    labels = np.repeat(np.arange(4), 25)
    a = stratified_split(labels, 20, 20, seed=3)
    b = stratified_split(labels, 20, 20, seed=3)
    c = stratified_split(labels, 20, 20, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_mnist_sizes_classes_and_stratification(mnist: DataSplits):
    assert (len(mnist.train.dataset), len(mnist.val.dataset), len(mnist.test.dataset)) == (3500, 500, 1000)
    assert mnist.num_classes == 10 and mnist.input_shape == (1, 28, 28) and mnist.name == "mnist"
    _, y_val = _all(mnist.val)
    _, y_test = _all(mnist.test)
    assert torch.bincount(y_val).tolist() == [50] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10


def test_mnist_is_normalised_with_train_statistics(mnist: DataSplits):
    x = mnist.calibration_source.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4


def test_mnist_split_is_reproducible_and_seeded(mnist: DataSplits):
    again = load_data("mnist", batch_size=64, seed=0)
    assert torch.equal(_all(again.test)[0], _all(mnist.test)[0])
    other = load_data("mnist", batch_size=64, seed=1)
    assert other.name == "mnist-seed1"
    assert not torch.equal(_all(other.test)[0], _all(mnist.test)[0])


def test_augmentation_only_shifts_training_images(mnist: DataSplits):
    assert isinstance(mnist.train.dataset, ShiftedImages)
    assert not isinstance(mnist.val.dataset, ShiftedImages)
    base = mnist.calibration_source.tensors[0][0]
    fill = mnist.train.dataset.fill
    assert fill == pytest.approx(float(base.min()))
    padded = torch.nn.functional.pad(base, (2, 2, 2, 2), value=fill)
    shifts = [padded[:, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
    torch.manual_seed(0)
    draws = [mnist.train.dataset[0][0] for _ in range(20)]
    assert all(any(torch.equal(d, s) for s in shifts) for d in draws)
    assert any(not torch.equal(d, base) for d in draws)
    plain = load_data("digits", augment=False)
    assert not isinstance(plain.train.dataset, ShiftedImages)


def test_calibration_is_fixed_and_leaves_global_rng_alone(mnist: DataSplits):
    state = torch.get_rng_state()
    first = mnist.calibration(3)
    assert torch.equal(torch.get_rng_state(), state)
    second = mnist.calibration(3)
    assert len(first) == 3 and first[0][0].shape == (64, 1, 28, 28)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    assert len(mnist.calibration(10_000)) == len(mnist.train)
    with pytest.raises(ValidationError):
        mnist.calibration(0)


def test_digits_split():
    data = load_data("digits", batch_size=32)
    sizes = [len(loader.dataset) for loader in (data.train, data.val, data.test)]
    assert sum(sizes) == 1797 and sizes[1:] == [180, 359]
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10


def test_unknown_builtin_lists_allowed_names():
    with pytest.raises(ConfigError, match="'cifar'.*built-in datasets: digits, elpv, imagenet_crops, mnist"):
        load_data("cifar")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A throwaway importable module with data factories."""
    (tmp_path / "my_user_data.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def _loader(n, classes, batch_size=8):
            x = torch.randn(n, 3, 5, 6)
            y = torch.arange(n) % classes
            return DataLoader(TensorDataset(x, y), batch_size=batch_size)

        def as_tuple(batch_size):
            return _loader(16, 4, batch_size), _loader(8, 4, batch_size), _loader(8, 3, batch_size)

        def as_dict():
            return {"train": _loader(8, 2), "val": _loader(8, 2), "test": _loader(8, 2), "num_classes": 7}

        def broken():
            raise RuntimeError("disk on fire")

        def wrong_type():
            return [1, 2]

        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_data"


def test_tuple_factory_infers_classes_and_shape(user_module):
    data = load_data(f"{user_module}:as_tuple", batch_size=4)
    assert data.train.batch_size == 4
    assert data.num_classes == 4 and data.input_shape == (3, 5, 6)
    assert data.name == f"{user_module}:as_tuple"


def test_dict_factory_may_give_num_classes(user_module):
    assert load_data(f"{user_module}:as_dict").num_classes == 7


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:not_callable", "not a function"),
        ("{mod}:broken", "failed: RuntimeError: disk on fire"),
        ("{mod}:wrong_type", "returned list"),
        ("{mod}:", "must look like"),
    ],
)
def test_factory_mistakes_raise_config_error_naming_the_spec(user_module, target, message):
    spec = target.format(mod=user_module)
    with pytest.raises(ConfigError) as info:
        load_data(spec)
    assert repr(spec) in str(info.value) and message in str(info.value)


def test_imagenet_crops_splits_share_no_photograph():
    """Train, validation and test crops come from different photographs, compared by content: scikit-image
    ships Chelsea the cat twice (``chelsea`` and ``cat``), which once put a test photograph in training."""
    import hashlib

    from mm_plugin.training.crops import PHOTOS, _photo

    digest = {split: {hashlib.sha256(_photo(name).numpy().tobytes()).hexdigest() for name in names}
              for split, names in PHOTOS.items()}
    assert sum(len(d) for d in digest.values()) == sum(len(n) for n in PHOTOS.values())  # no repeat inside a split
    assert not digest["train"] & digest["val"] and not digest["train"] & digest["test"]
    assert not digest["val"] & digest["test"]
