"""Which region of the hybrid pattern costs the accuracy? One-shot, each region alone, against unstructured.

For every demo model at one target, on every layer that can hold the pattern: the validation accuracy right
after pruning (BatchNorm re-estimated, no fine-tuning) and the share of |w| kept, for unstructured
magnitude masks, the hybrid pattern (row tiles of 64, 16 and 4 output channels), its vector-pruned region
alone (the 2:4 region left dense) and its 2:4 region alone (the vector-pruned region left dense). Learned
2:4 choices (FlexHiNM-GP's gates) can only recover what the 2:4 region costs. ``--reconstruct`` re-solves
the kept weights of every pattern on 8 calibration batches first, as the accuracy sweep's ``--reconstruct``.

    python benchmarks/flexhinm_regions.py --models resnet8:0.75,swin_tiny_mnist:0.75 \\
        --out docs/results/flexhinm_accuracy/regions
    python benchmarks/flexhinm_regions.py --models resnet8:0.75,swin_tiny_mnist:0.75 --reconstruct \\
        --out docs/results/flexhinm_accuracy/regions-reconstructed
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import torch
from flexhinm_accuracy import eligible_targets

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.flexhinm import FlexHiNMConfig, flexhinm_sparsify_
from mm_plugin.masks import LayerInputs, apply_masks_, capture_inputs, reconstruct_
from mm_plugin.masks.pruning import compute_masks
from mm_plugin.training import evaluate, reestimate_bn_
from mm_plugin.training.data import load_data
from mm_plugin.training.zoo import pretrained_demo_model

TILES = (64, 16, 4)


def one_shot(dense: torch.nn.Module, masks: dict[str, torch.Tensor], data,
             captured: dict[str, LayerInputs] | None) -> dict[str, float]:
    """Validation accuracy after masking (the kept weights re-solved from the dense model's ``captured``
    inputs if given) and BatchNorm re-estimation, and the share of the dense |w| the masks keep."""
    model = copy.deepcopy(dense)
    apply_masks_(model, masks)
    if captured is not None:
        reconstruct_(model, captured)
    reestimate_bn_(model, data.calibration(4))
    weights = {n: dense.get_parameter(n).detach().abs() for n in masks}
    kept = sum(float((w * masks[n]).sum()) for n, w in weights.items()) / sum(float(w.sum()) for w in weights.values())
    return {"oneshot_val": evaluate(model, data.val), "magnitude_kept": kept}


def regions(name: str, target: float, data, x: torch.Tensor, calibration: list | None) -> list[dict]:
    dense, _ = pretrained_demo_model(name, data)
    targets = eligible_targets(dense, x, target)
    # every pattern is re-solved from the same dense inputs: capture them once
    captured = capture_inputs(dense, list(targets), calibration) if calibration is not None else None
    rows = [{"pattern": "unstructured", **one_shot(dense, compute_masks(copy.deepcopy(dense), targets), data, captured)}]
    for tile in TILES:
        parts = flexhinm_sparsify_(copy.deepcopy(dense), targets,
                                   FlexHiNMConfig(permutation="none", tile_rows=tile)).partitions
        rows.append({"pattern": f"hybrid, tiles of {tile} rows",
                     **one_shot(dense, {n: p.mask for n, p in parts.items()}, data, captured)})
        if tile == TILES[0]:
            rows.append({"pattern": "its vector-pruned region alone (2:4 region dense)",
                         **one_shot(dense, {n: p.mask | p.nm_region for n, p in parts.items()}, data, captured)})
            rows.append({"pattern": "its 2:4 region alone (vector-pruned region dense)",
                         **one_shot(dense, {n: p.mask | ~p.nm_region for n, p in parts.items()}, data, captured)})
    return [{"model": name, "target": target, "layers": len(targets), **r} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8:0.75,swin_tiny_mnist:0.75", help="comma-separated model:target")
    ap.add_argument("--reconstruct", action="store_true", help="re-solve the kept weights on 8 calibration batches")
    ap.add_argument("--out", default="docs/results/flexhinm_accuracy/regions")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    data = load_data("mnist")
    x = next(iter(data.val))[0][:1]
    rows = []
    for spec in args.models.split(","):
        name, target = spec.split(":")
        rows += regions(name, float(target), data, x, data.calibration(8) if args.reconstruct else None)
    out = Path(args.out)
    write_json_atomic(out / "regions.json", rows)
    lines = ["| model | target | pattern | one-shot val accuracy | share of weight magnitude kept |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['target']:.0%} | {r['pattern']} | {100 * r['oneshot_val']:.1f} | "
              f"{100 * r['magnitude_kept']:.1f} % |" for r in rows]
    write_text_atomic(out / "regions.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
