"""Wall-clock of one portfolio on a local Ray with one worker (2 CPUs per job) and with two (1 CPU per job),
on this machine. Run it on an otherwise idle machine: every other process takes cores from the workers.

    python benchmarks/ray_speedup.py --out docs/results/ray
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from mm_plugin.files import write_json_atomic
from mm_plugin.portfolio import RunConfig, TaskSpec, resolve_task, run

PORTFOLIO = RunConfig(targets=(0.9,), baselines=("global_magnitude", "lamp", "erk", "uniform_plus"),
                      epochs=2, budget=4, candidates=12, seeds=(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/ray")
    args = parser.parse_args()
    out = Path(args.out)
    cores = os.cpu_count() or 1
    timings = {}
    for workers in (1, 2):
        folder = out / f"workers-{workers}"
        shutil.rmtree(folder, ignore_errors=True)  # a timing, not a resumable result: always from scratch
        start = time.perf_counter()
        result = run(resolve_task(TaskSpec("resnet8"), folder), PORTFOLIO, folder, executor="ray", cpus_per_trial=cores // workers, progress=False,
                     command=f"python benchmarks/ray_speedup.py --out {out}")
        timings[workers] = {"seconds": round(time.perf_counter() - start, 1), "records": len(result.records),
                            "cpus_per_trial": cores // workers}
    summary = {"cores": cores, "timings": timings,
               "speedup": round(timings[1]["seconds"] / timings[2]["seconds"], 2), "portfolio": PORTFOLIO.to_dict()}
    write_json_atomic(out / "summary.json", summary)
    print(summary)


if __name__ == "__main__":
    main()
