"""End-to-end credit assignment of a routing head, as numbers and as pictures (SPEC §4).

The head's three routings each return φ ([..., n_inp, n_out], the credit each output assigns to each input);
their std-normalised chain product φ1 @ φ2 @ φ3 is the credit each class assigns to each hidden state
([..., n_pos·depth, n_classes]); reshaped to [..., n_pos, depth, n_classes] and summed over depth it is the
credit per token or image patch.

Example:
    >>> import torch
    >>> from heinsen_zoo.heads import RoutingHead
    >>> head = RoutingHead(d_depth=3, d_emb=16, n_classes=4)
    >>> out = head_credit(head, torch.randn(2, 5, 3, 16))
    >>> out["credit"].shape                     # [batch, n_pos, depth, n_classes]
    torch.Size([2, 5, 3, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from heinsen_routing.credit import credit_map, end_to_end_credit


@torch.no_grad()
def head_credit(head: torch.nn.Module, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict:
    """Logits and end-to-end credit of a RoutingHead for hidden states [batch, n_pos, depth, d_emb].

    Returns a dict with ``logits`` [batch, n_classes], ``credit`` [batch, n_pos, depth, n_classes] (padded
    positions hold zero credit) and ``phis`` (the three φ tensors).
    """
    if hidden.dim() != 4:
        raise ValueError(f"hidden: expected shape [batch, n_pos, depth, d_emb], got {list(hidden.shape)}")
    _, n_pos, depth, _ = hidden.shape
    logits, phis = head(hidden, padding_mask=padding_mask, return_phis=True)
    credit = credit_map(end_to_end_credit([p.float() for p in phis]), n_pos, depth)
    if padding_mask is not None:
        credit = credit.masked_fill(padding_mask[:, :, None, None], 0.0)
    return {"logits": logits, "credit": credit, "phis": phis}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_text_credit(
    tokens: Sequence[str], scores: Sequence[float] | torch.Tensor, path: str | Path, title: str = "",
    width_chars: int = 90, max_tokens: int = 400,
) -> Path:
    """Draw tokens as running text, each on a background whose colour shows its credit; write a PNG.

    Scores are min-max scaled; positive credit is red, negative blue (credits can be negative).
    """
    plt = _plt()
    scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
    if len(tokens) != scores.numel():
        raise ValueError(f"scores: expected {len(tokens)} values (one per token), got {scores.numel()}")
    tokens, scores = list(tokens)[:max_tokens], scores[:max_tokens]
    scale = float(scores.abs().max()) or 1.0
    # (text, credit, glued to the previous piece) — WordPiece "##" continuations are drawn without a gap.
    lines: list[list[tuple[str, float, bool]]] = [[]]
    used = 0
    for tok, s in zip(tokens, scores.tolist(), strict=True):
        glued = tok.startswith("##")
        text = tok[2:] if glued else tok.replace("Ġ", "").replace("▁", "")
        if used + len(text) + 1 > width_chars and lines[-1]:
            lines.append([])
            used = 0
        lines[-1].append((text, s / scale, glued and bool(lines[-1])))
        used += len(text) + 1
    fig_h = 0.8 + 0.28 * len(lines)
    fig, ax = plt.subplots(figsize=(0.105 * width_chars + 0.5, fig_h))
    ax.set_xlim(0, width_chars)
    ax.set_ylim(len(lines), -0.6)
    ax.axis("off")
    cmap = plt.get_cmap("bwr")
    for row, line in enumerate(lines):
        x = 0.0
        for text, s, glued in line:
            x -= 0.8 if glued else 0.0
            ax.text(
                x, row + 0.5, text, family="monospace", fontsize=8, va="center", ha="left",
                bbox={"facecolor": cmap(0.5 + 0.5 * s), "edgecolor": "none", "pad": 1.0},
            )
            x += len(text) + 1
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_image_credit(
    image: torch.Tensor, credit: torch.Tensor, path: str | Path, title: str = "", has_class_token: bool = True,
    mean: float = 0.5, std: float = 0.5,
) -> Path:
    """The paper's dog figure: image, patch-credit heatmap over it, and the depth × patch credit map.

    image: [3, H, W] normalised with ``mean``/``std``; credit: [n_pos, depth] for the class of interest
    (n_pos = 1 + grid² with a class token). Writes a PNG.
    """
    plt = _plt()
    if credit.dim() != 2:
        raise ValueError(f"credit: expected shape [n_pos, depth], got {list(credit.shape)}")
    per_layer = credit[1:] if has_class_token else credit  # [n_patches, depth]
    grid = int(math.isqrt(per_layer.shape[0]))
    if grid * grid != per_layer.shape[0]:
        raise ValueError(f"credit: {per_layer.shape[0]} patches do not form a square grid")
    patch_map = per_layer.sum(-1).reshape(grid, grid)
    img = (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    axes[0].imshow(img)
    axes[0].set_title("input")
    axes[1].imshow(img)
    axes[1].imshow(patch_map.numpy(), cmap="inferno", alpha=0.6, extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5),
                   interpolation="nearest")
    axes[1].set_title(f"credit per patch ({grid}×{grid}, summed over depth)")
    for ax in axes[:2]:
        ax.axis("off")
    im = axes[2].imshow(per_layer.T.numpy(), aspect="auto", cmap="inferno", origin="lower")
    axes[2].set_xlabel("patch")
    axes[2].set_ylabel("depth (0 = embeddings)")
    axes[2].set_title("credit per patch and layer")
    fig.colorbar(im, ax=axes[2])
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
