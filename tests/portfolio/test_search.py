"""The budgeted strategy search: rungs recorded, budget kept, resumable, the pick beside the baselines."""

import dataclasses
import logging

import factories
import numpy as np
import pytest

from mm_plugin.planning import Strategy
from mm_plugin.portfolio import RunConfig, load_records, runner
from mm_plugin.portfolio.report import search_summary
from mm_plugin.portfolio.search import Rungs, finalists, pick_final, shortlist

CONFIG = RunConfig(targets=(0.8,),
                   baselines=("global_magnitude", "lamp"), epochs=2, budget=2.5, candidates=9, seeds=(0,),
                   rules=[{"name": "first-layer", "enabled": False}])


@pytest.mark.parametrize("budget, oneshot, short, full", [(1, 0, 0, 1), (2, 0, 3, 1), (4, 0, 6, 2), (6, 0, 9, 3),
                                                     (4, 0.02, 4, 2), (4, 0.04, 0, 2), (6, 0.04, 5, 3)])
def test_schedule_spends_the_budget_one_shot_scores_included(budget, oneshot, short, full):
    """24 one-shot scores at 2 % of a fine-tune each take 0.48 of the budget, and each short fine-tune its
    one-shot start: 4 short fine-tunes fit in a budget of 4, not 6; at 4 % fewer than 3 fit, and a rung 1 that keeps all it
    holds selects nothing, so there is none."""
    s = Rungs.for_budget(budget, candidates=24, eta=3, oneshot=oneshot)
    assert (s.short, s.full) == (short, full) and s.cost <= budget + 1e-9
    assert s.cost == pytest.approx(24 * oneshot + short * (oneshot + (1 - oneshot) / 3) + full)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    return out, factories.run_spec(CONFIG, out, progress=False)


def test_rungs_are_recorded_and_halved(searched):
    out, result = searched
    rungs = {k: [r for r in result.records if r.get("rung") == k] for k in (0, 1, 2)}
    assert len(rungs[0]) == 9 and len(rungs[1]) == 3 and len(rungs[2]) == 1
    assert len({r["name"] for r in rungs[0]}) == 9  # distinct candidates, named strategies first
    # the constant-position strategies all rescale to one allocation: the first of them stands for all
    assert {"magnitude/conservative", "magnitude/parameter-proportional"} <= {r["name"] for r in rungs[0]}
    best0 = sorted(rungs[0], key=lambda r: (-r["val_score"], r["val_loss"]))[:3]
    assert {r["name"] for r in rungs[1]} == {r["name"] for r in best0}  # promotion by one-shot val
    (pick,) = [r for r in result.records if r.get("picked")]
    assert pick["picked"] == rungs[2][0]["name"] and pick["search"]["budget"] == 2.5
    assert abs(pick["sparsity"] - 0.8) < 0.01  # measured after fine-tuning
    # chosen on validation one-shot, a candidate keeps a trained epoch (its epoch 0 would win that choice again)
    assert all(r["best_epoch"] >= 1 for r in rungs[1] + rungs[2] + [pick])
    assert (out / "search.journal").exists()
    aggregates = {a.name for a in result.aggregates}
    assert aggregates == {"search", "global_magnitude", "lamp"}  # the rungs stay out of the front and tables
    (row,) = search_summary(result.records)
    assert row["rungs"] == [9, 3, 1] and row["n_baselines"] == 2 and row["rho_pairs"] == 4
    assert row["spent"] == pick["search"]["spent"] < 2.5
    report = result.report.read_text()
    assert "## Strategy search at equal budget" in report and f"| 2.5 / {row['spent']:.2f} |" in report


def test_the_budget_counts_the_one_shot_rung_by_its_measured_work(searched):
    """Every job's compute is metered (samples through the model, three per trained one): the search's one-shot
    scores are counted against the baselines' fine-tunes, and the later rungs do not score one-shot again."""
    _, result = searched
    (pick,) = [r for r in result.records if r.get("picked")]
    rung0 = [r["work"] for r in result.records if r.get("rung") == 0]
    full = [r["work"] for r in result.records if r["method"] == "baseline"]
    assert pick["search"]["oneshot"] == pytest.approx(np.mean(rung0) / np.mean(full), abs=1e-5)
    assert 0 < pick["search"]["oneshot"] < 0.2 and pick["search"]["spent"] <= 2.5
    expected = Rungs.for_budget(2.5, 9, 3, oneshot=pick["search"]["oneshot"])
    assert (pick["search"]["short"], pick["search"]["spent"]) == (expected.short, pytest.approx(expected.cost, abs=1e-4))
    (final,) = [r for r in result.records if r.get("rung") == 2]
    assert final["work"] == full[0] - rung0[0]  # its one-shot start, without scoring validation again
    assert final["oneshot_val_score"] == next(r["oneshot_val_score"] for r in result.records
                                              if r.get("rung") == 0 and r["name"] == final["name"])


def test_an_interrupted_search_resumes_without_repeating(tmp_path, monkeypatch, searched):
    calls = {"n": 0}
    real = runner._run_job

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_run_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        factories.run_spec(CONFIG, tmp_path, progress=False)
    first = load_records(tmp_path)
    monkeypatch.setattr(runner, "_run_job", real)
    factories.run_spec(CONFIG, tmp_path, progress=False)
    records = load_records(tmp_path)
    assert len(records) == len({r["key"] for r in records}) == len(searched[1].records)
    assert {r["key"] for r in first} <= {r["key"] for r in records}
    picked = lambda rs: [r["picked"] for r in rs if r.get("picked")]
    assert picked(records) == picked(searched[1].records)  # the same seeded search, resumed


def test_a_search_needs_targets_and_a_budget_of_one():
    with pytest.raises(Exception, match="a search needs --targets and a --budget of at least 1"):
        dataclasses.replace(CONFIG, budget=0.5)


def test_the_pool_holds_the_allocations_users_have_exactly(searched):
    """Whatever the rules bound, the search fine-tunes from the same pool the baselines come from."""
    _, result = searched
    rung0 = {r["name"]: r for r in result.records if r.get("rung") == 0}
    baselines = {r["name"]: r for r in result.records if r["method"] == "baseline"}
    for name in ("global_magnitude", "lamp"):
        assert rung0[f"magnitude/exact-{name}"]["planned_sparsity"] == baselines[name]["planned_sparsity"]


def test_a_measured_search_holds_the_sensitivity_allocation_exactly(tmp_path, searched):
    """With --sensitivity the pool also holds the allocation of least measured loss rise, as it is."""
    config = dataclasses.replace(CONFIG, sensitivity=True, sensitivity_grid=(0.5, 0.9), sensitivity_batches=1,
                                 candidates=8, budget=1)
    rung0 = {r["name"]: r for r in factories.run_spec(config, tmp_path, progress=False).records if r.get("rung") == 0}
    exact = rung0["magnitude/exact-sensitivity"]["planned_sparsity"]
    sizes = {"1.weight": 64 * 128, "3.weight": 128 * 64, "5.weight": 64 * 10}
    assert sum(sizes[n] * s for n, s in exact.items()) / sum(sizes.values()) == pytest.approx(0.8, abs=1e-3)
    assert exact not in [rung0[f"magnitude/exact-{b}"]["planned_sparsity"] for b in ("global_magnitude", "lamp")]
    assert not any("exact-sensitivity" in r["name"] for r in searched[1].records)  # measured runs only


def test_evopress_proposes_level_switches_selected_on_calibration_losses(tmp_path):
    config = dataclasses.replace(CONFIG, sampler="evopress", candidates=16, budget=1)
    runs = [factories.run_spec(config, tmp_path / str(i), progress=False).records for i in range(2)]
    evo = [[r for r in records if r.get("rung") == 0 and "/evo-" in r["name"]] for records in runs]
    assert evo[0], "no generation beat its parent on the calibration batches"
    assert [(r["name"], r["planned_sparsity"]) for r in evo[0]] == [(r["name"], r["planned_sparsity"]) for r in evo[1]]
    sizes = {"1.weight": 64 * 128, "3.weight": 128 * 64, "5.weight": 64 * 10}
    for r in evo[0]:  # every offspring is rescaled to the target exactly
        total = sum(sizes[n] * s for n, s in r["planned_sparsity"].items()) / sum(sizes.values())
        assert total == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="sampler 'evopress' .* not with --sparsity structured"):
        RunConfig(targets=(0.3,), sparsity="structured", sampler="evopress")


def test_the_final_pick_by_validation_loss(tmp_path):
    config = dataclasses.replace(CONFIG, pick="loss", budget=4, candidates=6)
    records = factories.run_spec(config, tmp_path, progress=False).records
    finals = [r for r in records if r.get("rung") == 2]
    (pick,) = [r for r in records if r.get("picked")]
    assert len(finals) == 2 and pick["picked"] == min(finals, key=lambda r: r["val_loss"])["name"]


def _final(name: str, right: str, loss: float = 0.3) -> dict:
    return {"name": f"magnitude/{name}", "val_score": right.count("1") / len(right), "val_loss": loss,
            "val_metrics": {"correct": right}}


def test_the_paired_pick_keeps_the_usual_allocation_without_evidence(caplog):
    """A challenger a few samples ahead on validation is mostly luck: the usual allocation stays."""
    paired = dataclasses.replace(CONFIG, pick="paired", budget=4)
    usual = _final("exact-lamp", "1" * 90 + "0" * 10)
    close = _final("tpe-017", "1" * 93 + "0" * 7)  # 3 samples ahead: McNemar p = 0.25
    assert pick_final(paired, [usual, close]) is usual
    assert pick_final(dataclasses.replace(paired, pick="score"), [usual, close]) is close
    ahead = _final("tpe-018", "1" * 100)  # 10 ahead, never behind: p = 0.002
    assert pick_final(paired, [usual, ahead]) is ahead
    blind = {**ahead, "val_metrics": {}}  # a task without per-sample results gives no evidence
    with caplog.at_level(logging.WARNING, logger="mm_plugin.portfolio.search"):
        assert pick_final(paired, [usual, blind]) is usual
    assert "return 'correct'" in caplog.text



def test_the_paired_pick_always_fine_tunes_the_best_usual_allocation():
    paired = dataclasses.replace(CONFIG, pick="paired", budget=4)
    s = lambda name: Strategy(f"magnitude/{name}", {"1.weight": 0.5}, "magnitude")
    ranked = [(s("tpe-1"), 0.95, 0.2), (s("tpe-2"), 0.94, 0.2), (s("exact-erk"), 0.90, 0.3)]
    assert [c.name for c in finalists(paired, ranked, 2, ranked)] == ["magnitude/exact-erk", "magnitude/tpe-1"]
    assert [c.name for c in finalists(CONFIG, ranked, 2, ranked)] == ["magnitude/tpe-1", "magnitude/tpe-2"]
    oneshot = ranked[:2] + [(s("exact-lamp"), 0.80, 0.4), (s("exact-erk"), 0.70, 0.5)]  # none promoted: rung 0's
    assert finalists(paired, ranked[:2], 2, oneshot)[0].name == "magnitude/exact-lamp"
    with pytest.raises(ValueError, match="pick 'paired' .* a --budget of at least 4"):
        dataclasses.replace(CONFIG, pick="paired", budget=2)


def test_shortlist_puts_the_usual_allocations_first_only_where_one_shot_scores_do_not_rank():
    s = lambda name: Strategy(f"magnitude/{name}", {"1.weight": 0.5}, "magnitude")
    scored = [(s("tpe-001"), 0.97, 0.1), (s("tpe-002"), 0.96, 0.1), (s("exact-lamp"), 0.95, 0.2),
              (s("tpe-003"), 0.94, 0.1), (s("exact-uniform"), 0.90, 0.3)]
    assert [c.name for c in shortlist(scored, 3, usual_first=False)] == \
        ["magnitude/tpe-001", "magnitude/tpe-002", "magnitude/exact-lamp"]
    assert [c.name for c in shortlist(scored, 3, usual_first=True)] == \
        ["magnitude/exact-lamp", "magnitude/exact-uniform", "magnitude/tpe-001"]
    assert [c.name for c in shortlist(scored, 1, usual_first=True)] == ["magnitude/exact-lamp"]
    from mm_plugin.portfolio.patterns import get_pattern
    assert get_pattern("unstructured").oneshot_ranks and not get_pattern("flexhinm").oneshot_ranks


def test_a_search_whose_one_shot_rung_eats_the_short_one_says_how_many_candidates_fit(tmp_path, caplog):
    """A budget of 2 with 9 one-shot scores at a few percent of a fine-tune each leaves fewer short fine-tunes than
    it would select from: the search says so, and how many candidates would leave room."""
    config = dataclasses.replace(CONFIG, budget=2)
    with caplog.at_level(logging.WARNING, logger="mm_plugin.portfolio.runner"):
        records = factories.run_spec(config, tmp_path, progress=False).records
    (pick,) = [r for r in records if r.get("picked")]
    assert pick["search"]["short"] == 0 and not [r for r in records if r.get("rung") == 1]
    rungs = Rungs(9, 0, 1, 3, pick["search"]["oneshot"])
    assert f"--candidates {rungs.candidates_for(2)} would leave room for 2" in caplog.text
    assert Rungs.for_budget(2, rungs.candidates_for(2), 3, oneshot=rungs.oneshot).short >= 2
