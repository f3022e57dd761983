"""Loading models strictly: export directories, single weight files, Lightning checkpoints, hub exports.

Loading is strict and atomic: the config is validated (schema version, architecture, head arguments,
class count of config / labels / weights), the weights' SHA-256 is verified against the digest
``config.json`` records (and the registry's, when loaded by name) on every read, a fresh model is built
from the architecture's record, and missing / unexpected keys or shape mismatches are reported by name
before anything is loaded. The model is only returned when all of that succeeded.

Example:
    >>> import tempfile, torch
    >>> from heinsen_zoo.heads import RoutingHead
    >>> from heinsen_zoo.zoo.export_format import write_export
    >>> cfg = {"architecture": "routing_head", "head": {"d_depth": 2, "d_emb": 8, "n_classes": 3, "n_hid": 4},
    ...        "backbone": {"source": "hf", "id": "x", "revision": None, "kind": "text"}}
    >>> model = load_export(write_export(RoutingHead(2, 8, 3, n_hid=4).state_dict(), cfg, tempfile.mkdtemp()))
    >>> type(model).__name__, model.n_classes
    ('RoutingClassifier', 3)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heinsen_zoo.zoo import checkpoints, checksums, files
from heinsen_zoo.zoo.architectures import get_architecture
from heinsen_zoo.zoo.entry import ModelEntry
from heinsen_zoo.zoo.errors import ClassCountMismatchError, IncompatibleConfigError, WeightsNotFoundError
from heinsen_zoo.zoo.export_format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_class_count,
    check_head_fits_weights,
    load_weights,
    read_config,
)
from heinsen_zoo.zoo.fetch import hf_hub_files
from heinsen_zoo.zoo.paths import cache_dir, is_offline
from heinsen_zoo.zoo.weights import LocatedWeights

__all__ = [
    "build_model",
    "entry_metadata",
    "hf_hub_export",
    "load_export",
    "load_lightning_checkpoint",
    "load_located",
    "load_state_dict_file",
]


def build_model(
    architecture: str,
    head: Mapping[str, Any],
    backbone: Mapping[str, Any] | None = None,
    labels: list[str] | None = None,
    padding: str = "mask",
) -> nn.Module:
    """A fresh, untrained model of ``architecture`` (its record's ``build``) with constructor arguments ``head``."""
    return get_architecture(architecture).build(head, backbone, labels, padding)


def entry_metadata(entry: ModelEntry) -> dict[str, Any]:
    """The plain metadata of a registry entry attached to loaded models as ``pretrained_cfg``."""
    return entry.metadata()


def _attach(model: nn.Module, cfg: dict[str, Any], map_location: str | torch.device) -> nn.Module:
    model.pretrained_cfg = cfg
    return model.to(map_location).eval()


def _compare_with_entry(entry: ModelEntry, config: Mapping[str, Any], source: str) -> None:
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
            if any(f"head {get_architecture(entry.architecture).n_classes_arg}=" in p for p in problems)
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
    entry: ModelEntry | None = None,
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
    meta = entry.metadata() if entry is not None else {}
    # The export is what was trained (it wins); the entry fills in what the export does not record.
    labels = config.get("labels") if config.get("labels") is not None else meta.get("labels")
    header = files.read_safetensors_header(weights)  # sizes checked against each other before allocating
    check_head_fits_weights(architecture, config["head"], labels, header, str(weights))
    state = files.load_safetensors(weights, header)
    model = build_model(
        architecture, config["head"], config.get("backbone"), labels, config.get("padding", "mask")
    )
    load_weights(get_architecture(architecture).weights_module(model), state, str(weights), strict)
    cfg = {**meta, **config, "labels": labels}
    cfg["preprocessing"] = {**(meta.get("preprocessing") or {}), **(config.get("preprocessing") or {})}
    cfg.update({"source": str(directory), "weights_sha256": digest})
    if entry is not None:
        cfg["name"] = entry.name
    return _attach(model, cfg, map_location)


def load_state_dict_file(
    path: str | os.PathLike,
    entry: ModelEntry,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    sha256: str | None = None,
) -> nn.Module:
    """Build ``entry``'s model and load a single weight file (``.safetensors`` or a weights-only ``.pt``)."""
    path = Path(path)
    raw = checkpoints.read_weights(path)
    state = checkpoints.extract_state_dict(raw, entry.architecture, str(path))
    labels = entry.get_labels()
    check_class_count(entry.architecture, entry.head, labels, state, str(path))
    model = build_model(entry.architecture, entry.head, entry.backbone_spec(), labels, entry.padding)
    load_weights(get_architecture(entry.architecture).weights_module(model), state, str(path), strict)
    cfg = {**entry.metadata(), "source": str(path), "weights_sha256": sha256}
    return _attach(model, cfg, map_location)


def load_located(
    entry: ModelEntry,
    located: LocatedWeights,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load the weights :func:`heinsen_zoo.zoo.weights.resolve_weights` found for ``entry``; a first-use digest is
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


def hf_hub_export(
    spec: str, revision: str | None, cache: str | os.PathLike | None, local_files_only: bool | None
) -> tuple[Path, str, tuple[Path, str] | None]:
    """``(export directory, its weights' sha256, pending lock record or None)`` of ``hf-hub:owner/repo[@rev]``.

    The digest is checked against ``<cache>/sha256.lock`` (trust on first use: the caller records it once the
    export loaded)."""
    repo_id, _, rev_in_name = spec[len("hf-hub:") :].partition("@")
    revision = revision or rev_in_name or None
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"from_pretrained: expected 'hf-hub:owner/repo[@revision]', got {spec!r}")
    config_path, weights_path = hf_hub_files(
        repo_id, (CONFIG_NAME, WEIGHTS_NAME), revision, is_offline(local_files_only), local_files_only
    )
    directory = config_path.parent
    lock = cache_dir(cache) / checksums.LOCK_FILENAME
    key = f"hf-hub:{repo_id}:{directory.name}"
    digest, unrecorded = checksums.check_lock(weights_path, lock, key)
    return directory, digest, ((lock, key) if unrecorded else None)


def load_lightning_checkpoint(
    path: str | os.PathLike, *, strict: bool = True, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The classifier of a ``RoutingClassificationTask`` ``.ckpt`` (read by :func:`checkpoints.read_lightning_checkpoint`)."""
    state, config = checkpoints.read_lightning_checkpoint(path)
    arch = get_architecture(config["architecture"])
    model = arch.build(config["head"], config["backbone"], config["labels"], config["padding"])
    load_weights(arch.weights_module(model), state, str(path), strict)
    return _attach(model, {**config, "source": str(path)}, map_location)
