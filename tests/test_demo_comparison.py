"""The demo compares its pick with the very baseline the run kept a checkpoint of (the runner's choice)."""

from __future__ import annotations

from pathlib import Path

from mm_plugin.demo import Comparison
from mm_plugin.portfolio import RunResult


def _record(name: str, method: str, val_score: float, val_loss: float) -> dict:
    return {"name": name, "method": method, "target": 0.85, "seed": 0, "rung": None, "val_score": val_score,
            "val_loss": val_loss, "key": f"{method}_{name}"}


def test_a_validation_tie_goes_to_the_lower_loss_as_the_runner_decides():
    records = [_record("global_magnitude", "baseline", 0.78, 0.84), _record("erk", "baseline", 0.78, 0.66),
               _record("lamp", "baseline", 0.74, 0.50), _record("search", "mix_and_match", 0.77, 0.70),
               {**_record("magnitude/exact-erk", "search", 0.80, 0.60), "rung": 2}]
    comparison = Comparison.of(None, RunResult(Path("."), records, [], [], None, None))
    assert [r["name"] for r in comparison.pick] == ["search"]
    assert [r["name"] for r in comparison.baseline] == ["erk"]  # the checkpoint the runner keeps
