"""Time from an NNCF-style config to a saved OpenVINO IR, beside plain ``nncf.prune`` + export.

Both paths start from the same random-init timm model (no downloads) and end with an IR on disk:

* ``mix_and_match``: ``create_compressed_model(model, config)`` (NNCF graph, Mix-and-Match plan,
  masks as NNCF hooks) then ``controller.export(path)`` (``nncf.strip`` IN_PLACE, unwrap,
  ``openvino.convert_model``, ``save_model``, zeros per Constant checked against the plan);
* ``nncf_prune``: ``nncf.prune(model, UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=target)``, ``nncf.strip``
  IN_PLACE, unwrap, ``openvino.convert_model``, ``save_model``, zeros counted the same way.

Usage::

    python benchmarks/nncf_export.py --model swin_tiny_patch4_window7_224 --out docs/results/nncf_export.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _versions() -> dict[str, str]:
    import nncf
    import openvino
    import timm

    return {"torch": torch.__version__, "nncf": nncf.__version__, "openvino": openvino.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def make_model(name: str, seed: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).eval()


def run_mix_and_match(name: str, shape: list[int], target: float, strategy: str, seed: int, out: Path) -> dict:
    from mm_plugin.adapters.nncf import create_compressed_model

    config = {"input_info": {"sample_size": shape},
              "compression": {"algorithm": "mix_and_match", "signal": "magnitude", "strategy": strategy,
                              "target_sparsity": target}}
    model = make_model(name, seed)
    cpu, load = time.process_time(), os.getloadavg()[0]
    start = time.perf_counter()
    ctrl, model = create_compressed_model(model, config)
    created = time.perf_counter()
    report = ctrl.export(out / "mix_and_match.xml")
    total = time.perf_counter() - start
    return {
        "config": config,
        "cpu_seconds": time.process_time() - cpu,
        "load_average_1min": [load, os.getloadavg()[0]],
        "seconds": {"total": total, "create_compressed_model": created - start,
                    "export": total - (created - start), **ctrl.seconds, **report.seconds},
        "weights": len(report.matches),
        "planned_zeros": sum(m.expected_zeros for m in report.matches),
        "ir_zeros": sum(m.ir_zeros or 0 for m in report.matches),
        "ir_exact": report.exact,  # IR zeros == planned zeros, Constant by Constant
        "ir_kept": report.kept,  # every planned zero is zero in the IR (BN folding may add zeros)
        "pruning_ratio": ctrl.statistics().pruning_ratio,
    }


def run_nncf_prune(name: str, shape: list[int], target: float, seed: int, out: Path) -> dict:
    import nncf
    from mm_plugin.adapters import openvino as ovh
    from mm_plugin.adapters.nncf import unwrap_model

    from mm_plugin.deploy import match_params

    model = make_model(name, seed)
    x = torch.ones(shape)
    seconds = {}
    cpu, load = time.process_time(), os.getloadavg()[0]
    start = time.perf_counter()
    model = nncf.prune(model, mode=nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=target, examples_inputs=x)
    seconds["prune"] = time.perf_counter() - start
    stat = nncf.pruning_statistic(model)
    t = time.perf_counter()
    model = unwrap_model(nncf.strip(model, do_copy=True, strip_format=nncf.StripFormat.IN_PLACE))
    seconds["strip"] = time.perf_counter() - t
    t = time.perf_counter()
    ov_model = ovh.convert(model, x)
    seconds["convert"] = time.perf_counter() - t
    t = time.perf_counter()
    xml = ovh.save(ov_model, out / "nncf_prune.xml")
    seconds["save"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    cpu, load = time.process_time() - cpu, [load, os.getloadavg()[0]]
    pruned = {t.tensor_name for t in stat.pruned_tensors}
    zero_masks = {n: (model.get_parameter(n) == 0) for n in pruned}
    matches = match_params(ovh.weight_constants(xml), zero_masks)  # not timed: a check, as above
    return {
        "cpu_seconds": cpu,
        "load_average_1min": load,
        "seconds": seconds,
        "weights": len(pruned),
        "planned_zeros": int(sum(int(m.sum()) for m in zero_masks.values())),
        "ir_zeros": sum(m.ir_zeros or 0 for m in matches),
        "ir_exact": all(m.exact for m in matches),
        "ir_kept": all(m.kept for m in matches),
        "pruning_ratio": stat.pruning_ratio,
    }


def _warm_up_converter() -> None:
    """Load OpenVINO's PyTorch frontend once so neither path pays its import cost."""
    from mm_plugin.adapters import openvino as ovh

    ovh.convert(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.ones(1, 4))


PATHS = ("mix_and_match", "nncf_prune")


def _single(args: argparse.Namespace) -> dict:
    """One run of one path in this (fresh) process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    _warm_up_converter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.single == "mix_and_match":
            return run_mix_and_match(args.model, args.input_size, args.target, args.strategy, args.seed, Path(tmp))
        return run_nncf_prune(args.model, args.input_size, args.target, args.seed, Path(tmp))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="swin_tiny_patch4_window7_224", help="timm model name (random init)")
    p.add_argument("--input-size", type=int, nargs="+", default=[1, 3, 224, 224])
    p.add_argument("--target", type=float, default=0.5, help="global sparsity of both paths")
    p.add_argument("--strategy", default="balanced", help="Mix-and-Match strategy, rescaled to --target")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each path, alternating, each in a fresh process; median and minimum reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON here as well as printing it")
    p.add_argument("--single", choices=PATHS, default=None, help=argparse.SUPPRESS)  # internal: one run
    args = p.parse_args(argv)
    if args.single:
        print(json.dumps(_single(args), default=float))
        return {}
    common = ["--model", args.model, "--input-size", *map(str, args.input_size), "--target", str(args.target),
              "--strategy", args.strategy, "--seed", str(args.seed)]
    common += ["--threads", str(args.threads)] if args.threads else []
    runs: dict[str, list[dict]] = {k: [] for k in PATHS}
    for _ in range(args.repeats):
        for path in PATHS:
            command = [sys.executable, __file__, "--single", path, *common]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"{path} run failed (exit {done.returncode})")
            runs[path].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{path}: {runs[path][-1]['seconds']['total']:.1f} s", file=sys.stderr)
    median = {k: statistics.median(r["seconds"]["total"] for r in v) for k, v in runs.items()}
    median_cpu = {k: statistics.median(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    best = {k: min(r["seconds"]["total"] for r in v) for k, v in runs.items()}  # least disturbed by other load
    result = {
        "benchmark": "config -> saved OpenVINO IR (each run in a fresh process; model creation not timed)",
        "model": args.model,
        "input_size": args.input_size,
        "target_sparsity": args.target,
        "strategy": args.strategy,
        "repeats": args.repeats,
        "median_total_seconds": median,
        "ratio_mix_and_match_over_nncf_prune": median["mix_and_match"] / median["nncf_prune"],
        "min_total_seconds": best,
        "ratio_of_minimums": best["mix_and_match"] / best["nncf_prune"],
        "median_cpu_seconds": median_cpu,
        "cpu_ratio_mix_and_match_over_nncf_prune": median_cpu["mix_and_match"] / median_cpu["nncf_prune"],
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine()},
        "versions": _versions(),
        "command": " ".join(["python", *sys.argv]),
    }
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
