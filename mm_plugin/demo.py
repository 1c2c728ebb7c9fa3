"""The main job: the whole pipeline on bundled MNIST digits, with a ResNet-8 and a small ViT.

Operating points are where allocations differ on these models: the ResNet at 90 % sparsity, the ViT
at 85 % (docs/results.md has both models at two targets each, three seeds). At each target the strategy search spends four full fine-tunes (one-shot scores
for 24 candidates, short fine-tunes for the best, full ones for two) and the four usual allocations get
one full fine-tune each, the best of them picked on validation: the same budget and selection effort.
With the Torch-Pruning and OpenVINO extras, a third run removes channels from the ResNet (40 % of its
multiply-adds) and times every pruned model on the CPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from .portfolio import RunConfig, RunResult, TaskSpec, resolve_task, run

log = logging.getLogger(__name__)

#: The four allocations users already have: each gets one full fine-tune, the best is picked on validation.
BASELINES = ("global_magnitude", "lamp", "erk", "uniform_plus")

#: The search spends the same four full fine-tunes per target (see mm_plugin.portfolio.search). One target
#: per model keeps the demo under 10 minutes on 2 cores.
DEMO = (
    (TaskSpec("resnet8"), RunConfig(targets=(0.9,), baselines=BASELINES, epochs=2, budget=4)),
    (TaskSpec("vit_mnist"), RunConfig(targets=(0.85,), baselines=BASELINES, epochs=2, budget=4)),
)

#: Removed channels timed with OpenVINO: run when the Torch-Pruning and OpenVINO extras are installed.
STRUCTURED_DEMO = (TaskSpec("resnet8"), {"sparsity": "structured", "targets": (0.4,), "epochs": 2, "budget": 2,
                                         "candidates": 8})

QUICK = {"epochs": 1, "budget": 2, "candidates": 8}


def demo_configs(quick: bool = False, seeds: tuple[int, ...] = (0,)) -> list[tuple[TaskSpec, RunConfig]]:
    configs = [(spec, dataclasses.replace(c, seeds=seeds)) for spec, c in DEMO]
    if importlib.util.find_spec("torch_pruning") and importlib.util.find_spec("openvino"):
        configs.append((STRUCTURED_DEMO[0], RunConfig(**STRUCTURED_DEMO[1], seeds=seeds)))
    else:
        log.warning("the structured demo needs the torch-pruning and openvino extras; skipping it")
    if quick:
        configs = [(spec, dataclasses.replace(c, targets=c.targets[-1:], baselines=c.baselines[:2], range_targets=None,
                                              **QUICK)) for spec, c in configs]
    return configs


def folder_name(spec: TaskSpec, config: RunConfig) -> str:
    return spec.model if config.sparsity == "unstructured" else f"{spec.model}-{config.sparsity}"


def run_demo(out: Path, *, quick: bool = False, cache_dir: str | None = None,
             seeds: tuple[int, ...] = (0,)) -> Iterator[RunResult]:
    """Run the demo models; each gets its own folder under ``out`` (``quick`` ones under ``out/quick``)."""
    base = out / "quick" if quick else out
    for spec, config in demo_configs(quick, seeds):
        command = f"mm-prune demo --out {out}{' --quick' if quick else ''}"
        if seeds != (0,):
            command += " --seeds " + ",".join(map(str, seeds))
        folder = base / folder_name(spec, config)
        yield run(partial(resolve_task, spec, folder, cache_dir=cache_dir), config, folder, command=command)
