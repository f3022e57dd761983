"""RoutingHead: the 2022 paper's classification head over a frozen transformer's hidden states (SPEC §5).

The head takes the hidden states of every layer of a frozen transformer, ``[..., n_pos, d_depth, d_emb]``
(d_depth = layers + 1, the embedding output included), and

1. normalizes each hidden state (``normalize``: LayerNorm over d_emb without affine parameters), then
   applies a learned per-depth affine map ``x · W + B`` (``W`` [d_depth, d_emb] ones, ``B`` zeros);
2. flattens positions and depths to ``n_pos · d_depth`` input vectors, position-major
   (input index = pos · d_depth + depth);
3. routes them (``route``, three :class:`heinsen_routing.EfficientVectorRouting`):
   (variable n → n_hid, d_emb → d_emb), (n_hid → n_hid, d_emb → d_emb), (n_hid → n_classes, d_emb → 1),
   and squeezes the last output to class logits ``[..., n_classes]``.

Padding: ``padding_mask [..., n_pos]`` (True = padding) is expanded over depth to ``[..., n_pos · d_depth]``
and given to the first routing, which removes those inputs; a padded batch gives the same logits as each
sequence alone, unpadded. Padded hidden states are zeroed first, so their values (even NaN) never reach
the outputs or the gradients.

The parameter names (``W``, ``B``, ``route.0.*`` … ``route.2.*``) are those of the published heads.

Example:
    >>> import torch
    >>> from heinsen_zoo.heads import RoutingHead
    >>> head = RoutingHead(d_depth=3, d_emb=16, n_classes=4, n_hid=8)
    >>> hidden = torch.randn(2, 10, 3, 16)                 # [batch, n_pos, d_depth, d_emb]
    >>> padding_mask = torch.zeros(2, 10, dtype=torch.bool)
    >>> padding_mask[1, 7:] = True                          # the second sequence has 7 positions
    >>> head(hidden, padding_mask).shape                    # [batch, n_classes]
    torch.Size([2, 4])
    >>> logits, phis = head(hidden, return_phis=True)
    >>> [tuple(p.shape) for p in phis]                      # φ of each routing [batch, n_inp, n_out]
    [(2, 30, 8), (2, 8, 8), (2, 8, 4)]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from heinsen_routing import EfficientVectorRouting
from heinsen_routing.credit import collect_phis
from heinsen_routing.masks import padding_or_none
from heinsen_routing.validation import check_bool_mask, check_dim, check_floating, check_nonempty, check_rank
from heinsen_zoo.zoo.architectures import Architecture, register_architecture

__all__ = ["RoutingHead"]


def _check_size(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


class RoutingHead(nn.Module):
    """Classify ``[..., n_pos, d_depth, d_emb]`` hidden states by routing them to class logits.

    Args:
        d_depth: number of stacked hidden states per position (layers + 1).
        d_emb: width of each hidden state.
        n_classes: number of classes (>= 2).
        n_hid: number of vectors of the two hidden routings (default 64, the paper's).
    """

    def __init__(self, d_depth: int, d_emb: int, n_classes: int, n_hid: int = 64) -> None:
        super().__init__()
        self.d_depth = _check_size("d_depth", d_depth, 1)
        self.d_emb = _check_size("d_emb", d_emb, 2)
        self.n_classes = _check_size("n_classes", n_classes, 2)
        self.n_hid = _check_size("n_hid", n_hid, 2)
        self.normalize = nn.LayerNorm(d_emb, elementwise_affine=False)
        self.W = nn.Parameter(torch.ones(d_depth, d_emb))
        self.B = nn.Parameter(torch.zeros(d_depth, d_emb))
        self.route = nn.Sequential(
            EfficientVectorRouting(n_inp=-1, n_out=n_hid, d_inp=d_emb, d_out=d_emb),
            EfficientVectorRouting(n_inp=n_hid, n_out=n_hid, d_inp=d_emb, d_out=d_emb),
            EfficientVectorRouting(n_inp=n_hid, n_out=n_classes, d_inp=d_emb, d_out=1),
        )

    def extra_repr(self) -> str:
        return f"d_depth={self.d_depth}, d_emb={self.d_emb}, n_classes={self.n_classes}, n_hid={self.n_hid}"

    def _check(self, hidden: object, padding_mask: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        layout = f"[..., n_pos, d_depth={self.d_depth}, d_emb={self.d_emb}]"
        hidden = check_floating("hidden", hidden)
        check_rank("hidden", hidden, 3, layout)
        check_dim("hidden", hidden, -2, self.d_depth, "d_depth", layout)
        check_dim("hidden", hidden, -1, self.d_emb, "d_emb", layout)
        check_nonempty("hidden", hidden, -3, "position (n_pos >= 1)")
        if padding_mask is None:
            return hidden, None
        padding_mask = check_bool_mask("padding_mask", padding_mask)
        expected = list(hidden.shape[:-2])
        if list(padding_mask.shape) != expected:
            raise ValueError(
                f"padding_mask: expected shape [..., n_pos] = {expected} (hidden's leading dims, hidden shape "
                f"{list(hidden.shape)}), got {list(padding_mask.shape)}"
            )
        if padding_mask.device != hidden.device:
            raise ValueError(
                f"padding_mask: expected device {hidden.device} (that of hidden), got {padding_mask.device}"
            )
        return hidden, padding_mask

    def forward(
        self,
        hidden: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        return_phis: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[..., n_classes]`` (and, with ``return_phis``, the φ of each routing).

        Args:
            hidden: ``[..., n_pos, d_depth, d_emb]``, any floating dtype (cast to the head's dtype).
            padding_mask: bool ``[..., n_pos]``, True = padding, or None.
            return_phis: also return ``[φ1 [..., n_pos·d_depth, n_hid], φ2 [..., n_hid, n_hid],
                φ3 [..., n_hid, n_classes]]`` for credit assignment (heinsen_routing.credit).
        """
        hidden, padding_mask = self._check(hidden, padding_mask)
        padding_mask = padding_or_none(padding_mask)  # None when nothing is padding: no masking passes at all
        copied = hidden.dtype != self.W.dtype
        if copied:
            hidden = hidden.to(self.W.dtype)  # e.g. an fp16 cache: the one copy, then masked in place
        if padding_mask is not None:
            pad = padding_mask[..., None, None]  # [..., n_pos, 1, 1]
            hidden = hidden.masked_fill_(pad, 0.0) if copied else hidden.masked_fill(pad, 0.0)
        x = self.normalize(hidden) * self.W + self.B  # [..., n_pos, d_depth, d_emb]
        x = x.flatten(-3, -2)  # [..., n_pos * d_depth, d_emb], index = pos * d_depth + depth
        kwargs = {}
        if padding_mask is not None:
            expanded = padding_mask[..., None].expand(*padding_mask.shape, self.d_depth)
            kwargs["padding_mask"] = expanded.flatten(-2)  # [..., n_pos * d_depth]
        if return_phis:
            x_out, phis = collect_phis(self.route, x, **kwargs)
            return x_out.squeeze(-1), phis
        x = self.route[0](x, **kwargs)  # [..., n_hid, d_emb]
        x = self.route[1](x)  # [..., n_hid, d_emb]
        x = self.route[2](x)  # [..., n_classes, 1]
        return x.squeeze(-1)  # [..., n_classes]


# --------------------------------------------------------------------------------------------- zoo record


def _infer_args(state: Mapping[str, Any]) -> dict[str, int]:
    d_depth, d_emb = (int(s) for s in state["W"].shape)  # W [d_depth, d_emb]
    return {
        "d_depth": d_depth,
        "d_emb": d_emb,
        "n_classes": int(state["route.2.W_F1"].shape[0]),
        "n_hid": int(state["route.0.W_F1"].shape[0]),
    }


def _build_kwargs(
    args: dict[str, int], backbone: Mapping[str, Any] | None, labels: Any, padding: str
) -> dict:
    return {"backbone": dict(backbone or {}), **args, "labels": labels, "padding": padding}


def _input_kind(model: Any) -> str:
    kind = model.backbone_spec.get("kind")
    if kind not in ("text", "vision"):
        raise ValueError(f"model: backbone kind must be 'text' or 'vision', got {kind!r}")
    return kind


# The published 2022 family: a RoutingClassifier (heinsen_zoo.model, which builds on this module, hence
# named, not imported) whose saved weights are its RoutingHead.
register_architecture(
    Architecture(
        name="routing_head",
        args=("d_depth", "d_emb", "n_classes", "n_hid"),
        n_classes_arg="n_classes",
        anchor="route.0.W_A",
        infer_args=_infer_args,
        model_class="heinsen_zoo.model:RoutingClassifier",
        build_kwargs=_build_kwargs,
        weights_attr="head",
        weights_class=RoutingHead,
        needs_backbone=True,
        inputs="raw texts or images (through the frozen backbone), or its hidden states [..., n_pos, d_depth, d_emb]",
        input_kind=_input_kind,
    )
)
