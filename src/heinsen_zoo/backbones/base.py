"""FrozenBackbone: a pretrained transformer that only ever reports its hidden states.

A frozen backbone has every parameter's ``requires_grad`` off, stays in eval mode even when ``.train()`` is
called on it or on a parent module, and runs its forward under ``torch.no_grad()`` (and, on CUDA, under
autocast when ``autocast`` is on: float16 as in the 2022 paper, or bfloat16 with the spec key
``autocast_dtype: bfloat16``). It returns the hidden states of the embedding
output and of every block, stacked along a depth dimension:

    forward(inputs) -> (hidden [batch, n_pos, d_depth, d_emb], padding_mask [batch, n_pos] bool or None)

``inputs`` is a preprocessed image tensor ``[batch, 3, H, W]`` (``input_key == "image"``) or a list of str
(``input_key == "text"``; the backbone tokenizes). ``padding_mask`` is True at padding positions.

Example:
    >>> import torch
    >>> from heinsen_zoo.backbones import build_backbone
    >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
    ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}}
    >>> backbone = build_backbone(spec)
    >>> hidden, padding_mask = backbone(torch.randn(2, 3, 32, 32))
    >>> hidden.shape, padding_mask, backbone.train().training
    (torch.Size([2, 5, 3, 32]), None, False)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

__all__ = ["AUTOCAST_DTYPES", "GPT2_LARGE_REVISION", "FrozenBackbone", "parse_dtype"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTOCAST_DTYPES = ("float16", "bfloat16")  # spec key ``autocast_dtype``; float16 (the paper's) by default

# The 2019 SST models' backbone: the commit of ``main`` of openai-community/gpt2-large (alias ``gpt2-large``)
# found in public Hugging Face cache snapshot paths and pinned revision lists; not checked against the Hub
# from this machine (no internet): preflight and from_pretrained fail loudly if the Hub lacks it.
GPT2_LARGE_REVISION = "32b71b12589c2f8d625668d2335a01cac3249519"


def parse_dtype(name: str, value: Any) -> torch.dtype | None:
    """Turn a spec value ("float32", "float16", "bfloat16", a torch.dtype or None) into a torch.dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.replace("torch.", "") in _DTYPES:
        return _DTYPES[value.replace("torch.", "")]
    raise ValueError(f"{name}: expected one of {sorted(_DTYPES)} or None, got {value!r}")


class FrozenBackbone(nn.Module):
    """Base class of the frozen backbones (subclasses implement :meth:`_hidden_states`).

    Args:
        spec: the backbone spec (a plain dict, see :func:`heinsen_zoo.backbones.build_backbone`); kept as
            ``self.spec``.
        autocast: run the forward under autocast when the backbone is on CUDA (ignored on CPU), in the dtype
            of the spec's ``autocast_dtype`` ("float16", default as the paper, or "bfloat16").
        output_dtype: dtype of the returned hidden states; None = the autocast dtype when autocast ran, else
            float32.

    Attributes:
        d_depth: number of stacked hidden states (embedding output + one per block).
        d_emb: width of each hidden state.
        input_key: "image" or "text", the batch key this backbone reads.
    """

    input_key: str = "image"

    def __init__(self, spec: dict[str, Any], autocast: bool = True, output_dtype: Any = None) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.autocast = bool(autocast)
        name = self.spec.get("autocast_dtype") or "float16"
        if name not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype: expected one of {list(AUTOCAST_DTYPES)}, got {name!r}")
        self.autocast_dtype = _DTYPES[name]
        self.output_dtype = parse_dtype("output_dtype", output_dtype)
        self.d_depth = 0
        self.d_emb = 0

    # -- frozen behaviour -------------------------------------------------------------------------------
    def freeze(self) -> FrozenBackbone:
        """Turn off ``requires_grad`` for every parameter and switch to eval mode (subclasses call this)."""
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode whatever ``mode`` is (a parent's ``.train()`` reaches here too)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """The device of the backbone's weights (CPU for a backbone without parameters)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def _autocast_context(self) -> contextlib.AbstractContextManager:
        if self.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def _result_dtype(self) -> torch.dtype:
        if self.output_dtype is not None:
            return self.output_dtype
        if self.autocast and self.device.type == "cuda":
            return self.autocast_dtype
        return torch.float32

    def forward(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states ``[batch, n_pos, d_depth, d_emb]`` and padding mask ``[batch, n_pos]`` (or None)."""
        if any(module.training for module in self.modules()):  # e.g. .train() called on a submodule
            super().train(False)
        with torch.no_grad(), self._autocast_context():
            hidden, padding_mask = self._hidden_states(inputs)
        hidden = hidden.to(self._result_dtype())
        if hidden.dim() != 4 or hidden.shape[2] != self.d_depth or hidden.shape[3] != self.d_emb:
            raise RuntimeError(
                f"{type(self).__name__}: produced hidden states of shape {list(hidden.shape)}, expected "
                f"[batch, n_pos, d_depth={self.d_depth}, d_emb={self.d_emb}]"
            )
        return hidden, padding_mask

    def _hidden_states(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def pad_hidden_states(self) -> torch.Tensor | None:
        """Hidden states ``[chunk_len, d_depth, d_emb]`` used to pad short inputs, or None (zeros + mask).

        Only text backbones in the paper's "empty_chunk" mode pad with real hidden states.
        """
        return None

    def extra_repr(self) -> str:
        return f"id={self.spec.get('id')!r}, d_depth={self.d_depth}, d_emb={self.d_emb}, frozen"

    # -- input checks shared by subclasses -------------------------------------------------------------
    def _check_images(self, images: Any, in_chans: int | None = None) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                f"inputs: expected an image tensor [batch, 3, H, W] for backbone {self.spec.get('id')!r}, "
                f"got {type(images).__name__}"
            )
        if images.dim() != 4 or (in_chans is not None and images.shape[1] != in_chans):
            raise ValueError(
                f"inputs: expected an image tensor of shape [batch, {in_chans or 'channels'}, H, W], "
                f"got shape {list(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(f"inputs: expected a floating-point (preprocessed) image tensor, got {images.dtype}")
        return images.to(self.device)

    def _check_texts(self, texts: Any) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(
                f"inputs: expected a list of str for text backbone {self.spec.get('id')!r}, "
                f"got {type(texts).__name__}"
            )
        if len(texts) == 0:
            raise ValueError("inputs: expected at least one text, got an empty list")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"inputs[{i}]: expected str, got {type(text).__name__}")
        return list(texts)
