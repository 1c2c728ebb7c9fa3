"""``mm-prune demo``'s plumbing end to end on tiny runs: both searches, the edge files (fp32 and int8), the
paired verdicts, ``report.md`` and ``tradeoff.png`` (the real demo's settings are measured in docs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mm_plugin.adapters.openvino import Timer

from mm_plugin import demo
from mm_plugin.portfolio import RunConfig, TaskSpec, runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SPEC = TaskSpec("factories:tiny_cnn", "factories:small_digits", dense_epochs=1)
TINY = (
    demo.DemoRun(SPEC, RunConfig(targets=(0.5,), baselines=("global_magnitude", "lamp"), epochs=0.5, budget=1,
                                 candidates=3), "unstructured", "unstructured, 50 % of the weights"),
    demo.DemoRun(SPEC, RunConfig(sparsity="structured", targets=(0.3,), epochs=0.5, budget=1, candidates=2),
                 "structured", "channels removed, 30 % of the multiply-adds"),
)


def test_the_demo_ends_with_what_ships(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "QUICK", TINY)
    monkeypatch.setattr(Timer, "SETTINGS", {"threads": 1, "warmup": 1, "rounds": 2, "runs": 3})
    results = list(demo.run_demo(tmp_path, quick=True, progress=False))
    assert len(results) == 2
    base = tmp_path / "quick"
    edge = json.loads((base / "deploy" / "edge.json").read_text())
    names = {(r["name"], r["precision"]) for r in edge}
    assert {("dense", "fp32"), ("dense", "int8"), ("unstructured search", "fp32"),
            ("structured search", "int8")} <= names
    assert len(names) == 10  # dense, two picks and two best baselines, each fp32 and int8
    assert all(0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0 and r["size_mb"] > 0 for r in edge)
    text = (base / "report.md").read_text()
    assert text.count("exact McNemar p =") == 2 and "## What ships" in text
    assert (base / "tradeoff.png").stat().st_size > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a finished demo run was trained again")

    monkeypatch.setattr(runner, "_run_job", no_training)  # a rerun resumes: every run is finished
    again = list(demo.run_demo(tmp_path, quick=True, progress=False))
    assert [len(r.records) for r in again] == [len(r.records) for r in results]
