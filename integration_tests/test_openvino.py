"""Shared OpenVINO helpers (mm_plugin.adapters.openvino) against real OpenVINO: export, zeros per weight
Constant (fp32, fp16, folded BatchNorm), matching Constants to parameters, and latency measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

ov = pytest.importorskip("openvino")

from mm_plugin.adapters import openvino as ovh

from mm_plugin.deploy import match_params
from mm_plugin.errors import ValidationError

torch.set_num_threads(2)


class Net(nn.Module):
    """Conv + BN (folded by OpenVINO, so the conv weight loses its name), a depthwise conv, a Linear
    (keeps its name), and an Embedding-free head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.dw(x).mean((2, 3))
        return self.head(torch.relu(self.fc(x)))


def _zero_some(model: nn.Module, fraction: float = 0.4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Zero a random fraction of each weight; returns {param: bool zero mask}."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    with torch.no_grad():
        for name in ("conv.weight", "dw.weight", "fc.weight", "head.weight"):
            w = model.get_parameter(name)
            zero = torch.rand(w.shape, generator=gen) < fraction
            w[zero] = 0.0
            masks[name] = zero
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    return masks


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = Net().eval()
    masks = _zero_some(model)
    return model, masks, torch.randn(2, 3, 12, 12)


@pytest.fixture(scope="module")
def ir(net, tmp_path_factory):
    model, _, x = net
    return ovh.export(model, x, tmp_path_factory.mktemp("ir") / "net.xml")


def test_export_writes_an_ir_that_computes_the_same(net, ir):
    model, _, x = net
    assert ir.suffix == ".xml" and ir.exists() and ir.with_suffix(".bin").exists()
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.allclose(ovh.infer(ir, x)[0], expected, atol=1e-5)


def test_weight_constants_count_zeros_exactly(net, ir):
    _, masks, _ = net
    constants = ovh.weight_constants(ir)
    assert len(constants) == 4  # conv (BN folded in), depthwise, fc, head; no shape or scalar constants
    assert sorted(c.zeros for c in constants) == sorted(int(m.sum()) for m in masks.values())
    assert all(c.dtype == "f32" for c in constants)
    assert all(c.zeros == int(c.zero_mask.sum()) for c in constants)
    consumers = {c.consumers[0].split(":")[0] for c in constants}
    assert consumers == {"Convolution", "GroupConvolution", "MatMul"}


def test_match_params_by_name_and_by_zero_pattern(net, ir):
    _, masks, _ = net
    matches = {m.param: m for m in match_params(ovh.weight_constants(ir), masks)}
    assert matches["fc.weight"].by == "name" and matches["head.weight"].by == "name"
    assert matches["conv.weight"].by == "zero-pattern"  # renamed by BatchNorm folding
    assert all(m.exact for m in matches.values()), matches
    assert len({m.constant for m in matches.values()}) == 4


def test_match_params_reports_lost_zeros(net, ir):
    _, masks, _ = net
    wrong = {k: v.clone() for k, v in masks.items()}
    wrong["fc.weight"][~masks["fc.weight"]] = True  # expect zeros the IR does not have
    m = {m.param: m for m in match_params(ovh.weight_constants(ir), wrong)}["fc.weight"]
    assert m.constant is not None and m.by == "name"
    assert not m.kept and not m.exact and m.lost_zeros == int((~masks["fc.weight"]).sum())


def test_fp16_ir_keeps_zeros(net, tmp_path):
    model, masks, x = net
    path = ovh.save(ovh.convert(model, x), tmp_path / "fp16", compress_to_fp16=True)
    assert path.name == "fp16.xml"
    constants = ovh.weight_constants(path)
    assert {c.dtype for c in constants} == {"f16"}
    assert all(m.exact for m in match_params(constants, masks))


def test_measure_latency(net, ir):
    _, _, x = net
    lat = ovh.measure_latency(ov.Core().read_model(str(ir)), x[:1], threads=1, precision="f32", warmup=2, repeats=5)
    assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms
    assert (lat.threads, lat.precision, lat.repeats, lat.warmup) == (1, "f32", 5, 2)
    compiled = ovh.compile_for_latency(ir, threads=1, precision="f32")
    again = ovh.measure_latency(compiled, x[:1], threads=1, precision="f32", warmup=1, repeats=3)
    assert again.precision == "f32" and again.threads == 1
    with pytest.raises(ValidationError, match="INFERENCE_PRECISION_HINT=f32, not bf16"):
        ovh.measure_latency(compiled, x[:1], threads=1, precision="bf16")
    with pytest.raises(ValidationError, match="precision 'int4' is not one of f32, bf16, f16"):
        ovh.measure_latency(ir, x[:1], precision="int4")
    with pytest.raises(ValidationError, match="threads must be a positive integer"):
        ovh.measure_latency(ir, x[:1], threads=0)


def test_edge_rows_score_time_and_size_the_files_that_ship(tmp_path, caplog, capfd):
    """fp32 and int8 IRs of a masked model: the fp32 file scores as the PyTorch model does, the int8 one is
    about a quarter of its size, every file is timed against the first model's fp32 file; quantizing on a
    few batches raises no warning about the subset size."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import factories

    import mm_plugin
    from mm_plugin.deploy import edge_rows
    from mm_plugin.training import predict

    data = factories.small_digits()
    dense = factories.trained_mlp()
    pruned = mm_plugin.prune_(factories.trained_mlp(), {"1.weight": 0.8, "3.weight": 0.8})
    rows = edge_rows({"dense": dense, "pruned": pruned}, torch.zeros(1, 1, 8, 8), [x for x, _ in data["train"]][:2],
                     data["test"], 10, tmp_path)
    assert [(r.name, r.precision) for r in rows] == [("dense", "fp32"), ("dense", "int8"), ("pruned", "fp32"),
                                                      ("pruned", "int8")]
    pred, true, _ = predict(pruned, data["test"])
    by = {(r.name, r.precision): r for r in rows}
    assert by["pruned", "fp32"].accuracy == pytest.approx(float((pred == true).float().mean()))
    assert by["dense", "int8"].size_mb < 0.4 * by["dense", "fp32"].size_mb
    assert by["pruned", "fp32"].gzip_mb < 0.5 * by["dense", "fp32"].gzip_mb  # zeros pay off gzipped only
    assert by["pruned", "fp32"].size_mb == pytest.approx(by["dense", "fp32"].size_mb)
    assert all(r.latency_ms > 0 and r.latency_ratio > 0 for r in rows) and by["dense", "fp32"].latency_ratio < 2
    assert (tmp_path / "pruned-int8.xml").exists() and abs(by["dense", "int8"].accuracy - by["dense", "fp32"].accuracy) < 0.05
    assert "smaller than the requested subset size" not in caplog.text + "".join(capfd.readouterr())
