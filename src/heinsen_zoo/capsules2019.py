"""The 2019 paper's capsule classifiers (SPEC §6) and a loader for their published weights.

* :class:`SmallNORBClassifier`: stereo image pairs ``[..., 2, 96, 96]`` → convolutions → matrix capsules
  (4×4 poses) → two generative routings → ``(a_out, mu_out, sig2_out)``; ``a_out`` are the class logits.
* :class:`SSTClassifier`: GPT-2-large hidden states of every layer ``[..., n_tok, 37, 1280]`` plus a token
  mask → vector capsules (1×64 poses) → two generative routings → ``(a_out, mu_out, sig2_out)``.
* their zoo records (``capsules2019_smallnorb``, ``capsules2019_sst``): the published weights load through
  ``heinsen_zoo.zoo.create_model`` (:data:`PUBLISHED_ENTRIES`); :func:`load_published` is a deprecated alias.

Module and parameter names match the published state dicts (``convolve.*``, ``compute_a.*``, ``compute_mu.*``,
``depth_emb``, ``detect_parts.*``, ``routings.0/1.*``), so they load with ``strict=True``.

Example:
    >>> import torch
    >>> from heinsen_zoo.capsules2019 import SmallNORBClassifier, SSTClassifier
    >>> model = SmallNORBClassifier(n_objs=5, n_parts=8, d_chns=8).eval()
    >>> a_out, mu_out, sig2_out = model(torch.rand(3, 2, 96, 96))   # [batch, 2, 96, 96]
    >>> a_out.shape, mu_out.shape
    (torch.Size([3, 5]), torch.Size([3, 5, 4, 4]))
    >>> sst = SSTClassifier(d_depth=3, d_emb=16, n_classes=5).eval()
    >>> mask = torch.tensor([[1.0, 1.0, 0.0]])                      # [batch, n_tok], 0 = padding
    >>> a_out, mu_out, sig2_out = sst(mask, torch.randn(1, 3, 3, 16))   # embs [batch, n_tok, d_depth, d_emb]
    >>> a_out.shape, mu_out.shape
    (torch.Size([1, 5]), torch.Size([1, 5, 1, 2]))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heinsen_routing.generative import GenerativeMatrixRouting
from heinsen_routing.validation import check_finite, check_floating, check_rank, check_tensor
from heinsen_zoo.zoo.architectures import Architecture, register_architecture

__all__ = [
    "Swish",
    "SmallNORBClassifier",
    "SSTClassifier",
    "PUBLISHED_ENTRIES",
    "load_published",
]

CapsuleOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Swish(nn.Module):
    """Swish(x) = x·σ(x) (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _check_param_device(name: str, t: torch.Tensor, module: nn.Module) -> None:
    param = next(module.parameters())
    if t.device != param.device:
        raise ValueError(f"{name}: expected device {param.device} (the model's parameters), got {t.device}")


class SmallNORBClassifier(nn.Module):
    """Capsule classifier of smallNORB stereo pairs (SPEC §6; published: 99.1% test accuracy).

    A 2-channel coordinate grid (rows, then columns, each ``linspace(-1, 1)``) is appended to the stereo pair;
    six unpadded 3×3 convolutions (strides 1, 2, 1, 2, 1, 2, each preceded by BatchNorm and followed by Swish)
    turn ``[4, 96, 96]`` into ``[d_chns, 9, 9]``; 1×1 convolutions give, at every position, ``n_parts``
    activation logits and ``n_parts`` 4×4 poses (the ``n_parts·16`` channels grouped as ``[n_parts, 4, 4]``).
    Capsules are ordered part-major, then feature-map row, then column (``n_parts·9·9`` of them) and routed by
    ``GenerativeMatrixRouting(-1 → n_parts)`` then ``(n_parts → n_objs)``, all poses 4×4.

    Args:
        n_objs: number of object classes (5 for smallNORB).
        n_parts: capsules per feature-map position, and output capsules of the first routing.
        d_chns: channels of the convolutions.

    Forward: ``images`` ``[..., 2, H, W]`` float (the published model: 96×96, pixel values in [0, 1]).
    Returns ``(a_out [..., n_objs], mu_out [..., n_objs, 4, 4], sig2_out [..., n_objs, 4, 4])``.

    Example:
        >>> import torch
        >>> model = SmallNORBClassifier(n_parts=4, d_chns=8).eval()
        >>> model(torch.rand(2, 2, 96, 96))[0].shape
        torch.Size([2, 5])
    """

    strides = (1, 2, 1, 2, 1, 2)

    def __init__(self, n_objs: int = 5, n_parts: int = 64, d_chns: int = 64) -> None:
        super().__init__()
        for name, value in (("n_objs", n_objs), ("n_parts", n_parts), ("d_chns", d_chns)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        self.n_objs, self.n_parts, self.d_chns = n_objs, n_parts, d_chns
        layers: list[nn.Module] = []
        for k, stride in enumerate(self.strides):
            c_in = 4 if k == 0 else d_chns
            layers += [nn.BatchNorm2d(c_in), nn.Conv2d(c_in, d_chns, kernel_size=3, stride=stride), Swish()]
        self.convolve = nn.Sequential(*layers)
        self.compute_a = nn.Sequential(nn.BatchNorm2d(d_chns), nn.Conv2d(d_chns, n_parts, kernel_size=1))
        self.compute_mu = nn.Sequential(
            nn.BatchNorm2d(d_chns), nn.Conv2d(d_chns, n_parts * 4 * 4, kernel_size=1)
        )
        self.routings = nn.Sequential(
            GenerativeMatrixRouting(n_inp=-1, n_out=n_parts, d_cov=4, d_inp=4, d_out=4),
            GenerativeMatrixRouting(n_inp=n_parts, n_out=n_objs, d_cov=4, d_inp=4, d_out=4),
        )

    @classmethod
    def feature_map_size(cls, size: int) -> int:
        """Side of the final feature map for an input side ``size`` (96 → 9); < 1 means too small."""
        for stride in cls.strides:
            size = (size - 3) // stride + 1 if size >= 3 else 0
        return size

    @classmethod
    def min_size(cls) -> int:
        """Smallest input side that leaves a feature map (29)."""
        return next(size for size in range(1, 1000) if cls.feature_map_size(size) >= 1)

    @staticmethod
    def add_coord_grid(x: torch.Tensor) -> torch.Tensor:
        """Append row and column coordinates in [-1, 1]: ``[B, C, H, W]`` → ``[B, C + 2, H, W]``."""
        batch, _, height, width = x.shape
        rows = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)[:, None].expand(
            height, width
        )
        cols = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)[None, :].expand(height, width)
        grid = torch.stack((rows, cols)).expand(batch, 2, height, width)  # [B, 2, H, W]
        return torch.cat((x, grid), dim=1)

    def forward(self, images: torch.Tensor) -> CapsuleOutputs:
        """Classify ``images`` ``[..., 2, H, W]``; see the class docstring."""
        images = check_floating("images", images)
        check_rank("images", images, 3, "[..., 2, H, W]")
        if images.shape[-3] != 2:
            raise ValueError(
                f"images: expected 2 channels (a stereo pair) in shape [..., 2, H, W], got {images.shape[-3]} "
                f"(shape {list(images.shape)})"
            )
        height, width = images.shape[-2:]
        if min(self.feature_map_size(height), self.feature_map_size(width)) < 1:
            raise ValueError(
                f"images: expected H and W of at least {self.min_size()} (the published model uses 96×96), "
                f"got shape {list(images.shape)}"
            )
        if images.shape[:-3].numel() == 0:
            raise ValueError(f"images: expected at least one image, got shape {list(images.shape)}")
        _check_param_device("images", images, self)
        check_finite("images", images)

        lead = images.shape[:-3]
        x = self.add_coord_grid(images.reshape(-1, 2, height, width))  # [B, 4, H, W]
        x = self.convolve(x)  # [B, d_chns, h, w]
        batch, _, h, w = x.shape
        a = self.compute_a(x).reshape(batch, self.n_parts * h * w)  # [B, n_parts·h·w], part-major
        mu = self.compute_mu(x).reshape(batch, self.n_parts, 4, 4, h, w)  # [B, n_parts, 4, 4, h, w]
        mu = mu.permute(0, 1, 4, 5, 2, 3).reshape(batch, self.n_parts * h * w, 4, 4)  # [B, n_parts·h·w, 4, 4]
        for routing in self.routings:
            a, mu, sig2 = routing(a, mu)
        return (
            a.reshape(*lead, self.n_objs),
            mu.reshape(*lead, self.n_objs, 4, 4),
            sig2.reshape(*lead, self.n_objs, 4, 4),
        )


class SSTClassifier(nn.Module):
    """Capsule classifier over the hidden states of every GPT-2-large layer (SPEC §6; published: SST-5 58.5%,
    SST-2 95.6% on root sentences).

    The hidden states plus a learned ``depth_emb`` ``[d_depth, d_emb]`` go through ``detect_parts`` =
    [Linear(d_emb, d_inp), Swish, LayerNorm(d_inp)], giving one capsule with a ``[1, d_inp]`` pose per token
    and layer (token-major order, ``n_tok·d_depth`` capsules). Their activation logits are the logit of the token
    mask repeated over depth (mask 1 → +inf, activation 1; mask 0 → -inf, activation 0: padding has no
    influence). Routings: ``GenerativeMatrixRouting(-1 → n_parts, 1×d_inp → 1×d_cap)`` then
    ``(n_parts → n_classes, 1×d_cap → 1×d_cap)``.

    Args:
        d_depth: hidden states per token (GPT-2-large: 37 = embeddings + 36 blocks).
        d_emb: hidden size (GPT-2-large: 1280).
        d_inp: pose size of the detected parts.
        d_cap: pose size of the routed capsules.
        n_parts: output capsules of the first routing.
        n_classes: number of classes (required).

    Forward: ``mask`` ``[..., n_tok]`` (float in [0, 1] or bool; 1/True = token, 0/False = padding) and
    ``embs`` ``[..., n_tok, d_depth, d_emb]`` (finite everywhere, padding included).
    Returns ``(a_out [..., n_classes], mu_out [..., n_classes, 1, d_cap], sig2_out [same])``.

    Example:
        >>> import torch
        >>> model = SSTClassifier(d_depth=2, d_emb=8, n_classes=2).eval()
        >>> model(torch.ones(4, 5), torch.randn(4, 5, 2, 8))[0].shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        d_depth: int = 37,
        d_emb: int = 1280,
        d_inp: int = 64,
        d_cap: int = 2,
        n_parts: int = 64,
        n_classes: int | None = None,
    ) -> None:
        super().__init__()
        if n_classes is None:
            raise ValueError("n_classes: required (5 for SST-5, 2 for SST-2), got None")
        for name, value in (
            ("d_depth", d_depth),
            ("d_emb", d_emb),
            ("d_inp", d_inp),
            ("d_cap", d_cap),
            ("n_parts", n_parts),
            ("n_classes", n_classes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        self.d_depth, self.d_emb, self.d_inp, self.d_cap = d_depth, d_emb, d_inp, d_cap
        self.n_parts, self.n_classes = n_parts, n_classes
        self.depth_emb = nn.Parameter(torch.zeros(d_depth, d_emb))
        self.detect_parts = nn.Sequential(nn.Linear(d_emb, d_inp), Swish(), nn.LayerNorm(d_inp))
        self.routings = nn.Sequential(
            GenerativeMatrixRouting(n_inp=-1, n_out=n_parts, d_cov=1, d_inp=d_inp, d_out=d_cap),
            GenerativeMatrixRouting(n_inp=n_parts, n_out=n_classes, d_cov=1, d_inp=d_cap, d_out=d_cap),
        )

    def _check_inputs(self, mask: object, embs: object) -> torch.Tensor:
        embs = check_floating("embs", embs)
        mask = check_tensor("mask", mask)
        check_rank("embs", embs, 3, "[..., n_tok, d_depth, d_emb]")
        if embs.shape[-2:] != (self.d_depth, self.d_emb):
            raise ValueError(
                f"embs: expected (d_depth, d_emb) = ({self.d_depth}, {self.d_emb}) in shape "
                f"[..., n_tok, d_depth, d_emb], got {list(embs.shape)}"
            )
        if mask.shape != embs.shape[:-2]:
            raise ValueError(
                f"mask: expected shape [..., n_tok] = {list(embs.shape[:-2])} (that of embs without its last two "
                f"dims), got {list(mask.shape)}"
            )
        if embs.shape[-3] == 0:
            raise ValueError(f"embs: expected at least one token, got shape {list(embs.shape)}")
        _check_param_device("embs", embs, self)
        if mask.device != embs.device:
            raise ValueError(f"mask: expected device {embs.device} (that of embs), got {mask.device}")
        if mask.dtype == torch.bool:
            mask = mask.to(embs.dtype)
        elif not mask.is_floating_point():
            raise TypeError(
                f"mask: expected a bool or floating-point tensor (1 = token, 0 = padding), got {mask.dtype}"
            )
        else:
            mask = mask.to(embs.dtype)
            if bool(((mask < 0) | (mask > 1) | torch.isnan(mask)).any()):
                raise ValueError("mask: expected values in [0, 1] (1 = token, 0 = padding)")
        check_finite("embs", embs)
        return mask

    def forward(self, mask: torch.Tensor, embs: torch.Tensor) -> CapsuleOutputs:
        """Classify ``embs`` ``[..., n_tok, d_depth, d_emb]`` under ``mask`` ``[..., n_tok]``."""
        mask = self._check_inputs(mask, embs)
        n_tok = embs.shape[-3]
        a = torch.logit(mask).unsqueeze(-1).expand(*mask.shape, self.d_depth)  # [..., n_tok, d_depth]
        a = a.reshape(*mask.shape[:-1], n_tok * self.d_depth)  # [..., n_tok·d_depth]
        mu = self.detect_parts(embs + self.depth_emb)  # [..., n_tok, d_depth, d_inp]
        mu = mu.reshape(
            *mask.shape[:-1], n_tok * self.d_depth, 1, self.d_inp
        )  # [..., n_tok·d_depth, 1, d_inp]
        a = a.to(mu.dtype)
        for routing in self.routings:
            a, mu, sig2 = routing(a, mu)
        return a, mu, sig2


# ---------------------------------------------------------------------------------------------------------------
# Zoo records (heinsen_zoo.zoo.architectures) and the published weights (loaded through the zoo's registry).


def _infer_smallnorb(state: Mapping[str, Any]) -> dict[str, int]:
    return {
        "n_objs": int(state["routings.1.W"].shape[1]),  # W [n_inp, n_out, d_cov, d_inp]
        "n_parts": int(state["routings.0.W"].shape[1]),
        "d_chns": int(state["convolve.1.weight"].shape[0]),
    }


def _infer_sst(state: Mapping[str, Any]) -> dict[str, int]:
    d_depth, d_emb = (int(s) for s in state["depth_emb"].shape)
    return {
        "d_depth": d_depth,
        "d_emb": d_emb,
        "d_inp": int(state["detect_parts.0.weight"].shape[0]),
        "d_cap": int(state["routings.0.W"].shape[-1]),
        "n_parts": int(state["routings.0.W"].shape[1]),
        "n_classes": int(state["routings.1.W"].shape[1]),
    }


def _head_only(args: dict[str, int], backbone: Any, labels: Any, padding: str) -> dict[str, int]:
    return dict(args)  # the 2019 classifiers take their head arguments only


def _norb_kind(model: nn.Module) -> str:
    return "norb"


def _sst_kind(model: nn.Module) -> str:
    raise ValueError(
        "model: the 2019 SST capsule models classify GPT-2-large hidden states, not raw text; predict supports "
        "routing-head models and the 2019 smallNORB model"
    )


register_architecture(
    Architecture(
        name="capsules2019_smallnorb",
        args=("n_objs", "n_parts", "d_chns"),
        n_classes_arg="n_objs",
        anchor="convolve.1.weight",
        infer_args=_infer_smallnorb,
        model_class=SmallNORBClassifier,
        build_kwargs=_head_only,
        inputs="stereo image pairs [..., 2, 96, 96], pixel values in [0, 1]",
        input_kind=_norb_kind,
        task="image-classification",
    )
)
register_architecture(
    Architecture(
        name="capsules2019_sst",
        args=("d_depth", "d_emb", "d_inp", "d_cap", "n_parts", "n_classes"),
        n_classes_arg="n_classes",
        anchor="depth_emb",
        infer_args=_infer_sst,
        model_class=SSTClassifier,
        build_kwargs=_head_only,
        inputs="token mask [..., n_tok] and GPT-2-large hidden states [..., n_tok, 37, 1280]",
        input_kind=_sst_kind,
        task="text-classification",
    )
)

#: ``load_published`` names → the registry entries of the published 2019 weights.
PUBLISHED_ENTRIES: dict[str, str] = {
    "smallNORB": "capsules_smallnorb.heinsen2019",
    "SST5R": "capsules_gpt2_large.sst5r_heinsen2019",
    "SST2R": "capsules_gpt2_large.sst2r_heinsen2019",
}


def load_published(name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Deprecated: use ``heinsen_zoo.zoo.create_model(PUBLISHED_ENTRIES[name])`` (or ``checkpoint_path=FILE``).

    A thin alias over the registry: a name of :data:`PUBLISHED_ENTRIES` loads that entry (SHA-256 verified);
    a state-dict file is loaded as the 2019 architecture its keys show (head arguments from its shapes), strictly
    and weights-only; a file named like a published one is verified against the published digest.

    Example:
        >>> model = load_published("smallNORB")  # doctest: +SKIP
    """
    warnings.warn(
        "heinsen_zoo.capsules2019.load_published is deprecated: use heinsen_zoo.zoo.create_model("
        "'capsules_smallnorb.heinsen2019') (or checkpoint_path=FILE)",
        DeprecationWarning,
        stacklevel=2,
    )
    from heinsen_zoo.zoo import checkpoints, entries
    from heinsen_zoo.zoo.architectures import get_architecture
    from heinsen_zoo.zoo.registry import create_model, get_entry

    key = os.fspath(name_or_path)
    if key in PUBLISHED_ENTRIES:
        return create_model(PUBLISHED_ENTRIES[key], map_location=map_location)
    path = Path(key).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (pass a state-dict file, or one of {sorted(PUBLISHED_ENTRIES)})"
        )
    raw = checkpoints.read_weights(path)
    architecture = checkpoints.detect_architecture(raw, str(path))
    if architecture not in ("capsules2019_smallnorb", "capsules2019_sst"):
        raise ValueError(f"{path}: not a 2019 capsule classifier (its weights are {architecture!r})")
    head = get_architecture(architecture).infer_head_args(
        checkpoints.extract_state_dict(raw, architecture, str(path))
    )
    entry = next(n for n in PUBLISHED_ENTRIES.values() if get_entry(n).architecture == architecture)
    overlay = {"file": str(path), "sha256": entries.HEINSEN_2019_SHA256.get(path.name)}
    return create_model(entry, pretrained_cfg_overlay=overlay, map_location=map_location, **head)
