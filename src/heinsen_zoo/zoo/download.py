"""``python -m heinsen_zoo.zoo.download NAME``: download a registry entry's published head, verify its git
blob id and convert it to an export (the work is done by :mod:`heinsen_zoo.zoo.fetch`; its names are
re-exported here).

Command line::

    python -m heinsen_zoo.zoo.download routing_roberta_large.sst5r_heinsen2022 [--cache DIR] [--copy-to OUT_DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from heinsen_zoo.zoo import fetch, registry
from heinsen_zoo.zoo.checksums import ChecksumMismatchError, sha256_file
from heinsen_zoo.zoo.errors import ZooError
from heinsen_zoo.zoo.fetch import (
    MAX_DOWNLOAD_BYTES,
    BlobMismatchError,
    DownloadError,
    download_verified,
    git_blob_id,
    normalize_blob_id,
    verify_git_blob,
)

__all__ = [
    "BlobMismatchError",
    "ChecksumMismatchError",
    "DownloadError",
    "MAX_DOWNLOAD_BYTES",
    "download_verified",
    "fetch_published",
    "git_blob_id",
    "main",
    "normalize_blob_id",
    "verify_git_blob",
]


def fetch_published(
    url: str,
    git_blob: str | None,
    entry_name: str,
    cache: str | os.PathLike,
    *,
    config: Mapping[str, Any] | None = None,
    offline: bool = False,
    progress: bool = True,
) -> Path:
    """:func:`heinsen_zoo.zoo.fetch.fetch_published` with the config taken from registry entry ``entry_name``
    unless given."""
    if config is None:
        config = registry.get_entry(entry_name).export_config()
    return fetch.fetch_published(
        url, git_blob, entry_name, cache, config=config, offline=offline, progress=progress
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m heinsen_zoo.zoo.download NAME [--cache DIR] [--copy-to DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m heinsen_zoo.zoo.download",
        description="Download a registry entry's published weights, verify the git blob id, convert to an export.",
    )
    parser.add_argument("name", help="registry name with a URL weight source (heinsen-zoo info NAME)")
    parser.add_argument(
        "--cache", default=None, help="zoo cache (default $HEINSEN_ZOO_CACHE or ~/.cache/heinsen_zoo)"
    )
    parser.add_argument("--copy-to", default=None, help="also copy the export directory here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        entry = registry.get_entry(args.name)
        sources = [s for s in entry.weights if s.kind == "url"]
        if not sources:
            raise ValueError(
                f"{entry.name}: no URL weight source is registered (heinsen-zoo info {entry.name})"
            )
        source = sources[0]
        export = fetch_published(
            source.location,
            getattr(source, "git_blob", None),
            entry.name,
            config=entry.export_config(),
            cache=registry.cache_dir(args.cache),
            offline=registry.is_offline(None),
            progress=not args.no_progress,
        )
        print(f"{entry.name}: {source.location}")
        print(f"  git blob id verified: {getattr(source, 'git_blob', None)}")
        print(
            f"  export: {export} (config.json + model.safetensors, sha256 {sha256_file(export / 'model.safetensors')})"
        )
        if args.copy_to:
            shutil.copytree(export, args.copy_to, dirs_exist_ok=True)
            print(f"  copied to {args.copy_to}")
    except (ZooError, ValueError, KeyError, OSError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
