"""Fuzzing the NNCF adapter with mutations of NNCF 2.x sample-style configs (seeded): wrong types, missing
and unknown keys, bad scopes, bad input_info, extreme targets.

Every outcome is either a compressed model that does what the config says (structured exactly when it
carries filter-pruning options; the masks at the level the config names) or an ``MMError`` whose message
is one line starting with the JSON path at fault. Any other exception fails the test.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from mm_plugin.adapters import nncf as mnncf
from mm_plugin.adapters.nncf.legacy import PRUNING_KEYS, SCHEDULE_KEYS
from test_nncf_legacy import ADAPTIVE, FILTER, MAGNITUDE, RB, tiny_resnet

from mm_plugin.errors import MMError

SEED, COUNT = 20250601, 48
BASES = {"magnitude": MAGNITUDE, "rb": {**RB, "compression": RB["compression"][:1]}, "adaptive": ADAPTIVE,
         "filter": {**FILTER, "compression": FILTER["compression"][:1]},
         "one-shot": {"input_info": {"sample_size": [1, 3, 32, 32]}, "epochs": 3,
                      "compression": {"algorithm": "mix_and_match", "target_sparsity": 0.5,
                                      "ignored_scopes": ["ResNet/NNCFLinear[fc]/linear_0"]}}}
OTHER_TYPES = ["text", 3, 0.5, [], {}, None, True, [1, "a"]]
BAD_SCOPES = ["ResNet/NNCFConv2d[conv9]/conv2d_0", "{re}((", "{re}zzz", 5, ["fc"], {"names": ["x"]}, {"nmes": []},
              ["{re}layer1", "ResNet/Sequential[layer2]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0"], "",
              {"types": ["conv2d", "linear"]}]
BAD_INPUTS = [{"sample_size": [1, 1, 32, 32]}, {"sample_size": [1, 3]}, {"sample_size": [0, 3, 32, 32]},
              {"sample_size": [1, 3, 32, 32], "type": "long"}, {"sample_size": [1, 3, 32, 32], "filler": "noise"},
              {"sample_size": [1, 3, 32, 32], "keyword": "inputs"}, [{"sample_size": [1, 3, 32, 32]}] * 2, [],
              {"sample_size": [1, 3, 32.5, 32]}, {"shape": [1, 3, 32, 32]}, {"sample_size": [1, 3, 8, 8]}]
EXTREME = [0.0, 0.001, 0.3, 0.89, 0.95, 0.97, 0.99, 0.999, 1.0, -0.1, 2]
TARGET_KEYS = [("target_sparsity",), ("sparsity_init",), ("params", "sparsity_target"),
               ("params", "multistep_sparsity_levels"), ("params", "pruning_flops_target"), ("pruning_init",)]
PATH = re.compile(r"^(\$|input_info|compression|target_device)(\[\d+\]|\.[\w$-]+)*: ")


def _containers(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _containers(child, (*path, key))


def _step(config: dict) -> dict:
    comp = config["compression"]
    return comp[0] if isinstance(comp, list) else comp


def _mutate(rng: random.Random, config: dict) -> str:
    """One mutation of ``config`` in place; returns what it did."""
    kind = rng.choice(["type", "drop", "unknown", "scope", "input", "target", "target", "target"])
    nodes = [(p, n) for p, n in _containers(config) if len(p) <= 1 or p[0] in ("compression", "input_info")]
    if kind == "type":
        path, value = rng.choice(nodes[1:])
        choice = rng.choice([v for v in OTHER_TYPES if type(v) is not type(value)])
        _set(config, path, copy.deepcopy(choice))
        return f"type:{'.'.join(map(str, path))}={choice!r}"
    if kind == "drop":
        path, node = rng.choice([(p, n) for p, n in nodes if isinstance(n, dict) and n])
        key = rng.choice(sorted(node))
        del node[key]
        return f"drop:{'.'.join(map(str, (*path, key)))}"
    if kind == "unknown":
        path, node = rng.choice([(p, n) for p, n in nodes if isinstance(n, dict)])
        node["bogus_option"] = 1
        return f"unknown:{'.'.join(map(str, path)) or '$'}"
    if kind == "scope":
        key, value = rng.choice(["ignored_scopes", "target_scopes"]), rng.choice(BAD_SCOPES)
        _step(config)[key] = copy.deepcopy(value)
        return f"scope:{key}={value!r}"
    if kind == "input":
        value = rng.choice(BAD_INPUTS)
        config["input_info"] = copy.deepcopy(value)
        return f"input:{value!r}"
    keys, value = rng.choice(TARGET_KEYS), rng.choice(EXTREME)
    step = _step(config)
    parent = step.setdefault("params", {}) if keys[0] == "params" else step
    parent[keys[-1]] = [0.1, value] if keys[-1] == "multistep_sparsity_levels" else value
    return f"target:{'.'.join(keys)}={value!r}"


def _set(config: dict, path: tuple, value: Any) -> None:
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _cases() -> list:
    rng = random.Random(SEED)
    cases = []
    for i in range(COUNT):
        name = rng.choice(sorted(BASES))
        config = copy.deepcopy(BASES[name])
        what = "; ".join(_mutate(rng, config) for _ in range(rng.choice([1, 1, 2])))
        cases.append(pytest.param(config, id=f"{i:02d}-{name}-{what}"[:120]))
    return cases


def _expected_level(step: dict) -> float | None:
    """The level the masks hold right after compression, read from the config as NNCF 2.x reads it."""
    params = step.get("params", {})
    if params.get("schedule") == "multistep":
        return params["multistep_sparsity_levels"][0]
    if "sparsity_init" in step or any(k in SCHEDULE_KEYS for k in params):
        return step.get("sparsity_init", 0.0)
    return step.get("target_sparsity", params.get("sparsity_target"))


@pytest.mark.parametrize("config", _cases())
def test_mutated_config_compresses_as_written_or_fails_in_one_line(config):
    try:
        ctrl, _ = mnncf.create_compressed_model(tiny_resnet(), copy.deepcopy(config))
    except MMError as e:
        message = str(e)
        assert "\n" not in message and PATH.match(message), message
        return
    step = _step(config)
    structured = "pruning_init" in step or any(k in PRUNING_KEYS for k in step.get("params", {})) or \
        step.get("params", {}).get("schedule") in ("exponential_with_bias", "baseline")
    assert (ctrl.channels is not None) == structured
    stats = ctrl.statistics()
    if structured:
        assert abs(stats.pruning_ratio - ctrl.step.target) <= 0.03
    elif (level := _expected_level(step)) is not None:
        assert stats.pruning_ratio == pytest.approx(level, abs=1e-3)


def test_the_fuzz_covers_both_outcomes():
    """A sanity check on the generator: the mutations above reach both successes and refusals."""
    outcomes = set()
    for param in _cases()[:12]:
        try:
            mnncf.load_config(copy.deepcopy(param.values[0]))
            outcomes.add("loaded")
        except MMError:
            outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}
