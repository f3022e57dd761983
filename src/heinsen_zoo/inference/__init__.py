"""Predict with a zoo model: images, texts or smallNORB stereo pairs in, top-k classes out (optionally explained).

:func:`predict` takes a :class:`~heinsen_zoo.model.RoutingClassifier` (or a registry name / export directory,
loaded with :func:`heinsen_zoo.zoo.hub.from_pretrained`) or the 2019 :class:`~heinsen_zoo.capsules2019.
SmallNORBClassifier`, and a list of inputs:

* vision models: image file paths, folders (searched recursively, files sorted), PIL images, or image tensors
  ``[3, H, W]`` / ``[B, 3, H, W]`` (uint8 in [0, 255] or float in [0, 1], not yet normalised). Every image goes
  through the model's recorded evaluation preprocessing (``pretrained_cfg["preprocessing"]`` / config.json):
  square resize to ``resize`` (or ``floor(image_size / crop_pct)``) with ``interpolation``, centre crop
  ``center_crop`` (or ``image_size``), normalisation with ``mean`` / ``std``. Fields that are not recorded fall
  back to SPEC §5's evaluation transform: resize 224/0.9 bicubic, centre crop 224, mean = std = 0.5.
* text models: strings, or ``.txt`` files / folders of them (a string naming an existing file or folder is
  read from it; a string that looks like a path — no spaces, ending in ``.txt`` or holding a path separator —
  must exist; ``force_text=True`` treats every string as text). The backbone tokenizes and chunks (SPEC §5);
  a recorded ``text_cleanup`` of ``imdb_br_to_newline`` is applied first.
* smallNORB (2019): NORB ``*-dat.mat[.gz]`` files (every stereo pair in them, read with
  :func:`heinsen_zoo.data.smallnorb.read_norb_matrix`), pairs of 96×96 grey PNGs (consecutive PNG inputs are
  (left, right) pairs; folders give their PNGs sorted), ``(left, right)`` tuples, or tensors ``[2, 96, 96]`` /
  ``[N, 2, 96, 96]`` (uint8, or float in [0, 1]). Pixels are divided by 255, as in training.

Returns one :class:`Prediction` per input (its id and the top-k ``(label, probability)``), rendered by
:func:`format_table` or :func:`format_json`.

``explain_dir`` writes, per input, a PNG of the end-to-end credit assignment of the predicted class (SPEC §4,
:mod:`heinsen_zoo.explain`): for images the patch-credit heatmap over the image and the depth × patch map
(class token dropped); for texts the credit of every token drawn on the token (chunks of long texts
concatenated, padding left out).

Command line: ``heinsen-zoo infer MODEL INPUT... [--top-k 5] [--json] [--explain DIR] [--batch-size 8]
[--device cpu|cuda] [--text]``.

Example:
    >>> import torch
    >>> from heinsen_zoo.model import RoutingClassifier
    >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
    ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 1, "embed_dim": 16, "num_heads": 2}}
    >>> model = RoutingClassifier(spec, n_classes=3, d_depth=2, d_emb=16, n_hid=4, labels=["a", "b", "c"])
    >>> model.pretrained_cfg = {"preprocessing": {"image_size": 32, "crop_pct": 1.0}}
    >>> preds = predict(model, [torch.rand(3, 40, 48), torch.rand(3, 32, 32)], top_k=2)
    >>> len(preds), len(preds[0].top_k), preds[0].label in ("a", "b", "c")
    (2, 2, True)
    >>> print(format_table(preds).splitlines()[0].split())
    ['#', 'input', 'top-1', 'top-2']
"""

from __future__ import annotations

from .inputs import IMAGE_SUFFIXES, InputTruncatedWarning
from .predict import predict
from .preprocessing import SPEC_EVAL_PREPROCESSING, image_transform, resolve_image_preprocessing
from .results import Prediction, format_json, format_table
from .text import DEFAULT_MAX_CHUNKS, text_tokens

__all__ = [
    "DEFAULT_MAX_CHUNKS",
    "IMAGE_SUFFIXES",
    "InputTruncatedWarning",
    "Prediction",
    "SPEC_EVAL_PREPROCESSING",
    "format_json",
    "format_table",
    "image_transform",
    "predict",
    "resolve_image_preprocessing",
    "text_tokens",
]
