import json

import numpy as np
import pytest
import torch

import mm_plugin
from mm_plugin.errors import RuleError
from mm_plugin.planning.rules import DEFAULT_RULES, Rule, apply_rules, load_rules, resolve_rules


def test_rule_min_above_max():
    with pytest.raises(RuleError, match="rule 'bad': min 0.6 > max 0.2"):
        Rule("bad", min=0.6, max=0.2)


def test_rule_unknown_kind_and_key():
    with pytest.raises(RuleError, match="unknown kinds"):
        Rule("x", kinds=("transformer",))
    with pytest.raises(RuleError, match=r"rules\[0\]: unknown keys \['maximum'\]"):
        load_rules([{"name": "x", "maximum": 0.3}])


def test_user_rule_replaces_default_by_name_and_disables():
    rules = resolve_rules([{"name": "tiny-layers", "max_params": 500, "max": 0.5},
                           {"name": "first-layer", "enabled": False},
                           {"name": "qkv-light", "pattern": r"qkv$", "max": 0.4}])
    names = [r.name for r in rules]
    assert "first-layer" not in names and names[-1] == "qkv-light"
    tiny = rules[names.index("tiny-layers")]
    assert tiny.max_params == 500 and tiny.max == 0.5
    assert names.index("tiny-layers") == [r.name for r in DEFAULT_RULES].index("tiny-layers") - 1


def test_load_json_and_yaml(tmp_path):
    data = {"rules": [{"name": "heads", "kinds": ["head"], "max": 0.2}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.yaml").write_text("rules:\n  - name: heads\n    kinds: [head]\n    max: 0.2\n")
    assert load_rules(tmp_path / "r.json") == load_rules(tmp_path / "r.yaml") == [Rule("heads", kinds=("head",), max=0.2)]
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(RuleError, match="cannot be parsed"):
        load_rules(tmp_path / "bad.json")


def test_defaults_bound_ranges(tiny_swin):
    layers = mm_plugin.inventory(tiny_swin, torch.randn(1, 3, 32, 32)).units
    lo, hi = apply_rules(layers, np.full(len(layers), 0.6), np.full(len(layers), 0.8), DEFAULT_RULES)
    by = {layer.module: (a, b) for layer, a, b in zip(layers, lo, hi)}
    assert by["patch_embed.proj"] == (0.1, 0.1)  # first layer + patch embedding + tiny
    assert by["head.fc"] == (0.1, 0.1)  # widened to 0.9, then the tiny-layer cap (640 weights) binds
    big = [layer.module for layer in layers if layer.params >= 10_000]
    assert big and all(by[m] == (0.6, 0.8) for m in big if "head" not in m)
    assert (lo <= hi).all()
