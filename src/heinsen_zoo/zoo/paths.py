"""Where the zoo looks and whether it may download: the zoo home, the shared folder, the cache, offline mode.

* ``$HEINSEN_ZOO_HOME`` — base of ``local-dir:`` locations (else the repository root, else the cwd);
* ``$HEINSEN_SHARED`` — base of ``shared:`` locations (else ``<repo>/../shared``);
* ``$HEINSEN_ZOO_CACHE`` — downloads, converted exports and ``sha256.lock`` (else XDG / ``~/.cache``);
* ``$HEINSEN_ZOO_OFFLINE`` (or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) — no downloads.

Example:
    >>> import os
    >>> os.environ["HEINSEN_ZOO_CACHE"] = "/tmp/zoo-cache-doc"
    >>> str(cache_dir())
    '/tmp/zoo-cache-doc'
    >>> del os.environ["HEINSEN_ZOO_CACHE"]
"""

from __future__ import annotations

import os
from pathlib import Path

from heinsen_zoo.backbones._resolve import is_offline as hub_offline

__all__ = ["cache_dir", "is_offline", "shared_dir", "zoo_home"]

_TRUE = {"1", "ON", "YES", "TRUE"}


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
