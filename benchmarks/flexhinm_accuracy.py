"""FlexHiNM-GP against the same hybrid pattern without its learning parts, and against unstructured.

At one sparsity on every layer that can carry the hybrid pattern, for each demo model, budget (epochs)
and seed, with the same BatchNorm re-estimation after pruning (as ``mm-prune run`` does) and the same fine-tuning
(AdamW, lr, cosine, epochs) for every method:

* ``unstructured``: one-shot magnitude masks per layer, fixed during fine-tuning;
* ``hybrid-oneshot``: the FlexHiNM hybrid pattern (dense / 2:4 / vector-pruned) from one-shot magnitude,
  no permutation, fixed during fine-tuning (HiNM-style structured baseline);
* ``hybrid-random`` (a control, run only when named): the same pattern with the vectors ranked at random
  (each row still keeps its magnitude 2:4 choice), so the table shows what the choice of vectors is worth;
* ``flexhinm-gp``: Gyro-Permutation folded into the model, then the 2:4 choices learned during
  fine-tuning (:class:`~mm_plugin.flexhinm.GradualFlexHiNM`, default :class:`GradualConfig`), hardened
  to exact 2:4 at the end;
* ``flexhinm-gp-noperm``: the same without the permutation (the permutation's own effect);
* any ``--variant NAME=JSON`` adds ``NAME``: FlexHiNM-GP with those :class:`GradualConfig` fields
  (``"permutation"`` in the JSON sets the permutation), for ablations.

``--reconstruct`` gives every method the same extra step right after pruning: the kept weights re-solved
by least squares on 8 calibration batches (:func:`mm_plugin.masks.reconstruct_`; the masks do not change).

Every finished run is written atomically to ``<out>/runs/`` and reused by a rerun with the same settings
(``resume.py``: a run made with other settings stops the benchmark); the table
(``flexhinm_accuracy.md``) and all records (``flexhinm_accuracy.json``) are rebuilt from the run files.
Settings are picked on validation accuracy; the table reports test accuracy. Every method keeps the same
checkpoint (``--keep``: its best epoch on validation, epoch 0 included, or its last): a learned schedule
without a sparsity ramp evaluates its current exact 2:4 choice at every epoch, so any of its checkpoints is
a valid result; one with a ramp keeps its last (``finetune`` enforces it).

The commands behind the published tables are in ``docs/results/flexhinm.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from resume import load_or_make

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.flexhinm import (
    FlexHiNMConfig,
    GradualConfig,
    GradualFlexHiNM,
    flexhinm_sparsify_,
    hybrid_partition,
    validate_nm,
)
from mm_plugin.flexhinm.gates import top2
from mm_plugin.flexhinm.layout import M, as_rows, from_rows, row_tile_ids
from mm_plugin.flexhinm.partition import vector_values
from mm_plugin.masks import global_sparsity, measure_sparsity, prune_
from mm_plugin.metrics import mcnemar
from mm_plugin.model.inventory import inventory
from mm_plugin.portfolio.task import ClassificationEvaluate
from mm_plugin.training import evaluate, finetune, reestimate_bn_
from mm_plugin.training.data import load_data
from mm_plugin.training.zoo import pretrained_demo_model

METHODS = ("unstructured", "hybrid-oneshot", "flexhinm-gp", "flexhinm-gp-noperm")
CONTROLS = ("hybrid-random",)
LABELS = {"unstructured": "unstructured", "hybrid-oneshot": "hybrid one-shot", "flexhinm-gp": "FlexHiNM-GP",
          "flexhinm-gp-noperm": "FlexHiNM-GP, no perm.", "hybrid-random": "hybrid, random vectors"}


def eligible_targets(model: torch.nn.Module, x: torch.Tensor, target: float) -> dict[str, float]:
    """Every layer the hybrid pattern can hold (FlexHiNM's own check), at ``target``."""
    probe = copy.deepcopy(model)
    names = inventory(probe, x).names
    result = flexhinm_sparsify_(probe, {n: target for n in names}, FlexHiNMConfig(permutation="none"))
    return {n: target for n in names if n not in result.skipped}


def method_settings(method: str, variants: dict[str, dict]) -> tuple[str, GradualConfig] | None:
    """Permutation and schedule of a learned method; None for the one-shot ones."""
    if method in ("unstructured", "hybrid-oneshot", *CONTROLS):
        return None
    if method in ("flexhinm-gp", "flexhinm-gp-noperm"):
        return ("none" if method.endswith("noperm") else "gyro"), GradualConfig()
    fields = dict(variants[method])
    permutation = fields.pop("permutation", "gyro")
    return permutation, GradualConfig.from_dict(fields)


def learned_settings(method: str, variants: dict[str, dict]) -> dict | None:
    """What a learned method's numbers depend on beyond its name: permutation and schedule (None: one-shot)."""
    learned = method_settings(method, variants)
    return None if learned is None else {"permutation": learned[0], "schedule": learned[1].to_dict()}


def legacy_setting(record: dict, key: str):
    """A setting of a record written before records stored their settings."""
    if key == "learned":  # a GradualConfig field added since reads as its default
        default = json.loads(json.dumps(GradualConfig().to_dict()))
        return {"permutation": record["permutation"], "schedule": {**default, **record["schedule"]}} \
            if "schedule" in record else None
    return record.get(key, {"reconstruct": False, "keep": "best"}.get(key))


def random_vector_scores(model: torch.nn.Module, targets: dict[str, float], seed: int) -> dict[str, torch.Tensor]:
    """Scores under which the partition ranks the vectors at random and each row keeps its magnitude 2:4
    choice: ``|w|`` of each row's top 2 of 4, rescaled so that each vector's value is a uniform random
    number. The other two weights score 0, so no vector is worth more dense than 2:4 and the split is the
    least vector pruning the target allows; a layer where magnitude splits otherwise stops the run."""
    gen = torch.Generator().manual_seed(seed)
    tile_rows = FlexHiNMConfig().tile_rows
    out = {}
    for name, target in targets.items():
        magnitude = model.get_parameter(name).detach().abs().float()
        w = magnitude * top2(magnitude)
        tile_ids, n_tiles = row_tile_ids(tuple(w.shape), tile_rows)
        _, nm = vector_values(w, tile_ids, n_tiles)  # (row tiles, groups)
        factor = torch.rand(nm.shape, generator=gen) / nm.clamp_min(1e-12)
        out[name] = from_rows(as_rows(w) * factor[tile_ids].repeat_interleave(M, dim=1), tuple(w.shape))
        mine, theirs = (hybrid_partition(x, target, tile_rows).counts for x in (out[name], magnitude))
        if mine != theirs:
            raise SystemExit(f"hybrid-random: {name} would split {mine}, magnitude splits {theirs}; the control "
                             f"only compares which vectors go at the same split")
    return out


def run_one(method: str, dense, data, x, targets, seed: int, epochs: int, lr: float,
            variants: dict[str, dict], calibration: list | None, keep: str) -> tuple[dict, torch.nn.Module]:
    """Prune a copy of ``dense`` with ``method``, fine-tune it, harden it: its record and the model."""
    model = copy.deepcopy(dense)
    hooks: tuple = ()
    learned = method_settings(method, variants)
    start = time.perf_counter()
    if method == "unstructured":
        prune_(model, targets, signal="magnitude", calibration=calibration, reconstruct=calibration is not None)
    elif method == "hybrid-oneshot":
        flexhinm_sparsify_(model, targets, FlexHiNMConfig(permutation="none", seed=seed), calibration=calibration)
    elif method == "hybrid-random":
        flexhinm_sparsify_(model, targets, FlexHiNMConfig(permutation="none", seed=seed),
                           scores=random_vector_scores(model, targets, seed), calibration=calibration)
    else:
        permutation, schedule = learned
        sched = GradualFlexHiNM(model, targets, FlexHiNMConfig(permutation=permutation, seed=seed),
                                total_steps=epochs * len(data.train), schedule=schedule, example_inputs=(x,),
                                probe=lambda m: evaluate(m, data.val), calibration=calibration)
        hooks = (sched,)
    torch.manual_seed(seed)
    reestimate_bn_(model, data.calibration(4))  # as the runner does: pruning shifts every activation's statistics
    oneshot = evaluate(model, data.val)
    ft = finetune(model, data.train, data.val, epochs=epochs, lr=lr, patience=None, seed=seed, progress=False,
                  hooks=hooks, keep=keep)
    record: dict = {}
    if hooks:
        pre_harden = evaluate(model, data.val)
        regions = hooks[0].nm_regions
        hooks[0].harden_()
        record = {"schedule": learned[1].to_dict(), "permutation": learned[0],
                  "val_before_harden": pre_harden, "nm_valid": validate_nm(model, regions=regions).ok}
    report = measure_sparsity(model, list(targets))
    test = ClassificationEvaluate(data)(model, "test")
    return {"method": method, "seed": seed, "epochs": epochs, "sparsity": global_sparsity(report),
            "oneshot_val": oneshot, "val": evaluate(model, data.val), "test": test["score"],
            "test_macro_f1": test["macro_f1"], "test_correct": test["correct"],
            "history": ft.history, "seconds": round(time.perf_counter() - start, 1), **record}, model


def cell(rs: list[dict], seeds: list[int]) -> str:
    """Mean ± std test accuracy; a cell with fewer seeds than its row names them, so no mean passes for
    another's."""
    if not rs:
        return ""
    tests = [100 * r["test"] for r in rs]
    if len(tests) == 1:
        return f"{tests[0]:.2f} (seed {rs[0]['seed']})"
    own = sorted(r["seed"] for r in rs)
    note = f" (seeds {','.join(map(str, own))})" if own != seeds else ""
    return f"{statistics.mean(tests):.2f} ± {statistics.stdev(tests):.2f}{note}"


def paired(a: list[dict], b: list[dict]) -> str:
    """Mean ± standard error of the per-seed test differences ``a - b`` (points): both methods share the
    seed's split and fine-tuning order, so the pairing removes what the seed does to both."""
    tb = {r["seed"]: r["test"] for r in b}
    diffs = [100 * (r["test"] - tb[r["seed"]]) for r in a if r["seed"] in tb]
    if len(diffs) < 2:
        return f"{diffs[0]:+.2f}" if diffs else ""
    return f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}"


def mcnemar_cell(a: list[dict], b: list[dict]) -> str:
    """McNemar on the test images of every seed both methods ran (pooled in seed order): the images only
    ``a`` gets right, only ``b``, and the p-value; a record made before per-image results were kept is blank."""
    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    ca, cb = ({r["seed"]: r.get("test_correct") for r in rs} for rs in (a, b))
    if not seeds or any(c.get(s) is None for c in (ca, cb) for s in seeds):
        return ""
    only_a, only_b, p = mcnemar("".join(ca[s] for s in seeds), "".join(cb[s] for s in seeds))
    return f"{only_a} / {only_b}, p = {p:.2g}"


def table(rows: list[dict], methods: list[str]) -> list[str]:
    """One line per (model, target, epochs): test accuracy per method and the share of the gap closed."""
    head = ["model", "target", "epochs", "seeds", "dense"] + [LABELS.get(m, m) for m in methods]
    has_gap = {"unstructured", "hybrid-oneshot", "flexhinm-gp"} <= set(methods)
    head += ["gap closed", "FlexHiNM-GP − hybrid, per seed", "McNemar GP vs hybrid",
             "McNemar GP vs unstructured"] if has_gap else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({(r["model"], r["target"], r["epochs"]) for r in rows if r["method"] in methods})
    for model, target, epochs in keys:
        by = {m: [r for r in rows if (r["model"], r["target"], r["epochs"], r["method"]) == (model, target, epochs, m)]
              for m in methods}
        seeds = sorted({r["seed"] for m in methods for r in by[m]})
        dense = next(r["dense_test"] for m in methods for r in by[m])
        line = [model, f"{target:.0%}", str(epochs), ",".join(map(str, seeds)), f"{100 * dense:.2f}"]
        line += [cell(by[m], seeds) for m in methods]
        if has_gap:
            mean = {m: statistics.mean(r["test"] for r in by[m]) for m in methods if by[m]}
            gap = mean.get("unstructured", 0) - mean.get("hybrid-oneshot", 0)
            closed = (mean["flexhinm-gp"] - mean["hybrid-oneshot"]) / gap if gap > 0 and "flexhinm-gp" in mean else None
            line.append(f"{100 * closed:.0f} %" if closed is not None else "")
            line.append(paired(by["flexhinm-gp"], by["hybrid-oneshot"]))
            line += [mcnemar_cell(by["flexhinm-gp"], by[m]) for m in ("hybrid-oneshot", "unstructured")]
        lines.append("| " + " | ".join(line) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet8:0.75,swin_tiny_mnist:0.75",
                    help="comma-separated model:target pairs; model@data for data other than mnist, e.g. "
                         "efficientnet_lite0@elpv:0.5")
    ap.add_argument("--epochs", default="2", help="comma-separated budgets")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='extra learned method, e.g. hc=\'{"gate": "hard_concrete"}\' (repeatable)')
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--keep", choices=("best", "last"), default="best",
                    help="every method's checkpoint: best epoch on validation (epoch 0 included), or the last (a "
                         "learned schedule with a sparsity ramp always keeps its last)")
    ap.add_argument("--reconstruct", action="store_true",
                    help="every method re-solves its kept weights on 8 calibration batches after pruning")
    ap.add_argument("--out", default="docs/results/flexhinm_accuracy")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    variants = dict(v.split("=", 1) for v in args.variant)
    variants = {k: json.loads(v) for k, v in variants.items()}
    methods = args.methods.split(",") + [v for v in variants if v not in args.methods.split(",")]
    out = Path(args.out)
    runs = out / "runs"
    for spec in args.models.split(","):
        model_data, target = spec.split(":")
        name, _, data_name = model_data.partition("@")
        data = load_data(data_name or "mnist", batch_size=128 if not data_name else 32)
        x = next(iter(data.val))[0][:1]
        calibration = data.calibration(8) if args.reconstruct else None
        target = float(target)
        dense, _ = pretrained_demo_model(name, data)
        dense_test = evaluate(dense, data.test)
        targets = eligible_targets(dense, x, target)
        for epochs in map(int, args.epochs.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for method in methods:
                    path = runs / f"{model_data}-{target:.2f}-{epochs}ep-{method}-s{seed}.json"
                    settings = {"model": model_data, "target": target, "epochs": epochs, "seed": seed, "method": method,
                                "lr": args.lr, "reconstruct": args.reconstruct, "keep": args.keep,
                                "dense_test": dense_test, "learned": learned_settings(method, variants)}

                    def make() -> dict:
                        r = {"model": model_data, "target": target, "dense_test": dense_test, "layers": len(targets),
                             "lr": args.lr, "reconstruct": args.reconstruct, "keep": args.keep,
                             **run_one(method, dense, data, x, targets, seed, epochs, args.lr, variants,
                                       calibration, args.keep)[0]}
                        print(json.dumps({k: v for k, v in r.items() if k not in ("history", "schedule", "test_correct")}), flush=True)
                        return r

                    load_or_make(path, settings, make, legacy_setting)
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    write_json_atomic(out / "flexhinm_accuracy.json", rows)
    shown = [m for m in (*METHODS, *CONTROLS) if any(r["method"] == m for r in rows)]
    variants_run = sorted({r["method"] for r in rows} - set(METHODS) - set(CONTROLS))
    solved = " and re-solving the kept weights on calibration data" if args.reconstruct else ""
    lines = [(f"Test accuracy (%) after pruning every eligible layer{solved} and fine-tuning with the same budget "
              f"(AdamW, lr {args.lr}, cosine), mean ± std over seeds; every method keeps its "
              f"{'last epoch' if args.keep == 'last' else 'best epoch on validation (epoch 0 included)'}."), "", *table(rows, shown), "",
             ("*Gap closed*: the share of the gap between hybrid one-shot and unstructured that FlexHiNM-GP "
              "recovers (negative: below hybrid one-shot). *Per seed*: the mean ± standard error of FlexHiNM-GP's "
              "test accuracy minus hybrid one-shot's on the same seed (points). *McNemar*: test images only "
              "FlexHiNM-GP gets right / only the other method, pooled over the seeds, and the exact two-sided "
              "p-value; above 0.05 the difference is a tie.")]
    if variants_run:  # ablations: FlexHiNM-GP with other GradualConfig fields, on the seeds they were run
        runs_of = {(r["model"], r["target"], r["epochs"], r["seed"]) for r in rows if r["method"] in variants_run}
        default = json.loads(json.dumps(GradualConfig().to_dict()))  # tuples as JSON lists, like the records
        settings = {r["method"]: json.dumps({k: v for k, v in r["schedule"].items() if v != default.get(k)} | (
                        {"permutation": r["permutation"]} if r["permutation"] != "gyro" else {}))
                    for r in rows if r["method"] in variants_run}
        lines += ["", "Ablations (FlexHiNM-GP with other `GradualConfig` fields), test accuracy (%):", "",
                  *table([r for r in rows if (r["model"], r["target"], r["epochs"], r["seed"]) in runs_of],
                         ["hybrid-oneshot", "flexhinm-gp", *variants_run]), "",
                  *(f"* `{name}`: `{settings[name]}`" for name in variants_run)]
    write_text_atomic(out / "flexhinm_accuracy.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
