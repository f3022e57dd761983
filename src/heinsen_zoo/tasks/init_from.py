"""Read a trained routing head to initialise a task with (``init_from``: a ``.ckpt``, an export, a zoo name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from heinsen_zoo.model import RoutingClassifier

__all__ = ["HEAD_PREFIX", "read_head_state"]

#: Key prefix of the head in a RoutingClassificationTask's state dict (``model.head.W``, ...).
HEAD_PREFIX = "model.head."


def read_head_state(source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a trained head's state dict (unprefixed keys ``W``, ``B``, ``route.0...``) from ``source``.

    ``source`` is a Lightning ``.ckpt`` of :class:`RoutingClassificationTask` (read by the zoo's one reader,
    :func:`heinsen_zoo.zoo.checkpoints.read_lightning_checkpoint`), a local export directory or a zoo name (both via
    ``heinsen_zoo.zoo.hub.from_pretrained``). Returns ``(head_state, backbone_spec or None)``.

    Example:
        >>> read_head_state("no/such/file.ckpt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: init_from: checkpoint file not found: no/such/file.ckpt
    """
    if not isinstance(source, (str, Path)):
        raise TypeError(
            f"init_from: expected a zoo name, an export directory or a .ckpt path, got {type(source).__name__}"
        )
    path = Path(source)
    if path.suffix == ".ckpt" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"init_from: checkpoint file not found: {source}")
        from heinsen_zoo.zoo.checkpoints import read_lightning_checkpoint  # the zoo's one .ckpt reader
        from heinsen_zoo.zoo.errors import ZooError

        try:
            head, config = read_lightning_checkpoint(path)
        except (ZooError, ValueError) as error:
            raise ValueError(
                f"init_from: could not read {source} as a RoutingClassificationTask checkpoint (loaded with "
                f"torch.load(weights_only=True)): {error}"
            ) from error
        return head, config["backbone"]
    from heinsen_zoo.zoo import hub  # lazy: the registry pulls in safetensors and the zoo index

    model = hub.from_pretrained(str(source))
    head_module = getattr(model, "head", None)
    if not isinstance(model, RoutingClassifier) or not isinstance(head_module, nn.Module):
        raise ValueError(
            f"init_from: {source!r} is a {type(model).__name__}, not a routing-head classifier "
            "(2019 capsule entries cannot initialise this task)"
        )
    return head_module.state_dict(), getattr(model, "backbone_spec", None)
