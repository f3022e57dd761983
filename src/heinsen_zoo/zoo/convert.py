"""Converting checkpoints into the zoo's export format, by registry name or config, and its command line.

* :func:`safe_torch_load` — ``torch.load(weights_only=True)``; a file holding arbitrary Python objects
  is refused (nothing in it is executed) with a clear :class:`UnsafeCheckpointError`.
* :func:`convert_original_state_dict` — the original author's published head state dicts
  (``.pt`` / ``.state_dict``) → ``config.json`` + ``model.safetensors``.
* :func:`export_lightning_checkpoint` — a Lightning ``.ckpt`` of
  :class:`heinsen_zoo.tasks.RoutingClassificationTask` → the export format.

Key layouts understood and the readers: :mod:`heinsen_zoo.zoo.checkpoints` (its names are re-exported here).

Command line (hooked into ``heinsen-zoo`` by the CLI)::

    python -m heinsen_zoo.zoo.convert original HEAD.pt OUT_DIR --name routing_roberta_large.sst5r_heinsen2022
    python -m heinsen_zoo.zoo.convert original HEAD.pt OUT_DIR --config partial_config.json
    python -m heinsen_zoo.zoo.convert lightning runs/demo/checkpoints/last.ckpt OUT_DIR
    python -m heinsen_zoo.zoo.convert verify OUT_DIR

Example (by registry name: the entry's backbone, labels, preprocessing and padding go into the config):
    >>> _base_config("routing_roberta_large.sst5r_heinsen2022")["backbone"]["id"]
    'roberta-large'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from heinsen_zoo.zoo import registry
from heinsen_zoo.zoo.checkpoints import (
    export_lightning_checkpoint,
    export_state_dict_file,
    extract_head_state_dict,
    extract_state_dict,
    read_lightning_checkpoint,
    read_weights,
    safe_torch_load,
)
from heinsen_zoo.zoo.errors import IncompatibleConfigError, ZooError

__all__ = [
    "convert_original_state_dict",
    "export_lightning_checkpoint",
    "extract_head_state_dict",
    "extract_state_dict",
    "main",
    "read_lightning_checkpoint",
    "read_weights",
    "safe_torch_load",
]


def _base_config(name_or_config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(name_or_config, Mapping):
        return json.loads(json.dumps(dict(name_or_config)))
    text = os.fspath(name_or_config)
    if text.endswith(".json") and Path(text).is_file():
        data = json.loads(Path(text).read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise IncompatibleConfigError(f"{text}: expected a JSON object")
        return dict(data)
    return registry.get_entry(text).export_config()


def convert_original_state_dict(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    name_or_config: str | os.PathLike | Mapping[str, Any],
) -> Path:
    """Convert a published state-dict file into an export directory; returns ``out_dir``.

    ``name_or_config``: a registry name (backbone, labels, preprocessing, padding come from the entry),
    a config dict or the path of a ``.json`` config (at least ``backbone`` for routing heads; head
    arguments are inferred from the weights and must agree with any given). The weights are checked
    against a freshly built model (strict keys and shapes) before anything is written, and written
    unchanged (same dtypes, bit for bit) (:func:`heinsen_zoo.zoo.checkpoints.export_state_dict_file`).
    """
    return export_state_dict_file(path, out_dir, _base_config(name_or_config))


def build_parser(prog: str = "heinsen-zoo convert") -> argparse.ArgumentParser:
    """The argument parser of :func:`main` (the CLI may embed it)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert checkpoints into the zoo's export format."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("original", help="a published head/model state dict (.pt/.state_dict) -> export dir")
    p.add_argument("source", type=Path)
    p.add_argument("out_dir", type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--name", help="registry name whose backbone/labels/preprocessing apply")
    group.add_argument("--config", type=Path, help="JSON config (at least 'backbone')")
    p = sub.add_parser("lightning", help="a RoutingClassificationTask .ckpt -> export dir")
    p.add_argument("ckpt", type=Path)
    p.add_argument("out_dir", type=Path)
    p = sub.add_parser("verify", help="load an export directory strictly and print its summary")
    p.add_argument("directory", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``original``, ``lightning`` and ``verify`` subcommands; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "original":
            out = convert_original_state_dict(args.source, args.out_dir, args.name or args.config)
        elif args.command == "lightning":
            out = export_lightning_checkpoint(args.ckpt, args.out_dir)
        else:
            from heinsen_zoo.zoo.hub import from_pretrained

            model = from_pretrained(str(args.directory))
            cfg = model.pretrained_cfg
            print(
                f"ok: {args.directory} ({cfg['architecture']}, head {cfg['head']}, sha256 {cfg['weights_sha256']})"
            )
            return 0
    except (ZooError, OSError, ValueError, TypeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    config = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    print(f"wrote {out} (config.json + model.safetensors, sha256 {config['sha256']['model.safetensors']})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
