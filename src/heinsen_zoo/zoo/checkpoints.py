"""Reading checkpoints safely, and converting them into the zoo's export format (the one reader of each kind).

* :func:`safe_torch_load` — ``torch.load(weights_only=True)``; a file holding arbitrary Python objects
  is refused (nothing in it is executed) with a clear :class:`UnsafeCheckpointError`.
* :func:`read_weights` / :func:`extract_state_dict` — a weight file's canonical state dict for an architecture;
* :func:`read_lightning_checkpoint` — the one reader of a :class:`heinsen_zoo.tasks.RoutingClassificationTask`
  ``.ckpt`` (its head and export config): ``from_pretrained``, the converter and ``init_from`` use it;
* :func:`export_state_dict_file` / :func:`export_lightning_checkpoint` — either → an export directory.

Key layouts understood (documented because published files differ in how they were saved):

* the state dict may be the file's top-level object or nested under one of ``state_dict``,
  ``model_state_dict``, ``model``, ``head``, ``module``, ``net``, ``weights`` (searched in that order, recursively);
* RoutingHead keys (``W``, ``B``, ``route.0..2.*``) may carry any prefix (``head.``, ``model.head.``,
  ``module.``, …): the prefix is found from the one key ending in ``route.0.W_A`` and removed;
  ``torch.compile``'s ``_orig_mod.`` segments are dropped. Keys outside that prefix (e.g. a backbone
  saved alongside) are not part of the head: they are left out with a warning naming them;
* other architectures likewise, anchored on their record's ``anchor`` key
  (:mod:`heinsen_zoo.zoo.architectures`).

Example:
    >>> import tempfile, torch, pathlib
    >>> from heinsen_zoo.heads import RoutingHead
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> torch.save({"head." + k: v for k, v in RoutingHead(2, 8, 3, n_hid=4).state_dict().items()}, d / "h.pt")
    >>> cfg = {"backbone": {"source": "hf", "id": "x", "revision": None, "kind": "text"}}
    >>> out = export_state_dict_file(d / "h.pt", d / "export", cfg)
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'config.json', 'model.safetensors']
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from heinsen_zoo.zoo import checksums, files
from heinsen_zoo.zoo.architectures import architecture_names, get_architecture
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    CorruptFileError,
    IncompatibleConfigError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from heinsen_zoo.zoo.export_format import check_state_dict, validate_config, write_export
from heinsen_zoo.zoo.torch_sizes import check_declared_storage

__all__ = [
    "detect_architecture",
    "export_lightning_checkpoint",
    "export_state_dict_file",
    "extract_head_state_dict",
    "extract_state_dict",
    "merge_head",
    "read_lightning_checkpoint",
    "read_weights",
    "safe_torch_load",
]

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "head", "module", "net", "weights")


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with clear errors; never runs pickled code.

    Raises FileNotFoundError, :class:`UnsafeCheckpointError` (the file names Python objects beyond
    tensors and plain containers — refused before any is built) or :class:`CorruptFileError` (a
    ValueError: not a torch file, truncated or corrupt — whatever the torch reader tripped over).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_declared_storage(path)  # sizes declared by the pickle fit in the file, before torch allocates them
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        hint = next((line for line in detail if "GLOBAL" in line or "Unsupported global" in line), None)
        if hint is None:  # a broken pickle stream, not a forbidden object
            raise CorruptFileError(
                f"{path}: not a readable torch checkpoint (corrupt or truncated?): {_first_line(err)}"
            ) from None
        raise UnsafeCheckpointError(
            f"refusing to unpickle arbitrary objects from {path}: it holds Python objects other than tensors and "
            f"plain containers, and torch.load(weights_only=True) refused them ({hint.strip()}). Nothing in the file "
            "was executed. Only plain state dicts are accepted: re-save the weights where you trust them with "
            "torch.save(model.state_dict(), ...) or as safetensors."
        ) from None
    except MemoryError:
        raise CorruptFileError(
            f"{path}: the checkpoint claims more memory than is available (corrupt?)"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch's readers raise anything on corrupt bytes
        raise CorruptFileError(
            f"{path}: not a readable torch checkpoint (corrupt or truncated?): {type(err).__name__}: {_first_line(err)}"
        ) from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else ""


def read_weights(path: str | os.PathLike) -> Any:
    """A weight file's contents: ``.safetensors`` (header validated first) or a weights-only torch file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return files.load_safetensors(path)
    return safe_torch_load(path)


def _find_tensor_mapping(obj: Any, source: str, depth: int = 0) -> Mapping[str, torch.Tensor] | None:
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    if (
        obj
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        return obj
    for key in _CONTAINER_KEYS:
        found = _find_tensor_mapping(obj.get(key), source, depth + 1)
        if found is not None:
            return found
    return None


def _select(
    state: Mapping[str, torch.Tensor], anchor: str, source: str, what: str
) -> dict[str, torch.Tensor]:
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    prefixes = sorted({k[: -len(anchor)] for k in state if k == anchor or k.endswith("." + anchor)})
    if not prefixes:
        raise StateDictMismatchError(
            f"{source} (expected {what}; its first keys are {sorted(state)[:5]})", missing=[anchor]
        )
    if len(prefixes) > 1:
        raise CorruptFileError(
            f"{source}: several {what}s found (key prefixes {prefixes}); extract the one you want first"
        )
    prefix = prefixes[0]
    selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = sorted(k for k in state if not k.startswith(prefix))
    if dropped:
        warnings.warn(
            f"{source}: kept the {len(selected)} {what} keys under prefix {prefix!r}; left out {len(dropped)} other "
            f"keys (e.g. {dropped[:3]})",
            stacklevel=3,
        )
    return selected


def detect_architecture(obj: Any, source: str = "checkpoint") -> str:
    """The architecture whose anchor key (any prefix) a loaded checkpoint object holds.

    Example:
        >>> from heinsen_zoo.heads import RoutingHead
        >>> detect_architecture({"state_dict": {"model.head." + k: v for k, v in RoutingHead(2, 8, 3, 4).state_dict().items()}})
        'routing_head'
    """
    state = _find_tensor_mapping(obj, source) or {}
    keys = [k.replace("_orig_mod.", "") for k in state]
    found = [
        name
        for name in architecture_names()
        if any(
            k == get_architecture(name).anchor or k.endswith("." + get_architecture(name).anchor)
            for k in keys
        )
    ]
    if len(found) != 1:
        what = "no known architecture" if not found else f"several architectures {found}"
        raise IncompatibleConfigError(
            f"{source}: {what} recognised (anchor keys of {architecture_names()}); its first keys are {sorted(keys)[:5]}"
        )
    return found[0]


def extract_state_dict(obj: Any, architecture: str, source: str) -> dict[str, torch.Tensor]:
    """The canonical (unprefixed) state dict of ``architecture`` inside a loaded checkpoint object."""
    arch = get_architecture(architecture)
    state = _find_tensor_mapping(obj, source)
    if state is None:
        keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CorruptFileError(
            f"{source}: no state dict (a mapping of names to tensors) found at the top level or under "
            f"{list(_CONTAINER_KEYS)}; got {keys}"
        )
    what = "RoutingHead" if architecture == "routing_head" else f"{architecture} model"
    return _select(state, arch.anchor, source, what)


def extract_head_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """RoutingHead keys (``W``, ``B``, ``route.*``) from a checkpoint object, prefix removed.

    Example:
        >>> import torch
        >>> sd = {"model.head.W": torch.ones(2, 3), "model.head.route.0.W_A": torch.zeros(1, 3)}
        >>> sorted(extract_head_state_dict({"state_dict": sd}))
        ['W', 'route.0.W_A']
    """
    return extract_state_dict(obj, "routing_head", source)


def merge_head(
    architecture: str, given: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor], source: str
) -> dict:
    """The head arguments the weights imply; any ``given`` must agree (ClassCountMismatchError for the class count)."""
    inferred = get_architecture(architecture).infer_head_args(state)
    given = dict(given or {})
    differ = {k: (given[k], inferred[k]) for k in inferred if k in given and given[k] != inferred[k]}
    if differ:
        n_key = get_architecture(architecture).n_classes_arg
        error = ClassCountMismatchError if n_key in differ else IncompatibleConfigError
        text = ", ".join(f"{k}: config {a} vs weights {b}" for k, (a, b) in differ.items())
        raise error(f"{source}: the weights do not fit the requested head ({text})")
    unknown = sorted(set(given) - set(inferred))
    if unknown:
        raise IncompatibleConfigError(f"{source}: unknown head arguments {unknown} for {architecture!r}")
    return inferred


def _validated_write(
    state: dict[str, torch.Tensor], config: dict[str, Any], out_dir: str | os.PathLike, source: str
) -> Path:
    config = validate_config(config, source)
    arch = get_architecture(config["architecture"])
    model = arch.build(
        config["head"], config.get("backbone"), config.get("labels"), config.get("padding", "mask")
    )
    check_state_dict(
        arch.weights_module(model), state, source, strict=True, warn_cast=False
    )  # written unchanged
    return write_export(state, config, out_dir)


def export_state_dict_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: Mapping[str, Any],
    converted_from: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a published state-dict file into an export directory; returns ``out_dir``.

    ``config``: at least ``backbone`` for routing heads (``architecture`` defaults to ``routing_head``);
    head arguments are inferred from the weights and must agree with any given. The weights are checked
    against a freshly built model (strict keys and shapes) before anything is written, and written
    unchanged (same dtypes, bit for bit). ``converted_from`` adds provenance (e.g. the URL and blob id).
    """
    path = Path(path)
    config = json.loads(json.dumps(dict(config)))
    config.setdefault("schema_version", 1)
    architecture = config.setdefault("architecture", "routing_head")
    state = extract_state_dict(read_weights(path), architecture, str(path))
    config["head"] = merge_head(architecture, config.get("head"), state, str(path))
    config.setdefault("labels", None)
    config.setdefault("padding", "mask")
    config.setdefault("preprocessing", {})
    config["converted_from"] = {
        "file": path.name,
        "sha256": checksums.sha256_file(path),
        **dict(converted_from or {}),
    }
    return _validated_write(state, config, out_dir, str(path))


def read_lightning_checkpoint(ckpt_path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(head state dict, export config)`` from a ``RoutingClassificationTask`` Lightning checkpoint.

    The checkpoint is read with ``weights_only=True``; its ``hyper_parameters`` must hold the plain
    ``backbone`` spec, ``n_classes``, ``d_depth``, ``d_emb`` (``n_hid``, ``labels``, ``padding`` optional),
    and its ``state_dict`` the head under some prefix (``model.head.``).
    """
    path = Path(ckpt_path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise IncompatibleConfigError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        raise IncompatibleConfigError(
            f"{path}: no 'hyper_parameters' (was the task saved with save_hyperparameters()?)"
        )
    missing = [k for k in ("backbone", "n_classes", "d_depth", "d_emb") if k not in hp]
    if missing:
        raise IncompatibleConfigError(
            f"{path}: hyper_parameters lack {missing} (expected a RoutingClassificationTask checkpoint; "
            f"got keys {sorted(hp)})"
        )
    if not isinstance(hp["backbone"], Mapping):
        raise IncompatibleConfigError(
            f"{path}: hyper_parameters['backbone'] must be a plain dict spec, got {hp['backbone']!r}"
        )
    state = extract_head_state_dict(ckpt["state_dict"], str(path))
    given = {
        "d_depth": hp["d_depth"],
        "d_emb": hp["d_emb"],
        "n_classes": hp["n_classes"],
        "n_hid": hp.get("n_hid", 64),
    }
    head = merge_head("routing_head", given, state, str(path))
    labels = hp.get("labels")
    config = {
        "schema_version": 1,
        "architecture": "routing_head",
        "backbone": json.loads(json.dumps(dict(hp["backbone"]))),
        "head": head,
        "labels": list(labels) if labels is not None else None,
        "preprocessing": dict(hp.get("preprocessing") or {}),
        "padding": hp.get("padding", "mask"),
        "converted_from": {
            "file": path.name,
            "lightning_epoch": ckpt.get("epoch"),
            "lightning_global_step": ckpt.get("global_step"),
        },
    }
    return state, validate_config(config, str(path))


def export_lightning_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export the head of a ``RoutingClassificationTask`` ``.ckpt`` to ``out_dir``; returns ``out_dir``."""
    state, config = read_lightning_checkpoint(ckpt_path)
    config["converted_from"]["sha256"] = checksums.sha256_file(ckpt_path)
    return _validated_write(state, config, out_dir, str(ckpt_path))
