"""``report.md`` and ``pareto.png`` from finished runs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .pareto import Aggregate, front_of

BASELINE_ORDER = ("global_magnitude", "lamp", "erk", "uniform", "uniform_plus", "snip")


def _pm(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def comparison(aggregates: Sequence[Aggregate]) -> list[dict]:
    """Per target sparsity: the best Mix-and-Match strategy (picked on validation) against each
    baseline, as test-accuracy drops from dense, and the reduction relative to global magnitude."""
    by_target: dict[float, list[Aggregate]] = defaultdict(list)
    for a in aggregates:
        if a.target is not None:
            by_target[round(a.target, 4)].append(a)
    rows = []
    for target, group in sorted(by_target.items()):
        mm = [a for a in group if a.method == "mix_and_match"]
        base = {a.name: a for a in group if a.method == "baseline"}
        if not mm or not base:
            continue
        best = max(mm, key=lambda a: a.val)
        balanced = next((a for a in mm if a.name == "balanced"), None)
        row = {"target": target, "best": best, "baselines": base, "balanced": balanced}
        gmp = base.get("global_magnitude")
        if gmp is not None and gmp.drop > 0:
            row["best_vs_gmp"] = 1 - best.drop / gmp.drop
            if balanced is not None:
                row["balanced_vs_gmp"] = 1 - balanced.drop / gmp.drop
        rows.append(row)
    return rows


def write_report(aggregates: Sequence[Aggregate], out: Path, title: str, command: str) -> Path:
    front = {a.key for a in front_of(aggregates)}
    dense = aggregates[0].dense_test if aggregates else float("nan")
    lines = [f"# {title}", "", f"Reproduce: `{command}`", "",
             f"Dense test accuracy: {100 * dense:.2f} %. Sparsity is measured on the fine-tuned model "
             "(zeros / prunable weights). Accuracies are test-split means ± std over seeds; the Pareto front "
             "(★) is chosen on validation accuracy, so the test split is never used for selection.", ""]
    lines += ["| ★ | method | signal | strategy / allocation | target | sparsity | non-zeros | one-shot | "
              "fine-tuned test | val | drop | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in aggregates:
        lines.append(
            f"| {'★' if a.key in front else ''} | {a.method} | {a.signal} | {a.name} | "
            f"{'' if a.target is None else f'{a.target:.3f}'} | {100 * a.sparsity:.2f} % | {a.nonzeros:,.0f} | "
            f"{100 * a.oneshot_test:.2f} | {_pm(a.test, a.test_std, a.n)} | {100 * a.val:.2f} | "
            f"{100 * a.drop:+.2f} | {a.n} |"
        )
    rows = comparison(aggregates)
    if rows:
        lines += ["", "## Best Mix-and-Match strategy vs baselines at the same sparsity", "",
                  "Test-accuracy drop from dense (points; lower is better). *best* is picked among the "
                  "strategies on validation accuracy; *balanced* is one fixed strategy, i.e. the same "
                  "selection effort as each baseline.", ""]
        names = [n for n in BASELINE_ORDER if any(n in r["baselines"] for r in rows)]
        lines += ["| target | best strategy | best drop | balanced drop | " + " | ".join(names)
                  + " | best vs GMP | balanced vs GMP |",
                  "|---|---|---|---|" + "---|" * len(names) + "---|---|"]

        def pct(x: float | None) -> str:
            return "" if x is None else f"{100 * x:.0f} %"

        for r in rows:
            b, bal = r["best"], r["balanced"]
            cells = [f"{100 * r['baselines'][n].drop:.2f}" if n in r["baselines"] else "" for n in names]
            lines.append(
                f"| {r['target']:.3f} | {b.signal}/{b.name} | {100 * b.drop:.2f} | "
                f"{'' if bal is None else f'{100 * bal.drop:.2f}'} | " + " | ".join(cells)
                + f" | {pct(r.get('best_vs_gmp'))} | {pct(r.get('balanced_vs_gmp'))} |"
            )
        lines += ["", "*vs GMP*: the share of global magnitude's accuracy drop that is avoided "
                  "(1 - drop / GMP drop; 40 % is the paper's Swin-T headline)."]
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def plot_pareto(aggregates: Sequence[Aggregate], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    mm = [a for a in aggregates if a.method == "mix_and_match"]
    for signal in sorted({a.signal for a in mm}):
        pts = [a for a in mm if a.signal == signal]
        ax.errorbar([100 * a.sparsity for a in pts], [100 * a.test for a in pts], yerr=[100 * a.test_std for a in pts],
                    fmt="o", ms=5, capsize=2, label=f"Mix-and-Match ({signal})", alpha=0.85)
    for name in sorted({a.name for a in aggregates if a.method == "baseline"}):
        pts = sorted((a for a in aggregates if a.method == "baseline" and a.name == name), key=lambda a: a.sparsity)
        ax.errorbar([100 * a.sparsity for a in pts], [100 * a.test for a in pts], yerr=[100 * a.test_std for a in pts],
                    fmt="-s", ms=4, capsize=2, label=f"baseline: {name}", alpha=0.8)
    front = front_of(aggregates)
    ax.plot([100 * a.sparsity for a in front], [100 * a.test for a in front], "k--", lw=1, zorder=5)
    ax.scatter([100 * a.sparsity for a in front], [100 * a.test for a in front], s=140, facecolors="none",
               edgecolors="k", lw=1.5, zorder=6, label="Pareto front (chosen on val)")
    if aggregates:
        ax.axhline(100 * aggregates[0].dense_test, color="grey", ls=":", label="dense")
    ax.set_xlabel("sparsity after fine-tuning (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
