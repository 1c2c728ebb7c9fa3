"""``report.md`` and ``pareto.png`` from finished runs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..files import write_atomic, write_text_atomic
from .pareto import Aggregate, front_of, interpolate, latency_front_of
from .search import best_baselines

BASELINE_ORDER = ("global_magnitude", "lamp", "erk", "uniform", "uniform_plus", "snip")


def _scale(metric: str) -> float:
    """Accuracy shows as a percentage; any other metric as it is."""
    return 100.0 if metric == "accuracy" else 1.0


def _pm(mean: float, std: float, n: int, metric: str = "accuracy") -> str:
    k = _scale(metric)
    return f"{k * mean:.2f} ± {k * std:.2f}" if n > 1 else f"{k * mean:.2f}"


def comparison(aggregates: Sequence[Aggregate], merged: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
    """Per target sparsity: the best Mix-and-Match strategy (picked on validation) against each
    baseline, as test-score drops from dense, and the reduction relative to global magnitude.
    ``merged``: strategies run under another one's key (``balanced`` is found there too)."""
    merged = merged or {}
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
        balanced = next((a for a in mm if a.name == "balanced" or "balanced" in merged.get(a.key, ())), None)
        row = {"target": target, "best": best, "baselines": base, "balanced": balanced}
        gmp = base.get("global_magnitude")
        if gmp is not None and gmp.drop > 0:
            row["best_vs_gmp"] = 1 - best.drop / gmp.drop
            if balanced is not None:
                row["balanced_vs_gmp"] = 1 - balanced.drop / gmp.drop
        rows.append(row)
    return rows


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Rank correlation, or None with fewer than 4 pairs or no spread."""
    from scipy.stats import spearmanr

    if len(xs) < 4 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def search_summary(records: Sequence[dict]) -> list[dict]:
    """Per target: the search's rungs and budget, its pick, the baselines picked on validation with the
    same selection effort (one full fine-tune each), and how well one-shot scores ranked the candidates."""
    rows = []
    for target in sorted({r["target"] for r in records if r.get("picked")}):
        at = [r for r in records if r["target"] == target]
        picks = [r for r in at if r.get("picked")]
        seeds = sorted({r["seed"] for r in picks})
        best = {r["seed"]: r for r in best_baselines(at)}
        base = [best[s] for s in seeds if s in best]
        rungs = {k: [r for r in at if r.get("rung") == k] for k in (0, 1, 2)}
        by_name = {(r["seed"], r["name"]): r for r in rungs[0]}
        pairs = [(by_name[(r["seed"], r["name"])]["val_score"], r["val_score"]) for r in rungs[1] + rungs[2]
                 if (r["seed"], r["name"]) in by_name]
        rows.append({
            "target": target, "seeds": len(seeds), "rungs": [len(rungs[k]) / max(len(seeds), 1) for k in (0, 1, 2)],
            "budget": picks[0]["search"]["budget"], "eta": picks[0]["search"]["eta"],
            "spent": max(p["search"].get("spent", p["search"]["budget"]) for p in picks),
            "pick": picks, "baselines": base, "n_baselines": len({r["name"] for r in at if r["method"] == "baseline"}),
            "rho_oneshot": spearman([a for a, _ in pairs], [b for _, b in pairs]),
            "rho_pairs": len(pairs), "search_seconds": sum(r["wall_seconds"] for r in rungs[0] + rungs[1] + rungs[2]),
            "baseline_seconds": sum(r["wall_seconds"] for r in at if r["method"] == "baseline"),
        })
    return rows


def _mean_std(values: Sequence[float], metric: str) -> str:
    arr = np.array(values, dtype=float)
    return _pm(float(arr.mean()), float(arr.std()), len(arr), metric) if len(arr) else "—"


def _search_section(records: Sequence[dict], metric: str) -> list[str]:
    rows = search_summary(records)
    if not rows:
        return []
    lines = ["", "## Strategy search at equal budget", "",
             "Per target and seed, candidates (the usual allocations exactly, the named strategies, then the "
             "sampler's proposals inside the ranges, all rescaled to the target) are scored one-shot after BatchNorm "
             "re-estimation; the best 1/eta get a short fine-tune (1/eta of the epochs), the best of those the full "
             "one, and the pick is the finalist best on validation (pick `loss`: lowest validation loss; pick "
             "`paired`: the best of the usual allocations, always a finalist, unless a challenger beats it on the "
             "validation samples beyond McNemar's test). The search's budget counts every rung in full fine-tunes "
             "(FFE): the one-shot scores at their metered share of a baseline's fine-tune, the short and the full "
             "fine-tunes (spent: what it used). The baselines get one full fine-tune each, and "
             f"the best of them is picked on validation per seed: the same selection effort. Test {metric}, mean ± "
             f"std over seeds; ρ: Spearman rank correlation of one-shot val {metric} with the val {metric} after "
             "fine-tuning, over the candidates that were fine-tuned.", "",
             "| target | candidates / short / full per seed | search budget / spent (FFE) | search pick (test) | picks | "
             "best baseline on val (test) | picked | baselines' budget (FFE) | ρ one-shot vs fine-tuned | wall s search / baselines |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        picks = sorted({p["picked"] for p in r["pick"]})
        names = sorted({b["name"] for b in r["baselines"]})
        rho = "—" if r["rho_oneshot"] is None else f"{r['rho_oneshot']:.2f} (n={r['rho_pairs']})"
        lines.append(
            f"| {r['target']:.3f} | {' / '.join(f'{n:g}' for n in r['rungs'])} | {r['budget']:g} / {r['spent']:.2f} | "
            f"{_mean_std([p['test_score'] for p in r['pick']], metric)} | {', '.join(picks)} | "
            f"{_mean_std([b['test_score'] for b in r['baselines']], metric)} | {', '.join(names)} | {r['n_baselines']} | "
            f"{rho} | {r['search_seconds']:.0f} / {r['baseline_seconds']:.0f} |")
    return lines


def write_report(aggregates: Sequence[Aggregate], out: Path, title: str, command: str,
                 merged: Mapping[str, Sequence[str]] | None = None, records: Sequence[dict] = (),
                 metric: str = "accuracy") -> Path:
    """``out/report.md``; ``merged`` names, per run configuration, the strategies that rescaled to the
    same per-layer sparsities and were therefore run only once; ``metric``: what the task's score is."""
    front = {a.key for a in front_of(aggregates)}
    k = _scale(metric)
    dense = aggregates[0].dense_test if aggregates else float("nan")
    unit = " (%)" if k == 100 else ""
    lines = [f"# {title}", "", f"Reproduce: `{command}`", "",
             f"Dense test {metric}{unit}: {k * dense:.2f}. Sparsity is measured on the fine-tuned model "
             "(zeros over every weight of the plan, those left dense included; structured runs: the share of "
             f"Conv, Linear and Embedding weights removed). Scores are the test {metric}{unit}, means ± std over "
             f"seeds; the Pareto front (★) is chosen on validation {metric}, and the test split is read only after "
             "every selection.", ""]
    lines += ["| ★ | method | signal | strategy / allocation | target | sparsity | non-zeros | one-shot val | "
              "fine-tuned test | val | drop | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in aggregates:
        lines.append(
            f"| {'★' if a.key in front else ''} | {a.method} | {a.signal} | {a.name} | "
            f"{'' if a.target is None else f'{a.target:.3f}'} | {100 * a.sparsity:.2f} % | {a.nonzeros:,.0f} | "
            f"{k * a.oneshot_val:.2f} | {_pm(a.test, a.test_std, a.n, metric)} | {k * a.val:.2f} | "
            f"{k * a.drop:+.2f} | {a.n} |"
        )
    rows = comparison(aggregates, merged)
    if rows:
        lines += ["", "## Best Mix-and-Match strategy vs baselines at the same target", "",
                  f"Test {metric} drop from dense (lower is better) at the same sparsity (structured "
                  "runs: the same fraction of multiply-adds removed). *best* is picked among the "
                  f"strategies on validation {metric}; *balanced* is one fixed strategy, i.e. the same "
                  "selection effort as each baseline.", ""]
        present = {n for r in rows for n in r["baselines"]}
        names = [n for n in BASELINE_ORDER if n in present] + sorted(present - set(BASELINE_ORDER))
        vs_gmp = "global_magnitude" in present  # the paper's headline ratio needs the GMP baseline
        lines += ["| target | best strategy | best drop | balanced drop | " + " | ".join(names)
                  + (" | best vs GMP | balanced vs GMP |" if vs_gmp else " |"),
                  "|---|---|---|---|" + "---|" * len(names) + ("---|---|" if vs_gmp else "")]

        def pct(x: float | None) -> str:
            return "" if x is None else f"{100 * x:.0f} %"

        for r in rows:
            b, bal = r["best"], r["balanced"]
            cells = [f"{k * r['baselines'][n].drop:.2f}" if n in r["baselines"] else "" for n in names]
            lines.append(
                f"| {r['target']:.3f} | {b.signal}/{b.name} | {k * b.drop:.2f} | "
                f"{'' if bal is None else f'{k * bal.drop:.2f}'} | " + " | ".join(cells)
                + (f" | {pct(r.get('best_vs_gmp'))} | {pct(r.get('balanced_vs_gmp'))} |" if vs_gmp else " |")
            )
        if vs_gmp:
            lines += ["", f"*vs GMP*: the share of global magnitude's {metric} drop that is avoided "
                      "(1 - drop / GMP drop; 40 % is the paper's Swin-T headline)."]
    if merged:
        lines += ["", "Strategies that differ only by a constant position inside the ranges rescale to the same "
                  "per-layer sparsities at a target, so each such set was run once: "
                  + "; ".join(f"`{key}` stands also for {', '.join(names)}" for key, names in sorted(merged.items()))
                  + "."]
    lines += _search_section(records, metric)
    lines += _latency_section(aggregates, metric)
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")


def baseline_at_latency(aggregates: Sequence[Aggregate], baseline: str, latency_ratio: float) -> float | None:
    """A baseline's test score at ``latency_ratio``, interpolated along its measured points and the
    dense model (latency 1.0: every baseline at zero pruning); None outside that span."""
    pts = [(a.latency_ratio, a.test) for a in aggregates if a.method == "baseline" and a.name == baseline and a.timed]
    if not pts:
        return None
    return interpolate([*pts, (1.0, aggregates[0].dense_test)], latency_ratio)


def _latency_section(aggregates: Sequence[Aggregate], metric: str) -> list[str]:
    timed = sorted((a for a in aggregates if a.timed), key=lambda a: a.latency_ratio)
    if not timed:
        return []
    front = {a.key for a in latency_front_of(timed)}
    baselines = sorted({a.name for a in timed if a.method == "baseline"})
    k = _scale(metric)
    lines = ["", f"## Test {metric} vs measured latency", "",
             "OpenVINO CPU latency of each pruned model over the dense one's (fp32, fixed threads, warm-up, "
             "median of rounds interleaved with the dense model). *target*: fraction of multiply-adds removed, "
             f"the same for every method; the baseline columns read each baseline's test {metric} at this "
             "row's latency, interpolated along its measured points and the dense model (— outside them). "
             f"◆: on the {metric}-vs-latency front (chosen on validation).", "",
             "| ◆ | method | strategy / baseline | target | MACs (x dense) | latency (x dense) | params removed | "
             "test | " + " | ".join(f"{b} at this latency" for b in baselines) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(baselines)]
    for a in timed:
        cells = []
        for b in baselines:
            y = None if a.method == "baseline" else baseline_at_latency(aggregates, b, a.latency_ratio)
            cells.append("" if a.method == "baseline" else "—" if y is None else f"{k * y:.2f}")
        lines.append(
            f"| {'◆' if a.key in front else ''} | {a.method} | {a.signal}/{a.name} | "
            f"{'' if a.target is None else f'{a.target:.2f}'} | {a.macs_ratio:.3f} | {a.latency_ratio:.3f} | "
            f"{100 * a.sparsity:.1f} % | {_pm(a.test, a.test_std, a.n, metric)} | " + " | ".join(cells) + " |"
        )
    return lines


def _draw(ax, aggregates: Sequence[Aggregate], x: Callable[[Aggregate], float], front: Sequence[Aggregate],
          metric: str) -> None:
    """The test score against ``x``: Mix-and-Match points per signal, baselines as curves, the front circled."""
    k = _scale(metric)
    mm = [a for a in aggregates if a.method == "mix_and_match"]
    for signal in sorted({a.signal for a in mm}):
        pts = [a for a in mm if a.signal == signal]
        ax.errorbar([x(a) for a in pts], [k * a.test for a in pts], yerr=[k * a.test_std for a in pts],
                    fmt="o", ms=5, capsize=2, label=f"Mix-and-Match ({signal})", alpha=0.85)
    for name in sorted({a.name for a in aggregates if a.method == "baseline"}):
        pts = sorted((a for a in aggregates if a.method == "baseline" and a.name == name), key=x)
        ax.errorbar([x(a) for a in pts], [k * a.test for a in pts], yerr=[k * a.test_std for a in pts],
                    fmt="-s", ms=4, capsize=2, label=f"baseline: {name}", alpha=0.8)
    front = sorted(front, key=x)
    ax.plot([x(a) for a in front], [k * a.test for a in front], "k--", lw=1, zorder=5)
    ax.scatter([x(a) for a in front], [k * a.test for a in front], s=140, facecolors="none",
               edgecolors="k", lw=1.5, zorder=6, label="Pareto front (chosen on val)")
    if aggregates:
        ax.axhline(k * aggregates[0].dense_test, color="grey", ls=":", label="dense")
    ax.set_ylabel(f"test {metric}" + (" (%)" if k == 100 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")


def plot_pareto(aggregates: Sequence[Aggregate], path: Path, title: str, metric: str = "accuracy") -> Path:
    """The test score vs sparsity; for timed (structured) runs also vs measured latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [a for a in aggregates if a.timed]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(14 if timed else 7.5, 5), squeeze=False)
    ax = axes[0][0]
    _draw(ax, aggregates, lambda a: 100 * a.sparsity, front_of(aggregates), metric)
    ax.set_xlabel("params removed (%)" if timed else "sparsity after fine-tuning (%)")
    ax.set_title(title)
    if timed:
        ax = axes[0][1]
        _draw(ax, timed, lambda a: a.latency_ratio, latency_front_of(timed), metric)
        ax.invert_xaxis()  # faster to the right, like sparser on the left panel
        ax.set_xlabel("OpenVINO CPU latency (x dense)")
        ax.set_title(f"{title}: {metric} vs measured latency")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path
