"""The run folder, which nothing can corrupt.

It holds ``config.json`` (the settings and a fingerprint of every input that defines the results),
``plan.json`` (and ``plan-<signal>.json``), ``results.jsonl`` (one line per finished run),
``checkpoints/``, ``report.md``, ``pareto.png`` and ``front.json``. A run holds the folder's lock
(``.lock``, its holder named in ``.lock.json``) from start to end; every file is written atomically;
each record carries its checkpoint's size and SHA-256, checked whenever it is read. Rerunning the same
command resumes; a corrupt record or checkpoint is reported and its run redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import filelock
import torch

from ..errors import ConfigError
from ..files import write_atomic, write_json_atomic, write_text_atomic
from .config import RunConfig
from .fingerprint import digest_of, model_fingerprint
from .task import Task

log = logging.getLogger(__name__)

CONFIG_FORMAT = 2
RECORD_KEYS = ("key", "config_key", "method", "signal", "name", "seed", "val_score", "test_score")
#: Record fields named for accuracy before a task's evaluate could return any score: read under today's names.
LEGACY_FIELDS = {"val_accuracy": "val_score", "test_accuracy": "test_score", "oneshot_val_accuracy": "oneshot_val_score",
                 "oneshot_test_accuracy": "oneshot_test_score", "dense_val_accuracy": "dense_val_score",
                 "dense_test_accuracy": "dense_test_score", "knob": "planned_target"}


def _sha256(data: bytes | Path) -> str:
    if isinstance(data, Path):
        digest = hashlib.sha256()
        with data.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return hashlib.sha256(data).hexdigest()


def fingerprint(config: RunConfig, task: Task) -> dict[str, str | None]:
    """SHA-256 of what defines the results beyond the settings: the dense weights, the example inputs, the
    task's identity (the built-in task: every sample of every split and its loop's settings; a user's
    callbacks: the ``run_id`` they name, or None) and a rules file's content."""
    identity = task.fingerprint()
    out: dict[str, str | None] = {"model": model_fingerprint(task.model), "example_inputs": digest_of(task.example_inputs),
                                  **(identity if identity is not None else {"task": None})}
    if isinstance(config.rules, (str, os.PathLike)):
        out["rules_file"] = _sha256(Path(config.rules))
    return out


class RunFolder:
    """One run's folder: exclusive while :meth:`locked`, with checked records and checkpoints."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results = self.path / "results.jsonl"
        self._sound: list[dict] | None = None  # the records as this run last read and wrote them

    # --- exclusive use ------------------------------------------------------------------------
    @contextmanager
    def locked(self, command: str = "") -> Iterator[RunFolder]:
        """Hold the folder for one run; a second run on it is refused with the holder's name. The
        system releases the lock of a killed process, so a stale lock never blocks."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} is a file; give --out a folder path")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(self.path / ".lock", timeout=0)
            lock.acquire()
        except filelock.Timeout:
            raise ConfigError(f"run folder {self.path} is in use by {self._holder()}; wait for that run to end or "
                              "stop it, or use another --out folder") from None
        except OSError as e:
            raise ConfigError(f"cannot write to run folder {self.path}: {e.strerror}; choose another --out") from None
        holder = self.path / ".lock.json"
        if holder.exists():
            log.info("the previous run on %s (%s) ended without releasing the folder; resuming", self.path,
                     self._holder())
        write_json_atomic(holder, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime(),
                                   "command": command or " ".join(sys.argv)})
        try:
            self.clean()
            yield self
        finally:
            holder.unlink(missing_ok=True)
            lock.release()

    def _holder(self) -> str:
        try:
            h = json.loads((self.path / ".lock.json").read_text())
            return f"process {h['pid']} on {h['host']} since {h['since']} ({h['command']})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def clean(self) -> None:
        """Remove temporaries an interrupted write left behind."""
        for tmp in [*self.path.glob(".*.tmp"), *self.path.glob("checkpoints/.*.tmp")]:
            tmp.unlink(missing_ok=True)

    # --- what the folder was made for ---------------------------------------------------------
    def _config_file(self) -> dict[str, Any] | None:
        path = self.path / "config.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); delete it, or pass --force-new to start this "
                              "folder again") from None
        return data if data.get("format") == CONFIG_FORMAT else {"settings": data}  # format 1: settings only

    def check(self, config: RunConfig, inputs: dict[str, str | None] | None = None, *, force_new: bool = False,
              about: str = "") -> None:
        """Refuse a folder whose results came from other settings or inputs (they would be silently
        mixed with ours), or whose inputs cannot be told apart (callbacks without a ``run_id``), unless
        nothing finished yet or ``force_new`` archives them; then record ours (``about``: what the task is,
        for people)."""
        new = {"format": CONFIG_FORMAT, "about": about, "settings": config.to_dict(), "inputs": inputs or {}}
        old = self._config_file()
        finished = self.results.exists() and self.results.stat().st_size > 0
        if force_new and (old is not None or finished):
            self.archive()
        elif old is None and finished:
            raise ConfigError(f"{self.results} holds results but {self.path / 'config.json'} is missing, so nothing "
                              "tells which settings made them; use another --out folder, or pass --force-new to "
                              "archive them and start again")
        elif finished and inputs is not None and "task" in inputs and inputs["task"] is None:
            raise ConfigError(f"run folder {self.path} holds results, but nothing can tell whether this run's "
                              "finetune / evaluate callbacks are the ones that made them; pass run_id='<a name for "
                              "this data and training>' (the same run_id resumes), or use another out folder")
        elif old is not None and finished:
            # a setting added since the folder was made reads as its default there (no results differ)
            absent = {"settings": {f.name: f.default if f.default is not MISSING else f.default_factory()
                                   for f in fields(config)}, "inputs": {}}
            changed = [f"{part}.{k}: {old.get(part, {}).get(k)!r} -> {v!r}" for part in ("settings", "inputs")
                       for k, v in new[part].items() if part in old and old[part].get(k, absent[part].get(k)) != v]
            if changed:
                raise ConfigError(f"run folder {self.path} holds results made with other inputs ({'; '.join(changed)}); "
                                  "use another --out folder, or pass --force-new to archive them and start again")
        if inputs is not None:
            write_json_atomic(self.path / "config.json", new)

    def archive(self) -> Path:
        """Move everything but the lock into ``previous-<time>/``: nothing is ever deleted."""
        dest = self.path / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        dest.mkdir()
        for item in self.path.iterdir():
            if not item.name.startswith((".lock", "previous-")):
                shutil.move(str(item), dest / item.name)
        log.warning("archived the earlier results of %s in %s", self.path, dest)
        return dest

    # --- records and checkpoints --------------------------------------------------------------
    def records(self) -> list[dict]:
        """Finished runs, one per key; a corrupt line or a record whose checkpoint is damaged is
        reported with file and line number and left out, so its run is redone."""
        if not self.results.exists():
            return []
        out: dict[str, dict] = {}
        for i, line in enumerate(self.results.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if isinstance(record, dict):
                    record = {LEGACY_FIELDS.get(k, k): v for k, v in record.items()}
                if not isinstance(record, dict) or any(k not in record for k in RECORD_KEYS):
                    raise ValueError("a field is missing")
            except ValueError as e:
                log.warning("%s line %d is not a complete record (%s): left out, its run will be redone",
                            self.results, i, e)
                continue
            problem = self.checkpoint_problem(record)
            if problem and "missing" not in problem:
                log.warning("%s line %d: %s; left out, its run will be redone", self.results, i, problem)
                continue
            out.setdefault(record["key"], record)
        return list(out.values())

    def append(self, record: dict) -> None:
        """Rewrite results.jsonl with the sound records and this one: atomically, never half a file."""
        if self._sound is None:
            self._sound = self.records()
        self._sound.append(record)
        write_text_atomic(self.results, "".join(json.dumps(r) + "\n" for r in self._sound))

    def update(self, record: dict) -> None:
        """Replace the record with the same key (the final evaluation completes records), atomically."""
        if self._sound is None:
            self._sound = self.records()
        self._sound = [record if r["key"] == record["key"] else r for r in self._sound]
        write_text_atomic(self.results, "".join(json.dumps(r) + "\n" for r in self._sound))

    def checkpoint_path(self, key: str) -> Path:
        return self.path / "checkpoints" / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".pt")

    def save_checkpoint(self, key: str, payload: Any) -> dict[str, Any]:
        """Write a checkpoint atomically; the record fields that let a reader check it."""
        path = write_atomic(self.checkpoint_path(key), lambda f: torch.save(payload, f))
        return {"checkpoint": str(path.relative_to(self.path)), "checkpoint_bytes": path.stat().st_size,
                "checkpoint_sha256": _sha256(path)}

    def checkpoint_problem(self, record: dict) -> str | None:
        """None when the record's checkpoint is whole; else what is wrong with it."""
        path = self.path / record.get("checkpoint", "")
        if "checkpoint" not in record or not path.is_file():
            return f"its checkpoint {path} is missing"
        size = path.stat().st_size
        if "checkpoint_bytes" in record and size != record["checkpoint_bytes"]:
            return f"its checkpoint {path} has {size} bytes, not the {record['checkpoint_bytes']} written"
        if "checkpoint_sha256" in record and _sha256(path) != record["checkpoint_sha256"]:
            return f"its checkpoint {path} does not match the SHA-256 written"
        return None

    def export_checkpoint(self, record: dict, dest: str | Path) -> Path:
        problem = self.checkpoint_problem(record)
        if problem:
            hint = ("rerun `mm-prune run` with keep_checkpoints='all' (--keep-checkpoints all)" if "missing" in problem
                    else "rerun the same `mm-prune run` command: the damaged run is redone")
            raise ConfigError(f"cannot export {record['key']}: {problem}; {hint}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path / record["checkpoint"], dest)
        return dest


def load_records(out: str | Path) -> list[dict]:
    return RunFolder(out).records()


def export_checkpoint(out: str | Path, record: dict, dest: str | Path) -> Path:
    return RunFolder(out).export_checkpoint(record, dest)
