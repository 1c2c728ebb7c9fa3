"""``mm-prune nncf --config cfg.json --model timm:<name> --out DIR``: the same config from the command line.
``mm-prune nncf --list-scopes MODEL`` prints the node names ``ignored_scopes`` / ``target_scopes`` can use.

Every mistake ends in one line (an ``MMError`` naming the JSON path, file or flag); the command never
trains, so an NNCF 2.x schedule's final level is applied at once.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from mm_plugin.errors import ConfigError
from mm_plugin.files import write_atomic, write_json_atomic
from mm_plugin.training import create_model, load_data

from .config import load_config
from .create import check_calibration, check_inputs, create_compressed_model
from .scopes import scope_table
from .wrapping import (
    build_graph,
    check_model,
    hook_storage,
    require_nncf,
    unwrap_model,
    weight_metatypes,
    wrap,
)

log = logging.getLogger(__name__)

CLI_CALIBRATION = ("--data DATASET (a built-in dataset name, or package.module:function returning its loaders) with "
                   "--calibration-batches N")


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nncf`` on ``mm-prune``'s subcommands (the ``mm_plugin.cli`` entry point)."""
    p = subparsers.add_parser(
        "nncf", help="Mix-and-Match from an NNCF-style JSON config, through NNCF 3.4, to OpenVINO IR",
        description="Prune (and optionally int8-quantize) a model from an NNCF-style config, write the "
                    "statistics, an NNCF checkpoint and the OpenVINO IR, and check the IR's zeros. NNCF 2.x "
                    "configs run once their algorithm is renamed mix_and_match (docs/nncf.md).",
    )
    p.add_argument("--config", help="JSON config file, comments allowed (see docs/nncf.md)")
    p.add_argument("--model", help="timm:<name>, package.module:function or a built-in name")
    p.add_argument("--out", help="output folder")
    p.add_argument("--list-scopes", metavar="MODEL",
                   help="print MODEL's NNCF graph nodes (the names ignored_scopes can use), their op types and "
                        "NNCF 2.x names, then exit; inputs from --config's input_info, else 1x3x224x224 "
                        "(--in-chans, --img-size)")
    for flag in ("--num-classes", "--in-chans", "--img-size"):
        p.add_argument(flag, type=int, default=None, help="passed to the model factory when given")
    p.add_argument("--data", default=None, help="dataset for calibration (built-in name or package.module:function); "
                                                "needed by gradient signals and quantization")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches used for calibration")
    p.add_argument("--fp16", action="store_true", help="compress the IR's float weights to FP16")
    p.add_argument("--no-export", action="store_true", help="stop after the statistics and checkpoint")
    p.set_defaults(func=run_cli)
    return p


def _model(spec: str, args: argparse.Namespace) -> torch.nn.Module:
    return create_model(spec, num_classes=args.num_classes, in_chans=args.in_chans, img_size=args.img_size)


def list_scopes(args: argparse.Namespace) -> int:
    """Print the node table of ``--list-scopes MODEL`` (the model is wrapped only for the listing)."""
    require_nncf()
    model = _model(args.list_scopes, args).eval()
    check_model(model)
    if args.config:
        cfg = load_config(args.config)
        inputs = cfg.example_inputs("cpu", model.forward)
        check_inputs(model, inputs, cfg, given=False)
    else:
        inputs = torch.ones(1, args.in_chans or 3, args.img_size or 224, args.img_size or 224)
    graph = build_graph(wrap(model), inputs)
    print(scope_table(model, graph, weight_metatypes(graph)))
    unwrap_model(model)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    if args.list_scopes:
        return list_scopes(args)
    missing = [f"--{name}" for name in ("config", "model", "out") if not getattr(args, name)]
    if missing:
        raise ConfigError(f"mm-prune nncf: {', '.join(missing)} missing; give --config, --model and --out (or "
                          "--list-scopes MODEL)")
    import nncf.torch

    cfg = load_config(args.config)  # every config mistake before the model and data are built
    if args.data is None:
        check_calibration(cfg, None, CLI_CALIBRATION)
    calibration = load_data(args.data).calibration(args.calibration_batches) if args.data else None
    model = _model(args.model, args)
    t = time.perf_counter()
    ctrl, model = create_compressed_model(model, cfg, calibration=calibration, final_level=True)
    if ctrl.schedule is not None:
        log.warning("mm-prune nncf does not train: the schedule's final level %g is applied (a training loop starts "
                 "at %g and drives ctrl.scheduler)", ctrl.schedule.final_level, ctrl.schedule.sparsity_at(-1))
    if "accuracy_aware_training" in ctrl.config.raw:
        log.warning("mm-prune nncf does not train: accuracy_aware_training is run by create_accuracy_aware_training_loop "
                    "in a training script (docs/nncf.md); the config's target is applied")
    if ctrl.learning is not None:
        log.warning("mm-prune nncf does not train: the flexhinm step's gates keep their first 2:4 choices (a training "
                 "loop drives ctrl.scheduler for %d steps to learn them)", ctrl.learning.total_steps)
        ctrl.harden()
    out = Path(args.out)
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict(), "config": ctrl.config.raw}
    if hook_storage(model) is not None:
        checkpoint["nncf_config"] = nncf.torch.get_config(model)
    if ctrl.channels is not None:  # Torch-Pruning's own format: load_pruned rebuilds the narrower layers
        checkpoint["structured"] = ctrl.channels.checkpoint
    summary: dict[str, Any] = {"model": args.model, "config": ctrl.config.raw, "notes": [str(n) for n in ctrl.notes]}
    try:
        write_atomic(out / "checkpoint.pt", lambda f: torch.save(checkpoint, f))
        if ctrl.plan is not None:
            stats = ctrl.statistics()
            print(stats.to_str(max_rows=40))
            summary["statistics"] = stats.to_dict()
            summary["schedule"] = ctrl.schedule.to_dict() if ctrl.schedule is not None else None
            ctrl.plan.save(out / "plan.json")
        if not args.no_export:
            report = ctrl.export(out / "model.xml", compress_to_fp16=args.fp16)
            summary["export"] = report.to_dict()
            print(f"IR: {report.path} ({'exact' if report.exact else 'planned zeros kept'}; "
                  f"{sum(m.ir_zeros or 0 for m in report.matches):,} zeros in the planned weights' Constants, "
                  f"{sum(m.expected_zeros for m in report.matches):,} planned)")
        summary["seconds"] = {**ctrl.seconds, "total": time.perf_counter() - t}
        print(f"wrote {write_json_atomic(out / 'summary.json', summary)}")
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return 0
