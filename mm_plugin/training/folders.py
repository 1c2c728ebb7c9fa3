"""A user's images as data: a folder of class folders, or a CSV of ``path,label``.

Layouts: ``root/{train,val,test}/<class>/<image>`` (the user's own split), ``root/<class>/<image>`` (split
here: stratified, seeded, and saved as ``split.json`` in the run folder so a rerun reads the same one), or a
CSV with a ``path,label`` header and an optional ``split`` column (paths relative to the CSV). Greyscale and
RGB images both work: each is converted to the channels the model takes. Transforms come from the model's own
data config (:class:`ImageConfig`, e.g. timm's ``resolve_data_config``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..files import write_json_atomic
from .data import DataSplits, stratified_split

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
SPLITS = ("train", "val", "test")
#: Shares of a single tree that go to validation and test when the split is made here.
VAL_SHARE, TEST_SHARE = 0.15, 0.15


@dataclass(frozen=True)
class ImageConfig:
    """How a model wants its images: ``input_size`` (C, H, W), normalisation, resize interpolation and crop."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def transform(self, training: bool) -> Callable:
        """timm's transform for these settings (random resized crops and flips when ``training``)."""
        try:
            from timm.data import create_transform
        except ImportError:
            raise ConfigError("image folders need timm and torchvision: pip install 'mm-plugin[timm]'") from None
        channels = self.input_size[0]
        mean, std = (self.mean, self.std) if channels == len(self.mean) else (
            (float(np.mean(self.mean)),) * channels, (float(np.mean(self.std)),) * channels)
        return create_transform(self.input_size, is_training=training, mean=mean, std=std,
                                interpolation=self.interpolation, crop_pct=self.crop_pct)


def is_image_data(spec: str) -> bool:
    """Whether a ``--data`` value names images on disk (a folder or a CSV) rather than a built-in or factory."""
    path = Path(spec)
    return path.is_dir() or (path.suffix.lower() == ".csv" and path.is_file())


class Images(Dataset):
    """(image, class index) pairs read from files, converted to the model's channels and transformed."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable, channels: int) -> None:
        self.items, self.transform, self.mode = list(items), transform, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as image:
            return self.transform(image.convert(self.mode)), label


def _check_readable(paths: Sequence[Path]) -> None:
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise ConfigError(f"cannot read image {path}: {e}; remove or replace the file") from None


def _listed(folder: Path) -> dict[str, list[Path]]:
    """``{class: images}`` of a folder of class folders; an empty class is an error."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{folder} holds no class folders: put each class's images in <folder>/<class>/")
    out = {}
    for c in classes:
        images = sorted(p for p in c.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ConfigError(f"class folder {c} has no images ({', '.join(IMAGE_SUFFIXES[:4])} ...); add some or "
                              "remove the folder")
        out[c.name] = images
    return out


def _split_here(items: list[tuple[Path, str]], root: Path, split_file: Path | None, seed: int
                ) -> dict[str, list[tuple[Path, str]]]:
    """A stratified, seeded train / val / test split, read from ``split_file`` when it exists and written
    there otherwise (paths relative to ``root``)."""
    if split_file is not None and split_file.exists():
        saved = json.loads(split_file.read_text())
        by_path = {str(p.relative_to(root)): (p, label) for p, label in items}
        if sorted(by_path) != sorted(name for split in SPLITS for name in saved[split]):
            raise ConfigError(f"{split_file} lists other images than {root} holds now; delete it to split again "
                              "(with another --out folder, since results made on the old split would mix)")
        return {split: [by_path[name] for name in saved[split]] for split in SPLITS}
    labels = np.array([label for _, label in items])
    counts = Counter(labels.tolist())
    few = sorted(c for c, n in counts.items() if n < 3)
    if few:
        raise ConfigError(f"class(es) {few} have fewer than 3 images; a train / val / test split needs at least one "
                          "each: add images, or give the split yourself (train/ val/ test/ folders)")
    n = len(items)
    parts = stratified_split(labels, max(round(VAL_SHARE * n), len(counts)), max(round(TEST_SHARE * n), len(counts)),
                             seed)
    split = {name: [items[i] for i in part] for name, part in zip(SPLITS, parts)}
    if split_file is not None:
        write_json_atomic(split_file, {"seed": seed, "root": str(root),
                                       **{s: [str(p.relative_to(root)) for p, _ in split[s]] for s in SPLITS}})
        log.info("split %s into %s train / val / test images (stratified, seed %d), saved in %s", root,
                 " / ".join(str(len(split[s])) for s in SPLITS), seed, split_file)
    return split


def _from_csv(path: Path) -> tuple[list[tuple[Path, str]], dict[str, list[tuple[Path, str]]] | None]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ConfigError(f"{path} needs a header with path and label columns (and optionally split)")
    items, splits = [], {s: [] for s in SPLITS}
    for i, row in enumerate(rows, 2):
        image = (path.parent / row["path"]).resolve()
        if not image.is_file():
            raise ConfigError(f"{path} line {i}: image {row['path']} does not exist")
        items.append((image, row["label"]))
        if row.get("split"):
            if row["split"] not in SPLITS:
                raise ConfigError(f"{path} line {i}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            splits[row["split"]].append(items[-1])
    has_splits = any(splits.values())
    if has_splits and sum(map(len, splits.values())) != len(items):
        raise ConfigError(f"{path}: give a split for every row or for none")
    return items, splits if has_splits else None


def image_data(spec: str, config: ImageConfig, *, batch_size: int, seed: int = 0,
               split_file: Path | None = None) -> DataSplits:
    """Train / val / test loaders of the images ``spec`` names (see the module docstring)."""
    root = Path(spec)
    if root.is_dir() and all((root / s).is_dir() for s in SPLITS):
        per_split = {s: _listed(root / s) for s in SPLITS}
        split = {s: [(p, c) for c, ps in per_split[s].items() for p in ps] for s in SPLITS}
    elif root.is_dir():
        listed = _listed(root)
        split = _split_here([(p, c) for c, ps in listed.items() for p in ps], root, split_file, seed)
    else:
        items, given = _from_csv(root)
        split = given or _split_here(items, root.parent.resolve(), split_file, seed)
    classes = sorted({c for s in SPLITS for _, c in split[s]})
    for s in SPLITS:
        missing = sorted(set(classes) - {c for _, c in split[s]})
        if missing:
            raise ConfigError(f"the {s} split of {spec} has no image of class(es) {missing}; every split needs every "
                              "class (move some images, or let the split be made here from one class-folder tree)")
    _check_readable([p for s in SPLITS for p, _ in split[s]])
    index = {c: i for i, c in enumerate(classes)}
    channels = config.input_size[0]

    def dataset(s: str, training: bool) -> Images:
        return Images([(p, index[c]) for p, c in split[s]], config.transform(training), channels)

    log.info("data %s: %s train / val / test images of %d classes (%s), as %s", spec,
             " / ".join(str(len(split[s])) for s in SPLITS), len(classes), ", ".join(classes), config.input_size)
    return DataSplits(
        train=DataLoader(dataset("train", True), batch_size=batch_size, shuffle=True),
        val=DataLoader(dataset("val", False), batch_size=batch_size),
        test=DataLoader(dataset("test", False), batch_size=batch_size),
        num_classes=len(classes), input_shape=tuple(config.input_size), name=root.name or str(root), seed=seed,
        calibration_source=dataset("train", False),
    )


def image_classes(spec: str) -> list[str]:
    """The class names of the images ``spec`` names, before any model exists (its head is sized by them)."""
    root = Path(spec)
    if root.is_dir():
        first = root / "train" if all((root / s).is_dir() for s in SPLITS) else root
        return sorted(_listed(first))
    items, _ = _from_csv(root)
    return sorted({c for _, c in items})


def image_config(model: torch.nn.Module, input_size: Sequence[int] | None = None) -> ImageConfig:
    """The model's own data config (timm's ``resolve_data_config``, which reads its pretrained config), or
    ImageNet's defaults at 224 px; ``input_size`` (C, H, W) overrides the size."""
    override = {"input_size": tuple(input_size)} if input_size else {}
    if getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        from timm.data import resolve_data_config

        cfg = resolve_data_config(override, model=model)
        return ImageConfig(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"],
                           float(cfg["crop_pct"]))
    return ImageConfig(tuple(input_size) if input_size else (3, 224, 224))
