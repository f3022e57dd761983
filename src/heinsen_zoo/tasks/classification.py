"""Lightning task that trains a routing head over a frozen backbone (the 2022 paper's regime, SPEC §5).

Only the head trains: the backbone is frozen, in eval mode and under no_grad; RAdam at max lr ``lr`` with a
OneCycleLR schedule (``pct_start``) stepped every optimizer step over ``trainer.estimated_stepping_batches``;
mixup in hidden-state space (one ``r ~ Beta(alpha, alpha)`` per example, partner = example i + 1,
see :mod:`heinsen_zoo.tasks.mixup`) and soft-target cross-entropy. Validation/test log plain cross-entropy
and top-k accuracy (``val/acc``, ``val/acc_top5``, ``test/acc``, ...) and the number of examples scored
(``val/n_examples``, ``test/n_examples``, summed over every process).

Hyperparameters are plain values only (dicts, lists, strings, numbers), so checkpoints load with
``torch.load(weights_only=True)`` and LightningCLI configs stay flat. Checkpoints hold the head only
(keys ``model.head.*``): the backbone is rebuilt from the ``backbone`` spec in the hyperparameters. The
mixup generator state rides along in the checkpoint so a resumed run continues bit-identically.

Fine-tuning (SST-5 → SST-2 recipe): ``init_from`` (a zoo name, an export directory or a Lightning
``.ckpt`` of this task) loads a trained head at the start of fit; ``replace_last=True`` keeps a fresh
``route.2`` (e.g. for a new number of classes); ``freeze="all_but_last"`` trains ``route.2`` only.

Example:
    >>> import torch
    >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
    ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 8, "num_heads": 2}}
    >>> task = RoutingClassificationTask(spec, n_classes=3, d_depth=2, d_emb=8, n_hid=4, top_k=[1, 2])
    >>> batch = {"hidden": torch.randn(2, 5, 2, 8), "label": torch.tensor([0, 2])}   # a cached batch
    >>> task.model(batch).shape                          # logits [batch, n_classes]
    torch.Size([2, 3])
    >>> sorted(task.state_dict())[:2]                    # the head only
    ['model.head.B', 'model.head.W']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from heinsen_zoo.model import RoutingClassifier, check_padding

from .counting import ExampleCounter
from .export_head import ExportPretrainedHead
from .init_from import HEAD_PREFIX, read_head_state
from .losses import soft_target_cross_entropy
from .mixup import HiddenStateMixup
from .positions import PositionSampler
from .rng import RNG_STATE_KEY, restore_rng_states, rng_states

__all__ = ["ExportPretrainedHead", "RoutingClassificationTask", "read_head_state"]

LAST_ROUTING_PREFIX = "route.2."
FREEZE_CHOICES = ("none", "all_but_last")
MIXUP_STATE_KEY = "heinsen_zoo_mixup_state"
POSITIONS_STATE_KEY = "heinsen_zoo_positions_state"


def _metric_name(k: int) -> str:
    return "acc" if k == 1 else f"acc_top{k}"


class RoutingClassificationTask(pl.LightningModule):
    """Train a :class:`heinsen_zoo.model.RoutingClassifier` head over a frozen backbone.

    Args:
        backbone: backbone spec (plain dict, see ``heinsen_zoo.backbones.build_backbone``).
        n_classes: number of classes (>= 2).
        d_depth: backbone depth (layers + 1) of the stacked hidden states.
        d_emb: hidden size of the backbone.
        n_hid: number of hidden routed vectors (64 in the paper).
        labels: class names (``len == n_classes``) or None.
        padding: ``"mask"`` (padding_mask removes padded positions) or ``"none"`` (the head sees them).
        lr: maximum learning rate of the one-cycle schedule.
        pct_start: fraction of the steps spent warming up.
        mixup_alpha: Beta concentration of hidden-state mixup (0.2 images, 0.65 text); None or 0 disables.
        top_k: the k of each top-k accuracy logged (``[1, 5]`` for ImageNet); top-1 is always included.
        freeze: ``"none"`` or ``"all_but_last"`` (only ``route.2`` trains).
        init_from: zoo name, export directory or ``.ckpt`` whose head initialises this one at fit start.
        replace_last: with ``init_from``, keep a freshly initialised ``route.2`` (new class count).
        export_dir: when set, the trained head is exported there (``save_pretrained`` format) at fit end.
        preprocessing: JSON-able input preprocessing recorded in the export's ``config.json`` (e.g.
            ``heinsen_zoo.data.transforms.preprocessing_config("cifar")``); None = the datamodule's
            ``preprocessing`` attribute at export time, if it has one.
        train_positions: route a random subset of this many positions per example in each training step
            (:mod:`heinsen_zoo.tasks.positions`; an augmentation that divides the head's training cost by
            ~``n_pos / train_positions``); None = every position. Evaluation always routes every position.

    Example:
        >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
        ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 8, "num_heads": 2}}
        >>> task = RoutingClassificationTask(spec, n_classes=4, d_depth=2, d_emb=8, n_hid=4, freeze="all_but_last")
        >>> sorted({name[:7] for name, p in task.model.head.named_parameters() if p.requires_grad})
        ['route.2']
    """

    def __init__(
        self,
        backbone: dict,
        n_classes: int,
        d_depth: int,
        d_emb: int,
        n_hid: int = 64,
        labels: list[str] | None = None,
        padding: str = "mask",
        lr: float = 1e-3,
        pct_start: float = 0.3,
        mixup_alpha: float | None = 0.2,
        top_k: list[int] | None = None,
        freeze: str = "none",
        init_from: str | None = None,
        replace_last: bool = False,
        export_dir: str | None = None,
        preprocessing: dict | None = None,
        train_positions: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, Mapping):
            raise TypeError(f"backbone: expected a dict backbone spec, got {type(backbone).__name__}")
        if preprocessing is not None and not isinstance(preprocessing, Mapping):
            raise TypeError(f"preprocessing: expected a dict or None, got {type(preprocessing).__name__}")
        top_k = [1] if top_k is None else top_k
        self._validate_args(
            n_classes, padding, lr, pct_start, mixup_alpha, top_k, freeze, init_from, replace_last
        )
        self.save_hyperparameters()
        self.hparams.top_k = [1] + [int(k) for k in top_k if k != 1]  # top-1 ("acc") is always logged
        self.hparams.labels = list(labels) if labels is not None else None
        self.hparams.backbone = dict(backbone)
        self.hparams.preprocessing = dict(preprocessing) if preprocessing is not None else None

        self.model = RoutingClassifier(
            backbone=dict(backbone),
            n_classes=n_classes,
            d_depth=d_depth,
            d_emb=d_emb,
            n_hid=n_hid,
            labels=self.hparams.labels,
            padding=padding,
        )
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{_metric_name(k)}": MulticlassAccuracy(
                    num_classes=n_classes, top_k=k, average="micro"
                )
                for stage in ("val", "test")
                for k in self.hparams.top_k
            }
        )
        # <stage>/n_examples: how many examples the reported numbers were computed on
        self.example_counter = ExampleCounter()
        # One mixing-ratio generator, seeded from torch's seed (seed_everything makes runs reproducible);
        # its state is saved in checkpoints so a resumed run draws the same ratios.
        self.mixup = HiddenStateMixup(mixup_alpha, seed=torch.initial_seed())
        # Its own generator too (a different stream), saved in checkpoints like the mixup generator's.
        self.position_sampler = PositionSampler(train_positions, seed=torch.initial_seed() + 1)
        self.reinitialized_keys: list[str] = []
        self._head_initialized = init_from is None
        self._apply_freeze()

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _validate_args(
        n_classes: int,
        padding: str,
        lr: float,
        pct_start: float,
        mixup_alpha: float | None,
        top_k: Sequence[int],
        freeze: str,
        init_from: str | None,
        replace_last: bool,
    ) -> None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes: expected an int >= 2, got {n_classes!r}")
        check_padding(padding)
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr: expected a finite float > 0, got {lr!r}")
        if not isinstance(pct_start, (int, float)) or not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start: expected a float in (0, 1), got {pct_start!r}")
        if mixup_alpha is not None and (
            not isinstance(mixup_alpha, (int, float)) or not math.isfinite(mixup_alpha) or mixup_alpha < 0
        ):
            raise ValueError(f"mixup_alpha: expected None or a finite float >= 0, got {mixup_alpha!r}")
        if isinstance(top_k, (str, bytes)) or not isinstance(top_k, Sequence) or len(top_k) == 0:
            raise ValueError(f"top_k: expected a non-empty list of ints, got {top_k!r}")
        for k in top_k:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_classes:
                raise ValueError(f"top_k: expected ints in [1, n_classes={n_classes}], got {list(top_k)!r}")
        if len(set(top_k)) != len(top_k):
            raise ValueError(f"top_k: expected distinct values, got {list(top_k)!r}")
        if freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze: expected one of {FREEZE_CHOICES}, got {freeze!r}")
        if replace_last and not init_from:
            raise ValueError(
                "replace_last: True needs init_from (a head to load everything but route.2 from)"
            )

    def _apply_freeze(self) -> None:
        """``freeze="all_but_last"``: only ``route.2.*`` keeps requires_grad (the backbone is frozen anyway)."""
        if self.hparams.freeze == "none":
            return
        names = [name for name, _ in self.model.head.named_parameters()]
        if not any(name.startswith(LAST_ROUTING_PREFIX) for name in names):
            raise ValueError(
                f"freeze: 'all_but_last' needs head parameters '{LAST_ROUTING_PREFIX}*', got {names}"
            )
        for name, param in self.model.head.named_parameters():
            param.requires_grad_(name.startswith(LAST_ROUTING_PREFIX))

    # ------------------------------------------------------------------ fine-tuning
    def load_initial_weights(self) -> list[str]:
        """Load the head named by ``init_from``; returns the keys left re-initialised (``route.2.*``).

        Called automatically at the start of fit unless the run resumes from a checkpoint. With
        ``replace_last`` every key except ``route.2.*`` must match exactly (names and shapes); without it,
        all keys must.
        """
        source = self.hparams.init_from
        if not source:
            raise ValueError("init_from: not set, nothing to load")
        state, spec = read_head_state(source)
        if spec is not None and dict(spec) != dict(self.hparams.backbone):
            rank_zero_warn(
                f"init_from: {source!r} was trained over backbone {dict(spec)}, this task uses "
                f"{dict(self.hparams.backbone)}; loading the head anyway"
            )
        own = self.model.head.state_dict()
        replace = bool(self.hparams.replace_last)
        keep = {k for k in own if not (replace and k.startswith(LAST_ROUTING_PREFIX))}
        incoming = {k: v for k, v in state.items() if not (replace and k.startswith(LAST_ROUTING_PREFIX))}
        missing, unexpected = sorted(keep - set(incoming)), sorted(set(incoming) - keep)
        if missing or unexpected:
            raise ValueError(
                f"init_from: head keys of {source!r} do not match this head: missing {missing}, "
                f"unexpected {unexpected}"
            )
        for key in sorted(keep):
            if tuple(incoming[key].shape) != tuple(own[key].shape):
                hint = (
                    " (a new class count? set replace_last=True)"
                    if key.startswith(LAST_ROUTING_PREFIX)
                    else ""
                )
                raise ValueError(
                    f"init_from: {key} has shape {list(incoming[key].shape)} in {source!r}, this head expects "
                    f"{list(own[key].shape)}{hint}"
                )
        with torch.no_grad():
            for key in sorted(keep):
                own[key].copy_(incoming[key].to(dtype=own[key].dtype))
        self.reinitialized_keys = sorted(set(own) - keep)
        self._head_initialized = True
        if self.reinitialized_keys:
            rank_zero_info(f"init_from: loaded {source!r}; re-initialised {self.reinitialized_keys}")
        else:
            rank_zero_info(f"init_from: loaded every head key from {source!r}")
        return self.reinitialized_keys

    # ------------------------------------------------------------------ frozen backbone
    def train(self, mode: bool = True) -> RoutingClassificationTask:
        """Switch the head's mode; a built backbone stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        backbone = self.model.built_backbone() if hasattr(self.model, "built_backbone") else None
        if isinstance(backbone, nn.Module):
            backbone.eval()
        return self

    # ------------------------------------------------------------------ steps
    def _labels(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"batch: expected a dict (see heinsen_zoo batch contract), got {type(batch).__name__}"
            )
        if "label" not in batch:
            raise KeyError(f"batch: a {stage} batch needs key 'label', got keys {sorted(batch)}")
        labels = batch["label"]
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dtype.is_floating_point
            or labels.dtype == torch.bool
        ):
            raise TypeError(
                f"batch['label']: expected an integer tensor [batch], got {getattr(labels, 'dtype', type(labels))}"
            )
        if labels.dim() != 1:
            raise ValueError(f"batch['label']: expected shape [batch], got {list(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.hparams.n_classes):
            raise ValueError(
                f"batch['label']: expected class indices in [0, {self.hparams.n_classes}), got min "
                f"{int(labels.min())}, max {int(labels.max())}"
            )
        return labels.long()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        labels = self._labels(batch, "training")
        with torch.no_grad():  # the padding policy is the model's (encode); mixup keeps what the head sees
            hidden, padding_mask = self.model.encode(batch)  # [B, n_pos, d_depth, d_emb], [B, n_pos] or None
            hidden, padding_mask = self.position_sampler(hidden, padding_mask)  # [B, k, ...] when enabled
        targets = F.one_hot(labels, self.hparams.n_classes).to(torch.float32)  # [B, n_classes]
        if self.mixup.enabled:
            hidden, padding_mask, targets = self.mixup(hidden, padding_mask, targets)
        logits = self.model.classify(hidden, padding_mask)  # [B, n_classes]
        loss = soft_target_cross_entropy(logits, targets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=labels.shape[0])
        return loss

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        labels = self._labels(batch, stage)
        logits = self.model(batch)  # [B, n_classes]
        loss = F.cross_entropy(logits.float(), labels)
        size = labels.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=size)
        for k in self.hparams.top_k:
            name = _metric_name(k)
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(logits.detach(), labels)
            self.log(f"{stage}/{name}", metric, prog_bar=True, on_step=False, on_epoch=True, batch_size=size)
        self.example_counter.update(stage, labels)
        self.example_counter.log(self, stage, size)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def predict_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """``{"probs": [B, n_classes], "pred": [B]}`` plus ``"pred_label"`` (names, when ``labels`` is set)
        and the batch's ``"label"``/``"index"`` when present."""
        logits = self.model(batch)
        probs = logits.float().softmax(dim=-1)
        pred = probs.argmax(dim=-1)
        out: dict[str, Any] = {"probs": probs, "pred": pred}
        if self.hparams.labels is not None:
            out["pred_label"] = [self.hparams.labels[i] for i in pred.tolist()]
        for key in ("label", "index"):
            if isinstance(batch, Mapping) and key in batch:
                out[key] = batch[key]
        return out

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.head.parameters() if p.requires_grad]
        if not params:
            raise ValueError("configure_optimizers: no trainable head parameters (check freeze)")
        optimizer = torch.optim.RAdam(params, lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                f"configure_optimizers: OneCycleLR needs a finite number of steps, the trainer estimates {total}; "
                "set max_epochs or max_steps"
            )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=int(total), pct_start=self.hparams.pct_start
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------------------ fit hooks
    def on_fit_start(self) -> None:
        if not self._head_initialized:
            self.load_initial_weights()

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.hparams.export_dir:
            return [ExportPretrainedHead(self.hparams.export_dir)]
        return []

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep head keys only (the backbone comes back from the spec), the mixup generator state and the
        global random states (:mod:`heinsen_zoo.tasks.rng`)."""
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
        if not checkpoint["state_dict"]:
            raise RuntimeError(
                f"on_save_checkpoint: no '{HEAD_PREFIX}*' keys in the state dict {sorted(state)[:5]}"
            )
        checkpoint[MIXUP_STATE_KEY] = self.mixup.state_dict()
        checkpoint[POSITIONS_STATE_KEY] = self.position_sampler.state_dict()
        checkpoint[RNG_STATE_KEY] = rng_states()  # augmentations draw from them: exact resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        foreign = sorted(k for k in state if not k.startswith(HEAD_PREFIX))
        if foreign:
            raise ValueError(
                f"checkpoint: expected head keys '{HEAD_PREFIX}*' only (backbones are never saved), "
                f"got {foreign[:5]}{' ...' if len(foreign) > 5 else ''}"
            )
        if MIXUP_STATE_KEY in checkpoint:
            self.mixup.load_state_dict(checkpoint[MIXUP_STATE_KEY])
        if POSITIONS_STATE_KEY in checkpoint:
            self.position_sampler.load_state_dict(checkpoint[POSITIONS_STATE_KEY])
        if RNG_STATE_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_STATE_KEY])
        self._head_initialized = True  # resumed weights win over init_from

    # ------------------------------------------------------------------ export
    def export(
        self,
        directory: str | Path,
        metrics: Mapping[str, float] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the head in the zoo's export format (``config.json`` + ``model.safetensors``).

        ``preprocessing`` defaults to the ``preprocessing`` hyperparameter; ``metrics`` go to
        ``config.json["metrics"]``.
        """
        from heinsen_zoo.zoo import hub  # lazy: only needed when exporting

        extra: dict[str, Any] = {}
        if metrics:
            extra["metrics"] = {k: float(v) for k, v in metrics.items()}
        preprocessing = preprocessing if preprocessing is not None else self.hparams.preprocessing
        if preprocessing is not None:
            extra["preprocessing"] = dict(preprocessing)
        return Path(hub.save_pretrained(self.model, directory, extra_config=extra or None))
