"""The strategy search on a task that is not classification: a small segmentation network, its own loss
(binary cross-entropy per pixel) and metric (IoU), driven through ``mm_plugin.search`` by the user's own
``finetune`` and ``evaluate``.

    python docs/examples/segmentation.py --out runs/segmentation        # about a minute on 2 CPU cores

The data are synthetic (bright disks and squares on noise; the mask is the shape), so the example runs
anywhere with nothing to download. Replace ``make_data``, ``SegNet``, ``finetune`` and ``evaluate`` with
yours: the search only calls them.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mm_plugin


def make_data(n: int, seed: int) -> TensorDataset:
    """``n`` 32 x 32 greyscale images with a disk or a square, and the shape's mask."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 16 + 8).tolist()
        r = float(torch.rand(1, generator=g) * 5 + 4)
        if torch.rand(1, generator=g) < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            mask = ((yy - cy).abs() < r) & ((xx - cx).abs() < r)
        images.append(0.3 * torch.rand(1, 32, 32, generator=g) + 0.7 * mask.float())
        masks.append(mask.float().unsqueeze(0))
    return TensorDataset(torch.stack(images), torch.stack(masks))


class SegNet(nn.Module):
    """Three 3x3 conv blocks and a 1x1 head: one logit per pixel."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        blocks = []
        for c_in, c_out in ((1, width), (width, 2 * width), (2 * width, width)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Segmentation:
    """The user's side: loaders, a training loop and a metric. Plain methods, so Ray can send them."""

    def __init__(self, seed: int = 0) -> None:
        self.loaders = {split: DataLoader(make_data(n, seed + i), batch_size=32, shuffle=split == "train")
                        for i, (split, n) in enumerate((("train", 256), ("val", 96), ("test", 96)))}
        self.loss = nn.BCEWithLogitsLoss()

    def finetune(self, model: nn.Module, epochs: float) -> None:
        """Adam for ``epochs`` (a fraction stops part-way through the last epoch)."""
        steps = max(1, round(epochs * len(self.loaders["train"])))
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        model.train()
        for step in range(steps):
            x, y = list(self.loaders["train"])[step % len(self.loaders["train"])]
            optimizer.zero_grad()
            self.loss(model(x), y).backward()
            optimizer.step()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Intersection over union of the predicted masks (higher is better), and the loss."""
        model.eval()
        inter = union = loss = 0.0
        for x, y in self.loaders[split]:
            logits = model(x)
            pred = logits > 0
            inter += float((pred & (y > 0.5)).sum())
            union += float((pred | (y > 0.5)).sum())
            loss += float(self.loss(logits, y)) * len(x)
        return {"score": inter / max(union, 1.0), "loss": loss / len(self.loaders[split].dataset)}


def dense_model(task: Segmentation, seed: int = 0) -> nn.Module:
    """The network trained dense: what a user brings to the search."""
    torch.manual_seed(seed)
    model = SegNet()
    task.finetune(model, epochs=6)
    return model


def main(out: str, targets=(0.7,), budget: float = 2.0, **settings) -> mm_plugin.portfolio.RunResult:
    task = Segmentation()
    model = dense_model(task)
    calibration = [batch for _, batch in zip(range(4), task.loaders["train"])]
    return mm_plugin.search(
        model, torch.zeros(1, 1, 32, 32), finetune=task.finetune, evaluate=task.evaluate, targets=targets,
        budget=budget, out=out, calibration=calibration, loss_fn=task.loss, run_id="synthetic-shapes-v1",
        name="SegNet on synthetic shapes", metric="IoU", **settings)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/segmentation")
    args = parser.parse_args()
    result = main(args.out)
    for target, picks in result.picks.items():
        iou = sum(p["test_score"] for p in picks) / len(picks)
        print(f"target {target:.0%}: picked {picks[0]['picked']}, test IoU {iou:.3f} "
              f"(dense {picks[0]['dense_test_score']:.3f}); report: {result.report}")
    assert not math.isnan(iou)
