"""Structured Mix-and-Match on the demo models: OpenVINO CPU latency and accuracy after fine-tuning.

For each demo model (dense weights from the cache), every structured strategy (Torch-Pruning groups)
and Torch-Pruning's own uniform and global pruning at several ratios are pruned, timed with OpenVINO
(fixed threads, fp32 hint, warm-up, interleaved with the dense model, median of rounds), fine-tuned
with the same budget for every method and seed, and evaluated on the test split. The baselines'
accuracy is then read at each strategy's measured latency (linear interpolation along the baseline's
curve). Writes JSON, a markdown table and ``latency_front.png`` to --out.

    python benchmarks/structured_front.py --seeds 0,1,2 --out docs/results/structured_front
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import numpy as np

from mm_plugin.adapters.torch_pruning import baseline_front, latency_front, plan_groups
from mm_plugin.data import load_data
from mm_plugin.training import evaluate, finetune
from mm_plugin.zoo import pretrained_demo_model

HEADS = {"resnet8": ["fc"], "swin_tiny_mnist": ["head.fc"]}


def accuracy(model, data, seeds, epochs, lr) -> list[float]:
    out = []
    for seed in seeds:
        m = copy.deepcopy(model)
        finetune(m, data.train, data.val, epochs=epochs, lr=lr, patience=None, seed=seed, progress=False)
        out.append(evaluate(m, data.test))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8,swin_tiny_mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ratios", default="0.2,0.35,0.5,0.65")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/results/structured_front")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_data("mnist")
    x = next(iter(data.val))[0][:1]
    rows = []
    for name in args.models.split(","):
        dense, _ = pretrained_demo_model(name, data)
        dense_test = evaluate(dense, data.test)
        ignored = HEADS.get(name, [])
        plan = plan_groups(dense, x, [dense.get_submodule(n) for n in ignored])
        timing = dict(threads=args.threads, warmup=5, rounds=5, runs=20, keep_models=True)
        points = latency_front(dense, x, plan=plan, ignored_layers=ignored, **timing)
        points += baseline_front(dense, x, ratios=[float(r) for r in args.ratios.split(",")], plan=plan,
                                 ignored_layers=ignored, **timing)
        for p in points:
            accs = accuracy(p.model, data, seeds, args.epochs, args.lr)
            row = {"model": name, "method": "baseline" if p.strategy.startswith("tp-") else "mix_and_match",
                   "strategy": p.strategy, "latency_ratio": p.latency_ratio, "params_ratio": p.params_ratio,
                   "dense_test": dense_test, "test": statistics.mean(accs),
                   "test_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": seeds}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "structured_front.json").write_text(json.dumps(rows, indent=1))

    lines = [f"{args.epochs} epochs of fine-tuning (lr {args.lr}) for every model, seeds {args.seeds}, "
             f"OpenVINO CPU {args.threads} thread(s), fp32.", "",
             "| model | strategy | latency (x dense) | params (x dense) | test acc. | TP uniform at this latency | "
             "TP global at this latency |", "|---|---|---|---|---|---|---|"]

    def at_latency(model: str, method: str, latency: float) -> str:
        pts = sorted((r["latency_ratio"], r["test"]) for r in rows
                     if r["model"] == model and r["strategy"].startswith(f"tp-{method}@"))
        if len(pts) < 2 or not pts[0][0] <= latency <= pts[-1][0]:
            return "outside"
        return f"{100 * float(np.interp(latency, *zip(*pts))):.2f}"

    for r in sorted(rows, key=lambda r: (r["model"], r["latency_ratio"])):
        lines.append(f"| {r['model']} | {r['strategy']} | {r['latency_ratio']:.2f} | {r['params_ratio']:.2f} | "
                     f"{100 * r['test']:.2f} ± {100 * r['test_std']:.2f} | "
                     + (f"{at_latency(r['model'], 'uniform', r['latency_ratio'])} | "
                        f"{at_latency(r['model'], 'global', r['latency_ratio'])} |"
                        if r["method"] == "mix_and_match" else " | |"))
    (out / "structured_front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = args.models.split(",")
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        for label, pick in (("Mix-and-Match", lambda r: r["method"] == "mix_and_match"),
                            ("TP uniform", lambda r: r["strategy"].startswith("tp-uniform")),
                            ("TP global", lambda r: r["strategy"].startswith("tp-global"))):
            pts = sorted((r for r in rows if r["model"] == name and pick(r)), key=lambda r: r["latency_ratio"])
            ax.errorbar([r["latency_ratio"] for r in pts], [100 * r["test"] for r in pts],
                        yerr=[100 * r["test_std"] for r in pts], fmt="o" if label == "Mix-and-Match" else "-s",
                        capsize=2, label=label)
        ax.axhline(100 * rows[[r["model"] for r in rows].index(name)]["dense_test"], color="grey", ls=":",
                   label="dense")
        ax.set_xlabel("OpenVINO CPU latency (x dense)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_front.png", dpi=110)


if __name__ == "__main__":
    main()
