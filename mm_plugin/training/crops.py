"""``imagenet_crops``: an ImageNet-like testbed without labels or downloads.

Random crops of the photographs scikit-image bundles, each labelled with the softmax of the
ImageNet-pretrained EfficientNet-Lite0. Fine-tuning on these targets is distillation from the dense
model, and accuracy is top-1 agreement with it. Train, validation and test crops come from disjoint
photographs, so the test split measures agreement on images no run has seen. Made once (a teacher
pass over the crops) and cached.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..files import write_atomic
from .data import DATASETS, DataSplits
from .zoo import default_cache_dir, efficientnet_lite0

log = logging.getLogger(__name__)

SIZE = 128
#: Photographs per split (disjoint), and crops drawn from them.
#: Validation holds photographs like the test's (a pick on microscope images told nothing about them), and
#: no photograph appears twice under two names (``chelsea`` is ``cat``).
PHOTOS = {
    "train": ("astronaut", "brick", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
              "immunohistochemistry", "logo", "page", "retina", "text"),
    "val": ("camera", "clock", "stereo_motorcycle"),
    "test": ("coffee", "rocket", "moon", "cat"),
}
CROPS = {"train": 800, "val": 200, "test": 300}
MEAN, STD = 0.498, 0.502  # EfficientNet-Lite's input normalization
VERSION = 3


def _photo(name: str) -> torch.Tensor:
    """A bundled photograph as a 3 x H x W uint8 tensor (grey and boolean images become RGB)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)


def _crops(photos: tuple[str, ...], n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` square crops (30-90 % of the shorter side, anywhere), resized to SIZE x SIZE, as uint8."""
    images = [_photo(p) for p in photos]
    out = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n):
        image = images[rng.integers(len(images))]
        h, w = image.shape[1:]
        side = int(rng.uniform(0.3, 0.9) * min(h, w))
        y, x = rng.integers(h - side + 1), rng.integers(w - side + 1)
        crop = image[:, y:y + side, x:x + side].float().unsqueeze(0)
        out[i] = F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)[0]\
            .round().clamp(0, 255).to(torch.uint8)
    return out


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - MEAN) / STD


@torch.no_grad()
def _teacher_probs(images: torch.Tensor) -> torch.Tensor:
    teacher = efficientnet_lite0()
    return torch.cat([teacher(_normalize(images[i:i + 64])).softmax(1) for i in range(0, len(images), 64)])


def _splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    path = default_cache_dir() / f"imagenet_crops-v{VERSION}-{SIZE}px.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    log.info("making the imagenet_crops testbed (crops of scikit-image photographs, EfficientNet-Lite0 labels)")
    rng = np.random.default_rng(0)
    splits = {}
    for split, photos in PHOTOS.items():
        images = _crops(photos, CROPS[split], rng)
        splits[split] = (images, _teacher_probs(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(splits, f))
    return splits


@DATASETS.register("imagenet_crops")
def imagenet_crops(batch_size: int, seed: int, augment: bool) -> DataSplits:
    """Crops of bundled photographs labelled by EfficientNet-Lite0 (800 / 200 / 300, 128 x 128):
    fine-tuning distils from the dense model, accuracy is agreement with it."""
    splits = _splits()
    sets = {k: TensorDataset(_normalize(images), probs) for k, (images, probs) in splits.items()}
    return DataSplits(
        train=DataLoader(sets["train"], batch_size=batch_size, shuffle=True),
        val=DataLoader(sets["val"], batch_size=batch_size), test=DataLoader(sets["test"], batch_size=batch_size),
        num_classes=1000, input_shape=(3, SIZE, SIZE), name="imagenet_crops", seed=seed,
    )
