"""A user's own checkpoint and image folder through ``mm-prune run``: the dense model the run records is the
checkpoint, scored exactly as the checkpoint scores by itself."""

import json

import factories
import pytest
import torch

from mm_plugin.cli import main


def _own_accuracy(model: torch.nn.Module, folder, input_size) -> float:
    """The checkpoint's test accuracy through timm's and torchvision's own pipeline, not the plugin's."""
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    config = resolve_data_config({"input_size": input_size}, model=model)
    data = ImageFolder(folder, transform=create_transform(**config))  # its loader converts every image to RGB
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(data, batch_size=16))
    return right / len(data)


@pytest.mark.slow
def test_a_timm_checkpoint_on_an_image_folder_runs_the_search_and_records_its_own_accuracy(tmp_path, capsys):
    import timm

    images = factories.write_image_tree(tmp_path / "images", 6)
    torch.manual_seed(0)
    trained = timm.create_model("resnet10t", num_classes=3)
    with torch.no_grad():  # not a fresh initialisation: a checkpoint with weights of its own
        for p in trained.parameters():
            p.mul_(1.5)
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    out = tmp_path / "run"
    argv = ["run", "--model", "timm:resnet10t", "--weights", str(tmp_path / "ckpt.pt"), "--data", str(images),
            "--targets", "0.7", "--budget", "2", "--out", str(out),
            "--input-size", "3,48,48", "--candidates", "4", "--epochs", "1", "--baselines", "global_magnitude"]
    assert main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    dense = {r["dense_test_score"] for r in records if r.get("rung") is None}
    assert dense == {_own_accuracy(trained, images / "test", (3, 48, 48))}
    pick = [r for r in records if r["name"] == "search"]
    assert len(pick) == 1 and abs(pick[0]["sparsity"] - 0.7) < 0.01 and pick[0]["test_score"] is not None
    assert (out / "report.md").exists() and (out / "pareto.png").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["about"] == f"timm:resnet10t on {images}" and config["inputs"]["train"].startswith("18:")
