"""Per image: where do two methods of ``flexhinm_accuracy.py`` disagree, and is it more than chance?

For one model, target and budget, every method is run as ``flexhinm_accuracy.py`` runs it (the same
``run_one``: pruning, optional reconstruction, BatchNorm re-estimation, fine-tuning, best epoch on
validation, hardening), and which validation and test images it gets right is kept. For each pair
``a:b`` and seed, the table counts the images only ``a`` gets right and those only ``b`` gets right,
with the exact McNemar test (a two-sided binomial test on those discordant images, scipy). An accuracy
gap resting on a handful of images is then visible as such.

Each finished (method, seed) is written atomically to ``<out>/runs/`` and skipped by a rerun.

    python benchmarks/flexhinm_paired.py --model swin_tiny_mnist --target 0.75 --epochs 20 --seeds 0,1,2 \\
        --pairs unstructured:hybrid-oneshot,flexhinm-gp:hybrid-oneshot --reconstruct \\
        --out docs/results/flexhinm_accuracy/paired
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from flexhinm_accuracy import eligible_targets, run_one
from resume import load_or_make

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.metrics import mcnemar
from mm_plugin.training import predict
from mm_plugin.training.data import load_data
from mm_plugin.training.zoo import pretrained_demo_model


@torch.no_grad()
def correct(model: torch.nn.Module, loader) -> list[bool]:
    """Whether ``model`` gets each image of ``loader`` right, in the loader's (fixed) order."""
    pred, true, _ = predict(model, loader)
    return (pred == true).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="swin_tiny_mnist")
    ap.add_argument("--target", type=float, default=0.75)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pairs", default="unstructured:hybrid-oneshot,flexhinm-gp:hybrid-oneshot",
                    help="comma-separated a:b method pairs (names as in flexhinm_accuracy.py)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--reconstruct", action="store_true")
    ap.add_argument("--out", default="docs/results/flexhinm_accuracy/paired")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    methods = sorted({m for pair in pairs for m in pair})
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_data("mnist")
    x = next(iter(data.val))[0][:1]
    calibration = data.calibration(8) if args.reconstruct else None
    dense, _ = pretrained_demo_model(args.model, data)
    targets = eligible_targets(dense, x, args.target)
    out = Path(args.out)
    tag = f"{args.model}-{args.target:.2f}-{args.epochs}ep"
    runs: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for method in methods:
            path = out / "runs" / f"{tag}-{method}-s{seed}.json"
            settings = {"model": args.model, "target": args.target, "epochs": args.epochs, "method": method,
                        "seed": seed, "lr": args.lr, "reconstruct": args.reconstruct}

            def make() -> dict:
                record, model = run_one(method, dense, data, x, targets, seed, args.epochs, args.lr, {}, calibration,
                                        "best")
                return {"method": method, "seed": seed, "reconstruct": args.reconstruct, "val": record["val"],
                        "test": record["test"], "val_correct": correct(model, data.val),
                        "test_correct": correct(model, data.test)}

            # records from before settings were stored: the file name holds model, target and epochs; they ran
            # at the defaults of the time for the rest
            legacy = {"model": args.model, "target": args.target, "epochs": args.epochs, "lr": 5e-4, "reconstruct": False}
            runs[method, seed] = load_or_make(path, settings, make, lambda r, k: r.get(k, legacy.get(k)))
    rows = [{"pair": f"{a} vs {b}", "seed": seed, "split": split,
             **dict(zip(("only_a", "only_b", "p"), mcnemar([int(v) for v in runs[a, seed][f"{split}_correct"]],
                                                           [int(v) for v in runs[b, seed][f"{split}_correct"]])))}
            for a, b in pairs for seed in seeds for split in ("val", "test")]
    write_json_atomic(out / f"{tag}.json", rows)
    solved = ", reconstructed" if args.reconstruct else ""
    title = f"{args.model} at {args.target:.0%}, {args.epochs} epochs{solved}: images only one method of a pair gets right."
    lines = [title, "",
             "| pair | seed | split | only the first right | only the second right | exact McNemar p |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['seed']} | {r['split']} | {r['only_a']} | {r['only_b']} | {r['p']:.3g} |"
              for r in rows]
    write_text_atomic(out / f"{tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
