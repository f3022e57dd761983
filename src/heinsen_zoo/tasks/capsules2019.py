"""Lightning tasks of the 2019 paper's regime (SPEC §6): the capsule classifiers trained end to end.

Regime: RAdam at max lr ``lr`` (5e-4); a one-cycle schedule over all optimizer steps with ``pct_start`` (10%)
warm-up from ``min_lr`` and cosine decay back to ``min_lr`` (1e-5), momentum (RAdam's beta1) cycled
0.95 → 0.85 → 0.95; soft-target cross-entropy on the class logits ``a_out``; mixup with one ratio
``r ~ Beta(mixup_alpha, mixup_alpha)`` per example and example i + 1 as the partner of example i
(:mod:`heinsen_zoo.tasks.mixup`). Metrics: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
``test/loss``, ``test/acc`` (torchmetrics accuracy), ``val/n_examples``, ``test/n_examples`` (examples scored).

* :class:`SmallNORBTask` trains :class:`~heinsen_zoo.capsules2019.SmallNORBClassifier` on batches
  ``{"image": [B, 2, 96, 96], "label": [B], ...}`` (e.g. :class:`~heinsen_zoo.data.smallnorb.SmallNORBDataModule`),
  with mixup on the images (alpha 0.2). Paper: batch 20, 50 epochs.
* :class:`SSTCapsuleTask` trains :class:`~heinsen_zoo.capsules2019.SSTClassifier` on cached GPT-2-large hidden
  states ``{"hidden": [B, n_tok, 37, 1280], "padding_mask": [B, n_tok] (True = pad, optional), "label": [B]}``
  (the model gets ``mask = ~padding_mask`` as float, ``embs = hidden``), or on raw ``{"text": list[str], ...}``
  batches when a ``backbone`` spec (e.g. ``PAPER_BACKBONES["gpt2-large"]``) is given: the frozen backbone is
  then built on first use and never saved. Paper: batch 20, 3 epochs; mixup is off by default (``mixup_alpha``
  0; the paper's mixup is on images), and when on it mixes hidden states and takes the union of the padding.

Hyperparameters are plain values (numbers, strings, dicts), so checkpoints load with ``weights_only=True``.

Example:
    >>> import torch
    >>> task = SSTCapsuleTask(n_classes=3, d_depth=2, d_emb=8, d_inp=4, n_parts=4)
    >>> batch = {"hidden": torch.randn(2, 5, 2, 8), "padding_mask": torch.zeros(2, 5, dtype=torch.bool),
    ...          "label": torch.tensor([0, 2])}
    >>> task(batch).shape                                   # class logits a_out [batch, n_classes]
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from heinsen_zoo.capsules2019 import SmallNORBClassifier, SSTClassifier

from .counting import ExampleCounter
from .losses import soft_target_cross_entropy
from .mixup import HiddenStateMixup
from .rng import RNG_STATE_KEY, restore_rng_states, rng_states

__all__ = ["SSTCapsuleTask", "SmallNORBTask", "one_cycle_schedule"]

MIXUP_STATE_KEY = "heinsen_zoo_mixup_state"


def one_cycle_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, lr: float, min_lr: float, pct_start: float
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR from ``min_lr`` up to ``lr`` over ``pct_start`` of ``total_steps``, then cosine down to ``min_lr``
    (``div_factor = lr / min_lr``, ``final_div_factor = 1``), cycling momentum (beta1) 0.95 → 0.85 → 0.95.

    Example:
        >>> opt = torch.optim.RAdam([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
        >>> sched = one_cycle_schedule(opt, total_steps=100, lr=5e-4, min_lr=1e-5, pct_start=0.1)
        >>> lrs = []
        >>> for _ in range(100):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
        >>> round(lrs[0], 8), round(max(lrs), 8), round(lrs[-1], 7)
        (1e-05, 0.0005, 1e-05)
    """
    if not math.isfinite(total_steps) or total_steps < 1:
        raise ValueError(
            f"total_steps: the one-cycle schedule needs a finite number of steps >= 1, got {total_steps}; "
            "set the trainer's max_epochs or max_steps"
        )
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        total_steps=int(total_steps),
        pct_start=pct_start,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=lr / min_lr,
        final_div_factor=1.0,
    )


def _check_regime(
    lr: float, min_lr: float, pct_start: float, mixup_alpha: float | None, weight_decay: float
) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a float > 0, got {lr!r}")
    if not (isinstance(min_lr, (int, float)) and 0 < min_lr <= lr):
        raise ValueError(f"min_lr: expected a float in (0, lr={lr}], got {min_lr!r}")
    if not (isinstance(pct_start, (int, float)) and 0 < pct_start < 1):
        raise ValueError(f"pct_start: expected a float in (0, 1), got {pct_start!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay: expected a float >= 0, got {weight_decay!r}")
    HiddenStateMixup(mixup_alpha)  # validates alpha


def _check_batch(batch: object, keys: tuple[str, ...], layout: str) -> Mapping[str, Any]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch: expected a dict {layout}, got {type(batch).__name__}")
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(f"batch: missing key(s) {missing}; expected {layout}, got keys {sorted(batch)}")
    return batch


class _CapsuleTask(pl.LightningModule):
    """Shared training loop: RAdam + one cycle, mixup, soft-target cross-entropy, accuracy metrics."""

    model: torch.nn.Module

    def _setup_regime(self, n_classes: int, mixup_alpha: float | None) -> None:
        self.mixup = HiddenStateMixup(mixup_alpha, seed=torch.initial_seed())
        self.train_acc = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.example_counter = ExampleCounter()  # <stage>/n_examples over every process

    def _inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, padding_mask or None)`` of a batch, before mixup."""
        raise NotImplementedError

    def _logits(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Class logits ``a_out`` [B, n_classes]."""
        raise NotImplementedError

    def _labels(self, batch: Mapping[str, Any], n: int) -> torch.Tensor:
        labels = batch["label"]
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.shape != (n,):
            raise ValueError(
                f"batch['label']: expected an int64 tensor of shape [{n}], got "
                f"{getattr(labels, 'dtype', type(labels).__name__)} {list(getattr(labels, 'shape', []))}"
            )
        n_classes = self.hparams.get("n_objs", self.hparams.get("n_classes"))
        if n and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(
                f"batch['label']: expected classes in 0..{n_classes - 1}, got {labels.tolist()[:10]}"
            )
        return labels

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class logits ``a_out`` [B, n_classes] of a batch dict."""
        x, padding_mask = self._inputs(batch)
        return self._logits(x, padding_mask)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        x, padding_mask = self._inputs(batch)
        labels = self._labels(batch, x.shape[0])
        n_classes = self.train_acc.num_classes
        targets = F.one_hot(labels, n_classes).to(torch.float32)  # [B, n_classes]
        x, padding_mask, targets = self.mixup(x, padding_mask, targets)
        logits = self._logits(x, padding_mask)
        loss = soft_target_cross_entropy(logits, targets)
        self.train_acc(logits.detach().argmax(-1), targets.argmax(-1))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: Mapping[str, Any], stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, padding_mask = self._inputs(batch)
        labels = self._labels(batch, x.shape[0])
        logits = self._logits(x, padding_mask)
        loss = F.cross_entropy(logits.float(), labels)
        metric(logits.argmax(-1), labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.example_counter.update(stage, labels)
        self.example_counter.log(self, stage, len(labels))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.RAdam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.hparams.lr,
            betas=(0.95, 0.999),
            weight_decay=self.hparams.weight_decay,
        )
        scheduler = one_cycle_schedule(
            optimizer,
            self.trainer.estimated_stepping_batches,
            self.hparams.lr,
            self.hparams.min_lr,
            self.hparams.pct_start,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MIXUP_STATE_KEY] = self.mixup.state_dict()
        checkpoint[RNG_STATE_KEY] = rng_states()  # augmentations draw from them: exact resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if MIXUP_STATE_KEY in checkpoint:
            self.mixup.load_state_dict(checkpoint[MIXUP_STATE_KEY])
        if RNG_STATE_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_STATE_KEY])


class SmallNORBTask(_CapsuleTask):
    """Train :class:`SmallNORBClassifier` end to end on smallNORB (2019 regime, SPEC §6).

    Args:
        n_objs, n_parts, d_chns: the classifier's sizes (paper: 5, 64, 64).
        lr: max learning rate (5e-4). min_lr: start and end learning rate (1e-5).
        pct_start: warm-up fraction of all steps (0.1). mixup_alpha: Beta(α, α) image mixup (0.2; 0/None off).
        weight_decay: RAdam weight decay (0).

    Example:
        >>> import torch
        >>> task = SmallNORBTask(n_parts=4, d_chns=8)
        >>> task({"image": torch.rand(2, 2, 96, 96), "label": torch.tensor([0, 1])}).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        n_objs: int = 5,
        n_parts: int = 64,
        d_chns: int = 64,
        lr: float = 5e-4,
        min_lr: float = 1e-5,
        pct_start: float = 0.1,
        mixup_alpha: float | None = 0.2,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        _check_regime(lr, min_lr, pct_start, mixup_alpha, weight_decay)
        self.save_hyperparameters()
        self.model = SmallNORBClassifier(n_objs=n_objs, n_parts=n_parts, d_chns=d_chns)
        self._setup_regime(n_objs, mixup_alpha)

    def _inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, None]:
        batch = _check_batch(batch, ("image",), '{"image": [B, 2, 96, 96], "label": [B]}')
        image = batch["image"]
        if not isinstance(image, torch.Tensor) or image.dim() != 4:
            raise ValueError(
                f"batch['image']: expected a tensor of shape [B, 2, H, W], got {list(getattr(image, 'shape', []))}"
            )
        return image, None

    def _logits(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return self.model(x)[0]


class SSTCapsuleTask(_CapsuleTask):
    """Train :class:`SSTClassifier` on GPT-2-large hidden states (2019 regime, SPEC §6).

    Args:
        n_classes: 5 (SST-5) or 2 (SST-2).
        d_depth, d_emb, d_inp, d_cap, n_parts: the classifier's sizes (paper: 37, 1280, 64, 2, 64); tiny values
            make tests fast.
        lr, min_lr, pct_start, weight_decay: as :class:`SmallNORBTask`.
        mixup_alpha: hidden-state mixup (default 0: off).
        backbone: optional backbone spec (plain dict, see :func:`heinsen_zoo.backbones.build_backbone`) used for
            raw ``{"text": list[str]}`` batches; cached ``{"hidden": ...}`` batches never need it.

    Example:
        >>> task = SSTCapsuleTask(n_classes=2, d_depth=2, d_emb=8)
        >>> sorted(task.state_dict())[:2]
        ['model.depth_emb', 'model.detect_parts.0.bias']
    """

    def __init__(
        self,
        n_classes: int,
        d_depth: int = 37,
        d_emb: int = 1280,
        d_inp: int = 64,
        d_cap: int = 2,
        n_parts: int = 64,
        lr: float = 5e-4,
        min_lr: float = 1e-5,
        pct_start: float = 0.1,
        mixup_alpha: float | None = 0.0,
        weight_decay: float = 0.0,
        backbone: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check_regime(lr, min_lr, pct_start, mixup_alpha, weight_decay)
        if backbone is not None and not isinstance(backbone, dict):
            raise TypeError(f"backbone: expected a backbone spec dict or None, got {type(backbone).__name__}")
        self.save_hyperparameters()
        self.model = SSTClassifier(
            d_depth=d_depth, d_emb=d_emb, d_inp=d_inp, d_cap=d_cap, n_parts=n_parts, n_classes=n_classes
        )
        self._setup_regime(n_classes, mixup_alpha)
        self._backbone: list[
            torch.nn.Module
        ] = []  # built lazily; in a list so it is no submodule (never saved)

    def _hidden_from_text(self, texts: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.hparams.backbone is None:
            raise ValueError(
                "batch: got raw 'text' but no backbone spec; pass backbone=... (e.g. "
                "heinsen_zoo.backbones.PAPER_BACKBONES['gpt2-large']) or feed cached {'hidden', 'padding_mask'} batches"
            )
        if not self._backbone:
            from heinsen_zoo.backbones import build_backbone

            self._backbone.append(build_backbone(self.hparams.backbone).to(self.device))
        backbone = self._backbone[0]
        if (backbone.d_depth, backbone.d_emb) != (self.hparams.d_depth, self.hparams.d_emb):
            raise ValueError(
                f"backbone: gives hidden states with (d_depth, d_emb) = ({backbone.d_depth}, {backbone.d_emb}), "
                f"the model expects ({self.hparams.d_depth}, {self.hparams.d_emb})"
            )
        return backbone(texts)

    def _inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        layout = '{"hidden": [B, n_tok, d_depth, d_emb], "padding_mask": [B, n_tok] (optional), "label": [B]}'
        if isinstance(batch, Mapping) and "hidden" not in batch and "text" in batch:
            hidden, padding_mask = self._hidden_from_text(batch["text"])
        else:
            batch = _check_batch(batch, ("hidden",), layout)
            hidden, padding_mask = batch["hidden"], batch.get("padding_mask")
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 4:
            raise ValueError(
                f"batch['hidden']: expected a tensor of shape [B, n_tok, d_depth, d_emb], "
                f"got {list(getattr(hidden, 'shape', []))}"
            )
        if padding_mask is not None:
            if not isinstance(padding_mask, torch.Tensor) or padding_mask.dtype != torch.bool:
                raise TypeError(
                    "batch['padding_mask']: expected a torch.bool tensor (True = padding), got "
                    f"{getattr(padding_mask, 'dtype', type(padding_mask).__name__)}"
                )
            if padding_mask.shape != hidden.shape[:2]:
                raise ValueError(
                    f"batch['padding_mask']: expected shape [B, n_tok] = {list(hidden.shape[:2])}, "
                    f"got {list(padding_mask.shape)}"
                )
        return hidden, padding_mask

    def _logits(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x.to(self.model.depth_emb.dtype)
        if padding_mask is None:
            mask = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)  # [B, n_tok]
        else:
            x = x.masked_fill(
                padding_mask[:, :, None, None], 0.0
            )  # caches may hold anything (even NaN) at padding
            mask = (~padding_mask).to(x.dtype)  # [B, n_tok], 1 = token
        return self.model(mask, x)[0]
