"""Safe checkpoint reading and conversion into the zoo's export format.

* :func:`safe_torch_load` — ``torch.load(weights_only=True)``; a file holding arbitrary Python objects
  is refused (nothing in it is executed) with a clear :class:`UnsafeCheckpointError`.
* :func:`convert_original_state_dict` — the original author's published head state dicts
  (``.pt`` / ``.state_dict``) → ``config.json`` + ``model.safetensors``.
* :func:`export_lightning_checkpoint` — a Lightning ``.ckpt`` of
  :class:`heinsen_zoo.tasks.RoutingClassificationTask` → the export format.

Key layouts understood (documented because published files differ in how they were saved):

* the state dict may be the file's top-level object or nested under one of ``state_dict``,
  ``model_state_dict``, ``model``, ``head``, ``module``, ``net``, ``weights`` (searched in that order, recursively);
* RoutingHead keys (``W``, ``B``, ``route.0..2.*``) may carry any prefix (``head.``, ``model.head.``,
  ``module.``, …): the prefix is found from the one key ending in ``route.0.W_A`` and removed;
  ``torch.compile``'s ``_orig_mod.`` segments are dropped. Keys outside that prefix (e.g. a backbone
  saved alongside) are not part of the head: they are left out with a warning naming them;
* 2019 capsule models likewise, anchored on ``routings.1.W``.

Command line (hooked into ``heinsen-zoo`` by the CLI)::

    python -m heinsen_zoo.zoo.convert original HEAD.pt OUT_DIR --name routing_roberta_large.sst5r_heinsen2022
    python -m heinsen_zoo.zoo.convert original HEAD.pt OUT_DIR --config partial_config.json
    python -m heinsen_zoo.zoo.convert lightning runs/demo/checkpoints/last.ckpt OUT_DIR
    python -m heinsen_zoo.zoo.convert verify OUT_DIR

Example:
    >>> import tempfile, torch, pathlib
    >>> from heinsen_zoo.heads import RoutingHead
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> torch.save({"head." + k: v for k, v in RoutingHead(2, 8, 3, n_hid=4).state_dict().items()}, d / "h.pt")
    >>> cfg = {"backbone": {"source": "hf", "id": "x", "revision": None, "kind": "text"}}
    >>> out = convert_original_state_dict(d / "h.pt", d / "export", cfg)
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'config.json', 'model.safetensors']
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from heinsen_zoo.zoo import checksums, files, registry
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    CorruptFileError,
    IncompatibleConfigError,
    StateDictMismatchError,
    UnsafeCheckpointError,
    ZooError,
)

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

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "head", "module", "net", "weights")
_ANCHORS = {
    "routing_head": "route.0.W_A",
    "capsules2019_smallnorb": "routings.1.W",
    "capsules2019_sst": "routings.1.W",
}


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with clear errors; never runs pickled code.

    Raises FileNotFoundError, :class:`UnsafeCheckpointError` (the file names Python objects beyond
    tensors and plain containers — refused before any is built) or :class:`CorruptFileError` (a
    ValueError: not a torch file, truncated or corrupt — whatever the torch reader tripped over).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        hint = next((line for line in detail if "GLOBAL" in line or "Unsupported global" in line), None)
        if hint is None:  # a broken pickle stream, not a forbidden object
            raise CorruptFileError(
                f"{path}: not a readable torch checkpoint (corrupt or truncated?): {_first_line(err)}"
            ) from None
        raise UnsafeCheckpointError(
            f"refusing to unpickle arbitrary objects from {path}: it holds Python objects other than tensors and "
            f"plain containers, and torch.load(weights_only=True) refused them ({hint.strip()}). Nothing in the file "
            "was executed. Only plain state dicts are accepted: re-save the weights where you trust them with "
            "torch.save(model.state_dict(), ...) or as safetensors."
        ) from None
    except MemoryError:
        raise CorruptFileError(
            f"{path}: the checkpoint claims more memory than is available (corrupt?)"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch's readers raise anything on corrupt bytes
        raise CorruptFileError(
            f"{path}: not a readable torch checkpoint (corrupt or truncated?): {type(err).__name__}: {_first_line(err)}"
        ) from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else ""


def read_weights(path: str | os.PathLike) -> Any:
    """A weight file's contents: ``.safetensors`` (header validated first) or a weights-only torch file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return files.load_safetensors(path)
    return safe_torch_load(path)


def _find_tensor_mapping(obj: Any, source: str, depth: int = 0) -> Mapping[str, torch.Tensor] | None:
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    if (
        obj
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        return obj
    for key in _CONTAINER_KEYS:
        found = _find_tensor_mapping(obj.get(key), source, depth + 1)
        if found is not None:
            return found
    return None


def _select(
    state: Mapping[str, torch.Tensor], anchor: str, source: str, what: str
) -> dict[str, torch.Tensor]:
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    prefixes = sorted({k[: -len(anchor)] for k in state if k == anchor or k.endswith("." + anchor)})
    if not prefixes:
        raise StateDictMismatchError(
            f"{source} (expected {what}; its first keys are {sorted(state)[:5]})", missing=[anchor]
        )
    if len(prefixes) > 1:
        raise CorruptFileError(
            f"{source}: several {what}s found (key prefixes {prefixes}); extract the one you want first"
        )
    prefix = prefixes[0]
    selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = sorted(k for k in state if not k.startswith(prefix))
    if dropped:
        warnings.warn(
            f"{source}: kept the {len(selected)} {what} keys under prefix {prefix!r}; left out {len(dropped)} other "
            f"keys (e.g. {dropped[:3]})",
            stacklevel=3,
        )
    return selected


def extract_state_dict(obj: Any, architecture: str, source: str) -> dict[str, torch.Tensor]:
    """The canonical (unprefixed) state dict of ``architecture`` inside a loaded checkpoint object."""
    if architecture not in _ANCHORS:
        raise IncompatibleConfigError(
            f"architecture {architecture!r} is unknown; expected one of {sorted(_ANCHORS)}"
        )
    state = _find_tensor_mapping(obj, source)
    if state is None:
        keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CorruptFileError(
            f"{source}: no state dict (a mapping of names to tensors) found at the top level or under "
            f"{list(_CONTAINER_KEYS)}; got {keys}"
        )
    what = "RoutingHead" if architecture == "routing_head" else f"{architecture} model"
    return _select(state, _ANCHORS[architecture], source, what)


def extract_head_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """RoutingHead keys (``W``, ``B``, ``route.*``) from a checkpoint object, prefix removed.

    Example:
        >>> import torch
        >>> sd = {"model.head.W": torch.ones(2, 3), "model.head.route.0.W_A": torch.zeros(1, 3)}
        >>> sorted(extract_head_state_dict({"state_dict": sd}))
        ['W', 'route.0.W_A']
    """
    return extract_state_dict(obj, "routing_head", source)


def _base_config(name_or_config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(name_or_config, Mapping):
        return json.loads(json.dumps(dict(name_or_config)))
    text = os.fspath(name_or_config)
    if text.endswith(".json") and Path(text).is_file():
        data = json.loads(Path(text).read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise IncompatibleConfigError(f"{text}: expected a JSON object")
        return dict(data)
    entry = registry.get_entry(text)
    from heinsen_zoo.zoo.hub import entry_metadata

    meta = entry_metadata(entry)
    return {
        "architecture": entry.architecture,
        "backbone": meta["backbone"],
        "head": meta["head"],
        "labels": meta["labels"],
        "preprocessing": meta["preprocessing"],
        "padding": entry.padding,
        "name": entry.name,
        "paper": entry.paper,
        "license": entry.license,
        "expected_metric": meta["expected_metric"],
    }


def _merge_head(
    architecture: str, given: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor], source: str
) -> dict:
    from heinsen_zoo.zoo.hub import infer_head_args

    inferred = infer_head_args(architecture, state)
    given = dict(given or {})
    differ = {k: (given[k], inferred[k]) for k in inferred if k in given and given[k] != inferred[k]}
    if differ:
        n_key = registry.ARCHITECTURES[architecture]["n_classes"]
        error = ClassCountMismatchError if n_key in differ else IncompatibleConfigError
        text = ", ".join(f"{k}: config {a} vs weights {b}" for k, (a, b) in differ.items())
        raise error(f"{source}: the weights do not fit the requested head ({text})")
    unknown = sorted(set(given) - set(inferred))
    if unknown:
        raise IncompatibleConfigError(f"{source}: unknown head arguments {unknown} for {architecture!r}")
    return inferred


def _validated_write(
    state: dict[str, torch.Tensor], config: dict[str, Any], out_dir: str | os.PathLike, source: str
) -> Path:
    from heinsen_zoo.zoo import hub

    config = hub.validate_config(config, source)
    model = hub.build_model(
        config["architecture"],
        config["head"],
        config.get("backbone"),
        config.get("labels"),
        config.get("padding", "mask"),
    )
    target = model.head if config["architecture"] == "routing_head" else model
    hub.check_state_dict(target, state, source, strict=True, warn_cast=False)  # written unchanged
    return hub.write_export(state, config, out_dir)


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
    unchanged (same dtypes, bit for bit).
    """
    path = Path(path)
    config = _base_config(name_or_config)
    config.setdefault("schema_version", 1)
    architecture = config.setdefault("architecture", "routing_head")
    state = extract_state_dict(read_weights(path), architecture, str(path))
    config["head"] = _merge_head(architecture, config.get("head"), state, str(path))
    config.setdefault("labels", None)
    config.setdefault("padding", "mask")
    config.setdefault("preprocessing", {})
    config["converted_from"] = {"file": path.name, "sha256": checksums.sha256_file(path)}
    return _validated_write(state, config, out_dir, str(path))


def read_lightning_checkpoint(ckpt_path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(head state dict, export config)`` from a ``RoutingClassificationTask`` Lightning checkpoint.

    The checkpoint is read with ``weights_only=True``; its ``hyper_parameters`` must hold the plain
    ``backbone`` spec, ``n_classes``, ``d_depth``, ``d_emb`` (``n_hid``, ``labels``, ``padding`` optional),
    and its ``state_dict`` the head under some prefix (``model.head.``).
    """
    path = Path(ckpt_path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise IncompatibleConfigError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        raise IncompatibleConfigError(
            f"{path}: no 'hyper_parameters' (was the task saved with save_hyperparameters()?)"
        )
    missing = [k for k in ("backbone", "n_classes", "d_depth", "d_emb") if k not in hp]
    if missing:
        raise IncompatibleConfigError(
            f"{path}: hyper_parameters lack {missing} (expected a RoutingClassificationTask checkpoint; "
            f"got keys {sorted(hp)})"
        )
    if not isinstance(hp["backbone"], Mapping):
        raise IncompatibleConfigError(
            f"{path}: hyper_parameters['backbone'] must be a plain dict spec, got {hp['backbone']!r}"
        )
    state = extract_head_state_dict(ckpt["state_dict"], str(path))
    given = {
        "d_depth": hp["d_depth"],
        "d_emb": hp["d_emb"],
        "n_classes": hp["n_classes"],
        "n_hid": hp.get("n_hid", 64),
    }
    head = _merge_head("routing_head", given, state, str(path))
    labels = hp.get("labels")
    config = {
        "schema_version": 1,
        "architecture": "routing_head",
        "backbone": json.loads(json.dumps(dict(hp["backbone"]))),
        "head": head,
        "labels": list(labels) if labels is not None else None,
        "preprocessing": dict(hp.get("preprocessing") or {}),
        "padding": hp.get("padding", "mask"),
        "converted_from": {
            "file": path.name,
            "lightning_epoch": ckpt.get("epoch"),
            "lightning_global_step": ckpt.get("global_step"),
        },
    }
    from heinsen_zoo.zoo.hub import validate_config

    return state, validate_config(config, str(path))


def export_lightning_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export the head of a ``RoutingClassificationTask`` ``.ckpt`` to ``out_dir``; returns ``out_dir``."""
    state, config = read_lightning_checkpoint(ckpt_path)
    config["converted_from"]["sha256"] = checksums.sha256_file(ckpt_path)
    return _validated_write(state, config, out_dir, str(ckpt_path))


# --------------------------------------------------------------------------------------------- command line


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
