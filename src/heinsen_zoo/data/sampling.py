"""Samplers that give a fixed number of training steps per epoch, as in the 2022 paper.

The paper trains e.g. CIFAR-10 for "10 epochs x 2000 steps" with batch 50: an "epoch" is a fixed number of
optimizer steps, not a pass over the data. :class:`CyclingRandomSampler` yields ``num_samples`` indices per
epoch from an endless stream made of seeded random permutations of ``range(dataset_len)``: whenever one
permutation is used up, the next (fresh) permutation continues the stream. Epoch ``e`` reads the stream
positions ``[e * num_samples, (e + 1) * num_samples)``, so

* every example is seen once per permutation, evenly across epochs (no example is favoured because an
  epoch boundary cut a permutation short);
* the order depends only on ``seed`` and the epoch (``set_epoch``, which Lightning calls every epoch),
  never on how many times ``__iter__`` was called before: runs are reproducible and resumable.

:class:`DistributedCyclingSampler` splits the very same stream across ``world_size`` ranks by
interleaving positions (rank ``r`` takes positions ``r, r + world_size, ...``). With a per-rank batch of
``batch_size // world_size``, step ``i`` of a DDP run consumes exactly the examples of step ``i`` of a
single-process run with ``batch_size``: the effective batch, the steps per epoch and the data order are
unchanged by the number of devices.

Lightning and DDP: Lightning replaces a dataloader's sampler with a ``DistributedSampler`` wrapper when
``Trainer(use_distributed_sampler=True)`` (the default) and the run is distributed, *unless the sampler
already is a* ``torch.utils.data.DistributedSampler``. :class:`DistributedCyclingSampler` subclasses
``DistributedSampler`` for exactly that reason, so our split is never silently replaced or split twice, and
the DataModules in this package handle the rank themselves (see ``base.ZooDataModule.train_dataloader``).
``use_distributed_sampler`` may therefore stay at its default.

Evaluation under DDP: Lightning's own ``DistributedSampler`` pads the last shard with repeated examples so
that every rank runs the same number of batches, and the padded duplicates then count in the test metric.
:class:`EvalShardSampler` (also a ``DistributedSampler`` subclass, so Lightning keeps it) gives rank ``r`` the
positions ``r, r + world_size, ...`` of the split, without padding: every example is scored exactly once.
Evaluation steps hold no collective operation (metrics are synced once at epoch end), so shards of unequal
length are safe.

:func:`per_device_batch` is the one place where the global (effective) batch of a config is split over the
processes of a run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "CyclingRandomSampler",
    "DistributedCyclingSampler",
    "EvalShardSampler",
    "cycle_seed",
    "per_device_batch",
]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    return value


def per_device_batch(global_batch: int, world_size: int) -> int:
    """The batch each process loads per step so that one optimizer step sees ``global_batch`` examples.

    Configs state the paper's effective batch; this is the only place it is divided by the number of
    processes (devices x nodes). Raises ValueError naming both numbers when the division is not exact.

    Example:
        >>> per_device_batch(50, 2)
        25
        >>> per_device_batch(50, 4)
        Traceback (most recent call last):
        ...
        ValueError: batch_size: the effective (global) batch 50 does not divide over world_size=4 processes (50 % 4 = 2); pick a device count that divides 50 or change data.init_args.batch_size
    """
    _check_positive_int("batch_size", global_batch)
    _check_positive_int("world_size", world_size)
    if global_batch % world_size:
        raise ValueError(
            f"batch_size: the effective (global) batch {global_batch} does not divide over world_size={world_size} "
            f"processes ({global_batch} % {world_size} = {global_batch % world_size}); pick a device count that "
            f"divides {global_batch} or change data.init_args.batch_size"
        )
    return global_batch // world_size


def cycle_seed(seed: int, cycle: int) -> int:
    """Seed of the ``cycle``-th permutation of the stream: a stable hash of (seed, cycle), 63 bits.

    Example:
        >>> cycle_seed(0, 0) == cycle_seed(0, 0) and cycle_seed(0, 0) != cycle_seed(0, 1)
        True
    """
    digest = hashlib.sha256(f"heinsen_zoo.cycling:{seed}:{cycle}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _stream_slice(dataset_len: int, seed: int, start: int, stop: int) -> torch.Tensor:
    """Positions ``[start, stop)`` of the endless stream of permutations, as a LongTensor [stop - start]."""
    pieces = []
    first_cycle, last_cycle = start // dataset_len, (stop - 1) // dataset_len
    for cycle in range(first_cycle, last_cycle + 1):
        generator = torch.Generator().manual_seed(cycle_seed(seed, cycle))
        permutation = torch.randperm(dataset_len, generator=generator)  # [dataset_len]
        lo = max(start - cycle * dataset_len, 0)
        hi = min(stop - cycle * dataset_len, dataset_len)
        pieces.append(permutation[lo:hi])
    return torch.cat(pieces)


class CyclingRandomSampler(Sampler[int]):
    """``num_samples`` indices per epoch from an endless, seeded stream of random permutations.

    Args:
        dataset_len: number of examples in the dataset (> 0).
        num_samples: indices per epoch, e.g. ``steps_per_epoch * batch_size`` (> 0). May be smaller or
            larger than ``dataset_len``; ``num_samples == dataset_len`` gives one shuffled pass per epoch.
        seed: base seed of the permutations.

    Example:
        >>> sampler = CyclingRandomSampler(dataset_len=4, num_samples=6, seed=0)
        >>> first = list(sampler)
        >>> len(first), sorted(first[:4]) == [0, 1, 2, 3]
        (6, True)
        >>> sampler.set_epoch(1); len(list(sampler))
        6
    """

    def __init__(self, dataset_len: int, num_samples: int, seed: int = 0) -> None:
        self.dataset_len = _check_positive_int("dataset_len", dataset_len)
        self.num_samples = _check_positive_int("num_samples", num_samples)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this at the start of every training epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This epoch's indices as a LongTensor [num_samples]."""
        start = self.epoch * self.num_samples
        return _stream_slice(self.dataset_len, self.seed, start, start + self.num_samples)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class DistributedCyclingSampler(DistributedSampler):
    """The :class:`CyclingRandomSampler` stream split across ranks, for DDP with an unchanged global batch.

    Each epoch covers ``total = world_size * ceil(num_samples / world_size)`` stream positions (``num_samples``
    rounded up so that every rank gets the same number of indices, which DDP needs to avoid a hang); rank
    ``r`` yields positions ``r, r + world_size, ...``. The ranks' indices of one epoch are therefore disjoint
    whenever ``total <= dataset_len`` and the epoch starts a permutation (e.g. epoch 0).

    Subclasses ``torch.utils.data.DistributedSampler`` so that Lightning keeps it as is (see module docs).

    Args:
        dataset_len: number of examples (> 0).
        num_samples: global indices per epoch (all ranks together), e.g. ``steps_per_epoch * batch_size``.
        seed: base seed, identical on every rank.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes (> 0).

    Example:
        >>> ranks = [DistributedCyclingSampler(8, 8, seed=0, rank=r, world_size=2) for r in range(2)]
        >>> a, b = (list(s) for s in ranks)
        >>> len(a), len(b), sorted(a + b) == list(range(8))
        (4, 4, True)
    """

    def __init__(
        self, dataset_len: int, num_samples: int, seed: int = 0, *, rank: int, world_size: int
    ) -> None:
        _check_positive_int("dataset_len", dataset_len)
        _check_positive_int("num_samples", num_samples)
        _check_positive_int("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        # The parent only stores attributes when num_replicas and rank are given (no process group needed).
        super().__init__(range(dataset_len), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.dataset_len = dataset_len
        self.global_num_samples = num_samples
        self.num_samples = math.ceil(num_samples / world_size)  # per rank, as in DistributedSampler
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this at the start of every training epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's indices of this epoch as a LongTensor [num_samples] (per-rank count)."""
        start = self.epoch * self.total_size
        stream = _stream_slice(self.dataset_len, self.seed, start, start + self.total_size)  # [total_size]
        return stream[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class EvalShardSampler(DistributedSampler):
    """Sequential evaluation shard of one rank, without padding: every example is evaluated exactly once.

    Rank ``r`` yields ``r, r + world_size, ...`` (so shard lengths differ by at most one). Subclasses
    ``DistributedSampler`` so that Lightning does not replace it with its padding sampler.

    Example:
        >>> [list(EvalShardSampler(5, rank=r, world_size=2)) for r in range(2)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(self, dataset_len: int, *, rank: int, world_size: int) -> None:
        if isinstance(dataset_len, bool) or not isinstance(dataset_len, int) or dataset_len < 0:
            raise ValueError(f"dataset_len must be a non-negative int, got {dataset_len!r}")
        _check_positive_int("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        super().__init__(
            range(dataset_len), num_replicas=world_size, rank=rank, shuffle=False, drop_last=False
        )
        self.dataset_len = dataset_len
        self.num_samples = len(range(rank, dataset_len, world_size))
        self.total_size = dataset_len

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
