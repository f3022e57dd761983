"""The global random states, saved in checkpoints so that a resumed run continues bit-identically.

Training augmentations (random crops, RandAugment) draw from the global torch / Python / NumPy generators,
which Lightning does not checkpoint: a run resumed from ``last.ckpt`` would otherwise draw different
augmentations than the uninterrupted run. The tasks store :func:`rng_states` under :data:`RNG_STATE_KEY` in
``on_save_checkpoint`` and :func:`restore_rng_states` puts them back in ``on_load_checkpoint``. Every value is
a tensor, int, str or tuple, so checkpoints still load with ``torch.load(weights_only=True)``.

Under DDP the checkpoint holds rank 0's states; every rank resumes from them (the ranks of a fresh run are
seeded identically by ``seed_everything``).

Example:
    >>> import torch
    >>> state = rng_states()
    >>> a = torch.rand(2)
    >>> restore_rng_states(state)
    >>> bool(torch.equal(a, torch.rand(2)))
    True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["RNG_STATE_KEY", "SeededGenerator", "restore_rng_states", "rng_states"]

RNG_STATE_KEY = "heinsen_zoo_rng_states"


def rng_states() -> dict[str, Any]:
    """The torch (CPU and every CUDA device), Python and NumPy global generator states."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": (version, tuple(internal), gauss),
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Any) -> None:
    """Put back the states saved by :func:`rng_states` (missing entries are left as they are)."""
    if not isinstance(states, dict):
        raise ValueError(f"{RNG_STATE_KEY}: expected a dict of generator states, got {type(states).__name__}")
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class SeededGenerator:
    """Base of the stateful augmentations: their own seeded CPU generator, whose state round-trips through
    :meth:`state_dict` / :meth:`load_state_dict` (a uint8 tensor, safe for ``torch.load(weights_only=True)``), so
    a resumed run draws what an uninterrupted one would.

    Example:
        >>> draws = SeededGenerator(seed=0)
        >>> state = draws.state_dict()
        >>> a = torch.rand(2, generator=draws.generator)
        >>> draws.load_state_dict(state)
        >>> bool(torch.equal(a, torch.rand(2, generator=draws.generator)))
        True
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state, as ``{"generator_state": uint8 tensor}``."""
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        if not isinstance(state, dict) or "generator_state" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a dict with key 'generator_state', got {keys}")
        value = state["generator_state"]
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise TypeError(
                f"state['generator_state']: expected a torch.uint8 tensor, got "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
        self.generator.set_state(value.cpu())
