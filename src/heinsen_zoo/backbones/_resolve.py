"""Where backbone weights come from, offline first.

Resolution order for a backbone spec (the same for timm and Hugging Face models):

1. ``spec["local_path"]``: a directory holding the weights (a ``save_pretrained`` folder for Hugging Face
   models; a folder with ``model.safetensors`` / ``pytorch_model.bin`` or a weight file itself for timm).
2. ``$HEINSEN_MODEL_DIR/<id>`` with ``/`` replaced by ``--`` (e.g. ``$HEINSEN_MODEL_DIR/microsoft--beit-large-
   patch16-224``), or ``$HEINSEN_MODEL_DIR/<id>`` as-is (nested folders).
3. The Hugging Face cache (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) at the pinned revision.
4. A download, only when neither ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set nor
   ``spec["local_files_only"]`` is true.

Offline, a missing model raises :class:`MissingModelError` at once (nothing waits on the network) with a
message naming what to download, the command, and where to put it.

Example:
    >>> from heinsen_zoo.backbones._resolve import model_dir_candidates
    >>> [p.name for p in model_dir_candidates("roberta-large", root="/models")]
    ['roberta-large']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "MissingModelError",
    "MODEL_DIR_ENV",
    "is_offline",
    "model_dir_candidates",
    "find_local_dir",
    "resolve_cached_revision",
    "missing_model_message",
]

MODEL_DIR_ENV = "HEINSEN_MODEL_DIR"
_TRUE = {"1", "ON", "YES", "TRUE"}


class MissingModelError(FileNotFoundError):
    """A backbone's weights are not available locally and downloading is disabled or failed."""


def is_offline(spec: dict[str, Any] | None = None) -> bool:
    """True when downloads are disabled: ``spec["local_files_only"]``, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE."""
    if spec is not None and spec.get("local_files_only"):
        return True
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub missing
        return False


def model_dir_candidates(model_id: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders under ``root`` (default ``$HEINSEN_MODEL_DIR``) where a model ``model_id`` may be stored."""
    root = root if root is not None else os.environ.get(MODEL_DIR_ENV)
    if not root:
        return []
    names = [model_id.replace("/", "--"), model_id]
    out: list[Path] = []
    for name in names:
        path = Path(root).expanduser() / name
        if path not in out:
            out.append(path)
    return out


def find_local_dir(spec: dict[str, Any]) -> Path | None:
    """The first existing local folder/file for ``spec`` (``local_path``, then ``$HEINSEN_MODEL_DIR``)."""
    local_path = spec.get("local_path")
    if local_path:
        path = Path(local_path).expanduser()
        if not path.exists():
            raise MissingModelError(
                f"local_path: backbone weights folder {str(path)!r} does not exist "
                f"(backbone id {spec.get('id')!r}). {_how_to(spec)}"
            )
        return path
    for path in model_dir_candidates(str(spec.get("id", ""))):
        if path.exists():
            return path
    return None


def resolve_cached_revision(repo_id: str, revision: str | None) -> str | None:
    """Expand a short commit hash (e.g. ``5069d8a``) to the full hash of a snapshot in the HF cache.

    The hub cache stores snapshots under their full 40-hex hash, so an offline lookup with a short hash
    would miss; branch/tag names and unknown hashes are returned unchanged.
    """
    if not revision or len(revision) >= 40 or not all(c in "0123456789abcdef" for c in revision.lower()):
        return revision
    try:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return revision
    snapshots = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if snapshots.is_dir():
        matches = sorted(p.name for p in snapshots.iterdir() if p.name.startswith(revision.lower()))
        if len(matches) == 1:
            return matches[0]
    return revision


def _how_to(spec: dict[str, Any], repo_id: str | None = None) -> str:
    model_id = str(spec.get("id"))
    repo_id = repo_id or model_id
    revision = spec.get("revision")
    rev = f" --revision {revision}" if revision else ""
    flat = model_id.replace("/", "--")
    return (
        f"To provide it: on a machine with internet run `huggingface-cli download {repo_id}{rev} "
        f"--local-dir <DIR>` (or `hf download {repo_id}{rev} --local-dir <DIR>`; a short revision may need "
        f"the full commit hash), then copy <DIR> here and either set the backbone spec's "
        f"\"local_path\": \"<DIR>\" or place it at ${MODEL_DIR_ENV}/{flat} (env var {MODEL_DIR_ENV} = "
        f"a folder of models); alternatively copy a populated Hugging Face cache into HF_HUB_CACHE."
    )


def missing_model_message(spec: dict[str, Any], what: str, repo_id: str | None = None, looked: str = "") -> str:
    """The error text for a model that is not available locally."""
    offline = is_offline(spec)
    why = (
        "downloads are disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE set or local_files_only=True)"
        if offline
        else "the download failed"
    )
    where = f" Looked in: {looked}." if looked else ""
    return (
        f"Backbone {what} {spec.get('id')!r} (revision {spec.get('revision')!r}) is not available locally and "
        f"{why}.{where} {_how_to(spec, repo_id)}"
    )
