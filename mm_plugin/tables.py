"""Tables: plain text for terminals and logs (plans, statistics, channel reports), Markdown for reports."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1, *,
                 max_rows: int | None = None, footer: Sequence[Sequence[object]] = ()) -> str:
    """Columns padded to their widest cell, the first ``left`` left-aligned, the rest right-aligned.
    Past ``max_rows`` body rows, the middle is cut to one ``...`` row; ``footer`` rows come last."""
    rows = list(rows)
    if max_rows is not None and len(rows) > max_rows:
        half = max_rows // 2
        rows = rows[:half] + [["..."] + [""] * (len(header) - 1)] + rows[-half:]
    cells = [[str(c) for c in r] for r in [header, *rows, *footer]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (for reports)."""
    return "\n".join(["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])
