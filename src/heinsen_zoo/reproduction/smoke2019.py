"""Smoke stand-ins for the 2019 rows: tiny smallNORB files / tiny GPT-2 + tiny SST trees, small capsules
(the paper's batch of 20 is kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .smoke import smoke_trainer


def smoke_2019_config(row: str, work: Path) -> dict[str, Any]:
    """The config (trainer/model/data sections) that swaps tiny stand-ins into a 2019 row."""
    trainer = smoke_trainer(work)
    if row == "smallnorb2019":
        from heinsen_zoo.data.smallnorb import write_tiny_smallnorb

        data_dir = work / "data"
        write_tiny_smallnorb(data_dir, n_train=24, n_test=21, seed=0)  # odd: DDP cannot split it evenly
        return {
            "trainer": trainer,
            "model": {"init_args": {"n_parts": 4, "d_chns": 8}},
            "data": {
                "class_path": "heinsen_zoo.data.SmallNORBDataModule",
                "init_args": {"data_dir": str(data_dir), "num_workers": 0, "steps_per_epoch": 3},
            },
        }
    if row in ("sst5_2019", "sst2_2019"):
        from heinsen_zoo.backbones.tiny import write_tiny_backbone
        from heinsen_zoo.data.smoke import write_smoke_data

        spec = write_tiny_backbone("gpt2", work / "backbone")
        d_depth, d_emb = spec.pop("d_depth"), spec.pop("d_emb")
        spec["pad_mode"] = "mask"
        data = write_smoke_data(
            "sst5" if row == "sst5_2019" else "sst2", work / "data", batch_size=None, steps_per_epoch=3
        )
        data["init_args"]["num_workers"] = 0
        model = {"backbone": spec, "d_depth": d_depth, "d_emb": d_emb, "d_inp": 8, "n_parts": 4}
        return {"trainer": trainer, "model": {"init_args": model}, "data": data}
    raise KeyError(f"row: no smoke stand-ins for {row!r}")
