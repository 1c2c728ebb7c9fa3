"""A run folder nothing can corrupt: one run at a time, inputs fingerprinted, every record and checkpoint
checked on read, and every user mistake one line on the command line."""

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import factories
import pytest

from mm_plugin.cli import main
from mm_plugin.errors import ConfigError, ValidationError
from mm_plugin.portfolio import RunConfig, TaskSpec, load_records, select

TESTS = Path(__file__).resolve().parents[1]
CONFIG = RunConfig(targets=(0.5,),
                   strategies=("balanced", "classifier-heavy"), baselines=("global_magnitude",), epochs=1,
                   seeds=(0, 1), rules=[{"name": "tiny-layers", "max_params": 100, "max": 0.1}])
N_RUNS = 3 * 2
def _argv(out: Path) -> list[str]:
    """The command line of a run as CONFIG's, with three seeds and three epochs (long enough to catch)."""
    rules = out.parent / f"{out.name}-rules.json"
    rules.write_text(json.dumps(CONFIG.rules))
    return ["run", "--model", "factories:trained_mlp", "--data", "factories:small_digits", "--targets", "0.5",
            "--strategies", "balanced,classifier-heavy", "--baselines", "global_magnitude", "--epochs", "3",
            "--seeds", "0,1,2", "--rules", str(rules), "--out", str(out)]


def _spawn(out: Path) -> subprocess.Popen:
    import torch  # the factory trains its model in each process: the same threads give the same weights

    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "mm_plugin.cli", *_argv(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the background run did not get there in time"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, factories.run_spec(CONFIG, out, progress=False, keep_checkpoints="all")


def _lines(out: Path) -> int:
    path = out / "results.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_second_run_on_the_folder_is_refused_and_the_first_finishes(tmp_path):
    proc = _spawn(tmp_path)
    _wait_for(lambda: (tmp_path / ".lock.json").exists(), proc)
    with pytest.raises(ConfigError, match=rf"is in use by process {proc.pid} .*mm-prune"):
        factories.run_spec(dataclasses.replace(CONFIG), tmp_path, progress=False)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    records = load_records(tmp_path)
    assert len(records) == 9 == len({r["key"] for r in records})
    assert not (tmp_path / ".lock.json").exists()


def test_a_killed_run_resumes_without_losing_or_repeating_anything(tmp_path, caplog):
    proc = _spawn(tmp_path)
    _wait_for(lambda: _lines(tmp_path) >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (tmp_path / ".results.jsonl.half.tmp").write_text('{"key": ')  # what a write cut short leaves
    before = {r["key"] for r in load_records(tmp_path)}
    caplog.set_level(logging.INFO)
    assert main(_argv(tmp_path)) == 0  # the killed process's lock does not block
    records = load_records(tmp_path)
    assert len(records) == 9 == len({r["key"] for r in records}) and before <= {r["key"] for r in records}
    assert not list(tmp_path.glob(".*.tmp")) and "ended without releasing" in caplog.text


def test_corrupt_line_and_truncated_checkpoint_are_reported_skipped_and_redone(finished, tmp_path, caplog):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    lines = (out / "results.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a line cut in half
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    damaged = json.loads(lines[2])
    ckpt = out / damaged["checkpoint"]
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a truncated checkpoint
    caplog.set_level(logging.WARNING)
    assert len(load_records(out)) == N_RUNS - 2
    assert f"{out / 'results.jsonl'} line 2 is not a complete record" in caplog.text
    assert f"line 3: its checkpoint {ckpt} has 100 bytes" in caplog.text
    _, record = select(out, min_score=0.0)  # select works on what is sound
    assert record["key"] != damaged["key"]
    seen = []
    factories.run_spec(CONFIG, out, progress=False, keep_checkpoints="all", on_record=seen.append)
    original = [json.loads(x) for x in (finished[0] / "results.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in seen) == sorted([original[1]["key"], damaged["key"]])  # only those two redone
    records = load_records(out)
    assert len(records) == N_RUNS == len({r["key"] for r in records})
    assert len((out / "results.jsonl").read_text().splitlines()) == N_RUNS


def test_select_refuses_a_damaged_checkpoint(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    from mm_plugin.portfolio import export_selected

    _, record = select(out, min_score=0.0)
    (out / record["checkpoint"]).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"cannot export .*has 0 bytes.*rerun the same `mm-prune run`"):
        export_selected(out, record, tmp_path / "selected.pt")


def test_changed_inputs_are_refused_with_what_changed_and_force_new_archives(finished, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "tiny-layers", "max_params": 100, "max": 0.1}]))
    config = dataclasses.replace(CONFIG, seeds=(0,), strategies=("balanced",), rules=str(rules))
    out = tmp_path / "run"
    factories.run_spec(config, out, progress=False)
    rules.write_text(json.dumps([{"name": "tiny-layers", "max_params": 100, "max": 0.2}]))  # same name, new content
    with pytest.raises(ConfigError, match=r"other inputs \(inputs.rules_file: '[0-9a-f]+' -> '[0-9a-f]+'\).*--force-new"):
        factories.run_spec(config, out, progress=False)
    factories.run_spec(config, out, progress=False, force_new=True)
    (archived,) = out.glob("previous-*")
    assert (archived / "results.jsonl").exists() and len(load_records(out)) == 2


def test_results_without_config_json_are_refused(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    (out / "config.json").unlink()
    with pytest.raises(ConfigError, match="holds results but .*config.json is missing.*--force-new"):
        factories.run_spec(CONFIG, out, progress=False)
    (out / "config.json").write_text("{garbage")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON .*--force-new"):
        factories.run_spec(CONFIG, out, progress=False)


def test_a_failed_first_run_does_not_block_the_corrected_command(tmp_path):
    with pytest.raises(ConfigError):
        factories.run_spec(CONFIG, tmp_path, TaskSpec("factories:wrong_classes", "factories:small_digits"),
                           progress=False)
    result = factories.run_spec(dataclasses.replace(CONFIG, seeds=(0,), strategies=("balanced",)), tmp_path, progress=False)
    assert len(result.records) == 2


def test_repeated_seeds_and_targets_run_once():
    config = dataclasses.replace(CONFIG, seeds=(0, 0, 1), targets=(0.5, 0.5))
    assert config.seeds == (0, 1) and config.targets == (0.5,)
    with pytest.raises(ValidationError, match=r"seeds must be one or more integers >= 0, got \[-1\]"):
        dataclasses.replace(CONFIG, seeds=(-1,))


def test_a_rule_that_matches_nothing_warns_with_the_closest_names(caplog):
    import torch
    from conftest import MLP

    import mm_plugin

    caplog.set_level(logging.WARNING)
    mm_plugin.plan(MLP(), torch.randn(1, 64), rules=[{"name": "typo", "pattern": "haed", "max": 0.1}])
    assert "rule 'typo' matches no unit" in caplog.text and "closest unit names: head" in caplog.text


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "x", "--data", "mnist", "--out", "{file}"], "is a file; give --out a folder path"),
    (["run", "--model", "timm:resnet10t", "--out", "{dir}"], "model 'timm:resnet10t' needs its data: pass --data"),
    (["run", "--model", "factories:trained_mlp", "--data", "factories:small_digits", "--out", "{file}/sub"],
     "cannot write to run folder"),
    (["run", "--model", "resnet8", "--seeds", "-1", "--out", "{dir}"], "seeds must be one or more integers >= 0"),
    (["run", "--model", "resnet8", "--rules", "{dir}", "--out", "{dir}/r"], "is a folder; give the path of a .json"),
    (["plan", "--model", "timm:resnet18", "--input-size", "3,16"], "--input-size 3,16 does not fit timm:resnet18"),
    (["select", "{dir}", "--min-score", "0.5"], "has no finished runs"),
])
def test_every_cli_mistake_is_one_line_with_exit_code_2(argv, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(file=tmp_path / "afile", dir=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_an_adapter_subcommand_that_cannot_load_says_why_when_called(monkeypatch, capsys):
    from mm_plugin import cli

    def broken(subparsers):
        raise ConfigError("subcommand 'thing' needs a toolkit that is not installed: No module named 'thing'")

    monkeypatch.setitem(cli.COMMANDS._items, "thing", broken)
    assert "thing" in cli.build_parser().format_help()  # listed, not vanished
    assert main(["thing"]) == 2
    err = capsys.readouterr().err
    assert "mm-prune thing cannot run here: subcommand 'thing' needs a toolkit" in err and err.count("\n") == 1


def test_one_changed_training_sample_is_refused(finished, tmp_path, monkeypatch):
    import factories

    from mm_plugin.portfolio import classification_task
    from mm_plugin.portfolio.folder import fingerprint
    from mm_plugin.training import load_data

    same = [fingerprint(CONFIG, classification_task(factories.trained_mlp(), load_data("factories:small_digits")))
            for _ in range(2)]
    assert same[0] == same[1]  # every sample is read in the dataset's order, whatever the loader shuffles
    assert set(same[0]) >= {"model", "train", "val", "test", "training"}
    assert same[0]["train"].startswith("400:") and same[0]["test"].startswith("100:")
    original = factories.small_digits

    def one_pixel_changed(batch_size: int = 64, seed: int = 0):
        data = original(batch_size, seed)
        x, y = data["train"].dataset.tensors
        x = x.clone()
        x[7, 0, 3, 3] += 0.5
        data["train"] = type(data["train"])(type(data["train"].dataset)(x, y), batch_size=batch_size, shuffle=True)
        return data

    monkeypatch.setattr(factories, "small_digits", one_pixel_changed)  # the same --data, other training data
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    with pytest.raises(ConfigError, match=r"other inputs \(inputs\.train: '400:[0-9a-f]+' -> '400:[0-9a-f]+'\)"):
        factories.run_spec(CONFIG, out, progress=False)
