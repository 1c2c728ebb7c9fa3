"""``--sparsity hybrid`` and ``flexhinm`` through the runner: what they plan, prune and report."""

import json

import factories
import pytest

from mm_plugin.errors import ConfigError
from mm_plugin.portfolio import RunConfig, TaskSpec
from mm_plugin.portfolio.patterns import HybridPattern

CNN = TaskSpec("factories:tiny_cnn", "factories:small_digits")  # its first conv has 1 input channel: no N:M kernel


@pytest.mark.parametrize("sparsity", ["hybrid", "flexhinm"])
def test_hybrid_patterns_meet_the_target_over_the_layers_they_prune_and_report_region_shares(tmp_path, sparsity):
    config = RunConfig(sparsity=sparsity, targets=(0.7,), strategies=("balanced",), baselines=("uniform", "lamp"),
                       epochs=0.5, pattern_options={"tile_rows": 16})
    result = factories.run_spec(config, tmp_path, CNN, progress=False)
    units = [u["name"] for u in json.loads((tmp_path / "plan.json").read_text())["units"]]
    assert "0.weight" not in units and "3.weight" in units  # planned: only what the pattern can prune
    assert len(result.records) == 3
    for r in result.records:
        assert set(r["layer_sparsity"]) == set(units)
        assert r["sparsity"] == pytest.approx(0.7, abs=0.01)  # half-vector steps rounded with the total kept
        assert r["share_24"] + r["share_vector"] + r["share_dense"] == pytest.approx(1)
        assert r["sparsity"] == pytest.approx(r["share_vector"] + r["share_24"] / 2)  # what each region removes
        assert r["share_vector"] > 0 and r["share_24"] > 0  # 70 % needs whole vectors removed


def test_pattern_options_are_flexhinm_config_fields_and_only_for_hybrid_patterns():
    config = RunConfig(sparsity="hybrid", pattern_options={"tile_rows": 16, "permutation": "gyro"})
    made = HybridPattern.flexhinm(config, seed=3)
    assert (made.tile_rows, made.permutation, made.seed) == (16, "gyro", 3)
    assert HybridPattern.flexhinm(RunConfig(sparsity="hybrid"), seed=0).permutation == "none"  # opt-in
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['tiles'\]"):
        RunConfig(sparsity="flexhinm", pattern_options={"tiles": 16})
    with pytest.raises(ConfigError, match="tile_rows must be None or a positive multiple of 4"):
        RunConfig(sparsity="hybrid", pattern_options={"tile_rows": 6})
    with pytest.raises(ConfigError, match="--sparsity unstructured takes no pattern options"):
        RunConfig(pattern_options={"tile_rows": 16})
