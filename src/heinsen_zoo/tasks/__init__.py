"""Lightning tasks of the zoo: train routing heads over frozen backbones.

Example:
    >>> from heinsen_zoo.tasks import mixup, soft_target_cross_entropy
    >>> import torch
    >>> hidden, mask, soft = mixup(torch.randn(2, 3, 4), None, torch.eye(2), alpha=0.2, r=0.5)
    >>> soft
    tensor([[0.5000, 0.5000],
            [0.5000, 0.5000]])
"""

from .losses import soft_target_cross_entropy
from .mixup import HiddenStateMixup, mixup, sample_mix_ratio

__all__ = [
    "ExportPretrainedHead",
    "HiddenStateMixup",
    "RoutingClassificationTask",
    "mixup",
    "read_head_state",
    "sample_mix_ratio",
    "soft_target_cross_entropy",
]


def __getattr__(name: str):
    # The Lightning task imports lightning and heinsen_zoo.model; load it on first use only, so the
    # mixup/loss helpers stay importable (and fast) on their own.
    if name == "RoutingClassificationTask":
        from .classification import RoutingClassificationTask

        return RoutingClassificationTask
    if name == "ExportPretrainedHead":
        from .export_head import ExportPretrainedHead

        return ExportPretrainedHead
    if name == "read_head_state":
        from .init_from import read_head_state

        return read_head_state
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
