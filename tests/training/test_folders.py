"""Image folders and CSVs as data: layouts, greyscale and RGB, a saved split, and one-line errors."""

import json

import factories
import pytest
import torch

from mm_plugin.errors import ConfigError
from mm_plugin.training import ImageConfig, image_classes, image_data

CONFIG = ImageConfig((3, 32, 32))
CLASSES = factories.IMAGE_CLASSES
write_tree = factories.write_image_tree


def test_a_folder_with_its_own_split_gives_three_loaders_of_every_class(tmp_path):
    data = image_data(str(write_tree(tmp_path / "images", 4)), CONFIG, batch_size=8)
    assert data.num_classes == 3 and data.input_shape == (3, 32, 32)
    assert [len(loader.dataset) for loader in (data.train, data.val, data.test)] == [12, 12, 12]
    x, y = next(iter(data.val))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1, 2}
    grey = image_data(str(tmp_path / "images"), ImageConfig((1, 32, 32)), batch_size=4)
    assert next(iter(grey.test))[0].shape == (4, 1, 32, 32)  # RGB files read as one channel
    assert image_classes(str(tmp_path / "images")) == list(CLASSES)


def test_one_tree_is_split_stratified_and_the_split_is_saved_and_reused(tmp_path):
    root = write_tree(tmp_path / "images", 10, splits=("",))
    split_file = tmp_path / "run" / "split.json"
    data = image_data(str(root), CONFIG, batch_size=8, split_file=split_file)
    saved = json.loads(split_file.read_text())
    assert sorted(len(saved[s]) for s in ("train", "val", "test")) == [4, 4, 22]  # 15 % each, rounded
    assert not set(saved["train"]) & set(saved["val"]) and not set(saved["val"]) & set(saved["test"])
    for s in ("val", "test"):
        assert {name.split("/")[0] for name in saved[s]} == set(CLASSES)  # stratified
    assert len(data.train.dataset) == 22
    (root / "dot" / "0.png").rename(root / "dot" / "renamed.png")  # a rerun must not split differently
    with pytest.raises(ConfigError, match="lists other images than .* holds now"):
        image_data(str(root), CONFIG, batch_size=8, split_file=split_file)


def test_a_csv_of_paths_and_labels_with_or_without_a_split(tmp_path):
    root = write_tree(tmp_path / "images", 4, splits=("",))
    rows = [(f"images/{c}/{i}.png", c, ("train", "train", "val", "test")[i]) for c in CLASSES for i in range(4)]
    (tmp_path / "given.csv").write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    data = image_data(str(tmp_path / "given.csv"), CONFIG, batch_size=4)
    assert [len(loader.dataset) for loader in (data.train, data.val, data.test)] == [6, 3, 3]
    (tmp_path / "plain.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c, _ in rows))
    data = image_data(str(tmp_path / "plain.csv"), CONFIG, batch_size=4, split_file=tmp_path / "split.json")
    assert sum(len(loader.dataset) for loader in (data.train, data.val, data.test)) == 12
    assert root.exists()


def test_bad_images_are_one_line_errors_that_name_the_problem(tmp_path):
    root = write_tree(tmp_path / "images", 2)
    (root / "val" / "ring").rename(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"the val split of .* has no image of class\(es\) \['ring'\]"):
        image_data(str(root), CONFIG, batch_size=4)
    (tmp_path / "gone").rename(root / "val" / "ring")
    (root / "train" / "dot" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"cannot read image .*train/dot/broken.png"):
        image_data(str(root), CONFIG, batch_size=4)
    (root / "train" / "dot" / "broken.png").unlink()
    (root / "train" / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"class folder .*train/empty has no images"):
        image_data(str(root), CONFIG, batch_size=4)
