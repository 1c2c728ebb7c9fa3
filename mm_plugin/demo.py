"""The main job: the whole pipeline on bundled MNIST digits, with a ResNet-8 and a tiny Swin.

Operating points are where allocations differ on these models (measured before the project began):
the Swin at 70 and 85 % sparsity, the ResNet at 90 and 95 %. Every strategy is rescaled to each
target, so it is compared with the baselines at exactly the same sparsity. With the Torch-Pruning and
OpenVINO extras, a third run removes channels from the ResNet (20 and 40 % of its multiply-adds) and
times every pruned model on the CPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path

from .portfolio import RunConfig, RunResult, run

log = logging.getLogger(__name__)

#: These models hold 77 K and 132 K weights, about a thousand times fewer than the ImageNet models
#: the default 10 K "tiny layer" threshold was written for; the demo scales it to 1 K weights.
DEMO_RULES = [{"name": "tiny-layers", "max_params": 1_000, "max": 0.10}]

DEMO_CONFIGS = (
    RunConfig(model="resnet8", data="mnist", targets=(0.9, 0.95), range_targets=(0.8, 0.9, 0.97),
              rules=DEMO_RULES, epochs=2),
    RunConfig(model="swin_tiny_mnist", data="mnist", targets=(0.7, 0.85), range_targets=(0.6, 0.8, 0.9),
              rules=DEMO_RULES, epochs=2),
)

#: Removed channels timed with OpenVINO: run when the Torch-Pruning and OpenVINO extras are installed.
STRUCTURED_DEMO = {"model": "resnet8", "data": "mnist", "sparsity": "structured", "targets": (0.2, 0.4),
                   "rules": DEMO_RULES, "epochs": 2}

QUICK = {"strategies": ("balanced", "parameter-proportional", "classifier-heavy"), "epochs": 1}


def demo_configs(quick: bool = False, seeds: tuple[int, ...] = (0,)) -> list[RunConfig]:
    configs = [dataclasses.replace(c, seeds=seeds) for c in DEMO_CONFIGS]
    if importlib.util.find_spec("torch_pruning") and importlib.util.find_spec("openvino"):
        configs.append(RunConfig(**STRUCTURED_DEMO, seeds=seeds))
    else:
        log.warning("the structured demo needs the torch-pruning and openvino extras; skipping it")
    if quick:
        configs = [dataclasses.replace(c, targets=c.targets[-1:], baselines=c.baselines[:2], **QUICK)
                   for c in configs]
    return configs


def folder_name(config: RunConfig) -> str:
    return config.model if config.sparsity == "unstructured" else f"{config.model}-{config.sparsity}"


def run_demo(out: Path, *, quick: bool = False, cache_dir: str | None = None,
             seeds: tuple[int, ...] = (0,)) -> Iterator[RunResult]:
    """Run both demo models; each gets its own folder under ``out`` (``quick`` ones under ``out/quick``)."""
    base = out / "quick" if quick else out
    for config in demo_configs(quick, seeds):
        command = f"mm-prune demo --out {out}{' --quick' if quick else ''}"
        if seeds != (0,):
            command += " --seeds " + ",".join(map(str, seeds))
        yield run(config, base / folder_name(config), cache_dir=cache_dir, command=command)
