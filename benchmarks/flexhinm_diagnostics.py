"""Plot what the learned 2:4 gates did, epoch by epoch, from runs of ``benchmarks/flexhinm_accuracy.py``.

Per epoch (mean over the seeds of each method): the mean expected-open gates per learnable group, the
share of 2:4 groups hardened, the share whose 2:4 choice differs from the magnitude top-2 it started
from and from the previous epoch, the validation accuracy with the gates' training-time forward pass against the
evaluation masks (their gap is what hardening would cost; it is zero once all are hard, and at every step
for the default gates), and the training loss.

    python benchmarks/flexhinm_diagnostics.py --runs docs/results/flexhinm_accuracy/learned/runs \\
        --select resnet8-0.75-20ep-flexhinm-gp,swin_tiny_mnist-0.75-20ep-flexhinm-gp,swin_tiny_mnist-0.75-8ep-flexhinm-gp,swin_tiny_mnist-0.75-8ep-sampled \\
        --out docs/flexhinm_diagnostics.png
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = (
    ("gates_open", "expected open gates\nper learnable group"),
    ("hardened_share", "share of 2:4 groups\nhardened"),
    ("changed_vs_magnitude", "share of 2:4 groups whose\nchoice differs from magnitude"),
    ("changed_since_last", "share of 2:4 groups whose\nchoice changed this epoch"),
    ("train_eval_gap", "val accuracy: training-time\nminus evaluation-time masks"),
    ("train_loss", "training loss\n(the masks training used)"),
)


def load(folders: list[Path], prefixes: list[str]) -> dict[str, list[dict]]:
    """Run records by prefix (file name up to ``-s<seed>``)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(p for folder in folders for p in folder.glob("*.json")):
        key = path.stem.rsplit("-s", 1)[0]
        if key in prefixes:
            out[key].append(json.loads(path.read_text()))
    missing = [p for p in prefixes if p not in out]
    if missing:
        raise SystemExit(f"no runs named {missing} in {[str(f) for f in folders]}")
    return out


def mean_curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    epochs = sorted({h["epoch"] for r in records for h in r["history"] if key in h})
    values = []
    for e in epochs:
        vs = [h[key] for r in records for h in r["history"] if h["epoch"] == e and key in h
              and not math.isnan(h[key])]
        values.append(sum(vs) / len(vs) if vs else math.nan)
    return epochs, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="docs/results/flexhinm_accuracy/runs", help="comma-separated run folders")
    ap.add_argument("--select", required=True, help="comma-separated run names without -s<seed>")
    ap.add_argument("--out", default="docs/flexhinm_diagnostics.png")
    args = ap.parse_args()
    groups = load([Path(f) for f in args.runs.split(",")], args.select.split(","))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.6 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for name, records in groups.items():
            x, y = mean_curve(records, key)
            ax.plot(x, y, marker="o", ms=3, label=f"{name} ({len(records)} seeds)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].axhline(2, color="k", lw=0.8)
    low, high = axes[0].get_ylim()
    axes[0].set_ylim(min(low, 1.5), max(high, 2.5))  # pattern gates sit at exactly 2: no offset axis
    axes[0].ticklabel_format(axis="y", useOffset=False)
    axes[[key for key, _ in PANELS].index("train_eval_gap")].axhline(0, color="k", lw=0.8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
