"""Credit assignment over chains of vector routings (2022 paper, §3.2 and Appendix A; SPEC §4).

Each routing's φ ``[..., n_inp, n_out]`` is the credit each output vector assigns to each input vector.
Credits are additive, so the end-to-end credit of sequential routings is the matrix product
φ1 @ φ2 @ …, rescaled after each multiplication to keep its magnitude in range.

Example:
    >>> import torch
    >>> from heinsen_routing import EfficientVectorRouting
    >>> from heinsen_routing.credit import collect_phis, credit_per_position, end_to_end_credit
    >>> n_pos, depth, d_emb = 6, 3, 8
    >>> layers = [EfficientVectorRouting(-1, 5, d_emb, d_emb), EfficientVectorRouting(5, 2, d_emb, 1)]
    >>> hidden = torch.randn(4, n_pos * depth, d_emb)            # [batch, n_pos * depth, d_emb]
    >>> x_out, phis = collect_phis(layers, hidden)
    >>> credit = end_to_end_credit(phis)                          # [batch, n_pos * depth, n_out]
    >>> credit_per_position(credit, n_pos, depth).shape           # [batch, n_pos, n_out]
    torch.Size([4, 6, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .validation import check_floating, check_like, check_rank

__all__ = ["end_to_end_credit", "credit_map", "credit_per_position", "collect_phis"]


def end_to_end_credit(phis: Sequence[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """End-to-end credit of sequential routings: φ1 @ φ2 @ … @ φK ``[..., n_1, n_{K+1}]``.

    After each multiplication the running product is divided by (its std + eps); the std is taken per
    sample over the last two dims (torch's default unbiased estimator), so a sample's credit does not
    depend on the rest of its batch. A single φ is returned unchanged.

    Args:
        phis: φ_k ``[..., n_k, n_{k+1}]`` in routing order (leading dims broadcast).
        eps: added to the std before dividing.

    Example:
        >>> import torch
        >>> phis = [torch.randn(2, 10, 4), torch.randn(2, 4, 3)]   # [batch, n_1, n_2], [batch, n_2, n_3]
        >>> end_to_end_credit(phis).shape                          # [batch, n_1, n_3]
        torch.Size([2, 10, 3])
    """
    if isinstance(phis, torch.Tensor) or not isinstance(phis, Sequence):
        raise TypeError(f"phis: expected a sequence (list/tuple) of tensors, got {type(phis).__name__}")
    if len(phis) == 0:
        raise ValueError("phis: expected at least one credit tensor phi [..., n_inp, n_out], got none")
    for k, phi in enumerate(phis):
        check_floating(f"phis[{k}]", phi)
        check_rank(f"phis[{k}]", phi, 2, "[..., n_inp, n_out]")
    for k in range(1, len(phis)):
        prev, cur = phis[k - 1], phis[k]
        if prev.shape[-1] != cur.shape[-2]:
            raise ValueError(
                f"phis[{k}]: expected n_inp = {prev.shape[-1]} (the n_out of phis[{k - 1}], shape "
                f"{list(prev.shape)}) in shape [..., n_inp, n_out], got {cur.shape[-2]} (shape {list(cur.shape)})"
            )
        try:
            torch.broadcast_shapes(prev.shape[:-2], cur.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"phis[{k}]: expected leading (batch) dims broadcastable with those of phis[{k - 1}] "
                f"{list(prev.shape[:-2])}, got {list(cur.shape[:-2])}"
            ) from None
        check_like(f"phis[{k}]", cur, f"phis[{k - 1}]", prev)  # same device and dtype
    credit = phis[0]
    for phi in phis[1:]:
        credit = credit @ phi  # [..., n_1, n_{k+1}]
        credit = credit / (credit.std(dim=(-2, -1), keepdim=True) + eps)
    return credit


def _check_credit(credit: object, n_pos: int, depth: int) -> torch.Tensor:
    credit = check_floating("credit", credit)
    check_rank("credit", credit, 2, "[..., n_pos * depth, n_out]")
    for name, value in (("n_pos", n_pos), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if credit.shape[-2] != n_pos * depth:
        raise ValueError(
            f"credit: expected n_pos * depth = {n_pos} * {depth} = {n_pos * depth} inputs in shape "
            f"[..., n_pos * depth, n_out], got {credit.shape[-2]} (shape {list(credit.shape)})"
        )
    return credit


def credit_map(credit: torch.Tensor, n_pos: int, depth: int) -> torch.Tensor:
    """Reshape credit ``[..., n_pos * depth, n_out]`` (inputs flattened position-major, as RoutingHead
    flattens hidden states [..., n_pos, depth, d_emb]) to ``[..., n_pos, depth, n_out]``.

    Example:
        >>> import torch
        >>> credit = torch.arange(12.0).reshape(6, 2)                 # [n_pos * depth = 3 * 2, n_out = 2]
        >>> credit_map(credit, n_pos=3, depth=2)[1].tolist()          # position 1, both depths
        [[4.0, 5.0], [6.0, 7.0]]
    """
    credit = _check_credit(credit, n_pos, depth)
    return credit.reshape(*credit.shape[:-2], n_pos, depth, credit.shape[-1])


def credit_per_position(
    credit: torch.Tensor, n_pos: int, depth: int, drop_first: bool = False
) -> torch.Tensor:
    """Credit per token / image patch: :func:`credit_map` summed over depth, ``[..., n_pos, n_out]``.

    With ``drop_first`` the first position (e.g. a class token) is dropped: ``[..., n_pos - 1, n_out]``.

    Example:
        >>> import torch
        >>> credit = torch.ones(2, 197 * 25, 10)                 # [batch, n_pos * depth, n_classes]
        >>> credit_per_position(credit, 197, 25, drop_first=True).shape   # 196 patches = 14 x 14
        torch.Size([2, 196, 10])
    """
    per_position = credit_map(credit, n_pos, depth).sum(dim=-2)  # [..., n_pos, n_out]
    return per_position[..., 1:, :] if drop_first else per_position


def collect_phis(
    routings: Sequence[nn.Module], x: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a chain of routing layers on x and return (x_out, [φ1, φ2, …]).

    Each layer is called with its ``return_dict`` attribute temporarily set to True (restored afterwards,
    even on error); ``kwargs`` (e.g. ``mask``, ``padding_mask``) go to the first layer only, since only it
    sees the original inputs. Accepts a list or an ``nn.Sequential``.

    Example:
        >>> import torch
        >>> from heinsen_routing import EfficientVectorRouting
        >>> chain = torch.nn.Sequential(EfficientVectorRouting(-1, 4, 8, 8), EfficientVectorRouting(4, 2, 8, 3))
        >>> x_out, phis = collect_phis(chain, torch.randn(10, 8))        # x [n_inp, d_inp]
        >>> x_out.shape, [tuple(p.shape) for p in phis], chain[0].return_dict
        (torch.Size([2, 3]), [(10, 4), (4, 2)], False)
    """
    layers = list(routings)
    if not layers:
        raise ValueError("routings: expected at least one routing layer, got none")
    for k, layer in enumerate(layers):
        if not hasattr(layer, "return_dict"):
            raise TypeError(
                f"routings[{k}]: expected a routing layer with a return_dict attribute, got {type(layer).__name__}"
            )
    phis: list[torch.Tensor] = []
    for k, layer in enumerate(layers):
        previous = layer.return_dict
        layer.return_dict = True
        try:
            out = layer(x, **kwargs) if k == 0 else layer(x)
        finally:
            layer.return_dict = previous
        if not isinstance(out, dict) or "phi" not in out or "x_out" not in out:
            raise TypeError(
                f"routings[{k}]: expected a dict with keys 'phi' and 'x_out' when return_dict is True, got "
                f"{type(out).__name__}{'' if not isinstance(out, dict) else ' with keys ' + str(sorted(out))}"
            )
        phis.append(out["phi"])
        x = out["x_out"]
    return x, phis
