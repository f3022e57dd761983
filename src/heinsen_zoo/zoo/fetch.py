"""Downloads into the zoo cache: published weight files (verified by git blob id, converted to exports)
and Hugging Face hub files (the zoo's one hub fetcher, :func:`hf_hub_files`).

The 2022 heads are published in a git repository (SPEC §5); git names every file by its *blob id*, the
SHA-1 of ``b"blob <size>\\0" + content``, so a downloaded file can be checked against the id the
repository publishes. :func:`fetch_published` does the whole chain once per file:

1. download ``url`` into ``<cache>/downloads/<entry>/<file>.<pid>.part`` (a tqdm progress bar on stderr,
   a size cap checked against ``Content-Length`` and while streaming), then
2. verify the git blob id (a mismatch deletes the file and raises :class:`BlobMismatchError`), rename
   the ``.part`` file into place (atomic: a cache file is always complete and verified), and
3. convert the plain ``state_dict`` into an export directory ``<cache>/exports/<entry>/<blob[:12]>``
   (``config.json`` + ``model.safetensors``) with :func:`heinsen_zoo.zoo.checkpoints.export_state_dict_file`
   (strict keys and shapes), written to a temporary folder and renamed into place.

Later reads use the export directory; the registry records the SHA-256 of its ``model.safetensors``
on first use and verifies it on every load, and ``config.json`` keeps the blob id and the SHA-256 of
the original file (``converted_from``). Offline (``HF_HUB_OFFLINE`` / ``HEINSEN_ZOO_OFFLINE`` /
``local_files_only``) nothing is downloaded: :class:`~heinsen_zoo.zoo.errors.OfflineError` names the URL.

The command line (``python -m heinsen_zoo.zoo.download NAME``) is :mod:`heinsen_zoo.zoo.download`.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = p.write_bytes(b"hello\\n")
    >>> git_blob_id(p)  # what `git hash-object hello.txt` prints
    'ce013625030ba8dba906f756967f9e9ca394464a'
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from heinsen_zoo.zoo.checksums import ChecksumMismatchError, sha256_file, verify
from heinsen_zoo.zoo.errors import IncompatibleConfigError, OfflineError, WeightsNotFoundError, ZooError

__all__ = [
    "BlobMismatchError",
    "DownloadError",
    "MAX_DOWNLOAD_BYTES",
    "download_verified",
    "fetch_published",
    "git_blob_id",
    "hf_hub_files",
    "normalize_blob_id",
    "verify_git_blob",
]

MAX_DOWNLOAD_BYTES = 2 << 30  # 2 GiB: far above any head (a 2022 head is ~25 MB), far below a full disk

_HEX40 = re.compile(r"^[0-9a-f]{40}$")

_USER_AGENT = "heinsen-zoo (python urllib)"


class DownloadError(ZooError, OSError):
    """A download that failed (connection, HTTP status, size cap)."""


class BlobMismatchError(ChecksumMismatchError):
    """A downloaded file whose git blob id differs from the published one (the file was deleted)."""

    def __init__(
        self, url: str, expected: str, actual: str, sha256: str, local: bool = False, where: str = ""
    ) -> None:
        self.url, self.expected, self.actual, self.sha256 = url, expected, actual, sha256
        self.path = Path(urllib.parse.urlparse(url).path)
        self.origin = "the registry entry"
        if local:
            message = (
                f"{url} has git blob id {actual} but the published id is {expected}{where} (its sha256 is "
                f"{sha256}); it is corrupt, truncated or not the published file: nothing was loaded. Replace it "
                "with the original (check with `git hash-object FILE`)"
            )
        else:
            message = (
                f"downloaded file from {url} has git blob id {actual} but the published id is {expected} "
                f"(its sha256 was {sha256}); the file was corrupted in transit or is not the published one, "
                "so it was deleted and nothing was loaded"
            )
        Exception.__init__(self, message)


def normalize_blob_id(blob: str) -> str:
    """Lower-case 40-hex git blob id; ValueError otherwise."""
    value = str(blob).strip().lower()
    if not _HEX40.match(value):
        raise ValueError(f"git_blob: expected a 40-character hex git blob id (SHA-1), got {blob!r}")
    return value


def git_blob_id(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The git blob id of a file: SHA-1 of ``b"blob <size>\\0"`` + the content (constant memory)."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # noqa: S324 - git's object id, not security by itself
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not enabled, leave=False
    )


def _stream(url: str, part: Path, max_bytes: int, progress: bool, timeout: float) -> int:
    """Stream ``url`` into ``part``; returns the number of bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from the registry
    except Exception as err:  # URLError, HTTPError, timeouts, refused connections
        raise DownloadError(f"could not download {url}: {type(err).__name__}: {err}") from err
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise DownloadError(
                f"{url}: Content-Length {total} bytes exceeds the limit of {max_bytes} bytes; refusing to download"
            )
        written = 0
        with part.open("wb") as handle, _progress(total, part.name.rsplit(".", 2)[0], progress) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                written += len(block)
                if written > max_bytes:
                    raise DownloadError(f"{url}: more than {max_bytes} bytes received; download aborted")
                handle.write(block)
                bar.update(len(block))
    if total is not None and written != total:
        raise DownloadError(f"{url}: truncated download ({written} of {total} bytes)")
    return written


def download_verified(
    url: str,
    target: str | os.PathLike,
    git_blob: str | None,
    *,
    sha256: str | None = None,
    progress: bool = True,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``target`` atomically and verify its git blob id; returns ``target``.

    An existing ``target`` is re-verified (a cache file that changed is refused, not re-downloaded
    silently). ``sha256``: also (or instead) check a published SHA-256 before the rename.
    ``git_blob=None`` and ``sha256=None`` skip verification (only for URLs with no published digest).
    """
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"url: expected an http(s) URL, got {url!r}")
    expected = normalize_blob_id(git_blob) if git_blob is not None else None
    target = Path(target)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f"{target.name}.{os.getpid()}.part")  # one per process: concurrent downloads
        try:
            _stream(url, part, max_bytes, progress, timeout)
            if expected is not None:
                _check_blob(part, url, expected)
            if sha256 is not None:  # a wrong download never reaches the cache
                verify(part, sha256, origin=f"the published digest of {url}")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    elif expected is not None:
        _check_blob(target, url, expected)
    return target


def verify_git_blob(path: str | os.PathLike, expected: str, origin: str = "") -> str:
    """Raise :class:`BlobMismatchError` unless the file's git blob id is ``expected`` (the file is kept)."""
    expected = normalize_blob_id(expected)
    actual = git_blob_id(path)
    if actual != expected:
        where = f" (published id from {origin})" if origin else ""
        raise BlobMismatchError(str(path), expected, actual, sha256_file(path), local=True, where=where)
    return actual


def _check_blob(path: Path, url: str, expected: str) -> None:
    actual = git_blob_id(path)
    if actual != expected:
        sha = sha256_file(path)
        path.unlink(missing_ok=True)
        raise BlobMismatchError(url, expected, actual, sha)


def fetch_published(
    url: str,
    git_blob: str | None,
    entry_name: str,
    cache: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    offline: bool = False,
    progress: bool = True,
) -> Path:
    """The export directory of the published file at ``url`` for registry entry ``entry_name``.

    ``config``: the export config the entry implies (:meth:`ModelEntry.export_config`): backbone, labels,
    preprocessing, padding, metric; head arguments are inferred from the weights and must agree.

    Downloads (unless ``offline``), verifies the blob id and converts on first use (see the module
    docstring); later calls return the cached export at once. Raises :class:`OfflineError` (naming
    the URL) when offline and not cached, :class:`DownloadError`, :class:`BlobMismatchError`.
    """
    cache = Path(cache)
    basename = Path(urllib.parse.urlparse(url).path).name or "weights.bin"
    tag = normalize_blob_id(git_blob)[:12] if git_blob else "unverified"
    export = cache / "exports" / entry_name / tag
    if (export / "model.safetensors").is_file() and (export / "config.json").is_file():
        return export
    raw = cache / "downloads" / entry_name / basename
    if not raw.is_file() and offline:
        raise OfflineError(
            f"{entry_name}: downloads are disabled (HF_HUB_OFFLINE / HEINSEN_ZOO_OFFLINE / local_files_only) and "
            f"the published file is not in the cache ({raw}). On a connected machine run "
            f"`python -m heinsen_zoo.zoo.download {entry_name}` (or download {url} and check that "
            f"`git hash-object FILE` prints {git_blob}), then copy the cache folder {cache}"
        )
    download_verified(url, raw, git_blob, progress=progress)
    from heinsen_zoo.zoo.checkpoints import export_state_dict_file  # converting needs torch: only now

    export.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{tag}.", dir=export.parent))
    try:
        export_state_dict_file(raw, staging, config, converted_from={"url": url, "git_blob": git_blob})
        if (export / "model.safetensors").is_file():  # another process finished first: keep its export
            return export
        if export.exists():  # an incomplete earlier attempt
            shutil.rmtree(export)
        os.replace(staging, export)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export


def hf_hub_files(
    repo_id: str,
    filenames: Sequence[str],
    revision: str | None,
    offline: bool,
    local_files_only: bool | None = None,
) -> list[Path]:
    """Local paths of ``filenames`` of hub repository ``repo_id`` (the Hugging Face cache; downloaded unless
    ``offline``). Raises :class:`OfflineError` (with the ``huggingface-cli download`` command that helps) when a
    file is not cached and cannot be downloaded, :class:`WeightsNotFoundError` for any other failure."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    paths = []
    for filename in filenames:
        try:
            paths.append(
                Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline))
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
    if len({p.parent for p in paths}) > 1 and all(
        f in ("config.json", "model.safetensors") for f in filenames
    ):
        raise IncompatibleConfigError(
            f"hf-hub:{repo_id}: config.json and model.safetensors come from different snapshots"
        )
    return paths
