"""``mm-prune``: plan, run, sensitivity, demo, select (and the adapters' subcommands).

User mistakes end with one line naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, MMError, UnsupportedModelError
from .planning.sensitivity import DEFAULT_BATCHES, DEFAULT_GRID
from .portfolio import pattern_names
from .portfolio.config import PICKS, SAMPLERS
from .registry import Registry

log = logging.getLogger("mm_plugin")

#: Subcommands of adapters: ``add_cli(subparsers)`` functions in the ``mm_plugin.cli`` entry-point group.
COMMANDS: Registry = Registry("subcommand", entry_point_group="mm_plugin.cli")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as JSON where it is (``16``, ``null``, ``true``) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def example_input(model: torch.nn.Module, input_size: tuple[int, ...] | None) -> torch.Tensor:
    """One example batch: ``--input-size`` or the timm model's own default input size."""
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = tuple(cfg.get("input_size", ()))
    if not input_size:
        raise MMError("cannot tell the model's input size: pass --input-size C,H,W (e.g. 3,224,224)")
    return torch.randn(1, *input_size)


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planning import plan
    from .training import create_model, load_data, load_weights

    model = create_model(args.model)
    model = load_weights(model, args.weights) if args.weights else model
    calibration = None
    if args.data:
        data = load_data(args.data, batch_size=args.batch_size)
        calibration = data.calibration(args.calibration_batches)
        x = next(iter(data.val))[0][:1]
    else:
        x = example_input(model, args.input_size)
    try:
        p = plan(model, x, signal=args.signal, calibration=calibration, rules=args.rules,
                 targets=args.range_targets, allocations=args.allocations, range_mode=args.range_mode,
                 samples=args.samples, seed=args.seed)
    except UnsupportedModelError as e:
        if args.input_size is None or not e.module:
            raise
        raise ConfigError(f"--input-size {','.join(map(str, args.input_size))} does not fit {args.model}: {e}; "
                          "give the C,H,W the model takes") from None
    print(p.table(max_rows=args.max_rows))
    if args.out:
        print(f"\nplan written to {p.save(args.out)}")
    return 0


def _run_config(args: argparse.Namespace):
    """The command line's strings: the task they name (resolved to objects later) and the run's settings."""
    from .portfolio import RunConfig, TaskSpec

    spec = TaskSpec(model=args.model, data=args.data, weights=args.weights, input_size=args.input_size, lr=args.lr,
                    batch_size=args.batch_size, dense_epochs=args.dense_epochs)
    config = RunConfig(
        signals=args.signals, strategies=args.strategies or None, baselines=args.baselines, targets=args.targets,
        epochs=args.epochs, seeds=args.seeds, rules=args.rules, sparsity=args.sparsity, budget=args.budget,
        candidates=args.candidates, sampler=args.sampler, pick=args.pick, samples=args.samples,
        reconstruct=args.reconstruct, sensitivity=args.sensitivity, sensitivity_grid=args.sensitivity_grid,
        sensitivity_batches=args.sensitivity_batches, pattern_options=dict(args.pattern_option),
    )
    return spec, config


def _print_result(result) -> None:
    print(f"\n{len(result.records)} runs, {len(result.front)} on the Pareto front")
    print(f"report: {result.report}\nplot:   {result.plot}")


def _cmd_run(args: argparse.Namespace) -> int:
    from .portfolio import resolve_task, run

    spec, config = _run_config(args)  # every setting checked before any data or model is loaded
    result = run(partial(resolve_task, spec, args.out, cache_dir=args.cache_dir), config, args.out,
                 keep_checkpoints=args.keep_checkpoints, force_new=args.force_new,
                 command="mm-prune " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                 executor=args.executor, address=args.address, cpus_per_trial=args.cpus_per_trial)
    _print_result(result)
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from .portfolio import resolve_task, sensitivity_report

    spec, config = _run_config(args)
    measured, png = sensitivity_report(resolve_task(spec, args.out, cache_dir=args.cache_dir), config, args.out)
    print(measured.table(max_rows=args.max_rows))
    print(f"\nmeasurement: {Path(args.out) / 'sensitivity.json'}\nplot:        {png}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    for result in run_demo(Path(args.out), quick=args.quick, cache_dir=args.cache_dir, seeds=args.seeds):
        _print_result(result)  # the demo's own report and plot follow
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .portfolio import export_selected, select

    pick, record = select(args.run_dir, min_score=args.min_score, max_nonzeros=args.max_nonzeros,
                          max_latency=args.max_latency)
    print(f"selected {pick.method} {pick.signal}/{pick.name}: sparsity {100 * pick.sparsity:.2f} %, "
          f"{pick.nonzeros:,.0f} non-zeros, " + (f"latency {pick.latency_ratio:.2f}x dense, " if pick.timed else "")
          + f"val {100 * pick.val:.2f} %, test {100 * pick.test:.2f} % "
          f"(mean of {pick.n} seeds; exporting seed {record['seed']})")
    dest = export_selected(args.run_dir, record, args.export or Path(args.run_dir) / "selected.pt")
    print(f"exported to {dest}")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signals", type=_csv, default=("magnitude",), help="comma-separated: magnitude,gradient,product")
    p.add_argument("--strategies", type=_csv, default=(), help="comma-separated strategy names (default: all ten)")
    p.add_argument("--baselines", type=_csv, default=None,
                   help="default: global_magnitude,lamp,erk (structured: tp_uniform,tp_global)")
    p.add_argument("--targets", type=_floats, default=None,
                   help="global sparsities to rescale every strategy to (default: each at its own sparsity); "
                        "structured: fractions of multiply-adds removed (default 0.2,0.4)")
    p.add_argument("--epochs", type=float, default=2, help="fine-tuning epochs, the same for every method "
                                                             "(a fraction of an epoch is allowed)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seeds", type=_ints, default=(0,))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rules", help="rules file (.json/.yaml) added to the defaults")
    p.add_argument("--dense-epochs", type=int, default=None, help="train the model first (models not built in)")
    p.add_argument("--sparsity", choices=pattern_names(), default="unstructured",
                   help="unstructured masks; flexhinm: FlexHiNM-GP's hybrid dense / 2:4 / vector-pruned masks, the "
                        "2:4 choices learned while fine-tuning; hybrid: the same masks fixed (cheaper); "
                        "structured: Torch-Pruning removes channels, timed with OpenVINO on the CPU")
    p.add_argument("--pattern-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="flexhinm / hybrid: a FlexHiNMConfig field, e.g. tile_rows=16 or permutation=gyro (repeatable)")
    p.add_argument("--budget", type=float, default=None,
                   help="search the ranges for the best allocation per target, spending this many full fine-tunes "
                        "(one-shot scores for many candidates, short fine-tunes for the best, full ones for the rest)")
    p.add_argument("--candidates", type=int, default=24, help="the search's one-shot candidates per target and seed")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="the search's proposals after the usual allocations and the named strategies: Optuna's TPE, "
                        "or EvoPress-style level switches selected on calibration losses (unstructured)")
    p.add_argument("--pick", choices=PICKS, default="score",
                   help="the search's final pick among its finalists: the best validation score, the lowest "
                        "validation loss, or 'paired': the best usual allocation (LAMP, ERK, ... as they are) "
                        "unless a challenger beats it on the validation samples beyond McNemar's test "
                        "(--budget 4 or more; measured at least as good as 'score' on every unstructured "
                        "testbed, see docs/getting-started.md)")
    p.add_argument("--samples", type=int, default=0,
                   help="without --budget: fine-tune this many strategies sampled in the ranges, beside the named ones")
    p.add_argument("--reconstruct", action="store_true",
                   help="after pruning, re-solve the kept weights so every layer's output on the calibration batches "
                        "stays close to the dense model's (least squares; the masks do not change)")
    p.add_argument("--sensitivity", action="store_true",
                   help="measure each unit's sensitivity first (pruned alone at --sensitivity-grid, scored by validation "
                        "loss; cached in the run folder): the measured allocation joins the ranges and rules with "
                        "measured limits follow it (docs/rules.md)")
    p.add_argument("--sensitivity-grid", type=_floats, default=DEFAULT_GRID, metavar="S,S,...",
                   help="the sparsities each unit is measured at")
    p.add_argument("--sensitivity-batches", type=int, default=DEFAULT_BATCHES, help="validation batches per measurement")
    p.add_argument("--executor", choices=("sequential", "ray"), default="sequential",
                   help="ray: every job a Ray task, on a local Ray or the cluster at --address (pip extra 'ray')")
    p.add_argument("--address", default=None, help="with --executor ray: the cluster to join (e.g. HEAD:6379)")
    p.add_argument("--cpus-per-trial", type=int, default=None,
                   help="CPUs per job (Ray task) and torch threads per job; default: this process's threads (sequential), 1 (ray)")
    p.add_argument("--keep-checkpoints", choices=("front", "all"), default="front")
    p.add_argument("--force-new", action="store_true",
                   help="the folder holds results made with other settings: archive them in previous-<time>/ and start again")
    p.add_argument("--cache-dir", help="where trained demo models are cached (default $MM_PLUGIN_CACHE or ~/.cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm-prune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="derive ranges and the ten strategies; print and save them")
    p.add_argument("--model", required=True, help="timm:<name>, torchvision:<name>, package.module:function or a "
                                                  "built-in name")
    p.add_argument("--weights", help="the model's trained weights (a state dict, .safetensors, or a pickled model)")
    p.add_argument("--signal", default="magnitude")
    p.add_argument("--out", help="plan JSON to write")
    p.add_argument("--input-size", type=_ints, help="C,H,W of one input (default: the timm model's own)")
    p.add_argument("--data", help="dataset for gradient signals (built-in name or package.module:function)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--rules", help="rules file (.json/.yaml) added to the defaults")
    p.add_argument("--range-targets", type=_floats, default=(0.7, 0.8, 0.9))
    p.add_argument("--allocations", type=_csv, default=None)
    p.add_argument("--range-mode", choices=("allocations", "signal"), default="allocations")
    p.add_argument("--samples", type=int, default=0, help="add K strategies sampled uniformly in the ranges")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=40)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("run", help="prune, fine-tune and evaluate every strategy and baseline")
    p.add_argument("--model", required=True, help="timm:<name>, torchvision:<name>, package.module:function or a "
                                                  "built-in name")
    p.add_argument("--weights", help="the model's trained weights: a state dict (.pt/.pth/.bin, or a training "
                                     "checkpoint holding one), .safetensors, or a whole pickled model")
    p.add_argument("--data", default=None,
                   help="an image folder (train/ val/ test/ class folders, or one class-folder tree, split here), a "
                        "CSV of path,label[,split], a built-in name or package.module:function; required unless "
                        "--model is a built-in model (which knows its data)")
    p.add_argument("--input-size", type=_ints, help="image data: C,H,W to feed the model (default: its own)")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    _add_run_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sensitivity", help="each unit pruned alone at a grid of sparsities: the loss table and "
                                           "a plot of the curves (what --sensitivity plans with)")
    p.add_argument("--model", required=True, help="as for run")
    p.add_argument("--weights", help="as for run")
    p.add_argument("--data", default=None, help="as for run")
    p.add_argument("--input-size", type=_ints, help="as for run")
    p.add_argument("--out", required=True, help="folder for sensitivity.json and sensitivity.png (a run folder: "
                                                "mm-prune run --sensitivity there reads the measurement back)")
    p.add_argument("--max-rows", type=int, default=60)
    _add_run_args(p)
    p.set_defaults(func=_cmd_sensitivity)

    p = sub.add_parser("demo", help="EfficientNet-Lite0 finding defective solar cells (ELPV), pruned for an edge CPU: "
                                    "the search against the usual allocations, then fp32 and int8 OpenVINO files")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="the MNIST ResNet-8 instead (about two minutes)")
    p.add_argument("--seeds", type=_ints, default=(0,))
    p.add_argument("--cache-dir")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("select", help="pick the front member that meets a budget and export it")
    p.add_argument("run_dir")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--min-score", type=float, help="validation score (accuracy: a fraction in [0, 1])")
    g.add_argument("--max-nonzeros", type=int)
    g.add_argument("--max-latency", type=float, help="structured runs: measured latency as a fraction of dense")
    p.add_argument("--export", help="where to copy the checkpoint (default RUN_DIR/selected.pt)")
    p.set_defaults(func=_cmd_select)

    for name in COMMANDS.names():
        try:
            COMMANDS.get(name)(sub)
        except MMError as e:  # the toolkit is an optional extra: the subcommand stays, and says why it cannot run
            why = str(e)
            stub = sub.add_parser(name, help=f"unavailable: {why}", add_help=False)
            stub.set_defaults(func=lambda args, name=name, why=why: _unavailable(name, why))
    return parser


def _unavailable(name: str, why: str) -> int:
    raise ConfigError(f"mm-prune {name} cannot run here: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MMError as e:
        if args.debug:
            raise
        print(f"mm-prune: error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError, TypeError) as e:  # not a mistake we foresaw: one line, and how to see more
        if args.debug:
            raise
        print(f"mm-prune: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mm-prune: interrupted; finished runs are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
