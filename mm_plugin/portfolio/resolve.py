"""From the command line's strings to the engine's objects: a model spec, its weights and a data spec become
a :class:`~.task.Task` for the built-in classification loop. ``mm-prune run`` and the demo go through here,
then call the same engine as :func:`mm_plugin.search` does; nothing else reads the strings.

A data spec that names images on disk (a folder or a CSV) sizes the model's classifier by its classes and is
read with the model's own transforms (:func:`mm_plugin.training.image_config`); ``weights`` are loaded with
:func:`mm_plugin.training.load_weights` (a classifier of another size replaced, and said so).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..files import write_atomic
from ..training import (
    MODEL_DATA,
    MODELS,
    DataSplits,
    create_model,
    finetune,
    image_classes,
    image_config,
    image_data,
    is_image_data,
    load_data,
    load_weights,
    pretrained_demo_model,
)
from .task import Task, classification_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What ``mm-prune run`` was asked to prune and train: strings and the built-in loop's settings."""

    model: str
    data: str | None = None  # None: a built-in model's own data
    weights: str | None = None  # a checkpoint for the model (state dict, safetensors or a whole pickled model)
    input_size: tuple[int, ...] | None = None  # image data: (C, H, W) instead of the model's own input size
    lr: float = 5e-4
    patience: int | None = 3
    batch_size: int = 128
    calibration_batches: int = 4
    dense_epochs: int | None = None  # built-ins: their recipe; other models: 0 = use the weights as given

    def __post_init__(self) -> None:
        if self.data is None:
            if self.model not in MODEL_DATA:
                raise ConfigError(f"model {self.model!r} needs its data: pass --data (an image folder, a CSV of "
                                  "path,label, a built-in name such as mnist, or package.module:function); only "
                                  "the built-in models "
                                  f"({', '.join(MODEL_DATA)}) know theirs")
            object.__setattr__(self, "data", MODEL_DATA[self.model])

    @property
    def name(self) -> str:
        return f"{self.model} on {self.data}"


def resolve_task(spec: TaskSpec, out: str | Path, *, cache_dir: str | Path | None = None) -> Task:
    """The :class:`Task` ``spec`` names: its data loaded, its dense model built (from ``weights``; a built-in
    one otherwise trained once and cached; another trained for ``dense_epochs`` into ``out/dense.pt`` when
    asked) and checked to run on that data. Images on disk are split (when they are one tree) into
    ``out/split.json``."""
    out = Path(out)
    if is_image_data(spec.data):
        in_chans = {"in_chans": spec.input_size[0]} if spec.input_size else {}
        model = create_model(spec.model, num_classes=len(image_classes(spec.data)), **in_chans)
        model = load_weights(model, spec.weights) if spec.weights else model
        data = image_data(spec.data, image_config(model, spec.input_size), batch_size=spec.batch_size,
                          split_file=out / "split.json")
    else:
        data = load_data(spec.data, batch_size=spec.batch_size, seed=0)
        model = None
    dense = _dense_model(spec, data, out, cache_dir, model)
    example = _check_model_fits_data(dense, data, spec.model)
    return classification_task(dense, data, lr=spec.lr, patience=spec.patience,
                               calibration_batches=spec.calibration_batches, example_inputs=example, name=spec.name)


def _dense_model(spec: TaskSpec, data: DataSplits, out: Path, cache_dir: str | Path | None,
                 model: nn.Module | None) -> nn.Module:
    """``model`` (built for image data), or one built for ``data``: from ``weights``, from a built-in's cache,
    or as constructed; then trained dense for ``dense_epochs`` when asked."""
    if model is None and spec.model in MODELS and not spec.weights:
        model, _ = pretrained_demo_model(spec.model, data, cache_dir=cache_dir, epochs=spec.dense_epochs)
        return model
    if model is None:
        h, w = data.input_shape[-2:]
        model = create_model(spec.model, num_classes=data.num_classes, in_chans=data.input_shape[0],
                             img_size=h if h == w else (h, w))
        model = load_weights(model, spec.weights) if spec.weights else model
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
