"""``elpv``: defective solar cells in electroluminescence images, the project's edge testbed.

The ELPV benchmark (Buerhop-Lutz et al., 2018; Deitsch et al., 2019), installed as the optional package
``elpv-dataset`` (CC BY-NC-SA 4.0: never copied into this repository): 2,624 greyscale 300 x 300 cells
from 44 modules, each labelled with a defect probability in {0, 1/3, 2/3, 1} and a cell type (mono /
poly). The label is the probability level, four classes (0: functional ... 3: defective), as in most
published work on the dataset.

The dataset has no official split. :func:`make_split` draws one, stratified by (probability x type) and
seeded, and :func:`write_split` saves it as ``mm_plugin/assets/elpv-split.json``: every image's file name
and SHA-256 of its decoded pixels, per split. Loading only reads that file and checks the installed
images against it, so every run, on every machine, sees the same cells in the same splits.

Inputs: the grey cell repeated to three channels (the ImageNet-pretrained EfficientNet-Lite0 reads RGB),
resized once to :data:`SIZE` pixels (antialiased bilinear) and normalised as EfficientNet-Lite's
ImageNet training was. Training augmentation: random horizontal and vertical flips, drawn from
torch's global RNG (a seeded run repeats). No 90-degree rotations: every cell's busbars run
horizontally, so a rotated cell is a view the test split never shows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .data import DATASETS, DataSplits

logger = logging.getLogger(__name__)

#: Side of the square network input. EfficientNet-Lite0 trains at about 80 images/s at 112 px on two CPU
#: cores (about 110 at 96, 60 at 128, 35 at 160; forward, backward and AdamW step, batch 32), so a
#: fine-tuning epoch over the 1,574 training cells takes about 20 s; see docs/results/elpv/dense.md.
SIZE = 112
#: EfficientNet-Lite's input normalisation (its ImageNet training), the same for every channel.
MEAN, STD = 0.498, 0.502
#: Defect probability levels: class ``k`` is probability ``k / 3``.
CLASSES = ("0", "1/3", "2/3", "1")
TYPES = ("mono", "poly")
SPLITS = ("train", "val", "test")
#: Validation and test fractions of the fixed split (training gets the rest).
VAL_FRACTION = TEST_FRACTION = 0.2
SPLIT_SEED = 0
SPLIT_PATH = Path(__file__).parent.parent / "assets" / "elpv-split.json"
INSTALL = "pip install 'mm-plugin[elpv]'"


def _data_dir() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise ConfigError(f"the elpv dataset needs the package elpv-dataset: {INSTALL}") from None
    return Path(elpv_dataset.__file__).parent / "data"


def _read_labels(directory: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """File names (relative to the data directory), probability levels 0-3 and cell types from labels.csv."""
    names, levels, types = [], [], []
    for line in (directory / "labels.csv").read_text().splitlines():
        if not line.strip():
            continue
        name, probability, cell_type = line.split()
        names.append(name)
        levels.append(round(float(probability) * 3))
        types.append(cell_type)
    return names, np.array(levels, dtype=np.int64), types


def image_hash(image: np.ndarray) -> str:
    """SHA-256 of a decoded image's pixels (row-major uint8): the same image under another name or another
    PNG encoding has the same hash."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def _resize(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W) uint8 images resized to (N, size, size) uint8, antialiased bilinear."""
    out = torch.empty(len(images), size, size, dtype=torch.uint8)
    for i in range(0, len(images), 256):
        chunk = torch.from_numpy(images[i:i + 256, None].astype(np.float32))
        out[i:i + 256] = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False)[:, 0].round().clamp(0, 255).to(torch.uint8)
    return out


@functools.lru_cache(maxsize=1)
def _dataset() -> dict[str, Any]:
    """Every cell of the installed package, decoded once per process (about 4 s): names, levels, types and
    pixel hashes in labels.csv order, and the images resized to :data:`SIZE` (uint8, (N, SIZE, SIZE); the
    236 MB of full-size pixels are not kept)."""
    from PIL import Image

    directory = _data_dir()
    names, levels, types = _read_labels(directory)
    images = np.empty((len(names), 300, 300), dtype=np.uint8)
    for i, name in enumerate(names):
        with Image.open(directory / name) as image:
            pixels = np.asarray(image.convert("L"))
        if pixels.shape != images.shape[1:]:
            raise ConfigError(f"elpv image {name} is {pixels.shape[1]} x {pixels.shape[0]}, not 300 x 300: "
                              f"reinstall elpv-dataset ({INSTALL})")
        images[i] = pixels
    levels.flags.writeable = False
    return {"names": tuple(names), "levels": levels, "types": tuple(types),
            "hashes": tuple(image_hash(image) for image in images), "images": _resize(images, SIZE)}


def make_split(seed: int = SPLIT_SEED) -> dict[str, Any]:
    """A fixed train / val / test split of the installed dataset, stratified by (probability level x cell
    type), as the JSON-ready record :func:`write_split` saves. Not called when data is loaded."""
    from importlib.metadata import version

    from sklearn.model_selection import train_test_split

    cells = _dataset()
    n = len(cells["names"])
    strata = cells["levels"] * len(TYPES) + np.array([TYPES.index(t) for t in cells["types"]])
    index = np.arange(n)
    rest, test = train_test_split(index, test_size=round(TEST_FRACTION * n), stratify=strata, random_state=seed)
    train, val = train_test_split(rest, test_size=round(VAL_FRACTION * n), stratify=strata[rest], random_state=seed)
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    return {
        "dataset": f"elpv-dataset {version('elpv-dataset')}",
        "seed": seed,
        "stratified_by": "probability level x cell type",
        "hash": "SHA-256 of the decoded 300 x 300 uint8 pixels, row-major",
        "entry": ["file", "sha256", "probability level (probability x 3)", "cell type"],
        "sizes": {split: len(index) for split, index in parts.items()},
        "splits": {split: [[cells["names"][i], cells["hashes"][i], int(cells["levels"][i]), cells["types"][i]]
                           for i in index] for split, index in parts.items()},
    }


def write_split(path: str | Path = SPLIT_PATH, seed: int = SPLIT_SEED) -> dict[str, Any]:
    """Draw the split with :func:`make_split` and save it to ``path`` (the package asset by default), one
    image per line."""
    split = make_split(seed)
    lines = json.dumps({k: v for k, v in split.items() if k != "splits"}, indent=1)[:-2]
    body = ",\n".join(
        f'  "{name}": [\n' + ",\n".join("   " + json.dumps(entry) for entry in entries) + "\n  ]"
        for name, entries in split["splits"].items()
    )
    Path(path).write_text(f'{lines},\n "splits": {{\n{body}\n }}\n}}\n')
    return split


def read_split(path: str | Path = SPLIT_PATH) -> dict[str, Any]:
    """The saved split (see :func:`write_split`)."""
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the elpv split {path}: {exc}") from None
    if set(split.get("splits", ())) != set(SPLITS):
        raise ConfigError(f"the elpv split {path} must hold the splits {', '.join(SPLITS)}")
    return split


def split_indices(split: dict[str, Any], cells: dict[str, Any]) -> dict[str, np.ndarray]:
    """Indices into ``cells`` (see :func:`_dataset`) of each split's images, after checking that every image
    the split names is installed with the same pixels and labels; any difference is a ConfigError."""
    where = {name: i for i, name in enumerate(cells["names"])}
    out, problems = {}, []
    for part in SPLITS:
        index = []
        for name, digest, level, cell_type in split["splits"][part]:
            i = where.get(name)
            if i is None:
                problems.append(f"{name} is missing")
                continue
            if cells["hashes"][i] != digest:
                problems.append(f"{name} has other pixels (sha256 {cells['hashes'][i][:12]}..., "
                                f"split says {digest[:12]}...)")
            elif (int(cells["levels"][i]), cells["types"][i]) != (level, cell_type):
                problems.append(f"{name} is labelled {cells['levels'][i]}/3 {cells['types'][i]}, "
                                f"split says {level}/3 {cell_type}")
            index.append(i)
        out[part] = np.array(index, dtype=np.int64)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"the installed elpv-dataset differs from the one the split {SPLIT_PATH.name} was made "
                          f"from ({split.get('dataset', '?')}): {'; '.join(problems[:3])}{more}; install that "
                          f"version ({INSTALL})")
    return out


class CellImages(Dataset):
    """Grey uint8 cells as normalised 3-channel float tensors; random horizontal and vertical flips
    (torch's global RNG) when ``augment``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False) -> None:
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment:
            flip_h, flip_v = (torch.rand(2) < 0.5).tolist()
            dims = [d for d, flip in ((1, flip_h), (0, flip_v)) if flip]
            if dims:
                image = image.flip(dims)
        x = (image.float() / 255.0 - MEAN) / STD
        return x.unsqueeze(0).repeat(3, 1, 1), self.labels[index]


@DATASETS.register("elpv")
def elpv(batch_size: int, seed: int, augment: bool) -> DataSplits:
    """ELPV solar cells, four defect-probability classes, the fixed stratified split of
    ``assets/elpv-split.json`` (1574 / 525 / 525), 3 x 112 x 112, flips."""
    cells = _dataset()
    index = split_indices(read_split(), cells)
    images, levels = cells["images"], torch.from_numpy(cells["levels"].copy())

    def subset(part: str, augmented: bool = False) -> CellImages:
        i = torch.from_numpy(index[part])
        return CellImages(images[i], levels[i], augment=augmented)

    return DataSplits(
        train=DataLoader(subset("train", augment), batch_size=batch_size, shuffle=True),
        val=DataLoader(subset("val"), batch_size=batch_size),
        test=DataLoader(subset("test"), batch_size=batch_size),
        num_classes=len(CLASSES),
        input_shape=(3, SIZE, SIZE),
        name="elpv",  # the split is fixed: the seed changes shuffling and augmentation only
        seed=seed,
        calibration_source=subset("train"),
    )
