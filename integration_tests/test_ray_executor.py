"""`mm-prune run --executor ray`: the same records as one machine, exactly one record per job whatever
fails, and the driver the only writer of the run folder."""

import dataclasses
import os
import signal
import subprocess
import threading
import time

import pytest

pytest.importorskip("ray")

from mm_plugin.portfolio import RunConfig, load_records, run

CONFIG = RunConfig(model="factories:trained_mlp", data="factories:small_digits", targets=(0.8,),
                   baselines=("global_magnitude", "lamp"), epochs=1, budget=2, candidates=8, seeds=(0,),
                   rules=[{"name": "first-layer", "enabled": False}])
METRICS = ("val_accuracy", "test_accuracy", "oneshot_val_accuracy", "oneshot_val_loss", "planned_sparsity", "picked")


def _metrics(records):
    return {r["key"]: tuple(r.get(m) for m in METRICS) for r in records}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return run(CONFIG, tmp_path_factory.mktemp("sequential"), progress=False, cpus_per_trial=1).records


def test_ray_gives_the_sequential_metrics(sequential, tmp_path):
    records = run(CONFIG, tmp_path, progress=False, executor="ray", cpus_per_trial=1).records
    assert _metrics(records) == _metrics(sequential)  # the same seeds, one thread per job either way
    assert len(records) == len({r["key"] for r in records}) == len(sequential)


def _ray_workers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::_threaded"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


def test_a_killed_worker_is_retried_and_its_job_recorded_once(sequential, tmp_path):
    killed = []

    def kill_one() -> None:
        deadline = time.monotonic() + 180
        while not killed and time.monotonic() < deadline:
            busy = _ray_workers()
            if busy and len(load_records(tmp_path)) >= 2:  # mid-run, a task in progress
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.05)

    thread = threading.Thread(target=kill_one)
    thread.start()
    records = run(dataclasses.replace(CONFIG), tmp_path, progress=False, executor="ray", cpus_per_trial=1).records
    thread.join()
    assert killed, "no worker was caught running a task"
    assert len(records) == len({r["key"] for r in records}) == len(sequential)
    assert {r["key"] for r in records} == {r["key"] for r in sequential}


def test_a_resumed_ray_run_adds_no_duplicate(sequential, tmp_path):
    seen = []

    def stop_after_three(record):
        seen.append(record["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt  # the driver dies mid-run; Ray shuts down with it

    with pytest.raises(KeyboardInterrupt):
        run(CONFIG, tmp_path, progress=False, executor="ray", cpus_per_trial=1, on_record=stop_after_three)
    first = {r["key"] for r in load_records(tmp_path)}
    again = []
    run(CONFIG, tmp_path, progress=False, executor="ray", cpus_per_trial=1, on_record=again.append)
    records = load_records(tmp_path)
    assert first <= {r["key"] for r in records} and not first & {r["key"] for r in again}
    assert len(records) == len({r["key"] for r in records}) == len(sequential)
