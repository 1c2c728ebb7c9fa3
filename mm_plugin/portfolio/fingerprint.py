"""Fingerprints of what defines a run's results beyond its settings: weights, inputs and data, streamed so
that they stay cheap, and independent of the order a loader happens to shuffle in."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset


def hash_into(digest: Any, item: Any) -> None:
    """Every tensor of a nested item (tensors, tuples, lists, dicts) in order, with its dtype and shape."""
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(item, Mapping):
        for key in sorted(item, key=str):
            digest.update(str(key).encode())
            hash_into(digest, item[key])
    elif isinstance(item, (tuple, list)):
        for part in item:
            hash_into(digest, part)
    else:
        digest.update(repr(item).encode())


def digest_of(item: Any) -> str:
    """SHA-256 of a nested item (see :func:`hash_into`)."""
    digest = hashlib.sha256()
    hash_into(digest, item)
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every entry of the model's state dict, names included."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        hash_into(digest, tensor)
    return digest.hexdigest()


def split_fingerprint(loader: DataLoader, dataset: Any = None) -> str:
    """``<samples>:<SHA-256>`` of every sample of a split, streamed batch by batch in the dataset's own
    order (a shuffling loader is read unshuffled) under a fixed RNG, so random transforms repeat too.
    ``dataset``: read instead of the loader's (the training set without its augmentation)."""
    dataset = loader.dataset if dataset is None else dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        source: Any = loader
    else:
        source = DataLoader(dataset, batch_size=loader.batch_size or 64, shuffle=False,
                            collate_fn=loader.collate_fn)
    digest, samples = hashlib.sha256(), 0
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            random.seed(0)
            np.random.seed(0)
            for batch in source:
                hash_into(digest, batch)
                first = batch[0] if isinstance(batch, (tuple, list)) else batch
                samples += len(first) if hasattr(first, "__len__") else 1
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return f"{samples}:{digest.hexdigest()}"
