"""Pick the front member that meets a budget (accuracy, non-zeros or measured latency) and export it."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, ValidationError
from .folder import export_checkpoint, load_records
from .pareto import Aggregate, aggregate, front_of, latency_front_of

__all__ = ["export_selected", "select"]

export_selected = export_checkpoint


def select(out: str | Path, *, min_score: float | None = None, max_nonzeros: int | None = None,
           max_latency: float | None = None) -> tuple[Aggregate, dict]:
    """The front member meeting the budget: the sparsest with validation score >= ``min_score``, the
    most accurate (val) with at most ``max_nonzeros`` non-zero weights, or (structured runs) the most
    accurate with a measured latency <= ``max_latency`` x dense. Returns it and its best seed's record."""
    if sum(x is not None for x in (min_score, max_nonzeros, max_latency)) != 1:
        raise ValidationError("give exactly one of --min-score, --max-nonzeros or --max-latency")
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"run folder {out} does not exist; give the --out folder of a `mm-prune run`")
    records = load_records(out)
    if not records:
        raise ConfigError(f"{out} has no finished runs (results.jsonl missing or empty); run `mm-prune run` first")
    aggs = aggregate(records)
    front = front_of(aggs)
    if min_score is not None:
        ok = [a for a in front if a.val >= min_score]
        pick = max(ok, key=lambda a: a.sparsity) if ok else None
        budget = f"validation score >= {min_score}"
    elif max_nonzeros is not None:
        ok = [a for a in front if a.nonzeros <= max_nonzeros]
        pick = max(ok, key=lambda a: a.val) if ok else None
        budget = f"at most {max_nonzeros} non-zeros"
    else:
        front = latency_front_of(aggs)
        if not front:
            raise ConfigError(f"{out} has no measured latencies: --max-latency needs a run with --sparsity structured")
        ok = [a for a in front if a.latency_ratio <= max_latency]
        pick = max(ok, key=lambda a: a.val) if ok else None
        budget = f"latency <= {max_latency} x dense"
    if pick is None:
        best = ", ".join(f"{100 * a.sparsity:.1f} % / val {100 * a.val:.2f} / {a.nonzeros:,.0f} nz"
                         + (f" / {a.latency_ratio:.2f}x latency" if a.timed else "") for a in front)
        raise ValidationError(f"no front member meets {budget}; the front is: {best}")
    record = max((r for r in records if r["config_key"] == pick.key), key=lambda r: r["val_score"])
    return pick, record
