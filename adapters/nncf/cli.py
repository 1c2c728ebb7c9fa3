"""``mm-prune nncf --config cfg.json --model timm:<name> --out DIR``: the same config from the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from mm_plugin.files import write_atomic, write_json_atomic
from mm_plugin.training import create_model, load_data

from .algorithm import create_compressed_model


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nncf`` on ``mm-prune``'s subcommands (the ``mm_plugin.cli`` entry point)."""
    p = subparsers.add_parser(
        "nncf", help="Mix-and-Match from an NNCF-style JSON config, through NNCF 3.4, to OpenVINO IR",
        description="Prune (and optionally int8-quantize) a model from an NNCF-style config, write the "
                    "statistics, an NNCF checkpoint and the OpenVINO IR, and check the IR's zeros.",
    )
    p.add_argument("--config", required=True, help="JSON config file (see docs/nncf.md)")
    p.add_argument("--model", required=True, help="timm:<name>, package.module:function or a built-in name")
    p.add_argument("--out", required=True, help="output folder")
    for flag in ("--num-classes", "--in-chans", "--img-size"):
        p.add_argument(flag, type=int, default=None, help="passed to the model factory when given")
    p.add_argument("--data", default=None, help="dataset for calibration (built-in name or package.module:function); "
                                                "needed by gradient signals and quantization")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches used for calibration")
    p.add_argument("--fp16", action="store_true", help="compress the IR's float weights to FP16")
    p.add_argument("--no-export", action="store_true", help="stop after the statistics and checkpoint")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    import nncf.torch

    calibration = load_data(args.data).calibration(args.calibration_batches) if args.data else None
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, img_size=args.img_size)
    t = time.perf_counter()
    ctrl, model = create_compressed_model(model, args.config, calibration=calibration)
    out = Path(args.out)
    checkpoint = {"state_dict": model.state_dict(), "nncf_config": nncf.torch.get_config(model),
                  "config": ctrl.config.raw}
    write_atomic(out / "checkpoint.pt", lambda f: torch.save(checkpoint, f))
    summary: dict[str, Any] = {"model": args.model, "config": ctrl.config.raw}
    if ctrl.plan is not None:
        stats = ctrl.statistics()
        print(stats.to_str(max_rows=40))
        summary["statistics"] = stats.to_dict()
        ctrl.plan.save(out / "plan.json")
    if not args.no_export:
        report = ctrl.export(out / "model.xml", compress_to_fp16=args.fp16)
        summary["export"] = report.to_dict()
        print(f"IR: {report.path} ({'exact' if report.exact else 'planned zeros kept'}; "
              f"{sum(m.ir_zeros or 0 for m in report.matches):,} zeros in the planned weights' Constants, "
              f"{sum(m.expected_zeros for m in report.matches):,} planned)")
    summary["seconds"] = {**ctrl.seconds, "total": time.perf_counter() - t}
    print(f"wrote {write_json_atomic(out / 'summary.json', summary)}")
    return 0
