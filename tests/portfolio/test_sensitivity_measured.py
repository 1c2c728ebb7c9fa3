"""Measuring sensitivity in a run folder: cached, read back by a run, drawn; coupled streams measured together."""

import dataclasses
import json

import factories
import pytest
import torch

from mm_plugin.cli import main
from mm_plugin.flexhinm.folding import residual_streams
from mm_plugin.planning import Sensitivity
from mm_plugin.portfolio import RunConfig, TaskSpec, resolve_task, sensitivity_report
from mm_plugin.portfolio.task import Task

SPEC = TaskSpec("factories:trained_mlp", "factories:small_digits")
CONFIG = RunConfig(targets=(0.6,), baselines=(), strategies=("balanced",), epochs=1, sensitivity=True,
                   sensitivity_grid=(0.5, 0.9), sensitivity_batches=1)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("sensitivity")
    return out, sensitivity_report(resolve_task(SPEC, out), CONFIG, out, progress=False)


def test_each_unit_is_pruned_alone_and_scored_by_validation_loss(measured):
    out, (s, png) = measured
    assert set(s.units) == {"1.weight", "3.weight", "5.weight"} and s.grid == (0.5, 0.9)
    assert all(len(v) == 2 for v in s.loss.values()) and s.meta["batches"] == 1
    assert all(s.rise(u)[-1] > 0 for u in s.units)  # pruning 90 % of any layer of a trained MLP costs loss
    assert png.stat().st_size > 0 and Sensitivity.load(out / "sensitivity.json").loss == s.loss


def test_a_run_reads_the_measurement_back_and_plans_with_it(measured, monkeypatch):
    out, (s, _) = measured
    calls = []
    monkeypatch.setattr(Task, "probe", lambda *a, **k: calls.append(a) or 0.0)
    result = factories.run_spec(CONFIG, out, progress=False)
    assert not calls  # read from sensitivity.json, not measured again
    plan = json.loads((out / "plan.json").read_text())
    assert plan["config"]["sensitivity"]["key"] == s.key and "sensitivity" in plan["config"]["allocations"]
    assert result.records and all(r["sparsity"] == pytest.approx(0.6, abs=0.01) for r in result.records)
    other = dataclasses.replace(CONFIG, sensitivity_grid=(0.5, 0.7, 0.9))
    factories.run_spec(other, out / "other", progress=False)
    assert calls  # another grid is another measurement


def test_the_cli_prints_the_table_and_rejects_a_bad_grid(tmp_path, capsys):
    args = ["sensitivity", "--model", "factories:trained_mlp", "--data", "factories:small_digits",
            "--out", str(tmp_path), "--sensitivity-grid", "0.5,0.9", "--sensitivity-batches", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "loss rise over the dense model" in out and "5.weight" in out and "sensitivity.png" in out
    assert main(args[:-4] + ["--sensitivity-grid", "0.5,1.2"]) == 2
    assert "1.2 is not a sparsity in (0, 1)" in capsys.readouterr().err


def test_residual_streams_group_the_layers_summed_together(resnet):
    streams = residual_streams(resnet)
    first = next(s for s in streams if "conv1" in s)
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(first)
    assert any("layer2.0.downsample.0" in s and "layer2.1.conv2" in s for s in streams)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert residual_streams(model) == []  # nothing is summed
