"""The registry's records: a :class:`ModelEntry` (``architecture.tag``) and its parts.

Each entry carries everything needed to rebuild a published model and to judge it: the backbone (a
plain spec dict with a pinned revision), the head's constructor arguments (those its
:mod:`~heinsen_zoo.zoo.architectures` record names), the preprocessing the weights were trained with, the
class labels (or a named set of :mod:`heinsen_zoo.labels`), where the weights may be found
(:class:`WeightSource`, with their SHA-256 when one is published), license, paper and the expected metric
with its tolerance. Weight locations are described in :mod:`heinsen_zoo.zoo.weights`.

Example:
    >>> e = ModelEntry("routing_tiny.doc", "routing_head", {"d_depth": 2, "d_emb": 8, "n_classes": 5, "n_hid": 4},
    ...                backbone={"source": "hf", "id": "x"}, labels="sst5")
    >>> e.n_classes, e.tag, e.get_labels()[-1]
    (5, 'doc', 'very positive')
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heinsen_zoo.labels import named_labels
from heinsen_zoo.padding import PADDING_MODES
from heinsen_zoo.zoo import checksums
from heinsen_zoo.zoo.architectures import get_architecture
from heinsen_zoo.zoo.errors import ClassCountMismatchError, IncompatibleConfigError
from heinsen_zoo.zoo.fetch import normalize_blob_id
from heinsen_zoo.zoo.paths import cache_dir, shared_dir, zoo_home

__all__ = ["ExpectedMetric", "ModelEntry", "Preprocessing", "WeightSource"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")


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
class ModelEntry:
    """One registered model: ``name`` is ``architecture.tag``.

    ``head`` holds the constructor arguments of ``architecture`` (see :mod:`heinsen_zoo.zoo.architectures`);
    ``labels`` is a tuple of class names, a named label set (``"imagenet-1k"``) or None.

    Example:
        >>> from heinsen_zoo.zoo.registry import get_entry
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
        required = get_architecture(self.architecture, self.name).args
        missing = [k for k in required if k not in self.head]
        extra = [k for k in self.head if k not in required]
        if missing or extra:
            raise IncompatibleConfigError(
                f"{self.name}: head arguments of {self.architecture!r} must be {list(required)}; "
                f"missing {missing}, unexpected {extra}"
            )
        if self.padding not in PADDING_MODES:
            raise ValueError(
                f"{self.name}: padding must be {' or '.join(map(repr, PADDING_MODES))}, got {self.padding!r}"
            )
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
        return int(self.head[get_architecture(self.architecture).n_classes_arg])

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

    def metadata(self) -> dict[str, Any]:
        """The plain metadata attached to loaded models as ``pretrained_cfg``."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "backbone": self.backbone_spec(),
            "head": dict(self.head),
            "labels": self.get_labels(),
            "padding": self.padding,
            "preprocessing": self.preprocessing.to_dict(),
            "expected_metric": self.to_dict()["metric"],
            "license": self.license,
            "paper": self.paper,
        }

    def export_config(self) -> dict[str, Any]:
        """The export ``config.json`` fields this entry implies (weights converted for it start from these)."""
        meta = self.metadata()
        keys = (
            "architecture",
            "backbone",
            "head",
            "labels",
            "preprocessing",
            "padding",
            "name",
            "paper",
            "license",
        )
        return {
            **{k: meta[k] for k in keys},
            "expected_metric": meta["expected_metric"],
            "description": self.description,
        }

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
        if get_architecture(self.architecture).needs_backbone:
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
