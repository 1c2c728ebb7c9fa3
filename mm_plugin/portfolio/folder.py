"""The run folder: ``config.json`` (what was asked), ``plan.json`` (and ``plan-<signal>.json``),
``results.jsonl`` (one line per finished run, rewritten atomically), ``checkpoints/`` (masks baked in),
``report.md``, ``pareto.png`` and ``front.json``. Rerunning the same command resumes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..files import write_json_atomic, write_text_atomic
from .config import RunConfig


def check_folder(out: Path, config: RunConfig) -> None:
    """Refuse a folder made for other settings: its results would be silently mixed with ours."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        new = config.to_dict()
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
        if diff:
            raise ConfigError(
                f"run folder {out} was made with a different configuration ({'; '.join(diff)}); "
                "use another --out folder, or rerun with the original settings to resume"
            )
    else:
        write_json_atomic(path, config.to_dict())


def load_records(out: str | Path) -> list[dict]:
    path = Path(out) / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(out: Path, record: dict) -> None:
    """Rewrite results.jsonl through a temporary file: a crash leaves the old or the new file, never half."""
    path = out / "results.jsonl"
    old = path.read_text() if path.exists() else ""
    write_text_atomic(path, old + json.dumps(record) + "\n")


def checkpoint_path(out: Path, key: str) -> Path:
    return out / "checkpoints" / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".pt")


def export_checkpoint(out: str | Path, record: dict, dest: str | Path) -> Path:
    src = Path(out) / record["checkpoint"]
    if not src.exists():
        raise ConfigError(f"checkpoint {src} is missing; rerun with keep_checkpoints='all' or rerun the run")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest
