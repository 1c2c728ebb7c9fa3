"""Atomic writes: a crash or a second reader never sees half a file; JSON files read back with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from .errors import ValidationError

T = TypeVar("T")


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through a temporary file in the same folder, fsync, then ``os.replace``; readable by all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1))


def read_json_as(path: str | os.PathLike, parse: Callable[[Any], T], kind: str, valid: str, missing: str = "") -> T:
    """``parse`` of the JSON in ``path``; a missing file, or one ``parse`` cannot read, is one
    ValidationError naming the file (``kind`` file ... is not ``valid``; ``missing``: how to make it)."""
    path = Path(path)
    try:
        return parse(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ValidationError(f"{kind} file {path} does not exist{missing}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValidationError(f"{kind} file {path} is not {valid}: {e!r}") from None
