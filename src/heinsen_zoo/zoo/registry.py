"""The registry of named models: ``architecture.tag`` → backbone, head, preprocessing, weights, metric.

``list_models`` / ``get_entry`` / ``register_model`` / ``create_model`` (timm's names). The records are
:class:`~heinsen_zoo.zoo.entry.ModelEntry` (:mod:`heinsen_zoo.zoo.entry`); the built-in entries are in
:mod:`heinsen_zoo.zoo.entries`; where weights are found and how they are verified is
:mod:`heinsen_zoo.zoo.weights`; how they are loaded is :mod:`heinsen_zoo.zoo.loading`.

Extra entries can be declared in JSON or YAML files named by ``$HEINSEN_ZOO_REGISTRY`` (several
files separated by ``os.pathsep``); relative plain paths in such a file are relative to the file.

Example:
    >>> from heinsen_zoo.zoo.registry import list_models, get_entry
    >>> "routing_beit_large_p16_224.in1k_heinsen2022" in list_models("routing_beit*")
    True
    >>> get_entry("capsules_smallnorb.heinsen2019").metric.value
    99.1
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from heinsen_zoo.zoo import entries as builtin_entries
from heinsen_zoo.zoo import loading, weights
from heinsen_zoo.zoo.architectures import get_architecture

# Re-exported: these names lived here before the split (``heinsen_zoo.zoo.registry.X`` keeps working).
from heinsen_zoo.zoo.entry import ExpectedMetric, ModelEntry, Preprocessing, WeightSource
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    IncompatibleConfigError,
    UnknownModelError,
)
from heinsen_zoo.zoo.paths import cache_dir, is_offline, shared_dir, zoo_home
from heinsen_zoo.zoo.weights import LocatedWeights, weights_available

__all__ = [
    "ExpectedMetric",
    "LocatedWeights",
    "ModelEntry",
    "Preprocessing",
    "WeightSource",
    "cache_dir",
    "create_model",
    "get_entry",
    "is_offline",
    "list_models",
    "register_model",
    "resolve_weights",
    "shared_dir",
    "weights_available",
    "zoo_home",
]

_REGISTRY: dict[str, ModelEntry] = {}

_BUILTIN_NAMES: set[str] = set()

_USER_FILES_LOADED: set[str] = set()


def register_model(entry: ModelEntry | Mapping[str, Any], overwrite: bool = False) -> ModelEntry:
    """Add an entry (a :class:`ModelEntry` or its dict form); a taken name needs ``overwrite=True``.

    Example:
        >>> e = register_model({"name": "routing_tiny.doc_example", "architecture": "routing_head",
        ...                     "head": {"d_depth": 2, "d_emb": 8, "n_classes": 3, "n_hid": 4}}, overwrite=True)
        >>> e.n_classes
        3
    """
    if not isinstance(entry, ModelEntry):
        if not isinstance(entry, Mapping):
            raise TypeError(f"register_model: expected a ModelEntry or a dict, got {type(entry).__name__}")
        entry = ModelEntry.from_dict(entry)
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"register_model: {entry.name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[entry.name] = entry
    return entry


def _load_user_registries() -> None:
    """Make sure the built-in entries and the ``$HEINSEN_ZOO_REGISTRY`` files are registered."""
    if not _BUILTIN_NAMES:
        for entry in builtin_entries.builtin_entries():
            register_model(entry, overwrite=True)
            _BUILTIN_NAMES.add(entry.name)
    spec = os.environ.get("HEINSEN_ZOO_REGISTRY", "")
    for item in filter(None, spec.split(os.pathsep)):
        path = Path(item).expanduser().resolve()
        if str(path) in _USER_FILES_LOADED:
            continue
        entries = _read_user_registry(path)  # a file that fails is read (and fails) again next time
        _USER_FILES_LOADED.add(str(path))
        for entry in entries:
            if entry.name in _BUILTIN_NAMES:
                raise ValueError(
                    f"HEINSEN_ZOO_REGISTRY file {path}: entry {entry.name!r} would replace a built-in entry; "
                    "give it another tag"
                )
            register_model(entry, overwrite=True)


def _read_user_registry(path: Path) -> list[ModelEntry]:
    """The entries of a ``$HEINSEN_ZOO_REGISTRY`` file: data only (safe YAML, backbone specs checked as data).

    Every problem raises :class:`IncompatibleConfigError` naming the file (and the line, or the entry).
    """
    if not path.is_file():
        raise FileNotFoundError(f"HEINSEN_ZOO_REGISTRY: {path} does not exist")
    where = f"HEINSEN_ZOO_REGISTRY file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise IncompatibleConfigError(f"{where}: not UTF-8 text ({err})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise IncompatibleConfigError(f"{where}:{line}: not valid (safe) YAML: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise IncompatibleConfigError(f"{where}: invalid JSON ({err})") from None
    if isinstance(data, Mapping):
        if data.get("schema_version", 1) != 1:
            raise IncompatibleConfigError(
                f"{where}: schema_version {data.get('schema_version')!r} is not supported (expected 1)"
            )
        data = data.get("models", [])
    if not isinstance(data, list):
        raise IncompatibleConfigError(f"{where}: expected a list of entries or {{'models': [...]}}")
    entries = []
    for number, item in enumerate(data):
        label = (
            f"{where}: entry {number} ({item.get('name')!r})"
            if isinstance(item, Mapping)
            else f"{where}: entry {number}"
        )
        if not isinstance(item, Mapping):
            raise IncompatibleConfigError(f"{label}: expected a mapping, got {type(item).__name__}")
        if item.get("backbone") is not None:
            from heinsen_zoo.backbones._resolve import check_spec_from_file

            item = {**item, "backbone": check_spec_from_file(item["backbone"], label)}
        try:
            entries.append(ModelEntry.from_dict(item, base_dir=path.parent))
        except IncompatibleConfigError:
            raise
        except (TypeError, ValueError, KeyError) as err:
            raise IncompatibleConfigError(f"{label}: {err}") from None
    return entries


def list_models(pattern: str | Sequence[str] = "*", pretrained: bool = False) -> list[str]:
    """Sorted registered names matching ``pattern`` (fnmatch; several patterns = union).

    ``pretrained=True`` keeps only names whose weights are available on this machine now (found
    locally or already in a cache; nothing is downloaded or hashed).

    Example:
        >>> list_models("capsules_*")
        ['capsules_gpt2_large.sst2r_heinsen2019', 'capsules_gpt2_large.sst5r_heinsen2019', 'capsules_smallnorb.heinsen2019']
    """
    _load_user_registries()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = sorted(n for n in _REGISTRY if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if pretrained:
        names = [n for n in names if weights_available(_REGISTRY[n])]
    return names


def get_entry(name: str) -> ModelEntry:
    """The entry registered under ``name`` (or under ``name.<tag>`` when ``name`` has a single tag).

    Raises :class:`UnknownModelError` (a KeyError) suggesting the closest names.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a registered model name (str), got {type(name).__name__}")
    _load_user_registries()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." not in name:
        tagged = [n for n in _REGISTRY if n.split(".", 1)[0] == name]
        if len(tagged) == 1:
            return _REGISTRY[tagged[0]]
        if tagged:
            raise UnknownModelError(
                name, sorted(tagged), hint="(the architecture has several tags: name one)"
            )
    suggestions = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    if not suggestions:
        head = name.split(".", 1)[0]
        suggestions = [n for n in sorted(_REGISTRY) if n.startswith(head[:8])][:3]
    raise UnknownModelError(name, suggestions)


def resolve_weights(
    entry: ModelEntry | str,
    cache: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> LocatedWeights:
    """:func:`heinsen_zoo.zoo.weights.resolve_weights` for an entry or a registered name."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    return weights.resolve_weights(entry, cache=cache, local_files_only=local_files_only)


_OVERLAY_KEYS = {"file", "url", "hf_hub_id", "hf_hub_filename", "git_blob", "sha256"}


def _weights_override(
    name: str, checkpoint_path: str | os.PathLike | None, overlay: Mapping[str, Any] | None
) -> tuple[WeightSource, ...] | None:
    """The weight source of timm-style ``checkpoint_path`` / ``pretrained_cfg_overlay``, or None."""
    if overlay is not None and not isinstance(overlay, Mapping):
        raise TypeError(
            f"create_model({name!r}): pretrained_cfg_overlay must be a dict, got {type(overlay).__name__}"
        )
    overlay = dict(overlay or {})
    unknown = sorted(set(overlay) - _OVERLAY_KEYS)
    if unknown:
        raise TypeError(
            f"create_model({name!r}): pretrained_cfg_overlay keys {unknown} are not supported; "
            f"expected some of {sorted(_OVERLAY_KEYS)}"
        )
    places = [k for k in ("file", "url", "hf_hub_id") if overlay.get(k)]
    if checkpoint_path is not None:
        places.insert(0, "checkpoint_path")
    if len(places) > 1:
        raise ValueError(f"create_model({name!r}): give one weight location, got {places}")
    if not places:
        if overlay:
            raise ValueError(
                f"create_model({name!r}): pretrained_cfg_overlay {overlay} names no location (file, url or hf_hub_id)"
            )
        return None
    digest = {"sha256": overlay.get("sha256"), "trust_on_first_use": False}
    if places[0] in ("checkpoint_path", "file"):
        raw = checkpoint_path if places[0] == "checkpoint_path" else overlay["file"]
        location = str(Path(os.fspath(raw)).expanduser().resolve())
        return (WeightSource(location, note=f"given as {places[0]}", **digest),)
    if places[0] == "url":
        return (WeightSource(overlay["url"], git_blob=overlay.get("git_blob"), **digest),)
    return (
        WeightSource(f"hf-hub:{overlay['hf_hub_id']}", filename=overlay.get("hf_hub_filename"), **digest),
    )


def create_model(
    name: str,
    pretrained: bool = True,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    strict: bool = True,
    map_location: str = "cpu",
    **overrides: Any,
):
    """Build the model of a registered entry, with its published weights when ``pretrained``.

    ``overrides`` replace head arguments (``n_classes``, ``n_hid``, …), ``backbone``, ``labels`` or
    ``padding``; with ``pretrained=True`` head arguments that change parameter shapes are refused
    (the weights would not fit). As in timm, ``checkpoint_path=PATH`` (a weight file or an export
    directory) or ``pretrained_cfg_overlay=dict(file=PATH)`` (or ``url=…`` with ``git_blob``/``sha256``,
    or ``hf_hub_id=OWNER/REPO``) loads the weights from there instead of the entry's sources (strictly;
    ``sha256=`` in the overlay is verified). Returns a :class:`heinsen_zoo.model.RoutingClassifier` for
    ``routing_head`` entries, a 2019 capsule classifier otherwise. The entry's metadata is attached as
    ``model.pretrained_cfg`` (a plain dict: name, preprocessing, labels, metric, weights file, sha256).

    Example:
        >>> m = create_model("routing_minilm_l6.bbc_news_demo", pretrained=False)
        >>> type(m).__name__
        'RoutingClassifier'
    """
    entry = get_entry(name)
    weights_override = _weights_override(
        entry.name, overrides.pop("checkpoint_path", None), overrides.pop("pretrained_cfg_overlay", None)
    )
    if weights_override is not None:
        pretrained = True
    head = dict(entry.head)
    changed = {}
    for key in list(overrides):
        if key in head:
            value = overrides.pop(key)
            if value != head[key]:
                changed[key] = value
            head[key] = value
    unknown = sorted(set(overrides) - {"backbone", "labels", "padding"})
    if unknown:
        raise TypeError(
            f"create_model({entry.name!r}): unknown overrides {unknown}; expected head arguments "
            f"{list(head)} or backbone/labels/padding"
        )
    if pretrained and changed and weights_override is None:  # given weights may fit a changed head
        raise IncompatibleConfigError(
            f"create_model({entry.name!r}, pretrained=True): cannot override {changed} — the published weights "
            f"have {', '.join(f'{k}={entry.head[k]}' for k in changed)}; use pretrained=False (or fine-tune)"
        )
    labels = overrides.get("labels", entry.get_labels() if "labels" not in overrides else None)
    n_classes = head[get_architecture(entry.architecture).n_classes_arg]
    if labels is not None and len(labels) != n_classes:
        if "labels" in overrides or not changed:
            raise ClassCountMismatchError(
                f"create_model({entry.name!r}): {len(labels)} labels for {n_classes} classes"
            )
        labels = None  # the class count was overridden: the entry's names no longer apply
    entry_now = dataclasses.replace(
        entry,
        head=head,
        backbone=overrides.get("backbone", entry.backbone),
        labels=tuple(labels) if labels is not None else None,
        padding=overrides.get("padding", entry.padding),
        weights=weights_override if weights_override is not None else entry.weights,
    )
    if not pretrained:
        model = loading.build_model(
            entry_now.architecture, entry_now.head, entry_now.backbone_spec(), labels, entry_now.padding
        )
        model.pretrained_cfg = entry_now.metadata()
        return model
    located = resolve_weights(entry_now, cache=cache_dir, local_files_only=local_files_only)
    return loading.load_located(entry_now, located, strict=strict, map_location=map_location)
