"""Resumable benchmark records: a record is reused only when every setting that changes its numbers matches.

Each record file stores the settings it was made with under ``settings``. A rerun with the same settings
reuses it; a rerun that differs in any of them stops with the settings that differ (a changed variant
never reuses a stale run). Records written before settings were stored are read through ``legacy``: the
setting's value as the record kept it, or the default it was made with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mm_plugin.files import write_json_atomic


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples as lists, as a record stores them


def load_or_make(path: Path, settings: Mapping[str, Any], make: Callable[[], dict],
                 legacy: Callable[[dict, str], Any] | None = None) -> dict:
    """The record at ``path`` if it was made with ``settings``; else ``make()``, written atomically."""
    settings = _as_json(dict(settings))
    if path.exists():
        made = json.loads(path.read_text())
        stored = made.get("settings")
        if stored is None:
            stored = {k: (legacy(made, k) if legacy else made.get(k)) for k in settings}
        differ = {k: (stored.get(k), v) for k, v in settings.items() if _as_json(stored.get(k)) != v}
        if differ:
            raise SystemExit(f"{path} was made with other settings ("
                             + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
                             + "); give another --out folder, or another name to a changed variant")
        return made
    record = {**make(), "settings": settings}
    write_json_atomic(path, record)
    return record
