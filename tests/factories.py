"""Small models and data factories for end-to-end tests (spec ``factories:<name>``)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def tiny_cnn(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )


_TRAINED: dict = {}


def trained_mlp(num_classes: int = 10) -> nn.Module:
    """An MLP trained once per process on :func:`small_digits` (the runner copies it, never edits it)."""
    import copy

    from mm_plugin.training import finetune

    if "mlp" not in _TRAINED:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                              nn.Linear(64, num_classes))
        data = small_digits(batch_size=32)
        finetune(model, data["train"], data["val"], epochs=8, lr=3e-3, patience=None, progress=False)
        _TRAINED["mlp"] = model
    return copy.deepcopy(_TRAINED["mlp"])


def wrong_classes() -> nn.Module:
    return tiny_cnn(num_classes=3)


def broken_data(batch_size: int = 32):
    raise RuntimeError("disk not mounted")


def small_digits(batch_size: int = 64, seed: int = 0):
    """A 600-image slice of scikit-learn's digits: enough to train, small enough for CI."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:600], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y[:600])
    parts = [(0, 400), (400, 500), (500, 600)]
    loaders = [DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=batch_size, shuffle=(i == 0))
               for i, (a, b) in enumerate(parts)]
    return {"train": loaders[0], "val": loaders[1], "test": loaders[2], "num_classes": 10, "name": "small_digits"}


class _Watched(DataLoader):
    """A loader that notes each read in ``log`` and refuses a read of any split after the test split's."""

    def __init__(self, split: str, log: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.split, self.log = split, log

    def __iter__(self):
        if self.split != "test" and "test" in self.log:
            raise AssertionError(f"the {self.split} split was read after the test split: the test split was "
                                 "read before the final evaluation")
        self.log.append(self.split)
        return super().__iter__()


#: The reads of the last :func:`guarded_digits` data, in order.
READS: list = []


def guarded_digits(batch_size: int = 64, seed: int = 0):
    """:func:`small_digits` whose loaders raise when the training or validation split is read after the
    test split: every selection (fine-tuning, best epochs, a search's rungs and pick) must be over first."""
    data = small_digits(batch_size, seed)
    READS.clear()
    for split in ("train", "val", "test"):
        loader = data[split]
        data[split] = _Watched(split, READS, loader.dataset, batch_size=batch_size, shuffle=split == "train")
    return data


def run_spec(config, out, spec=None, **options):
    """``mm-prune run``'s path for tests: the spec resolved to a task (the MLP on the digits by default), then
    the engine."""
    from functools import partial

    from mm_plugin.portfolio import TaskSpec, resolve_task, run

    spec = spec or TaskSpec("factories:trained_mlp", "factories:small_digits")
    return run(partial(resolve_task, spec, out), config, out, **options)


def _toy_inputs():
    """docs/examples/toy_inputs.py: the pictures the README's example folder holds."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "toy_inputs.py"
    spec = importlib.util.spec_from_file_location("toy_inputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOY = _toy_inputs()
IMAGE_CLASSES = _TOY.CLASSES
write_image_tree = _TOY.write_images
