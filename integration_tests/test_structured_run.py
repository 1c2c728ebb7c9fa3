"""``mm-prune run --sparsity structured``: the runner through Torch-Pruning and OpenVINO, end to end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from mm_plugin.adapters.openvino import Timer
from mm_plugin.adapters.torch_pruning import load_pruned, macs_of

from mm_plugin.errors import ConfigError, UnknownNameError
from mm_plugin.model import count_prunable
from mm_plugin.portfolio import RunConfig, TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import factories

CONFIG = RunConfig(sparsity="structured", strategies=("balanced", "feature-heavy"), targets=(0.3,), epochs=1)
SPEC = TaskSpec("factories:tiny_cnn", "factories:small_digits", dense_epochs=2)
TIMING = 2.0  # seconds a slowed latency timing takes


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("structured")
    with pytest.MonkeyPatch.context() as mp:  # short timing: these tests check the plumbing, not speed
        mp.setattr(Timer, "SETTINGS", {"threads": 1, "warmup": 2, "rounds": 3, "runs": 5})
        yield out, factories.run_spec(CONFIG, out, SPEC, progress=False, keep_checkpoints="all")


def test_every_method_removes_the_same_multiply_adds(finished):
    _, result = finished
    assert CONFIG.baselines == ("tp_uniform", "tp_global")
    assert {(r["method"], r["name"]) for r in result.records} == {
        ("mix_and_match", "balanced"), ("mix_and_match", "feature-heavy"),
        ("baseline", "tp_uniform"), ("baseline", "tp_global")}
    for r in result.records:
        assert r["pattern"] == "structured"
        assert abs((1 - r["macs_ratio"]) - 0.3) < 0.03, r["key"]  # matched compute, within channel steps
        assert 1 - r["macs_ratio"] >= 0.3 - 0.005, r["key"]  # a target is a budget: met, never undercut
        assert r["latency_ratio"] > 0 and r["dense_latency_ms"] > 0
        assert 0 < r["sparsity"] < 1 and r["sparsity"] == 1 - r["nonzeros"] / r["params"]
        assert r["params"] == count_prunable(factories.tiny_cnn())  # every prunable weight of the dense model
        assert set(r["layer_sparsity"]) == {"0", "3", "8"}  # the three channel groups; the logits stay


def test_checkpoints_reload_as_pruned_models(finished):
    out, result = finished
    for r in result.records:
        model = load_pruned(out / r["checkpoint"], factories.tiny_cnn())
        assert count_prunable(model) == r["nonzeros"]
        x = torch.randn(2, 1, 8, 8)
        assert model.eval()(x).shape == (2, 10)
        assert macs_of(model, x[:1]) == r["macs"]


def test_report_and_plot_show_latency(finished):
    out, result = finished
    text = result.report.read_text()
    assert "## Test accuracy vs measured latency" in text
    assert "tp_uniform at this latency" in text and "tp_global at this latency" in text
    assert text.count("| mix_and_match | magnitude/") == 2
    assert (out / "pareto.png").stat().st_size > 10_000
    assert all(a.timed for a in result.aggregates)


def test_rerun_resumes_without_new_runs(finished):
    out, result = finished
    again = factories.run_spec(CONFIG, out, SPEC, progress=False, keep_checkpoints="all")
    assert [r["key"] for r in again.records] == [r["key"] for r in result.records]


def test_clear_errors():
    with pytest.raises(UnknownNameError, match="structured signal 'gradient'.*magnitude, product"):
        RunConfig(sparsity="structured", signals=("gradient",))
    with pytest.raises(UnknownNameError, match="structured baseline 'lamp'.*tp_global, tp_uniform"):
        RunConfig(sparsity="structured", baselines=("lamp",))
    with pytest.raises(ConfigError, match="need targets"):
        RunConfig(sparsity="structured", targets=())
    with pytest.raises(ConfigError, match="--reconstruct re-solves the weights a mask keeps.*drop --reconstruct"):
        RunConfig(sparsity="structured", targets=(0.2,), reconstruct=True)


def test_unreachable_target_names_the_method(tmp_path):
    import dataclasses

    config = dataclasses.replace(CONFIG, targets=(0.99,), strategies=("balanced",), baselines=())
    with pytest.raises(ConfigError, match=r"mix_and_match 'balanced' cannot remove 0.99 .* spans"):
        factories.run_spec(config, tmp_path, SPEC, progress=False)


def test_select_by_latency_exports_a_front_checkpoint(finished, tmp_path):
    from mm_plugin.errors import ValidationError
    from mm_plugin.portfolio import export_selected, select

    out, result = finished
    slowest = max(a.latency_ratio for a in result.aggregates)
    pick, record = select(out, max_latency=slowest)
    assert pick.latency_ratio <= slowest and record["config_key"] == pick.key
    model = load_pruned(export_selected(out, record, tmp_path / "best.pt"), factories.tiny_cnn())
    assert count_prunable(model) == record["nonzeros"]
    with pytest.raises(ValidationError, match="no front member meets latency <= 0.01"):
        select(out, max_latency=0.01)


def test_demo_includes_a_structured_run_in_its_own_folder():
    from mm_plugin.demo import demo_runs

    for quick in (False, True):
        runs = demo_runs(quick=quick, seeds=(0, 1))
        structured = [r.config for r in runs if r.config.sparsity == "structured"]
        assert len(structured) == 1 and structured[0].baselines == ("tp_uniform", "tp_global")
        assert structured[0].seeds == (0, 1)
        assert len({r.folder for r in runs}) == len(runs) == 2
        assert all(r.spec.data == ("mnist" if quick else "elpv") for r in runs)


def test_cli_structured_errors_are_one_line(capsys):
    from mm_plugin.cli import main

    assert main(["run", "--model", "resnet8", "--sparsity", "structured", "--baselines", "lamp", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown structured baseline 'lamp' at baselines" in err


def test_structured_search_brings_every_candidate_to_the_multiply_adds(tmp_path):
    import dataclasses

    config = dataclasses.replace(CONFIG, strategies=None, budget=2, candidates=4, seeds=(0,))
    timing = Timer.time

    def slow(self, model):  # a timing long enough to see whether the search's wall time is charged with it
        time.sleep(TIMING)
        return timing(self, model)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Timer, "SETTINGS", {"threads": 1, "warmup": 1, "rounds": 1, "runs": 2})
        mp.setattr(Timer, "time", slow)
        records = factories.run_spec(config, tmp_path, SPEC, progress=False).records
    rung0 = [r for r in records if r.get("rung") == 0]
    assert len(rung0) == 4 and all(r["test_score"] is None for r in rung0)  # ranked on validation only
    # strategies that differ by a constant position in the ranges (conservative, balanced...) are one candidate
    assert len({tuple(sorted(r["planned_sparsity"].items())) for r in rung0}) == 4
    assert sum(r["name"].split("/")[1] in ("conservative", "balanced", "aggressive") for r in rung0) <= 1
    (pick,) = [r for r in records if r.get("picked")]
    assert abs(1 - pick["macs_ratio"] - 0.3) < 0.01 and pick["latency_ratio"] > 0
    # its wall time is its jobs' and the driver's, not the latency timing of its finalist (an evaluation,
    # which the baselines' jobs are not charged either)
    jobs = sum(r["wall_seconds"] for r in records if r["method"] == "search")
    assert jobs <= pick["search"]["seconds"] < jobs + TIMING
    # Torch-Pruning's own pruning is in the pool exactly: each group loses the channels TP removed from it
    exact = {r["name"].split("exact-")[1]: r for r in rung0 if "/exact-" in r["name"]}
    baselines = {r["name"]: r for r in records if r["method"] == "baseline"}
    assert set(exact) == {"tp_uniform", "tp_global"}
    for name, r in exact.items():
        assert r["planned_sparsity"] == pytest.approx(baselines[name]["layer_sparsity"], abs=1e-9)
        assert r["oneshot_val_score"] == baselines[name]["oneshot_val_score"]  # the same channels, the same model
    assert exact["tp_global"]["planned_sparsity"] != exact["tp_uniform"]["planned_sparsity"]


def test_sensitivity_is_measured_per_channel_group(tmp_path):
    """Each Torch-Pruning channel group loses its channels alone (the model is narrower, not masked)."""
    from mm_plugin.portfolio import resolve_task, sensitivity_report

    config = RunConfig(sparsity="structured", targets=(0.3,), sensitivity=True, sensitivity_grid=(0.5,),
                       sensitivity_batches=1)
    s, _ = sensitivity_report(resolve_task(SPEC, tmp_path), config, tmp_path, progress=False)
    assert set(s.units) == {"0", "3", "8"} and not s.groups  # groups are coupled already: no streams on top
    assert all(s.loss[u][0] != s.base_loss for u in s.units)  # half a group's channels change the outputs
