"""Would a data-aware importance choose better hybrid masks once the kept weights are re-solved?

For each demo model at one target, on every layer that can hold the hybrid pattern: validation accuracy
right after pruning (BatchNorm re-estimated, no fine-tuning), with and without reconstruction, when the
partition ranks weights by

* ``magnitude``: ``|w|`` (FlexHiNM's default);
* ``obs``: Optimal Brain Surgeon's diagonal saliency ``w^2 / [H^-1]_jj``, ``H = X^T X + damping``;
* ``wanda``: ``|w| * ||x_j||`` (Sun et al. 2023),

``X`` the layer's inputs on the same 8 calibration batches the reconstruction uses
(:func:`mm_plugin.masks.capture_inputs`); the scores go in through ``flexhinm_sparsify_(scores=...)``.

    python benchmarks/flexhinm_saliency.py --models swin_tiny_mnist:0.75,resnet8:0.75,swin_tiny_mnist:0.5 \\
        --out docs/results/flexhinm_accuracy/saliency
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
from mm_plugin.masks import capture_inputs
from mm_plugin.training import evaluate, reestimate_bn_
from mm_plugin.training.data import load_data
from mm_plugin.training.zoo import pretrained_demo_model


def data_scores(model: torch.nn.Module, names: list[str], batches: list, kind: str) -> dict[str, torch.Tensor]:
    """``obs`` or ``wanda`` importance of every named weight, from its layer's ``X^T X``."""
    out = {}
    for name, entry in capture_inputs(model, names, batches).items():
        w = entry.weight
        if kind == "obs":  # H + lambda I, damped as reconstruction damps it
            s = w.pow(2) / torch.linalg.inv(entry.damped_gram()).diagonal()
        else:
            s = w.abs() * entry.gram.diagonal().sqrt()
        out[name] = s.float().reshape(model.get_parameter(name).shape)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="swin_tiny_mnist:0.75,resnet8:0.75,swin_tiny_mnist:0.5")
    ap.add_argument("--out", default="docs/results/flexhinm_accuracy/saliency")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = load_data("mnist")
    x = next(iter(data.val))[0][:1]
    calibration = data.calibration(8)
    rows = []
    for spec in args.models.split(","):
        name, target = spec.split(":")
        dense, _ = pretrained_demo_model(name, data)
        targets = eligible_targets(dense, x, float(target))
        for kind in ("magnitude", "obs", "wanda"):
            scores = None if kind == "magnitude" else data_scores(dense, list(targets), calibration, kind)
            for solve in (False, True):
                model = copy.deepcopy(dense)
                flexhinm_sparsify_(model, targets, FlexHiNMConfig(permutation="none"), scores=scores,
                                   calibration=calibration if solve else None)
                reestimate_bn_(model, data.calibration(4))
                rows.append({"model": name, "target": float(target), "importance": kind, "reconstruct": solve,
                             "oneshot_val": evaluate(model, data.val)})
                print(rows[-1], flush=True)
    out = Path(args.out)
    write_json_atomic(out / "saliency.json", rows)
    lines = ["| model | target | importance | one-shot val, plain | one-shot val, reconstructed |", "|---|---|---|---|---|"]
    for r in rows[::2]:
        solved = next(q for q in rows if q["reconstruct"] and
                      (q["model"], q["target"], q["importance"]) == (r["model"], r["target"], r["importance"]))
        lines.append(f"| {r['model']} | {r['target']:.0%} | {r['importance']} | {100 * r['oneshot_val']:.1f} | "
                     f"{100 * solved['oneshot_val']:.1f} |")
    write_text_atomic(out / "saliency.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
