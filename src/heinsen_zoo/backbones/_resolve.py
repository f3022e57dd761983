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
    "FILE_MODEL_KWARGS",
    "FILE_SPEC_KEYS",
    "MissingModelError",
    "check_spec_from_file",
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


# A backbone spec read from a file (export config.json, registry YAML/JSON, checkpoint hparams) is data: only
# these keys, with plain values, and only these model_kwargs. Anything else (trust_remote_code above all) is
# refused with the key named; a user's own Python call to build_backbone may pass any model_kwargs.
FILE_SPEC_KEYS: dict[str, tuple[type, ...]] = {
    "source": (str,), "id": (str,), "revision": (str, type(None)), "kind": (str,),
    "local_path": (str, type(None)), "local_files_only": (bool,), "autocast": (bool,),
    "autocast_dtype": (str, type(None)),
    "output_dtype": (str, type(None)), "model_kwargs": (dict, type(None)), "pretrained": (bool,),
    "hf_hub_id": (str, type(None)), "dtype": (str, type(None)), "max_length": (int, type(None)),
    "max_chunks": (int, type(None)), "pad_mode": (str,), "chunk_batch_size": (int, type(None)),
}  # fmt: skip
#: Constructor options a spec from a file may set (architecture sizes, dropout, attention kernel by name).
FILE_MODEL_KWARGS = frozenset({
    "img_size", "patch_size", "in_chans", "depth", "embed_dim", "num_heads", "mlp_ratio", "qkv_bias",
    "drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "global_pool",
    "class_token", "num_classes", "init_values", "use_abs_pos_emb", "use_rel_pos_bias",
    "use_shared_rel_pos_bias", "add_pooling_layer", "attn_implementation", "torch_dtype", "use_safetensors",
})  # fmt: skip
_ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
_PLAIN = (bool, int, float, str, type(None))


def check_spec_from_file(spec: Any, source: str) -> dict[str, Any]:
    """Validate a backbone spec that came from a file as plain data; returns a copy.

    Refuses (:class:`heinsen_zoo.zoo.errors.UntrustedSpecError`, naming ``source`` and the key) any key
    outside :data:`FILE_SPEC_KEYS`, values of the wrong type, ``model_kwargs`` outside
    :data:`FILE_MODEL_KWARGS` (``trust_remote_code`` above all), non-plain values, and an
    ``attn_implementation`` that is not a built-in kernel name (a hub name would download code).

    Example:
        >>> try:
        ...     check_spec_from_file({"source": "hf", "id": "x", "model_kwargs": {"trust_remote_code": True}}, "c.json")
        ... except ValueError as err:
        ...     print(str(err)[:60])
        c.json: backbone['model_kwargs']['trust_remote_code'] is not
    """
    from heinsen_zoo.zoo.errors import UntrustedSpecError

    if not isinstance(spec, dict):
        raise UntrustedSpecError(f"{source}: 'backbone' must be a JSON object, got {type(spec).__name__}")

    def refuse(key: str, why: str) -> UntrustedSpecError:
        return UntrustedSpecError(f"{source}: backbone{key} {why}")

    for key, value in spec.items():
        if key not in FILE_SPEC_KEYS:
            raise refuse(f"[{key!r}]", f"is not an allowed key of a backbone spec read from a file; allowed: "
                         f"{sorted(FILE_SPEC_KEYS)}")
        types = FILE_SPEC_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise refuse(f"[{key!r}]", f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    for name, value in (spec.get("model_kwargs") or {}).items():
        if name not in FILE_MODEL_KWARGS:
            raise refuse(
                f"['model_kwargs'][{name!r}]",
                "is not allowed in a spec read from a file (it would let the file run code or choose code); a spec "
                f"from a file may set only plain options: {sorted(FILE_MODEL_KWARGS)}. To pass it anyway, build "
                "the backbone yourself in Python (heinsen_zoo.backbones.build_backbone)",
            )
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, _PLAIN) for v in items):
            raise refuse(f"['model_kwargs'][{name!r}]", f"must be a plain value or a list of them, got {value!r}")
        if name == "attn_implementation" and value not in _ATTN_IMPLEMENTATIONS:
            raise refuse(f"['model_kwargs'][{name!r}]", f"must be one of {_ATTN_IMPLEMENTATIONS}, got {value!r}")
    return dict(spec)


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
