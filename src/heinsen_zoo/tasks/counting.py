"""Count the examples an evaluation epoch actually scored, across every process (``<stage>/n_examples``).

Reported numbers state how many test examples they were computed on; under DDP this must be the split's
size exactly (no duplicates from a padding sampler, nothing dropped). :class:`ExampleCounter` is a
torchmetrics ``SumMetric`` per stage, so Lightning syncs it over the ranks once at epoch end.

Example:
    >>> import torch
    >>> counter = ExampleCounter()
    >>> counter.update("test", torch.tensor([0, 1, 2]))
    >>> int(counter.metrics["test"].compute())
    3
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import SumMetric

__all__ = ["ExampleCounter"]


class ExampleCounter(nn.Module):
    """One ``SumMetric`` per evaluation stage ("val", "test"); ``log`` logs ``<stage>/n_examples``."""

    def __init__(self, stages: tuple[str, ...] = ("val", "test")) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({stage: SumMetric() for stage in stages})

    def update(self, stage: str, labels: torch.Tensor) -> None:
        """Add the number of examples of a batch (``labels`` [batch])."""
        self.metrics[stage].update(torch.tensor(float(labels.shape[0]), device=labels.device))

    def log(self, module, stage: str, batch_size: int) -> None:
        """Log the running count of ``stage`` as an epoch-level metric of ``module`` (a LightningModule)."""
        module.log(
            f"{stage}/n_examples", self.metrics[stage], on_step=False, on_epoch=True, batch_size=batch_size
        )
