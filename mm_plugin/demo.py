"""The main job: the whole pipeline on bundled MNIST digits, with a ResNet-8 and a tiny Swin.

Operating points are where allocations differ on these models (measured before the project began):
the Swin at 70 and 85 % sparsity, the ResNet at 90 and 95 %. Every strategy is rescaled to each
target, so it is compared with the baselines at exactly the same sparsity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from .runner import RunConfig, RunResult, run

#: These models hold 77 K and 132 K weights, about a thousand times fewer than the ImageNet models
#: the default 10 K "tiny layer" threshold was written for; the demo scales it to 1 K weights.
DEMO_RULES = [{"name": "tiny-layers", "max_params": 1_000, "max": 0.10}]

DEMO_CONFIGS = (
    RunConfig(model="resnet8", data="mnist", targets=(0.9, 0.95), range_targets=(0.8, 0.9, 0.97),
              rules=DEMO_RULES, epochs=2),
    RunConfig(model="swin_tiny_mnist", data="mnist", targets=(0.7, 0.85), range_targets=(0.6, 0.8, 0.9),
              rules=DEMO_RULES, epochs=2),
)

QUICK = {"strategies": ("balanced", "parameter-proportional", "classifier-heavy"),
         "baselines": ("global_magnitude", "lamp"), "epochs": 1}


def demo_configs(quick: bool = False, seeds: tuple[int, ...] = (0,)) -> list[RunConfig]:
    configs = [dataclasses.replace(c, seeds=seeds) for c in DEMO_CONFIGS]
    if quick:
        configs = [dataclasses.replace(c, targets=c.targets[-1:], **QUICK) for c in configs]
    return configs


def run_demo(out: Path, *, quick: bool = False, cache_dir: str | None = None,
             seeds: tuple[int, ...] = (0,)) -> Iterator[RunResult]:
    """Run both demo models; each gets its own folder under ``out`` (``quick`` ones under ``out/quick``)."""
    base = out / "quick" if quick else out
    for config in demo_configs(quick, seeds):
        command = f"mm-prune demo --out {out}{' --quick' if quick else ''}"
        if seeds != (0,):
            command += " --seeds " + ",".join(map(str, seeds))
        yield run(config, base / config.model, cache_dir=cache_dir, command=command)
