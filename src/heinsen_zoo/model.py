"""RoutingClassifier: a frozen backbone (referenced by spec, built lazily) + a trainable RoutingHead.

Only the head is a submodule, so ``state_dict()`` / ``parameters()`` hold the head alone (keys ``head.W``,
``head.B``, ``head.route.0…``) before and after the backbone is built, ``load_state_dict(strict=True)``
works with head-only state dicts, DDP never sees unused backbone parameters, and checkpoints stay small.
The backbone is built from its spec on the first raw batch, kept outside the module tree, and moved to the
head's device when used.

Batches are dicts: raw vision ``{"image": [B, 3, H, W], ...}``, raw text ``{"text": list[str], ...}`` or
cached hidden states ``{"hidden": [B, n_pos, d_depth, d_emb], "padding_mask": [B, n_pos] (optional), ...}``.

The data path has two steps, and this module is the one place that applies the padding policy:
:meth:`RoutingClassifier.encode` maps a batch to ``(hidden, padding_mask)`` as the head must see them and
:meth:`RoutingClassifier.classify` maps those to logits (``forward = classify ∘ encode``). The training task
(mixup sits between the two steps), the hidden-state cache and :mod:`heinsen_zoo.inference` call them.
``padding="mask"`` gives the padding mask to the head (padded positions are removed); ``padding="none"``
routes every position, the paper's setup (its text backbones pad with hidden states of empty chunks).
For text backbones without a ``pad_mode`` in their spec, "mask" selects ``pad_mode="mask"`` and "none"
selects ``pad_mode="empty_chunk"`` (:func:`encoder_spec`, which the cache uses too).

Example:
    >>> import torch
    >>> from heinsen_zoo.model import RoutingClassifier
    >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
    ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}}
    >>> model = RoutingClassifier(spec, n_classes=3, d_depth=3, d_emb=32, n_hid=8, labels=["a", "b", "c"])
    >>> model({"image": torch.randn(2, 3, 32, 32)}).shape              # raw batch -> [B, n_classes]
    torch.Size([2, 3])
    >>> model({"hidden": torch.randn(2, 5, 3, 32)}).shape              # cached batch
    torch.Size([2, 3])
    >>> sorted(model.state_dict())[:2]                                  # the head only
    ['head.B', 'head.W']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .backbones import FrozenBackbone, build_backbone, check_backbone_spec
from .heads import RoutingHead
from .padding import PADDING_MODES, check_padding, encoder_spec

__all__ = ["PADDING_MODES", "RoutingClassifier", "check_padding", "encoder_spec"]


class _BackboneHolder:
    """Keeps the frozen backbone out of the module tree (no state_dict, parameters, .to(), DDP).

    Copies (``copy.deepcopy`` of the classifier, e.g. for EMA or Lightning internals) share the built
    backbone: it is frozen, so sharing is safe and avoids duplicating gigabytes.
    """

    def __init__(self) -> None:
        self.module: FrozenBackbone | None = None

    def __deepcopy__(self, memo: dict) -> _BackboneHolder:
        clone = _BackboneHolder()
        clone.module = self.module
        return clone

    def __getstate__(self) -> dict:
        return {"module": None}  # pickling never carries the backbone; it is rebuilt from its spec

    def __setstate__(self, state: dict) -> None:
        self.module = None


class RoutingClassifier(nn.Module):
    """A classifier routing a frozen backbone's hidden states to class logits.

    Args:
        backbone: backbone spec (see :func:`heinsen_zoo.backbones.build_backbone`).
        n_classes: number of classes.
        d_depth: hidden states per position of the backbone (layers + 1).
        d_emb: width of the backbone's hidden states.
        n_hid: vectors in the head's hidden routings (default 64).
        labels: optional class names, ``len(labels) == n_classes``.
        padding: "mask" (the head ignores padding) or "none" (route every position, the paper's setup).
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        n_classes: int,
        d_depth: int,
        d_emb: int,
        n_hid: int = 64,
        labels: Sequence[str] | None = None,
        padding: str = "mask",
    ) -> None:
        super().__init__()
        self.backbone_spec = check_backbone_spec(backbone)
        self.padding = check_padding(padding)
        if labels is not None:
            if isinstance(labels, str) or not all(isinstance(label, str) for label in labels):
                raise TypeError(f"labels: expected a sequence of str, got {labels!r:.100}")
            if len(labels) != n_classes:
                raise ValueError(f"labels: expected {n_classes} names (n_classes), got {len(labels)}")
            labels = list(labels)
        self.labels = labels
        self.head = RoutingHead(d_depth=d_depth, d_emb=d_emb, n_classes=n_classes, n_hid=n_hid)
        self._backbone = _BackboneHolder()

    @property
    def n_classes(self) -> int:
        return self.head.n_classes

    def extra_repr(self) -> str:
        built = "built" if self._backbone.module is not None else "not built"
        return f"backbone={self.backbone_spec.get('id')!r} ({built}), padding={self.padding!r}"

    # -- backbone ------------------------------------------------------------------------------------------
    def _build_spec(self) -> dict[str, Any]:
        return encoder_spec(self.backbone_spec, self.padding)

    @property
    def backbone(self) -> FrozenBackbone:
        """The frozen backbone, built from the spec on first access and kept on the head's device."""
        if self._backbone.module is None:
            self._backbone.module = build_backbone(self._build_spec())
            self._check_backbone(self._backbone.module)
        module = self._backbone.module
        device = self.head.W.device
        if module.device != device:
            module.to(device)
        return module

    def built_backbone(self) -> FrozenBackbone | None:
        """The backbone if it was built already, else None (never builds)."""
        return self._backbone.module

    def set_backbone(self, backbone: FrozenBackbone) -> None:
        """Use an already built backbone (e.g. shared between models); it must match d_depth and d_emb."""
        if not isinstance(backbone, FrozenBackbone):
            raise TypeError(f"backbone: expected a FrozenBackbone, got {type(backbone).__name__}")
        self._check_backbone(backbone)
        self._backbone.module = backbone

    def _check_backbone(self, backbone: FrozenBackbone) -> None:
        if (backbone.d_depth, backbone.d_emb) != (self.head.d_depth, self.head.d_emb):
            raise ValueError(
                f"backbone: {self.backbone_spec.get('id')!r} gives hidden states with d_depth={backbone.d_depth}, "
                f"d_emb={backbone.d_emb}, but the head expects d_depth={self.head.d_depth}, d_emb={self.head.d_emb}"
            )

    # -- forward -------------------------------------------------------------------------------------------
    def hidden_states(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden [B, n_pos, d_depth, d_emb], padding_mask [B, n_pos] or None)`` of a raw or cached batch,
        as the backbone gives them (before the padding policy; :meth:`encode` applies it).

        Cached hidden states are moved to the head's device (dtype unchanged); raw inputs go through the
        frozen backbone (built on first use).
        """
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch: expected a dict (raw or cached batch), got {type(batch).__name__}")
        device = self.head.W.device
        if "hidden" in batch:
            hidden = batch["hidden"]
            if not isinstance(hidden, torch.Tensor):
                raise TypeError(
                    f"batch['hidden']: expected a tensor [B, n_pos, d_depth, d_emb], got {type(hidden).__name__}"
                )
            padding_mask = batch.get("padding_mask")
            if padding_mask is not None:
                if not isinstance(padding_mask, torch.Tensor):
                    raise TypeError(
                        f"batch['padding_mask']: expected a bool tensor [B, n_pos], got {type(padding_mask).__name__}"
                    )
                padding_mask = padding_mask.to(device)
            return hidden.to(device), padding_mask
        key = "text" if self.backbone_spec.get("kind") == "text" else "image"
        if key not in batch:
            raise KeyError(
                f"batch: expected key 'hidden' (cached) or {key!r} (raw input of backbone "
                f"{self.backbone_spec.get('id')!r}), got keys {sorted(batch)}"
            )
        return self.backbone(batch[key])

    def encode(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden [B, n_pos, d_depth, d_emb], padding_mask [B, n_pos] or None)`` as the head sees them.

        The padding policy is applied here, once: with ``padding="none"`` the mask is dropped, so the head
        (and mixup, which runs between :meth:`encode` and :meth:`classify`) keeps every position.
        """
        hidden, padding_mask = self.hidden_states(batch)
        return hidden, (padding_mask if self.padding == "mask" else None)

    def classify(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, n_classes]`` of :meth:`encode`'s output (``hidden [B, n_pos, d_depth, d_emb]``,
        ``padding_mask [B, n_pos]`` or None)."""
        return self.head(hidden, padding_mask)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class logits ``[B, n_classes]`` of a raw or cached batch (``classify(*encode(batch))``)."""
        return self.classify(*self.encode(batch))

    @torch.no_grad()
    def predict_proba(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class probabilities ``[B, n_classes]`` (softmax of the logits, computed in float32)."""
        return torch.softmax(self.forward(batch).float(), dim=-1)

    @torch.no_grad()
    def predict(self, batch: Mapping[str, Any]) -> list[str] | torch.Tensor:
        """Predicted class names (when ``labels`` is set) or class indices ``[B]``."""
        index = self.forward(batch).argmax(-1)
        if self.labels is None:
            return index
        return [self.labels[i] for i in index.tolist()]
