"""Wall time and peak memory of the ten-strategy plan against one ``nncf.prune`` call.

For each model, in one process and interleaved (nncf, plan, nncf, plan, ...), median of --repeats:
* ``nncf.prune(model, UNSTRUCTURED_MAGNITUDE_GLOBAL, ratio=0.5, examples_inputs=x)`` on a fresh copy;
* ``mm_plugin.plan(model, x, signal="magnitude")`` (inventory, nine global allocations, rules, ten strategies).
Peak memory is the process's peak RSS above its RSS before the call, sampled every 5 ms, divided by
the model's fp32 size (max over the timed calls; one untimed call of each comes first). Writes JSON and a markdown table to --out.

    python benchmarks/plan_speed.py --out docs/results/plan_speed
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import threading
import time
from pathlib import Path

import psutil
import timm
import torch

import mm_plugin


def measure(fn) -> tuple[float, int]:
    """(seconds, peak RSS increase in bytes) of ``fn()``."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    stop.set()
    t.join()
    return seconds, max(peak[0], proc.memory_info().rss) - base


def bench(name: str, repeats: int) -> dict:
    import nncf

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    model_bytes = 4 * sum(p.numel() for p in model.parameters())
    nncf_runs, plan_runs = [], []
    # one untimed call of each first: lazy imports and first-call allocations are not the method's cost
    nncf.prune(copy.deepcopy(model), nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL, ratio=0.5, examples_inputs=x)
    mm_plugin.plan(model, x, signal="magnitude")
    for _ in range(repeats):
        fresh = copy.deepcopy(model)
        nncf_runs.append(measure(lambda: nncf.prune(
            fresh, nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL, ratio=0.5, examples_inputs=x)))
        plan_runs.append(measure(lambda: mm_plugin.plan(model, x, signal="magnitude")))
    n_s = statistics.median(r[0] for r in nncf_runs)
    p_s = statistics.median(r[0] for r in plan_runs)
    return {
        "model": name,
        "params_m": round(model_bytes / 4e6, 1),
        "nncf_prune_s": round(n_s, 2),
        "plan_s": round(p_s, 2),
        "time_ratio": round(p_s / n_s, 2),
        "plan_peak_mem_x_model": round(max(r[1] for r in plan_runs) / model_bytes, 2),
        "nncf_peak_mem_x_model": round(max(r[1] for r in nncf_runs) / model_bytes, 2),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="swin_tiny_patch4_window7_224,resnet50,vit_base_patch16_224")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="docs/results/plan_speed")
    args = ap.parse_args()
    rows = [bench(m, args.repeats) for m in args.models.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_speed.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | params (M) | nncf.prune (s) | plan, 10 strategies (s) | time ratio | plan peak memory / model | nncf peak memory / model |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params_m']} | {r['nncf_prune_s']} | {r['plan_s']} | {r['time_ratio']} | "
              f"{r['plan_peak_mem_x_model']} | {r['nncf_peak_mem_x_model']} |" for r in rows]
    (out / "plan_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
