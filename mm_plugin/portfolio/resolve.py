"""From the command line's strings to the engine's objects: a model spec, its weights and a data spec become
a :class:`~.task.Task` for the built-in classification loop. ``mm-prune run`` and the demo go through here,
then call the same engine as :func:`mm_plugin.search` does; nothing else reads the strings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..files import write_atomic
from ..training import MODEL_DATA, MODELS, DataSplits, create_model, finetune, load_data, pretrained_demo_model
from .task import Task, classification_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What ``mm-prune run`` was asked to prune and train: strings and the built-in loop's settings."""

    model: str
    data: str | None = None  # None: a built-in model's own data
    lr: float = 5e-4
    patience: int | None = 3
    batch_size: int = 128
    calibration_batches: int = 4
    dense_epochs: int | None = None  # built-ins: their recipe; other models: 0 = use the weights as given

    def __post_init__(self) -> None:
        if self.data is None:
            if self.model not in MODEL_DATA:
                raise ConfigError(f"model {self.model!r} needs its data: pass --data (a built-in name such as "
                                  "mnist, or package.module:function); only the built-in models "
                                  f"({', '.join(MODEL_DATA)}) know theirs")
            object.__setattr__(self, "data", MODEL_DATA[self.model])

    @property
    def name(self) -> str:
        return f"{self.model} on {self.data}"


def resolve_task(spec: TaskSpec, out: str | Path, *, cache_dir: str | Path | None = None) -> Task:
    """The :class:`Task` ``spec`` names: its data loaded, its dense model built (a built-in one trained once
    and cached; another trained for ``dense_epochs`` into ``out/dense.pt`` when asked) and checked to run
    on that data."""
    data = load_data(spec.data, batch_size=spec.batch_size, seed=0)
    dense = _dense_model(spec, data, Path(out), cache_dir)
    example = _check_model_fits_data(dense, data, spec.model)
    return classification_task(dense, data, lr=spec.lr, patience=spec.patience,
                               calibration_batches=spec.calibration_batches, example_inputs=example, name=spec.name)


def _dense_model(spec: TaskSpec, data: DataSplits, out: Path, cache_dir: str | Path | None) -> nn.Module:
    if spec.model in MODELS:
        model, _ = pretrained_demo_model(spec.model, data, cache_dir=cache_dir, epochs=spec.dense_epochs)
        return model
    h, w = data.input_shape[-2:]
    model = create_model(spec.model, num_classes=data.num_classes, in_chans=data.input_shape[0],
                         img_size=h if h == w else (h, w))
    if spec.dense_epochs:
        path = out / "dense.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            finetune(model, data.train, data.val, epochs=spec.dense_epochs, lr=1e-3, patience=None, desc="dense")
            write_atomic(path, lambda f: torch.save(model.state_dict(), f))
    return model


def _check_model_fits_data(model: nn.Module, data: DataSplits, spec: str) -> torch.Tensor:
    x, _ = next(iter(data.val))
    try:
        with torch.no_grad():
            y = model.eval()(x[:2])
    except Exception as e:  # noqa: BLE001 - any failure here means model and data disagree
        raise ConfigError(f"model {spec!r} cannot run on {data.name!r} inputs of shape {tuple(x.shape[1:])}: {e}") from None
    if y.dim() != 2 or y.shape[-1] != data.num_classes:
        raise ConfigError(
            f"model {spec!r} outputs shape {tuple(y.shape)} but {data.name!r} has {data.num_classes} classes; "
            f"build the model with num_classes={data.num_classes}"
        )
    return x[:1]
