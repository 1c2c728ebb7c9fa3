"""Stand-ins for a user's own inputs, so the README's commands run as written: a folder of class folders
(greyscale and RGB PNGs of crosses, dots and rings on noise, already split into train/ val/ test/) and a
timm ``resnet10t`` checkpoint trained on it for a few epochs.

    python docs/examples/toy_inputs.py --out toy        # toy/images/, toy/resnet10t.pt (about a minute)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cross", "dot", "ring")
SPLITS = ("train", "val", "test")


def draw(kind: str, seed: int, rgb: bool) -> Image.Image:
    """A 40 x 40 picture of ``kind`` on noise: greyscale, or the same in RGB."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (40, 40)).astype(np.uint8)
    yy, xx = np.mgrid[:40, :40]
    r = np.sqrt((yy - 20) ** 2 + (xx - 20) ** 2)
    if kind == "cross":
        img[18:22, :] = img[:, 18:22] = 255
    elif kind == "dot":
        img[r < 8] = 255
    else:
        img[np.abs(r - 12) < 2] = 255
    image = Image.fromarray(img)
    return image.convert("RGB") if rgb else image


def write_images(root: Path, per_class: int, splits=SPLITS) -> Path:
    """``root/<split>/<class>/<i>.png`` (or ``root/<class>/<i>.png`` for ``splits=("",)``), half of them RGB."""
    for s in splits:
        for c in CLASSES:
            folder = root / s / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed = 1000 * ("", *SPLITS).index(s) + 100 * CLASSES.index(c) + i
                draw(c, seed, rgb=bool(i % 2)).save(folder / f"{i}.png")
    return root


def write_checkpoint(images: Path, path: Path, input_size: int = 64, epochs: int = 5) -> Path:
    """A timm resnet10t trained on ``images/train`` with the model's own transforms; its state dict."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(CLASSES))
    config = resolve_data_config({"input_size": (3, input_size, input_size)}, model=model)
    data = DataLoader(ImageFolder(images / "train", transform=create_transform(**config, is_training=True)),
                      batch_size=16, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in data:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    torch.save(model.state_dict(), path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="toy")
    args = parser.parse_args()
    out = Path(args.out)
    images = write_images(out / "images", 20)
    print(f"wrote {images} and {write_checkpoint(images, out / 'resnet10t.pt')}")
