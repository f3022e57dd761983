"""The registry of named models: ``architecture.tag`` → backbone, head, preprocessing, weights, metric.

Each :class:`ModelEntry` carries everything needed to rebuild a published model and to judge it:
the backbone (a plain spec dict with a pinned revision), the head's constructor arguments, the
preprocessing / tokenizer settings the weights were trained with, the class labels, where the
weights may be found (with their SHA-256 when one is published), license, paper and the expected
metric with its tolerance.

Weight locations (:class:`WeightSource.location`), tried in order, the first one found wins:

* ``env:VAR/relative/path`` — relative to the directory in environment variable ``VAR``;
* ``local-dir:relative/path`` — relative to the zoo home (``$HEINSEN_ZOO_HOME``, else the repository root);
* ``shared:relative/path`` — relative to the team's shared folder (``$HEINSEN_SHARED``, else ``<repo>/../shared``);
* ``hf-hub:owner/repo`` — a Hugging Face hub repository (``filename`` inside it, or an export directory),
  kept in the Hugging Face cache;
* ``https://…`` — a URL, downloaded once into the cache (:mod:`heinsen_zoo.zoo.download`); with ``git_blob``
  (files published in a git repository) the download is verified against that blob id and converted to an
  export directory; a local file source with ``git_blob`` is checked against it too;
* anything else — a file system path.

A location is an export directory (``config.json`` + ``model.safetensors``) or a single weight file
(``.safetensors``, or a ``.pt``/``.pth``/``.state_dict`` state dict read with ``weights_only=True``).
Offline is the normal path: every built-in entry resolves local files only. Only ``hf-hub:`` and URL
sources download, and not when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``/``HEINSEN_ZOO_OFFLINE`` is set
or ``local_files_only=True``; a missing file fails at once with a message saying where to put it.

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
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heinsen_zoo.backbones._resolve import is_offline as hub_offline
from heinsen_zoo.labels import (  # noqa: F401  (re-exported: older imports from here keep working)
    BINARY_SENTIMENT_LABELS,
    CIFAR10_LABELS,
    CIFAR100_LABELS,
    SMALLNORB_LABELS,
    SST5_LABELS,
    named_labels,
)
from heinsen_zoo.zoo import checksums
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    IncompatibleConfigError,
    OfflineError,
    UnknownModelError,
    WeightsNotFoundError,
)

__all__ = [
    "ARCHITECTURES",
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
    "zoo_home",
]

# Constructor arguments each architecture needs, and which of them is the number of classes.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "routing_head": {"args": ("d_depth", "d_emb", "n_classes", "n_hid"), "n_classes": "n_classes"},
    "capsules2019_smallnorb": {"args": ("n_objs", "n_parts", "d_chns"), "n_classes": "n_objs"},
    "capsules2019_sst": {
        "args": ("d_depth", "d_emb", "d_inp", "d_cap", "n_parts", "n_classes"),
        "n_classes": "n_classes",
    },
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


# --------------------------------------------------------------------------------------------- places


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def zoo_home() -> Path:
    """Base of ``local-dir:`` locations: ``$HEINSEN_ZOO_HOME``, else the repository root, else the cwd."""
    env = os.environ.get("HEINSEN_ZOO_HOME")
    if env:
        return Path(env).expanduser()
    root = _repo_root()
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def shared_dir() -> Path:
    """Base of ``shared:`` locations: ``$HEINSEN_SHARED``, else ``<repo>/../shared``."""
    env = os.environ.get("HEINSEN_SHARED")
    return Path(env).expanduser() if env else Path(os.path.normpath(_repo_root() / ".." / "shared"))


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The zoo's cache (downloads and ``sha256.lock``): argument, ``$HEINSEN_ZOO_CACHE``, XDG, ``~/.cache``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("HEINSEN_ZOO_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "heinsen_zoo"


def is_offline(local_files_only: bool | None = None) -> bool:
    """Downloads disabled? ``local_files_only`` if given, else ``HEINSEN_ZOO_OFFLINE`` or the Hugging Face switches."""
    if local_files_only is not None:
        return bool(local_files_only)
    if os.environ.get("HEINSEN_ZOO_OFFLINE", "").strip().upper() in _TRUE:
        return True
    return hub_offline()


# --------------------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Preprocessing:
    """How inputs were prepared when the weights were trained (they travel with the weights).

    Vision: ``image_size``, ``mean``/``std``, ``interpolation``, ``crop_pct`` (eval: resize to
    ``image_size / crop_pct`` then centre-crop ``image_size``). Text: ``max_length`` tokens per
    chunk, ``chunking`` (``"overflow_concat"``: texts split into ``max_length`` chunks concatenated
    along positions; ``"truncate"``), ``max_chunks``, ``pad_mode`` and ``text_cleanup`` steps.
    ``extra`` holds anything else (plain JSON values).

    Example:
        >>> Preprocessing(image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3).to_dict()["image_size"]
        224
    """

    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    max_length: int | None = None
    chunking: str | None = None
    max_chunks: int | None = None
    pad_mode: str | None = None
    text_cleanup: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the set fields (lists instead of tuples), ready for config.json."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(dict(value))
            elif value is not None and value != ():
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Preprocessing:
        """Inverse of :meth:`to_dict` (unknown keys go to ``extra``)."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        for key in list(data):
            if key in known:
                value = data.pop(key)
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs, extra=data)


@dataclass(frozen=True)
class ExpectedMetric:
    """A published number and the tolerance within which a measurement reproduces it.

    Example:
        >>> m = ExpectedMetric("top1", "test", 99.2, 0.5)
        >>> m.check(98.8), m.check(98.6)
        (True, False)
    """

    name: str
    split: str
    value: float
    tolerance: float
    unit: str = "%"
    dataset: str = ""
    reproduce_row: str | None = None  # the row of reproduce/expected.yaml (`make reproduce-<row>`)

    def check(self, measured: float) -> bool:
        """True when ``measured`` lies within ``value ± tolerance``."""
        return abs(float(measured) - self.value) <= self.tolerance + 1e-9

    def __str__(self) -> str:
        where = f" on {self.dataset} {self.split}" if self.dataset else f" on {self.split}"
        cmd = f" (`make reproduce-{self.reproduce_row}`)" if self.reproduce_row else ""
        return f"{self.name} {self.value}{self.unit} ±{self.tolerance}{where}{cmd}"


@dataclass(frozen=True)
class WeightSource:
    """One place where an entry's weights may be found (see the module docstring for ``location``).

    ``sha256``: the published digest of the file (for an export directory: of its ``model.safetensors``),
    or None when none is known — then, with ``trust_on_first_use``, the digest is recorded in
    ``<cache>/sha256.lock`` the first time and verified on every later load; without it (files this
    project produces itself) only the digest that ``config.json`` records is checked.

    Example:
        >>> WeightSource("env:HEINSEN_2019_DIR/x.pt").kind
        'env'
    """

    location: str
    sha256: str | None = None
    filename: str | None = None
    revision: str | None = None
    trust_on_first_use: bool = True
    note: str = ""
    git_blob: str | None = None  # git blob id of a file published in a git repository (URL sources)

    def __post_init__(self) -> None:
        if not isinstance(self.location, str) or not self.location:
            raise ValueError(f"WeightSource.location: expected a non-empty string, got {self.location!r}")
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", checksums.normalize_digest(self.sha256, "WeightSource.sha256"))
        if self.git_blob is not None:
            from heinsen_zoo.zoo.download import normalize_blob_id

            object.__setattr__(self, "git_blob", normalize_blob_id(self.git_blob))

    @property
    def kind(self) -> str:
        """``env``, ``local-dir``, ``shared``, ``hf-hub``, ``url`` or ``path``."""
        for prefix in ("env:", "local-dir:", "shared:", "hf-hub:"):
            if self.location.startswith(prefix):
                return prefix[:-1]
        if self.location.startswith(("http://", "https://")):
            return "url"
        return "path"

    def local_path(self) -> Path | None:
        """Where the location points on this machine (None for hub/URL, or an unset env var)."""
        kind, rest = self.kind, self.location.split(":", 1)[-1]
        if kind == "env":
            var, _, rel = rest.partition("/")
            base = os.environ.get(var)
            return Path(base).expanduser() / rel if base else None
        if kind == "local-dir":
            return zoo_home() / rest
        if kind == "shared":
            return shared_dir() / rest
        if kind == "path":
            return Path(self.location).expanduser()
        return None

    def describe_location(self) -> str:
        """Human-readable location, with the resolved path (or why it cannot be resolved)."""
        kind = self.kind
        if kind == "env":
            var, _, rel = self.location[4:].partition("/")
            base = os.environ.get(var)
            return f"${var}/{rel}" + (f" = {Path(base) / rel}" if base else f" (${var} is not set)")
        if kind in ("local-dir", "shared"):
            return f"{self.location} = {self.local_path()}"
        if kind == "hf-hub":
            what = self.filename or "config.json + model.safetensors"
            rev = f"@{self.revision}" if self.revision else ""
            return f"{self.location}{rev} ({what})"
        return self.location

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class LocatedWeights:
    """The result of :func:`resolve_weights`: a local path and how its integrity was checked."""

    path: Path
    source: WeightSource
    sha256: str | None
    check: str  # "published", "recorded", "first-use", "config"
    pending_record: tuple[Path, str] | None = None  # (lock file, key) to record once the file loaded

    @property
    def is_export_dir(self) -> bool:
        return self.path.is_dir()

    def commit(self) -> None:
        """Record a first-use digest in the lock file; call only after the file passed every check."""
        if self.pending_record is not None and self.sha256 is not None:
            checksums.record_lock(self.pending_record[0], self.pending_record[1], self.sha256)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: ``name`` is ``architecture.tag``.

    ``head`` holds the constructor arguments of ``architecture`` (see :data:`ARCHITECTURES`);
    ``labels`` is a tuple of class names, a named label set (``"imagenet-1k"``) or None.

    Example:
        >>> e = get_entry("routing_roberta_large.sst5r_heinsen2022")
        >>> e.n_classes, e.backbone["id"], e.get_labels()[0]
        (5, 'roberta-large', 'very negative')
    """

    name: str
    architecture: str
    head: Mapping[str, Any]
    backbone: Mapping[str, Any] | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: tuple[str, ...] | str | None = None
    padding: str = "mask"
    weights: tuple[WeightSource, ...] = ()
    license: str = ""
    paper: str = ""
    metric: ExpectedMetric | None = None
    description: str = ""
    missing_hint: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"ModelEntry.name: expected 'architecture.tag' in lower case letters, digits and underscores "
                f"(e.g. 'routing_minilm_l6.bbc_news_demo'), got {self.name!r}"
            )
        if self.architecture not in ARCHITECTURES:
            raise IncompatibleConfigError(
                f"{self.name}: architecture {self.architecture!r} is unknown; expected one of {sorted(ARCHITECTURES)}"
            )
        required = ARCHITECTURES[self.architecture]["args"]
        missing = [k for k in required if k not in self.head]
        extra = [k for k in self.head if k not in required]
        if missing or extra:
            raise IncompatibleConfigError(
                f"{self.name}: head arguments of {self.architecture!r} must be {list(required)}; "
                f"missing {missing}, unexpected {extra}"
            )
        if self.padding not in ("mask", "none"):
            raise ValueError(f"{self.name}: padding must be 'mask' or 'none', got {self.padding!r}")
        if self.backbone is not None:
            for key in ("source", "id"):
                if key not in self.backbone:
                    raise IncompatibleConfigError(
                        f"{self.name}: backbone spec lacks {key!r}: {dict(self.backbone)}"
                    )
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))
        if isinstance(self.labels, tuple) and len(self.labels) != self.n_classes:
            raise ClassCountMismatchError(
                f"{self.name}: {len(self.labels)} labels given but the head has {self.n_classes} classes"
            )
        object.__setattr__(self, "head", dict(self.head))
        object.__setattr__(self, "weights", tuple(self.weights))

    @property
    def architecture_name(self) -> str:
        """The part of the name before the dot."""
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        """The part of the name after the dot."""
        return self.name.split(".", 1)[1]

    @property
    def n_classes(self) -> int:
        return int(self.head[ARCHITECTURES[self.architecture]["n_classes"]])

    def backbone_spec(self) -> dict[str, Any] | None:
        """A fresh copy of the plain backbone spec dict."""
        return json.loads(json.dumps(self.backbone)) if self.backbone is not None else None

    def get_labels(self) -> list[str] | None:
        """The class names (resolving a named label set)."""
        if self.labels is None:
            return None
        if isinstance(self.labels, str):
            labels = named_labels(self.labels)
            if len(labels) != self.n_classes:
                raise ClassCountMismatchError(
                    f"{self.name}: label set {self.labels!r} has {len(labels)} names, the head {self.n_classes} classes"
                )
            return labels
        return list(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready) describing the entry; :meth:`from_dict` reads it back."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "head": dict(self.head),
            "backbone": self.backbone_spec(),
            "preprocessing": self.preprocessing.to_dict(),
            "labels": list(self.labels) if isinstance(self.labels, tuple) else self.labels,
            "padding": self.padding,
            "weights": [w.to_dict() for w in self.weights],
            "license": self.license,
            "paper": self.paper,
            "metric": dataclasses.asdict(self.metric) if self.metric else None,
            "description": self.description,
            "missing_hint": self.missing_hint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> ModelEntry:
        """Build an entry from a plain dict; relative plain paths are made relative to ``base_dir``."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IncompatibleConfigError(
                f"registry entry {data.get('name')!r}: unknown fields {unknown}; expected some of {sorted(known)}"
            )
        weights = []
        for w in data.get("weights") or []:
            w = {"location": w} if isinstance(w, str) else dict(w)
            source = WeightSource(**w)
            if (
                base_dir is not None
                and source.kind == "path"
                and not Path(source.location).expanduser().is_absolute()
            ):
                source = dataclasses.replace(source, location=str(base_dir / source.location))
            weights.append(source)
        data["weights"] = tuple(weights)
        data["preprocessing"] = Preprocessing.from_dict(data.get("preprocessing"))
        if data.get("metric"):
            data["metric"] = ExpectedMetric(**data["metric"])
        if isinstance(data.get("labels"), list):
            data["labels"] = tuple(data["labels"])
        return cls(**data)

    def describe(self, cache: str | os.PathLike | None = None) -> str:
        """A multi-line description: architecture, backbone, preprocessing, metric, weights and their integrity."""
        lock = cache_dir(cache) / checksums.LOCK_FILENAME
        lines = [self.name]
        if self.description:
            lines.append(f"  {self.description}")
        head = " ".join(f"{k}={v}" for k, v in self.head.items())
        lines.append(f"  architecture: {self.architecture} ({head})")
        if self.backbone:
            b = self.backbone
            rev = b.get("revision") or "unpinned"
            opts = {k: v for k, v in b.items() if k not in ("source", "id", "revision", "kind")}
            lines.append(
                f"  backbone: {b['source']}:{b['id']} @ {rev} ({b.get('kind', '?')}){f' {opts}' if opts else ''}"
            )
        pre = self.preprocessing.to_dict()
        if pre:
            lines.append("  preprocessing: " + ", ".join(f"{k}={v}" for k, v in pre.items()))
        if self.architecture == "routing_head":
            lines.append(f"  padding: {self.padding}")
        if self.labels is None:
            lines.append(f"  labels: {self.n_classes} classes (names from the export's config.json)")
        elif isinstance(self.labels, str):
            lines.append(f"  labels: {self.n_classes} classes ({self.labels})")
        else:
            shown = ", ".join(self.labels[:10]) + (", …" if len(self.labels) > 10 else "")
            lines.append(f"  labels: {self.n_classes} classes ({shown})")
        if self.metric:
            lines.append(f"  expected: {self.metric}")
        if self.paper:
            lines.append(f"  paper: {self.paper}")
        if self.license:
            lines.append(f"  license: {self.license}")
        lines.append("  weights (tried in order, the first found wins):")
        policies: list[str] = []
        for source in self.weights:
            path = source.local_path()
            state = "found" if path is not None and path.exists() else "missing"
            if source.kind in ("hf-hub", "url"):
                state = source.kind
            policy = _integrity_text(source, lock)
            if policy not in policies:
                policies.append(policy)
            lines.append(
                f"    [{state}] {source.describe_location()}  (integrity: {policies.index(policy) + 1})"
            )
            if source.note:
                lines.append(f"        note: {source.note}")
        if not self.weights:
            lines.append("    (none: architecture only, use pretrained=False)")
        lines += [f"  integrity {i}: {text}" for i, text in enumerate(policies, start=1)]
        if self.missing_hint:
            lines.append(f"  if missing: {self.missing_hint}")
        return "\n".join(lines)


def _integrity_text(source: WeightSource, lock: Path) -> str:
    if source.git_blob:
        how = (
            "on download, then converted to an export whose sha256"
            if source.kind == "url"
            else "on first use; its sha256"
        )
        return (
            f"git blob id {source.git_blob} (published upstream) verified {how} is recorded in {lock} and "
            "verified on every later load"
        )
    if source.sha256:
        return f"sha256 {source.sha256} (published; verified on every load)"
    if source.trust_on_first_use:
        return (
            f"sha256 unknown (none published): recorded in {lock} on first use and verified on every later "
            "load — this detects later changes, not a file that was already wrong; compare the first digest "
            "with the upstream file yourself"
        )
    return "sha256: produced locally; verified against the digest its config.json records"


# --------------------------------------------------------------------------------------------- the registry

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
        from heinsen_zoo.zoo import entries

        _BUILTIN_NAMES.update(entries.register_builtin_entries())
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


# --------------------------------------------------------------------------------------------- weights


def weights_available(entry: ModelEntry) -> bool:
    """True when some weight source of ``entry`` is on this machine (no download, no hashing)."""
    for source in entry.weights:
        try:
            _locate(source, entry, cache=None, offline=True)
            return True
        except _Unavailable:
            continue
    return False


class _Unavailable(Exception):
    """One weight source could not be used (the reason goes into the final error message)."""


def _locate(source: WeightSource, entry: ModelEntry, cache: str | os.PathLike | None, offline: bool) -> Path:
    kind = source.kind
    if kind == "hf-hub":
        return _locate_hf(source, cache, offline)
    if kind == "url":
        return _locate_url(source, entry, cache, offline)
    path = source.local_path()
    if path is None:
        raise _Unavailable(source.describe_location())
    if not path.exists():
        raise _Unavailable(f"{source.describe_location()}: not found")
    if path.is_dir() and not (path / "model.safetensors").is_file():
        raise _Unavailable(f"{source.describe_location()}: a directory without model.safetensors")
    return path


def _locate_hf(source: WeightSource, cache: str | os.PathLike | None, offline: bool) -> Path:
    repo_id = source.location[len("hf-hub:") :]
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a zoo dependency
        raise _Unavailable(f"{source.describe_location()}: huggingface_hub is not installed ({err})") from err
    files = [source.filename] if source.filename else ["config.json", "model.safetensors"]
    paths = []
    for filename in files:
        try:
            paths.append(
                Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        revision=source.revision,
                        local_files_only=offline,  # the Hugging Face cache is its own; `cache` holds the lock
                    )
                )
            )
        except LocalEntryNotFoundError as err:
            why = (
                "offline (HF_HUB_OFFLINE / local_files_only) and not in the Hugging Face cache"
                if offline
                else str(err)
            )
            raise _Unavailable(f"{source.describe_location()}: {filename} {why}") from err
        except Exception as err:  # network errors, missing repo, auth …
            raise _Unavailable(
                f"{source.describe_location()}: {filename}: {type(err).__name__}: {err}"
            ) from err
    return paths[0].parent if not source.filename else paths[0]


def _locate_url(
    source: WeightSource, entry: ModelEntry, cache: str | os.PathLike | None, offline: bool
) -> Path:
    """A URL source: downloaded once into the cache (:mod:`heinsen_zoo.zoo.download`).

    With ``git_blob`` the file is verified against it and converted into an export directory (returned);
    otherwise the raw file is returned (verified against ``sha256`` when one is published).
    """
    from heinsen_zoo.zoo import download

    try:
        if source.git_blob:
            return download.fetch_published(
                source.location, source.git_blob, entry.name, cache_dir(cache), offline=offline
            )
        basename = Path(urllib.parse.urlparse(source.location).path).name or "weights.bin"
        target = cache_dir(cache) / "downloads" / entry.name / basename
        if target.is_file():
            return target
        if offline:
            raise _Unavailable(
                f"{source.location}: offline (HF_HUB_OFFLINE / local_files_only) and not yet downloaded to {target}"
            )
        return download.download_verified(source.location, target, None, sha256=source.sha256)
    except (OfflineError, download.DownloadError) as err:
        raise _Unavailable(f"{source.location}: {err}") from err


def resolve_weights(
    entry: ModelEntry | str,
    cache: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> LocatedWeights:
    """Find an entry's weights (first available source) and verify their SHA-256.

    Published digest → verified; unknown digest → verified against ``<cache>/sha256.lock``, or, on first
    use, returned with ``pending_record`` (recorded by :meth:`LocatedWeights.commit` once the file loaded); locally produced exports → checked later against the
    digest their ``config.json`` records. Raises :class:`WeightsNotFoundError` listing every place
    looked at and how to provide the file, :class:`OfflineError` when only a download could help.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    if not entry.weights:
        raise WeightsNotFoundError(
            f"{entry.name}: no weights are registered for this entry; use pretrained=False"
        )
    offline = is_offline(local_files_only)
    reasons = []
    for source in entry.weights:
        try:
            path = _locate(source, entry, cache, offline)
        except _Unavailable as why:
            reasons.append(str(why))
            continue
        return _check_integrity(entry, source, path, cache)
    only_remote = all(s.kind in ("hf-hub", "url") for s in entry.weights)
    error = OfflineError if offline and only_remote else WeightsNotFoundError
    message = f"pretrained weights of {entry.name!r} not found. Looked at:\n  - " + "\n  - ".join(reasons)
    if entry.missing_hint:
        message += f"\n{entry.missing_hint}"
    raise error(message)


def _check_integrity(
    entry: ModelEntry, source: WeightSource, path: Path, cache: str | os.PathLike | None
) -> LocatedWeights:
    target = path / "model.safetensors" if path.is_dir() else path
    if source.git_blob and source.kind != "url" and target.is_file():  # a local copy of a published file
        from heinsen_zoo.zoo.download import verify_git_blob

        verify_git_blob(target, source.git_blob, origin=f"registry entry {entry.name}")
    if source.sha256:
        digest = checksums.verify(target, source.sha256, origin=f"registry entry {entry.name}")
        return LocatedWeights(path, source, digest, "published")
    if source.trust_on_first_use:
        lock = cache_dir(cache) / checksums.LOCK_FILENAME
        key = f"{entry.name}:{target.resolve()}"
        digest, unrecorded = checksums.check_lock(target, lock, key)
        if unrecorded:  # recorded by LocatedWeights.commit() once the weights loaded (never a refused file)
            return LocatedWeights(path, source, digest, "first-use", pending_record=(lock, key))
        return LocatedWeights(path, source, digest, "recorded")
    return LocatedWeights(path, source, None, "config")


# --------------------------------------------------------------------------------------------- models


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
    from heinsen_zoo.zoo import hub

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
    n_classes = head[ARCHITECTURES[entry.architecture]["n_classes"]]
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
        model = hub.build_model(
            entry_now.architecture, entry_now.head, entry_now.backbone_spec(), labels, entry_now.padding
        )
        model.pretrained_cfg = hub.entry_metadata(entry_now)
        return model
    located = resolve_weights(entry_now, cache=cache_dir, local_files_only=local_files_only)
    return hub.load_located(entry_now, located, strict=strict, map_location=map_location)
