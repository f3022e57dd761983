"""The export format (``schema_version`` 1): ``config.json`` + ``model.safetensors`` (+ ``README.md``).

An export directory holds

* ``model.safetensors`` — the state dict of the architecture's weights module (its
  :mod:`~heinsen_zoo.zoo.architectures` record: the RoutingHead for ``routing_head``, with unprefixed keys
  ``W``, ``B``, ``route.0.*`` … ``route.2.*``; the whole model for the 2019 capsule architectures);
* ``config.json`` — ``{"schema_version": 1, "architecture": "routing_head", "backbone": {spec},
  "head": {"d_depth", "d_emb", "n_classes", "n_hid"}, "labels": [...] | null,
  "preprocessing": {...}, "padding": "mask" | "none", "metrics": {...}, "sha256": {"model.safetensors": hex}}``;
* ``README.md`` — the model card (:mod:`heinsen_zoo.zoo.card`).

This module validates configs, checks state dicts against models and writes exports, atomically;
:mod:`heinsen_zoo.zoo.loading` reads them.

Example:
    >>> validate_config({"schema_version": 3, "architecture": "routing_head"})
    Traceback (most recent call last):
    ...
    heinsen_zoo.zoo.errors.IncompatibleConfigError: config.json: schema_version 3 was written by a newer heinsen_zoo; this version reads schema_version 1 — upgrade heinsen_zoo
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heinsen_zoo.backbones._resolve import check_spec_from_file
from heinsen_zoo.padding import PADDING_MODES
from heinsen_zoo.zoo import checksums, files
from heinsen_zoo.zoo.architectures import get_architecture
from heinsen_zoo.zoo.card import CARD_NAME, build_model_card
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    CorruptFileError,
    IncompatibleConfigError,
    StateDictMismatchError,
    WeightsNotFoundError,
)

__all__ = [
    "CONFIG_NAME",
    "EXPORT_FILES",
    "SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "check_class_count",
    "check_head_fits_weights",
    "check_state_dict",
    "load_weights",
    "read_config",
    "validate_config",
    "write_export",
    "write_model_card",
]

SCHEMA_VERSION = 1

CONFIG_NAME = "config.json"

WEIGHTS_NAME = "model.safetensors"

#: What an export directory may hold; re-exporting replaces the directory (these files) as a whole.
EXPORT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md", "model.onnx"})  # card, ONNX: derived

#: Largest head argument a config may state (checked before anything is built; weights must agree too).
MAX_HEAD_ARG = 1 << 20

MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _all_finite(t: torch.Tensor) -> bool:
    # Fast path: a finite sum implies no NaN/inf element; an overflowing sum falls back to the exact test.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    strict: bool = True,
    warn_cast: bool = True,
) -> None:
    """Raise :class:`StateDictMismatchError` naming missing / unexpected keys (when ``strict``), any shape
    mismatch and any integer/bool tensor where the model holds floats (or the reverse) (always), or
    ValueError for non-tensor or non-finite values; loads nothing. Floats of another precision (fp16 where
    fp32 is expected) are cast on load, with a warning naming them (``warn_cast``)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = []
    cast: list[str] = []
    for key in sorted(set(own) & set(state_dict)):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise CorruptFileError(
                f"weights from {source}: {key!r} is a {type(value).__name__}, expected a tensor"
            )
        if tuple(value.shape) != tuple(own[key].shape):
            mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        elif value.is_floating_point() and not _all_finite(value):
            raise CorruptFileError(
                f"weights from {source}: {key!r} holds NaN/inf values (corrupt checkpoint)"
            )
        if value.dtype != own[key].dtype:
            if value.is_floating_point() != own[key].is_floating_point():
                raise StateDictMismatchError(source, dtypes=[(key, str(value.dtype), str(own[key].dtype))])
            cast.append(f"{key} {str(value.dtype).replace('torch.', '')}")
    if cast and warn_cast:
        want = str(next(iter(own.values())).dtype).replace("torch.", "")
        warnings.warn(
            f"weights from {source}: {len(cast)} tensor(s) stored in another precision are cast to the model's "
            f"{want}: {', '.join(cast[:6])}{' …' if len(cast) > 6 else ''}",
            stacklevel=3,
        )
    if mismatched or (strict and (missing or unexpected)):
        raise StateDictMismatchError(
            source, missing if strict else (), unexpected if strict else (), mismatched
        )


def load_weights(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, strict: bool
) -> None:
    check_state_dict(module, state_dict, source, strict)
    module.load_state_dict(dict(state_dict), strict=strict)


def check_class_count(
    architecture: str, head: Mapping[str, Any], labels: Any, state: Mapping, source: str
) -> None:
    arch = get_architecture(architecture, source)
    key = arch.n_classes_arg
    n_config = int(head[key])
    if labels is not None and len(labels) != n_config:
        raise ClassCountMismatchError(
            f"{source}: {len(labels)} labels but head {key}={n_config}; labels and class count must agree"
        )
    n_weights = arch.infer_head_args(state)[key]
    if n_weights != n_config:
        raise ClassCountMismatchError(
            f"{source}: the config says {key}={n_config} but the weights have {n_weights} classes "
            f"(shape of the last routing's parameters); the config and weights do not belong together"
        )


def validate_config(config: Any, source: str = "config.json") -> dict[str, Any]:
    """Check a config dict of the export format; returns it (a copy). Raises :class:`IncompatibleConfigError`."""
    if not isinstance(config, Mapping):
        raise IncompatibleConfigError(f"{source}: expected a JSON object, got {type(config).__name__}")
    config = dict(config)
    version = config.get("schema_version")
    if version is None:
        raise IncompatibleConfigError(f"{source}: 'schema_version' is missing (expected {SCHEMA_VERSION})")
    if isinstance(version, bool) or not isinstance(version, int):
        raise IncompatibleConfigError(f"{source}: schema_version must be an int, got {version!r}")
    if version > SCHEMA_VERSION:
        raise IncompatibleConfigError(
            f"{source}: schema_version {version} was written by a newer heinsen_zoo; this version reads "
            f"schema_version {SCHEMA_VERSION} — upgrade heinsen_zoo"
        )
    if version < 1:
        raise IncompatibleConfigError(
            f"{source}: schema_version {version} is not valid (expected {SCHEMA_VERSION})"
        )
    architecture = config.get("architecture")
    arch = get_architecture(architecture, source)
    head = config.get("head")
    required = arch.args
    if not isinstance(head, Mapping):
        raise IncompatibleConfigError(
            f"{source}: 'head' must be an object with {list(required)}, got {head!r}"
        )
    missing = [k for k in required if k not in head]
    bad = [
        k
        for k in required
        if k in head and (isinstance(head[k], bool) or not isinstance(head[k], int) or head[k] < 1)
    ]
    if missing or bad:
        raise IncompatibleConfigError(
            f"{source}: head arguments of {architecture!r}: missing {missing}, not positive ints {bad} (got {dict(head)})"
        )
    huge = {k: head[k] for k in required if head[k] > MAX_HEAD_ARG}
    if huge:
        raise IncompatibleConfigError(
            f"{source}: head arguments {huge} exceed the limit {MAX_HEAD_ARG} (a corrupt or hostile config)"
        )
    backbone = config.get("backbone")
    if arch.needs_backbone:
        if not isinstance(backbone, Mapping) or "source" not in backbone or "id" not in backbone:
            raise IncompatibleConfigError(
                f"{source}: 'backbone' must be a spec object with 'source' and 'id' (plain dict), got {backbone!r}"
            )
    if backbone is not None:
        config["backbone"] = check_spec_from_file(backbone, source)
    labels = config.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise IncompatibleConfigError(f"{source}: 'labels' must be a list of strings or null")
        n = int(head[arch.n_classes_arg])
        if len(labels) != n:
            raise ClassCountMismatchError(f"{source}: {len(labels)} labels but the head has {n} classes")
    padding = config.get("padding", "mask")
    if padding not in PADDING_MODES:
        raise IncompatibleConfigError(
            f"{source}: padding must be {' or '.join(map(repr, PADDING_MODES))}, got {padding!r}"
        )
    for key in ("preprocessing", "metrics", "sha256"):
        if config.get(key) is not None and not isinstance(config[key], Mapping):
            raise IncompatibleConfigError(f"{source}: {key!r} must be an object, got {config[key]!r}")
    return config


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``<directory>/config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise WeightsNotFoundError(f"{Path(directory)} is not an export directory: {CONFIG_NAME} not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise IncompatibleConfigError(
            f"{path}: {path.stat().st_size} bytes, larger than a config can be ({MAX_CONFIG_BYTES})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise IncompatibleConfigError(f"{path}: not valid JSON ({err})") from err
    return validate_config(config, str(path))


def write_export(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    directory: str | os.PathLike,
    card_defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Write an export directory from a canonical state dict and a config (validated; sha256 added).

    The model card (``README.md``) is written with it; ``card_defaults`` (the registry entry's metric,
    licence, paper, description) fill in what the config does not say.

    The directory is replaced as a whole and atomically (:func:`heinsen_zoo.zoo.files.replace_directory`):
    a kill leaves the previous export or the new one. The weights file is deterministic (sorted keys).

    Example:
        >>> import tempfile
        >>> from heinsen_zoo.heads import RoutingHead
        >>> cfg = {"schema_version": 1, "architecture": "routing_head", "head": {"d_depth": 2, "d_emb": 8,
        ...        "n_classes": 3, "n_hid": 4}, "backbone": {"source": "hf", "id": "x", "revision": None}}
        >>> d = write_export(RoutingHead(2, 8, 3, n_hid=4).state_dict(), cfg, tempfile.mkdtemp())
        >>> sorted(p.name for p in d.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    config = validate_config({**dict(config), "schema_version": config.get("schema_version", SCHEMA_VERSION)})
    card_defaults = dict(card_defaults or {})
    check_class_count(
        config["architecture"], config["head"], config.get("labels"), state_dict, "write_export"
    )
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"write_export: state_dict[{key!r}] is a {type(value).__name__}, expected a tensor"
            )
        tensors[key] = value.detach().to("cpu").contiguous()
    metadata = {"format": "pt", "schema_version": str(SCHEMA_VERSION), "architecture": config["architecture"]}

    def fill(tmp: Path) -> None:
        files.save_safetensors(tensors, tmp / WEIGHTS_NAME, metadata=metadata)
        config["sha256"] = {WEIGHTS_NAME: checksums.sha256_file(tmp / WEIGHTS_NAME)}
        try:
            text = json.dumps(config, indent=2, sort_keys=False, allow_nan=False) + "\n"
        except (TypeError, ValueError) as err:
            raise TypeError(f"write_export: the config must hold plain JSON values only ({err})") from err
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as handle:
            handle.write(text)
        (tmp / CARD_NAME).write_text(build_model_card({**card_defaults, **config}), encoding="utf-8")

    return files.replace_directory(directory, fill, EXPORT_FILES)


def check_head_fits_weights(
    architecture: str, head: Mapping[str, Any], labels: Any, header: files.SafetensorsHeader, source: str
) -> None:
    """Compare every head argument of a config with the shapes in the weights' header, before building."""
    shapes = {name: _Shape(info.shape) for name, info in header.tensors.items()}
    check_class_count(architecture, head, labels, shapes, source)
    implied = get_architecture(architecture).infer_head_args(shapes)
    differ = {k: (head[k], v) for k, v in implied.items() if int(head[k]) != v}
    if differ:
        text = ", ".join(f"{k}: config {a} vs weights {b}" for k, (a, b) in differ.items())
        raise IncompatibleConfigError(
            f"{source}: the config's head arguments do not match the weights ({text})"
        )


class _Shape:
    """A stand-in with only ``.shape`` (header shapes fed to :func:`infer_head_args`)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def write_model_card(
    export_dir: str | os.PathLike,
    repo_id: str | None = None,
    overwrite: bool = True,
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``README.md`` into an export directory (atomic); returns its path.

    ``defaults`` (e.g. the registry entry's ``expected_metric``, ``license``, ``paper``, ``description``)
    fill in what ``config.json`` lacks. ``overwrite=False`` keeps an existing card.
    """
    export_dir = Path(export_dir)
    path = export_dir / CARD_NAME
    if path.is_file() and not overwrite:
        return path
    config = dict(read_config(export_dir))
    for key, value in (defaults or {}).items():
        config.setdefault(key, value)
    tmp = path.with_name(f".{CARD_NAME}.tmp")
    tmp.write_text(build_model_card(config, repo_id), encoding="utf-8")
    os.replace(tmp, path)
    return path
