import factories
import pytest
import torch

from mm_plugin.errors import ConfigError, ValidationError
from mm_plugin.portfolio import RunConfig, TaskSpec, load_records, runner, select
from mm_plugin.portfolio.pareto import pareto_front

CONFIG = RunConfig(targets=(0.5, 0.8),
    strategies=("balanced", "classifier-heavy"), baselines=("global_magnitude",), epochs=1,
    rules=[{"name": "tiny-layers", "max_params": 100, "max": 0.1}, {"name": "first-layer", "enabled": False}], range_targets=(0.5, 0.8, 0.9),
)
N_RUNS = 2 * (2 + 1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, factories.run_spec(CONFIG, out, progress=False, keep_checkpoints="all")


def test_files_and_counts(finished):
    out, result = finished
    for name in ("config.json", "plan.json", "results.jsonl", "report.md", "pareto.png", "front.json"):
        assert (out / name).stat().st_size > 0, name
    assert len(result.records) == N_RUNS == len({r["key"] for r in result.records})
    assert {r["method"] for r in result.records} == {"mix_and_match", "baseline"}
    assert "★" in result.report.read_text()
    assert result.report.read_text().count("| mix_and_match |") == 4
    assert result.front and all(a.key in {r["config_key"] for r in result.records} for a in result.front)


def test_sparsity_after_finetuning_equals_plan(finished):
    _, result = finished
    for r in result.records:
        assert abs(r["sparsity"] - r["target"]) < 0.01, r["key"]
        params = {}
        for name, s in r["layer_sparsity"].items():
            planned = r["planned_sparsity"][name]
            ckpt = torch.load(finished[0] / r["checkpoint"], weights_only=True)
            w = ckpt["state_dict"][name]
            params[name] = w.numel()
            assert int((w == 0).sum()) == round(planned * w.numel()), (r["key"], name)
            assert s == pytest.approx(round(planned * w.numel()) / w.numel())
        assert r["nonzeros"] == sum(round((1 - r["layer_sparsity"][n]) * params[n]) for n in params)


def test_resume_after_interrupt(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = runner._run_job

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_run_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        factories.run_spec(CONFIG, tmp_path, progress=False)
    first = load_records(tmp_path)
    assert len(first) == 2
    monkeypatch.setattr(runner, "_run_job", real)
    seen = []
    factories.run_spec(CONFIG, tmp_path, progress=False, on_record=seen.append)
    records = load_records(tmp_path)
    assert len(seen) == N_RUNS - 2  # nothing repeated
    assert len(records) == N_RUNS == len({r["key"] for r in records})  # nothing lost
    unchanged = ("key", "val_score", "checkpoint_sha256")  # the final evaluation only adds test figures
    assert [[r[k] for k in unchanged] for r in records[:2]] == [[r[k] for k in unchanged] for r in first]
    assert all(r["test_score"] is not None for r in records)


def test_other_configuration_refused(finished):
    out, _ = finished
    import dataclasses

    with pytest.raises(ConfigError, match=r"other inputs \(settings.epochs: 1 -> 3\).*--force-new"):
        factories.run_spec(dataclasses.replace(CONFIG, epochs=3), out, progress=False)


def test_bad_model_and_data(tmp_path):

    with pytest.raises(ConfigError, match="has 10 classes; build the model with num_classes=10"):
        factories.run_spec(CONFIG, tmp_path / "a", TaskSpec("factories:wrong_classes", "factories:small_digits"),
                           progress=False)
    with pytest.raises(ConfigError, match="factories:broken_data.*disk not mounted"):
        factories.run_spec(CONFIG, tmp_path / "b", TaskSpec("factories:trained_mlp", "factories:broken_data"),
                           progress=False)
    with pytest.raises(ValidationError, match="unknown signal"):
        RunConfig(signals=("magnitud",))


def test_pareto_front_hand_made():
    pts = [(0.5, 0.9), (0.6, 0.85), (0.6, 0.8), (0.7, 0.86), (0.9, 0.5), (0.4, 0.95), (0.4, 0.9), (0.9, 0.5)]
    assert pareto_front(pts) == [5, 0, 3, 4, 7]


def test_select(finished, tmp_path):
    out, result = finished
    pick, _ = select(out, min_score=0.0)
    assert pick.sparsity == max(a.sparsity for a in result.front)
    pick2, _ = select(out, max_nonzeros=10**9)
    assert pick2.val == max(a.val for a in result.front)
    with pytest.raises(ValidationError, match="no front member meets"):
        select(out, max_nonzeros=1)
    with pytest.raises(ConfigError, match="no finished runs"):
        select(tmp_path, min_score=0.5)


def test_comparison_picks_best_on_validation():
    from mm_plugin.portfolio.pareto import Aggregate
    from mm_plugin.portfolio.report import comparison

    def agg(method, name, val, test):
        return Aggregate(key=f"{method}/{name}", method=method, signal="magnitude", name=name, target=0.9, n=3,
                         sparsity=0.9, nonzeros=10, val=val, val_std=0, test=test, test_std=0,
                         oneshot_val=0.5, dense_test=0.98)

    rows = comparison([agg("mix_and_match", "balanced", 0.95, 0.96), agg("mix_and_match", "aggressive", 0.97, 0.93),
                       agg("baseline", "global_magnitude", 0.9, 0.93), agg("baseline", "lamp", 0.92, 0.95)])
    (row,) = rows
    assert row["best"].name == "aggressive"  # best on validation, even though its test is worse
    assert row["best_vs_gmp"] == pytest.approx(0.0)
    assert row["balanced_vs_gmp"] == pytest.approx(1 - 0.02 / 0.05)


def test_flexhinm_sparsity_gives_nm_friendly_masks(tmp_path):
    import dataclasses

    from mm_plugin.flexhinm import validate_nm
    keep_head = {"name": "keep-head", "kinds": ["head"], "max": 0.0}  # a layer the pattern leaves dense
    config = dataclasses.replace(CONFIG, sparsity="flexhinm", targets=(0.5,), strategies=("balanced",), baselines=(),
                                 rules=[*CONFIG.rules, keep_head])
    result = factories.run_spec(config, tmp_path, progress=False, keep_checkpoints="all")
    (record,) = result.records
    ckpt = torch.load(tmp_path / record["checkpoint"], weights_only=True)
    planned = {n: ckpt["state_dict"][n] for n in record["planned_sparsity"]}
    assert record["planned_sparsity"]["5.weight"] == 0.0 and "5.weight" in record["layer_sparsity"]
    zeros = sum(int((w == 0).sum()) for w in planned.values())
    params = sum(w.numel() for w in planned.values())
    assert record["pattern"] == "flexhinm" and record["params"] == params  # every planned weight, dense ones too
    assert record["nonzeros"] == params - zeros and record["sparsity"] == zeros / params
    assert abs(record["sparsity"] - 0.5) < 0.01  # the hybrid split rounds each layer to half a vector
    model = factories.trained_mlp()
    model.load_state_dict(ckpt["state_dict"])
    assert validate_nm(model, regions=ckpt["nm_regions"]).ok
    assert any(r.any() for r in ckpt["nm_regions"].values())
    assert not validate_nm(model).ok  # dense regions are not 2:4: the regions matter
    with pytest.raises(ValidationError, match="unknown sparsity pattern 'nm'.*structured"):
        dataclasses.replace(CONFIG, sparsity="nm")


def test_latency_front_interpolation_and_report_section(tmp_path):
    from mm_plugin.portfolio.pareto import Aggregate, interpolate, latency_front_of
    from mm_plugin.portfolio.report import baseline_at_latency, write_report

    assert interpolate([(0.5, 0.8), (1.0, 1.0)], 0.75) == pytest.approx(0.9)
    assert interpolate([(0.5, 0.8), (1.0, 1.0)], 0.4) is None  # never extrapolated
    assert interpolate([(0.5, 0.8)], 0.5) is None

    def agg(method, name, latency, val, test):
        return Aggregate(key=f"{method}/{name}/{latency}", method=method, signal="magnitude", name=name, target=0.3,
                         n=1, sparsity=0.5, nonzeros=10, val=val, val_std=0, test=test, test_std=0, oneshot_val=0.5,
                         dense_test=0.98, latency_ratio=latency, macs_ratio=0.7)

    aggs = [agg("mix_and_match", "balanced", 0.6, 0.95, 0.94), agg("mix_and_match", "aggressive", 0.7, 0.90, 0.91),
            agg("baseline", "tp_uniform", 0.5, 0.80, 0.78), agg("baseline", "tp_uniform", 0.8, 0.96, 0.95)]
    assert [a.name for a in latency_front_of(aggs)] == ["tp_uniform", "balanced", "tp_uniform"]
    assert baseline_at_latency(aggs, "tp_uniform", 0.6) == pytest.approx(0.78 + (0.95 - 0.78) / 3)
    assert baseline_at_latency(aggs, "tp_uniform", 0.9) == pytest.approx((0.95 + 0.98) / 2)  # toward dense
    assert baseline_at_latency(aggs, "tp_uniform", 0.4) is None
    text = write_report(aggs, tmp_path, "t", "cmd").read_text()
    assert "## Test accuracy vs measured latency" in text
    assert "| ◆ | mix_and_match | magnitude/balanced | 0.30 | 0.700 | 0.600 | 50.0 % | 94.00 | 83.67 |" in text


def test_strategies_that_rescale_alike_run_once(tmp_path):
    import dataclasses

    config = dataclasses.replace(CONFIG, targets=(0.5,), strategies=("balanced", "aggressive", "classifier-heavy"),
                                 baselines=())
    result = factories.run_spec(config, tmp_path, progress=False)
    assert sorted(r["name"] for r in result.records) == ["balanced", "classifier-heavy"]
    assert "`mix_and_match/magnitude/balanced/0.5000` stands also for aggressive" in result.report.read_text()


@pytest.mark.parametrize("sparsity", ["unstructured", "flexhinm"])
def test_reconstruct_keeps_every_mask_and_lowers_the_one_shot_loss(tmp_path, sparsity):
    import dataclasses

    from mm_plugin.flexhinm import validate_nm
    base = dataclasses.replace(CONFIG, sparsity=sparsity, targets=(0.8,), strategies=("balanced",), baselines=(),
                               epochs=0)
    runs = {}
    for solve in (False, True):
        result = factories.run_spec(dataclasses.replace(base, reconstruct=solve), tmp_path / str(solve), progress=False,
                     keep_checkpoints="all")
        (record,) = result.records
        runs[solve] = record, torch.load(tmp_path / str(solve) / record["checkpoint"], weights_only=True)
    (plain, plain_ckpt), (solved, solved_ckpt) = runs[False], runs[True]
    assert solved["sparsity"] == pytest.approx(plain["sparsity"])
    for name in plain["layer_sparsity"]:
        w0, w1 = plain_ckpt["state_dict"][name], solved_ckpt["state_dict"][name]
        assert torch.equal(w0 == 0, w1 == 0), name  # the same masks
    weights = [(plain_ckpt["state_dict"][n], solved_ckpt["state_dict"][n]) for n in plain["layer_sparsity"]]
    assert any(not torch.equal(a, b) for a, b in weights)  # the kept weights moved
    assert solved["oneshot_val_loss"] < plain["oneshot_val_loss"]
    if sparsity == "flexhinm":
        model = factories.trained_mlp()
        model.load_state_dict(solved_ckpt["state_dict"])
        assert validate_nm(model, regions=solved_ckpt["nm_regions"]).ok


@pytest.mark.parametrize("budget", [None, 2])
def test_the_test_split_is_read_only_after_every_selection(tmp_path, budget):
    """Through the runner and the search: the training and validation splits are never read after the test
    split (the loaders raise), and the test split is read, for the dense model and every configuration."""
    import dataclasses

    config = dataclasses.replace(CONFIG, targets=(0.8,), budget=budget, candidates=4,
                                 strategies=("balanced",) if budget is None else None)
    result = factories.run_spec(config, tmp_path, TaskSpec("factories:trained_mlp", "factories:guarded_digits"),
                                progress=False)
    assert factories.READS[-1] == "test" and "val" in factories.READS
    finished = [r for r in result.records if r.get("rung") is None]
    assert finished and all(r["test_score"] is not None and r["dense_test_score"] for r in finished)
    assert any(r["name"] == "search" for r in finished) == (budget is not None)
    assert all(r["test_score"] is None for r in result.records if r.get("rung") in (0, 1))
