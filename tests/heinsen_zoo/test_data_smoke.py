"""Smoke-reproduction data: every task writes tiny real-format data whose DataModule yields batches."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from heinsen_zoo.data.smoke import SMOKE_TASKS, main, make_smoke_datamodule  # noqa: E402


@pytest.mark.parametrize("task", SMOKE_TASKS)
def test_smoke_datamodule_yields_contract_batches(tmp_path, task):
    dm = make_smoke_datamodule(task, tmp_path, image_size=16, batch_size=4, steps_per_epoch=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 2
    batch = next(iter(loader))
    if task == "smallnorb":  # stereo pairs with their viewpoint metadata
        assert set(batch) == {"image", "label", "index", "meta"} and batch["image"].shape[:2] == (4, 2)
        key = "stereo"
    else:
        key = "image" if task in ("imagenet", "cifar10", "cifar100") else "text"
        assert set(batch) == {key, "label", "index"}
    if key == "image":
        assert batch["image"].shape == (4, 3, 16, 16)
    elif key == "text":
        assert len(batch["text"]) == 4
    assert batch["label"].dtype == torch.long and int(batch["label"].max()) < dm.num_classes
    assert len(dm.val_dataset) > 0 and len(dm.test_dataset) > 0


def test_smoke_cli_prints_spec(tmp_path, capsys):
    main(["sst5", str(tmp_path)])
    spec = json.loads(capsys.readouterr().out)
    assert spec["class_path"] == "heinsen_zoo.data.SSTDataModule"
    assert (tmp_path / "sst5" / "trees" / "train.txt").is_file()
    assert spec["init_args"]["data_dir"] == str(tmp_path / "sst5")
