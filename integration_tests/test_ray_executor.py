"""`mm-prune run --executor ray`: the same records as one machine, exactly one record per job whatever
fails, and the driver the only writer of the run folder."""

import os
import signal
import threading
import time
from pathlib import Path

import factories
import pytest

pytest.importorskip("ray")

from mm_plugin.portfolio import RunConfig, load_records
from mm_plugin.portfolio.executors import Ray

CONFIG = RunConfig(targets=(0.8,),
                   baselines=("global_magnitude", "lamp"), epochs=1, budget=2, candidates=8, seeds=(0,),
                   rules=[{"name": "first-layer", "enabled": False}])
METRICS = ("val_score", "test_score", "oneshot_val_score", "oneshot_val_loss", "planned_sparsity", "picked")


def _metrics(records):
    return {r["key"]: tuple(r.get(m) for m in METRICS) for r in records}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return factories.run_spec(CONFIG, tmp_path_factory.mktemp("sequential"), progress=False, cpus_per_trial=1).records


def test_ray_gives_the_sequential_metrics(sequential, tmp_path):
    records = factories.run_spec(CONFIG, tmp_path, progress=False, executor="ray", cpus_per_trial=1).records
    assert _metrics(records) == _metrics(sequential)  # the same seeds, one thread per job either way
    assert len(records) == len({r["key"] for r in records}) == len(sequential)


def test_a_killed_worker_is_retried_and_its_job_returned_once(tmp_path):
    """The job's first attempt announces its worker and waits to be killed, so the kill never races the
    run's end; the retry finds the announcement and returns."""
    announced = tmp_path / "first-attempt.pid"

    def job(shared: int, item: int) -> int:
        if item == 2 and not announced.exists():
            partial = announced.with_suffix(".partial")
            partial.write_text(str(os.getpid()))
            partial.rename(announced)  # whole or absent: the killer never reads half a pid
            time.sleep(120)
        return shared + item

    killed = []

    def kill_the_first_attempt() -> None:
        deadline = time.monotonic() + 120
        while not announced.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if announced.exists():
            pid = int(announced.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=kill_the_first_attempt)
    thread.start()
    executor = Ray(cpus_per_trial=1, progress=False)
    try:
        results = list(executor.map(job, 10, list(range(5))))
    finally:
        executor.close()
        thread.join()
    assert killed, "the job's first attempt never announced itself"
    assert sorted(results) == [(i, 10 + i) for i in range(5)]  # every item once, the killed one included


def test_a_resumed_ray_run_adds_no_duplicate(sequential, tmp_path):
    seen = []

    def stop_after_three(record):
        seen.append(record["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt  # the driver dies mid-run; Ray shuts down with it

    with pytest.raises(KeyboardInterrupt):
        factories.run_spec(CONFIG, tmp_path, progress=False, executor="ray", cpus_per_trial=1, on_record=stop_after_three)
    first = {r["key"] for r in load_records(tmp_path)}
    again = []
    factories.run_spec(CONFIG, tmp_path, progress=False, executor="ray", cpus_per_trial=1, on_record=again.append)
    records = load_records(tmp_path)
    assert first <= {r["key"] for r in records} and not first & {r["key"] for r in again}
    assert len(records) == len({r["key"] for r in records}) == len(sequential)


def test_user_callbacks_give_the_same_records_through_ray(tmp_path):
    """The segmentation example's own finetune / evaluate (methods of a plain object) travel to Ray's
    workers; the records match the sequential run's, one thread per job either way."""
    import importlib.util

    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "segmentation.py"
    spec = importlib.util.spec_from_file_location("segmentation_example", example)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fast = {"candidates": 4, "baselines": ("global_magnitude",), "epochs": 1, "progress": False, "cpus_per_trial": 1}
    sequential = module.main(str(tmp_path / "sequential"), **fast).records
    on_ray = module.main(str(tmp_path / "ray"), executor="ray", **fast).records
    assert _metrics(on_ray) == _metrics(sequential)
