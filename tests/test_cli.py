import json

import pytest

from mm_plugin.cli import main


def test_plan_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "timm:resnet18", "--input-size", "3,32,32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conservative" in text and "GLOBAL" in text and "layer4.1.conv2" in text
    data = json.loads(out.read_text())
    assert [s["name"] for s in data["strategies"]][:3] == ["conservative", "aggressive", "balanced"]
    assert {"name", "kind", "params", "min", "max"} <= set(data["units"][0])
    assert set(data["strategies"][0]["sparsity"]) == {unit["name"] for unit in data["units"]}


def test_factory_model_and_gradient_signal(capsys):
    assert main(["plan", "--model", "factories:trained_mlp", "--signal", "product", "--data", "factories:small_digits",
                 "--max-rows", "4"]) == 0
    assert "..." not in capsys.readouterr().out  # 3 layers fit in 4 rows


@pytest.mark.parametrize("argv,message", [
    (["plan", "--model", "timm:resnet18", "--signal", "magnitud", "--input-size", "3,32,32"], "unknown signal 'magnitud'"),
    (["plan", "--model", "timm:resnett18"], "unknown timm model 'resnett18'"),
    (["plan", "--model", "nope.module:fn"], "nope.module"),
    (["plan", "--model", "factories:tiny_cnn"], "--input-size"),
    (["plan", "--model", "factories:tiny_cnn", "--input-size", "1,8,8", "--signal", "gradient"], "needs calibration data"),
    (["select", "/nonexistent", "--min-score", "0.9"], "run folder /nonexistent does not exist"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("mm-prune: error:")


def test_pattern_options_reach_the_run_config():
    from mm_plugin.cli import _run_config, build_parser

    args = build_parser().parse_args(["run", "--model", "resnet8", "--out", "x", "--sparsity", "hybrid", "--pattern-option",
                                      "tile_rows=16", "--pattern-option", "permutation=gyro"])
    assert _run_config(args)[1].pattern_options == {"tile_rows": 16, "permutation": "gyro"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--model", "resnet8", "--out", "x", "--pattern-option", "tile_rows"])
