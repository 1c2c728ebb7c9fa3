"""Run NNCF 2.x's sample configs through ``mm-prune nncf`` with only their algorithm names changed.

Every ``*.json`` under SAMPLES (e.g. a copy of NNCF 2.14's examples/torch/classification/configs/
{sparsity,sparsity_quantization,pruning}) has ``magnitude_sparsity``, ``rb_sparsity``, ``const_sparsity``
and ``filter_pruning`` renamed ``mix_and_match`` (in the text: comments stay) and runs in this process
through ``mm_plugin.cli.main(["nncf", ...])`` on a torchvision model of the family its ``model`` key names
(random weights, as pretrained architectures; the config's own ``input_info``; random calibration data
for int8). The JSON summary says, per config, whether it ran (with its statistics and export check) or
was refused, with the one-line message and the WARNING lines about NNCF 2.x options::

    python benchmarks/nncf2_samples.py /path/to/configs --out nncf2_samples.json [--only resnet18]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torchvision
from mm_plugin.adapters.nncf import strip_comments
from torch.utils.data import DataLoader, TensorDataset

from mm_plugin.cli import main as mm_prune

RENAMED = re.compile(r'("algorithm"\s*:\s*)"(magnitude_sparsity|rb_sparsity|const_sparsity|filter_pruning)"')
#: The samples' ``model`` names -> torchvision constructors (ResNet34_cifar is NNCF's CIFAR ResNet-34).
FAMILIES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "ResNet34_cifar": "resnet34",
            "mobilenet_v2": "mobilenet_v2", "inception_v3": "inception_v3", "googlenet": "googlenet"}
#: What the sample being run asks for; read by the two factories below, which the CLI imports from __main__.
CURRENT: dict[str, Any] = {}


def sample_model(num_classes: int = 1000) -> torch.nn.Module:
    """The torchvision model of the current sample's family, random weights, pretrained architecture."""
    name = FAMILIES[CURRENT["model"]]
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name in ("inception_v3", "googlenet"):  # pretrained weights come with transform_input=True
        kwargs |= {"aux_logits": False, "init_weights": False, "transform_input": bool(CURRENT.get("pretrained"))}
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def random_data() -> dict[str, Any]:
    """Loaders of random inputs shaped like the sample's first input_info entry (int8 calibration)."""
    shape = tuple(CURRENT["input_shape"][1:])
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn((8, *shape), generator=gen), torch.zeros(8, dtype=torch.long))
    loader = DataLoader(data, batch_size=2)
    return {"train": loader, "val": loader, "test": loader, "num_classes": CURRENT["num_classes"], "input_shape": shape}


class Warnings(logging.Handler):
    """Collects the WARNING lines of one run (the adapter's notes about NNCF 2.x options among them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("mm_plugin"):
            self.lines.append(record.getMessage())


def run_one(path: Path, work: Path) -> dict[str, Any]:
    text = path.read_text()
    renamed = RENAMED.sub(r'\1"mix_and_match"', text)
    raw = json.loads(strip_comments(text))
    info = raw.get("input_info", {})
    first = info[0] if isinstance(info, list) and info else info
    CURRENT.clear()
    CURRENT.update(model=raw.get("model"), pretrained=raw.get("pretrained"), num_classes=raw.get("num_classes", 1000),
                   input_shape=first.get("sample_size", [1, 3, 224, 224]) if isinstance(first, dict) else [1, 3, 224, 224])
    out = work / path.stem
    config = work / f"{path.stem}.json"
    config.write_text(renamed)
    result: dict[str, Any] = {"config": str(path), "model": CURRENT["model"], "renamed": [m[1] for m in RENAMED.findall(text)]}
    if CURRENT["model"] not in FAMILIES:
        return {**result, "status": "skipped", "message": f"no torchvision family for model {CURRENT['model']!r}"}
    argv = ["nncf", "--config", str(config), "--model", "__main__:sample_model", "--out", str(out),
            "--num-classes", str(CURRENT["num_classes"]), "--data", "__main__:random_data", "--calibration-batches", "4"]
    warnings, stderr, stdout = Warnings(), io.StringIO(), io.StringIO()
    logging.getLogger().addHandler(warnings)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = mm_prune(argv)
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("mm-prune")]
        status = "ran" if code == 0 else "refused"
        message = errors[-1] if errors else ""
    except Exception as e:  # noqa: BLE001 - a traceback is what this benchmark looks for
        status, message = "crashed", f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc().splitlines()
    finally:
        logging.getLogger().removeHandler(warnings)
    result |= {"status": status, "message": message, "message_lines": len(message.splitlines()),
               "warnings": warnings.lines, "seconds": round(time.perf_counter() - start, 1)}
    summary = out / "summary.json"
    if status == "ran" and summary.exists():
        data = json.loads(summary.read_text())
        stats, export = data.get("statistics") or {}, data.get("export") or {}
        result |= {"structured": stats.get("structured"), "target": stats.get("target_sparsity"),
                   "planned_ratio": stats.get("planned_ratio"), "measured_ratio": stats.get("pruning_ratio"),
                   "quantized": stats.get("quantized"), "export_exact": export.get("exact"),
                   "export_kept": export.get("kept")}
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help="folder of NNCF 2.x sample configs (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="JSON summary to write")
    parser.add_argument("--work", type=Path, default=None, help="where runs write (default: a temporary folder)")
    parser.add_argument("--only", default="", help="run only configs whose path contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.work or Path(tempfile.mkdtemp(prefix="nncf2_samples_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for path in sorted(args.samples.rglob("*.json")):
        if args.only in str(path):
            results.append(run_one(path, work))
            r = results[-1]
            print(f"{r['status']:8} {r.get('seconds', ''):>6}s {path.relative_to(args.samples)}  "
                  f"{r['message']}", flush=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("ran", "refused", "crashed", "skipped")}
    summary = {"samples": str(args.samples), "counts": counts,
               "one_line_errors": all(r.get("message_lines", 0) <= 1 for r in results), "results": results}
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(counts), f"-> {args.out}")
    return 0 if counts["crashed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
