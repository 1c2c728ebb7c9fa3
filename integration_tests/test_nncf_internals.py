"""The NNCF adapter reaches below NNCF's public API in one module only, ``adapters/nncf/wrapping.py``, written
for NNCF 3.4. These tests fail on another NNCF release (saying what to re-check), when another module of
the adapter imports NNCF internals, and when an internal that ``wrapping.py`` imports is gone."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

nncf = pytest.importorskip("nncf")

from mm_plugin.adapters.nncf import wrapping

ADAPTER = Path(wrapping.__file__).parent
PUBLIC = {"nncf", "nncf.torch"}  # nncf.quantize / strip / pruning_statistic / Dataset / IgnoredScope, nncf.torch.get_config


def _nncf_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``import nncf...`` / ``from nncf... import name`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "nncf"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nncf":
            found += [(node.module, a.name) for a in node.names]
    return found


def test_installed_nncf_is_the_release_wrapping_was_written_for():
    installed = ".".join(nncf.__version__.split(".")[:2])
    assert installed == wrapping.WRITTEN_FOR, (
        f"NNCF {nncf.__version__} is installed, but adapters/nncf/wrapping.py was written for NNCF "
        f"{wrapping.WRITTEN_FOR}.x. Re-check these internals against the new release: "
        + "; ".join(wrapping.INTERNALS)
        + ". Then run integration_tests/test_nncf_*.py and raise WRITTEN_FOR and pyproject's nncf pin.")


def test_only_wrapping_imports_nncf_below_its_public_api():
    offenders = [f"{path.name}: {module}.{name}" if name else f"{path.name}: import {module}"
                 for path in sorted(ADAPTER.glob("*.py")) if path.name != "wrapping.py"
                 for module, name in _nncf_imports(path) if module not in PUBLIC]
    assert not offenders, f"NNCF internals outside adapters/nncf/wrapping.py: {offenders}; add a function there"


def test_every_internal_wrapping_imports_exists_in_the_installed_nncf():
    imports = [(m, n) for m, n in _nncf_imports(ADAPTER / "wrapping.py") if m not in PUBLIC]
    assert len(imports) >= 10
    missing = [f"{m}.{n}" for m, n in imports if not hasattr(importlib.import_module(m), n)]
    assert not missing, f"gone from NNCF {nncf.__version__}: {missing} (see wrapping.INTERNALS)"
    listed = " ".join(wrapping.INTERNALS)
    assert all(n in listed for _, n in imports), "wrapping.INTERNALS must name every internal wrapping.py imports"
