"""Lightning tasks of the 2019 regime: schedule, fast_dev_run on tiny data, learning, batch errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from heinsen_zoo.data.smallnorb import SmallNORBDataModule, write_tiny_smallnorb
from heinsen_zoo.tasks.capsules2019 import SmallNORBTask, SSTCapsuleTask, one_cycle_schedule

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LightningModule.log.*")


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


class HiddenStates(Dataset):
    """Random cached hidden states; the class shifts one direction of the embeddings (learnable)."""

    def __init__(self, n: int, n_tok: int = 6, d_depth: int = 3, d_emb: int = 16, n_classes: int = 3, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % n_classes
        self.hidden = torch.randn(n, n_tok, d_depth, d_emb, generator=gen)
        directions = torch.randn(n_classes, d_emb, generator=torch.Generator().manual_seed(123))
        self.hidden += 2.0 * directions[self.labels][:, None, None, :]
        lengths = torch.randint(2, n_tok + 1, (n,), generator=gen)
        self.padding = torch.arange(n_tok)[None, :] >= lengths[:, None]  # [n, n_tok], True = pad
        self.hidden[self.padding] = float("nan")  # whatever a cache holds at padding must not matter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden[i], "padding_mask": self.padding[i], "label": self.labels[i]}


def _loader(dataset: Dataset, batch_size: int = 4, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def test_one_cycle_schedule_endpoints_and_momentum() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.RAdam([param], lr=5e-4)
    scheduler = one_cycle_schedule(optimizer, total_steps=50, lr=5e-4, min_lr=1e-5, pct_start=0.1)
    lrs, betas = [], []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-5, rel=1e-3)
    assert max(lrs) == pytest.approx(5e-4) and lrs.index(max(lrs)) == 4  # peak after 10% of the steps
    assert all(a >= b for a, b in zip(lrs[4:-1], lrs[5:], strict=True))  # then monotone decay
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85) and betas[-1] > 0.94
    with pytest.raises(ValueError, match="finite number of steps"):
        one_cycle_schedule(optimizer, total_steps=float("inf"), lr=5e-4, min_lr=1e-5, pct_start=0.1)


def test_smallnorb_task_fast_dev_run(tmp_path: Path) -> None:
    write_tiny_smallnorb(tmp_path, n_train=8, n_test=4, seed=0)
    pl.seed_everything(0, verbose=False)
    datamodule = SmallNORBDataModule(str(tmp_path), batch_size=4)
    task = SmallNORBTask(n_parts=4, d_chns=8)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(task, datamodule=datamodule)
    changed = [k for k, v in task.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    # At init (zero betas) only the last betas get gradients: a_out is 0 whatever W, B and earlier layers.
    assert {"model.routings.1.beta_use", "model.routings.1.beta_ign"} <= set(changed)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    results = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    assert 0.0 <= results["test/acc"] <= 1.0 and results["test/loss"] > 0
    assert dict(task.hparams) == {
        "n_objs": 5, "n_parts": 4, "d_chns": 8, "lr": 5e-4, "min_lr": 1e-5, "pct_start": 0.1,
        "mixup_alpha": 0.2, "weight_decay": 0.0,
    }


def test_sst_task_fast_dev_run_and_checkpoint(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    task = SSTCapsuleTask(n_classes=3, d_depth=3, d_emb=16, d_inp=8, n_parts=6, mixup_alpha=0.4)
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(task, _loader(HiddenStates(8)), _loader(HiddenStates(8, seed=1)))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)  # plain values only
    assert checkpoint["hyper_parameters"]["n_classes"] == 3
    restored = SSTCapsuleTask.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    batch = HiddenStates(4, seed=2)[:4]
    task.eval(), restored.eval()
    torch.testing.assert_close(restored(batch), task(batch))


@pytest.mark.slow
def test_sst_task_learns_a_separable_problem() -> None:
    pl.seed_everything(0, verbose=False)
    task = SSTCapsuleTask(n_classes=3, d_depth=3, d_emb=16, d_inp=8, n_parts=6, lr=1e-2, min_lr=1e-4)
    trainer = _trainer(max_epochs=6, num_sanity_val_steps=0)
    trainer.fit(task, _loader(HiddenStates(48), shuffle=True), _loader(HiddenStates(24, seed=5), batch_size=24))
    assert trainer.callback_metrics["val/acc"] >= 0.9


def test_padding_is_ignored_by_the_sst_task() -> None:
    torch.manual_seed(0)
    task = SSTCapsuleTask(n_classes=2, d_depth=3, d_emb=16, d_inp=8, n_parts=4).eval()
    data = HiddenStates(2, n_tok=6)
    batch = data[:2]
    logits = task(batch)
    assert torch.isfinite(logits).all()
    for i in range(2):
        keep = ~batch["padding_mask"][i]
        alone = task({"hidden": batch["hidden"][i : i + 1, keep], "label": batch["label"][i : i + 1]})
        torch.testing.assert_close(alone[0], logits[i])


def test_batch_and_argument_errors() -> None:
    task = SSTCapsuleTask(n_classes=2, d_depth=3, d_emb=16, d_inp=8, n_parts=4)
    batch = HiddenStates(2)[:2]
    with pytest.raises(KeyError, match=r"missing key\(s\) .*hidden"):
        task({"label": batch["label"]})
    with pytest.raises(ValueError, match="no backbone spec"):
        task({"text": ["a", "b"], "label": batch["label"]})
    with pytest.raises(TypeError, match="padding_mask.*torch.bool"):
        task({**batch, "padding_mask": batch["padding_mask"].long()})
    with pytest.raises(ValueError, match=r"padding_mask.*\[2, 6\]"):
        task({**batch, "padding_mask": batch["padding_mask"][:, :3]})
    with pytest.raises(ValueError, match=r"embs: expected \(d_depth, d_emb\) = \(3, 16\)"):
        task({**batch, "hidden": batch["hidden"][..., :8]})
    with pytest.raises(ValueError, match="batch\\['label'\\]: expected classes in 0..1"):
        task.training_step({**batch, "label": torch.tensor([0, 5])}, 0)
    with pytest.raises(ValueError, match="batch\\['label'\\]: expected an int64 tensor"):
        task.training_step({**batch, "label": batch["label"].float()}, 0)
    norb = SmallNORBTask(n_parts=2, d_chns=4)
    with pytest.raises(ValueError, match=r"images: expected 2 channels"):
        norb({"image": torch.rand(1, 3, 96, 96)})
    with pytest.raises(ValueError, match="min_lr"):
        SmallNORBTask(min_lr=1e-2)
    with pytest.raises(ValueError, match="alpha"):
        SmallNORBTask(mixup_alpha=-1.0)
    with pytest.raises(TypeError, match="backbone"):
        SSTCapsuleTask(n_classes=2, backbone="gpt2-large")
