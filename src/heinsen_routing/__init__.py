"""Heinsen routing layers: vector routings (Heinsen, 2022) and generative matrix routing (Heinsen, 2019).

Depends on torch only.

Example:
    >>> import torch
    >>> from heinsen_routing import EfficientVectorRouting
    >>> route = torch.nn.Sequential(
    ...     EfficientVectorRouting(n_inp=-1, n_out=16, d_inp=32, d_out=24),
    ...     EfficientVectorRouting(n_inp=16, n_out=4, d_inp=24, d_out=8),
    ... )
    >>> route(torch.randn(2, 100, 32)).shape           # [batch, n_inp, d_inp] -> [batch, n_out, d_out]
    torch.Size([2, 4, 8])
"""

from .credit import collect_phis, credit_map, credit_per_position, end_to_end_credit
from .definable import DefinableVectorRouting
from .efficient import EfficientVectorRouting, plain_em_routing
from .generative import GenerativeMatrixRouting
from .validation import set_checks_enabled, skip_checks

__all__ = [
    "EfficientVectorRouting",
    "DefinableVectorRouting",
    "GenerativeMatrixRouting",
    "plain_em_routing",
    "end_to_end_credit",
    "credit_map",
    "credit_per_position",
    "collect_phis",
    "skip_checks",
    "set_checks_enabled",
]
