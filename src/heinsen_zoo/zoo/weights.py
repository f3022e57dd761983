"""Where an entry's weights are and whether they are the published ones: locating and verifying.

Weight locations (:class:`~heinsen_zoo.zoo.entry.WeightSource`), tried in order, the first one found wins:

* ``env:VAR/relative/path`` — relative to the directory in environment variable ``VAR``;
* ``local-dir:relative/path`` — relative to the zoo home (``$HEINSEN_ZOO_HOME``, else the repository root);
* ``shared:relative/path`` — relative to the team's shared folder (``$HEINSEN_SHARED``, else ``<repo>/../shared``);
* ``hf-hub:owner/repo`` — a Hugging Face hub repository (``filename`` inside it, or an export directory),
  kept in the Hugging Face cache;
* ``https://…`` — a URL, downloaded once into the cache (:mod:`heinsen_zoo.zoo.fetch`); with ``git_blob``
  (files published in a git repository) the download is verified against that blob id and converted to an
  export directory; a local file source with ``git_blob`` is checked against it too;
* anything else — a file system path.

A location is an export directory (``config.json`` + ``model.safetensors``) or a single weight file
(``.safetensors``, or a ``.pt``/``.pth``/``.state_dict`` state dict read with ``weights_only=True``).
Offline is the normal path: every built-in entry resolves local files only. Only ``hf-hub:`` and URL
sources download, and not when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``/``HEINSEN_ZOO_OFFLINE`` is set
or ``local_files_only=True``; a missing file fails at once with a message saying where to put it.

Example:
    >>> from heinsen_zoo.zoo.registry import get_entry
    >>> weights_available(get_entry("routing_minilm_l6.bbc_news_demo")) in (True, False)
    True
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from heinsen_zoo.zoo import checksums, fetch
from heinsen_zoo.zoo.entry import ModelEntry, WeightSource
from heinsen_zoo.zoo.errors import OfflineError, WeightsNotFoundError, ZooError
from heinsen_zoo.zoo.paths import cache_dir, is_offline

__all__ = ["LocatedWeights", "resolve_weights", "weights_available"]


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
    files = [source.filename] if source.filename else ["config.json", "model.safetensors"]
    try:
        paths = fetch.hf_hub_files(
            repo_id, files, source.revision, offline
        )  # the HF cache; `cache` holds the lock
    except ImportError as err:  # pragma: no cover - huggingface_hub is a zoo dependency
        raise _Unavailable(f"{source.describe_location()}: huggingface_hub is not installed ({err})") from err
    except ZooError as err:
        raise _Unavailable(f"{source.describe_location()}: {err}") from err
    return paths[0].parent if not source.filename else paths[0]


def _locate_url(
    source: WeightSource, entry: ModelEntry, cache: str | os.PathLike | None, offline: bool
) -> Path:
    """A URL source: downloaded once into the cache (:mod:`heinsen_zoo.zoo.fetch`).

    With ``git_blob`` the file is verified against it and converted into an export directory (returned);
    otherwise the raw file is returned (verified against ``sha256`` when one is published).
    """
    try:
        if source.git_blob:
            return fetch.fetch_published(
                source.location,
                source.git_blob,
                entry.name,
                cache_dir(cache),
                config=entry.export_config(),
                offline=offline,
            )
        basename = Path(urllib.parse.urlparse(source.location).path).name or "weights.bin"
        target = cache_dir(cache) / "downloads" / entry.name / basename
        if target.is_file():
            return target
        if offline:
            raise _Unavailable(
                f"{source.location}: offline (HF_HUB_OFFLINE / local_files_only) and not yet downloaded to {target}"
            )
        return fetch.download_verified(source.location, target, None, sha256=source.sha256)
    except (OfflineError, fetch.DownloadError) as err:
        raise _Unavailable(f"{source.location}: {err}") from err


def resolve_weights(
    entry: ModelEntry,
    cache: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> LocatedWeights:
    """Find an entry's weights (first available source) and verify their SHA-256.

    Published digest → verified; unknown digest → verified against ``<cache>/sha256.lock``, or, on first
    use, returned with ``pending_record`` (recorded by :meth:`LocatedWeights.commit` once the file loaded); locally produced exports → checked later against the
    digest their ``config.json`` records. Raises :class:`WeightsNotFoundError` listing every place
    looked at and how to provide the file, :class:`OfflineError` when only a download could help.
    """
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
        fetch.verify_git_blob(target, source.git_blob, origin=f"registry entry {entry.name}")
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
