"""The padding policy of a routing head, defined once (a low-level module: plain Python, no torch).

``"mask"`` gives the head the backbone's padding mask (padded positions are removed); ``"none"`` routes
every position, the paper's setup (its text backbones pad with hidden states of empty chunks).
:meth:`heinsen_zoo.model.RoutingClassifier.encode` applies the policy; the zoo entries, the export format,
the task and the ONNX export check their ``padding`` against :data:`PADDING_MODES`; the hidden-state cache
builds the backbone :func:`encoder_spec` gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PADDING_MODES", "check_padding", "encoder_spec"]

#: The padding policies (the one definition; the task, the zoo entries and the ONNX export check against it).
PADDING_MODES = ("mask", "none")


def check_padding(padding: Any, name: str = "padding") -> str:
    """``padding`` if it is one of :data:`PADDING_MODES`, else a ValueError naming ``name``.

    Example:
        >>> check_padding("none")
        'none'
        >>> check_padding("pad")
        Traceback (most recent call last):
        ...
        ValueError: padding: expected one of ('mask', 'none'), got 'pad'
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"{name}: expected one of {PADDING_MODES}, got {padding!r}")
    return padding


def encoder_spec(backbone: Mapping[str, Any], padding: str) -> dict[str, Any]:
    """The backbone spec that is built for ``padding``: a text spec without ``pad_mode`` gets ``"mask"``
    for ``padding="mask"`` and ``"empty_chunk"`` (the paper) for ``"none"``; other specs are unchanged.

    Example:
        >>> encoder_spec({"source": "hf", "id": "roberta-large", "kind": "text"}, "none")["pad_mode"]
        'empty_chunk'
    """
    spec = dict(backbone)
    if spec.get("kind") == "text" and "pad_mode" not in spec:
        spec["pad_mode"] = "mask" if check_padding(padding) == "mask" else "empty_chunk"
    return spec
