"""The import contracts in pyproject.toml (import-linter) hold for the package as it is installed.

Why a test rather than a bare ``lint-imports``: ``mm_plugin.adapters`` is installed from the top-level
``adapters/`` folder, and lint-imports puts the working directory first on ``sys.path``, so from the
repository root it finds a ``mm_plugin`` without adapters. The test assembles the installed layout in a
temporary folder (one path for editable and regular installs) and lints that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mm_plugin.adapters
import pytest

import mm_plugin

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter")


def test_import_contracts_hold(tmp_path: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pt", "*.json")
    package = tmp_path / "mm_plugin"
    shutil.copytree(Path(mm_plugin.__file__).parent, package, ignore=ignore)
    adapters = package / "adapters"
    if not adapters.exists():  # an editable install maps adapters/ from outside the package folder
        shutil.copytree(Path(mm_plugin.adapters.__file__).parent, adapters, ignore=ignore)
    done = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 broken" in done.stdout, done.stdout
