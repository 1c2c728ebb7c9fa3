"""NVIDIA 2:4 hand-off: validator (model and ONNX), ONNX export, CUDA-only paths."""

import pytest
import torch
from torch import nn

from mm_plugin.errors import UnsupportedModelError, ValidationError
from mm_plugin.flexhinm import (
    FlexHiNMConfig,
    benchmark_matmul,
    export_onnx,
    flexhinm_sparsify_,
    to_semi_structured_,
    validate_nm,
)
from mm_plugin.masks import bake_masks_, current_masks

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Tokens(nn.Module):
    """3-D activations, so the exporter writes MatMul (not Gemm) nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _pruned_mlp(target: float = 0.5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    res = flexhinm_sparsify_(
        model, {"0.weight": target, "2.weight": target}, FlexHiNMConfig(permutation="none", tile_rows=None)
    )
    return model, res


def test_validator_names_the_broken_layer():
    model, _ = _pruned_mlp()
    assert validate_nm(model).ok
    bake_masks_(model)
    with torch.no_grad():
        model[2].weight[3, 4:8] = 1.0  # one group of 4 fully dense
    report = validate_nm(model)
    assert not report.ok
    assert report.offenders == ["2.weight"]
    assert next(r for r in report.layers if r.name == "2.weight").violations == 1
    assert "2.weight" in str(report)


def test_validator_checks_the_nm_region_of_hybrid_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        model[0].weight[:, :32] *= 100  # important half stays dense at 30 % sparsity
    res = flexhinm_sparsify_(model, {"0.weight": 0.3}, FlexHiNMConfig(permutation="none", tile_rows=None))
    assert res.partitions["0.weight"].counts.n_dense > 0
    assert not validate_nm(model).ok  # dense groups are not 2:4 ...
    assert validate_nm(model, regions=res).ok  # ... but the 2:4 region is
    assert validate_nm(model, regions=res).fully_nm == []  # TensorRT would keep it dense
    with pytest.raises(ValidationError, match="no Linear/Conv weight"):
        validate_nm(model, layers=["nope"])


def test_onnx_export_keeps_the_pattern_and_the_validator_reads_it(tmp_path):
    model, _ = _pruned_mlp()
    x = torch.randn(2, 16)
    path = export_onnx(model, (x,), tmp_path / "mlp.onnx")
    report = validate_nm(path)
    assert report.ok and {r.name for r in report.layers} == {"0.weight", "2.weight"}
    assert set(report.fully_nm) == {"0.weight", "2.weight"}
    assert current_masks(model)  # the model itself still carries its masks
    assert model[0].weight.shape == (32, 16)

    tokens = Tokens()
    flexhinm_sparsify_(tokens, {"fc1.weight": 0.5}, FlexHiNMConfig(permutation="none"))
    path = export_onnx(tokens, (torch.randn(2, 5, 16),), tmp_path / "tokens.onnx")
    report = validate_nm(path)
    assert report.offenders == ["fc2.weight"]  # fc2 was left dense; names recovered from MatMul nodes
    assert "fc1.weight" in report.fully_nm


def test_validator_rejects_a_missing_file(tmp_path):
    with pytest.raises(ValidationError, match="no ONNX file"):
        validate_nm(tmp_path / "missing.onnx")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_paths_fail_cleanly_without_cuda():
    with pytest.raises(UnsupportedModelError, match="CUDA"):
        to_semi_structured_(nn.Linear(64, 64))
    with pytest.raises(UnsupportedModelError, match="CUDA"):
        benchmark_matmul(64, 64, 64)


@pytest.mark.cuda
@cuda
def test_semi_structured_conversion_on_cuda():
    big = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    flexhinm_sparsify_(
        big, {"0.weight": 0.5, "2.weight": 0.5}, FlexHiNMConfig(permutation="none", tile_rows=None)
    )
    bake_masks_(big)
    big = big.half().cuda()
    x = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    ref = big(x)
    status = to_semi_structured_(big)
    assert status["0"] == "converted"
    torch.testing.assert_close(big(x), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.cuda
@cuda
def test_benchmark_matmul_on_cuda():
    out = benchmark_matmul(1024, 1024, 1024, iters=5)
    assert out["sparse_ms"] > 0 and out["max_abs_err"] < 1.0
