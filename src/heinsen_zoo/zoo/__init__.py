"""The model zoo: a registry of named models, strict save/load, checksums and checkpoint conversion.

Modules, from the bottom of the import graph up (each imports only those above it in this list):

* :mod:`~heinsen_zoo.zoo.errors` — the error types; :mod:`~heinsen_zoo.zoo.checksums` — SHA-256, the lock file;
  :mod:`~heinsen_zoo.zoo.files` — safetensors and atomic directories; :mod:`~heinsen_zoo.zoo.paths` — zoo home,
  shared folder, cache, offline mode; :mod:`~heinsen_zoo.zoo.card` — model-card text;
  :mod:`~heinsen_zoo.zoo.torch_sizes` — the storage sizes a torch file declares, checked against the file;
* :mod:`~heinsen_zoo.zoo.architectures` — one record per model family (registered by the family's module);
* :mod:`~heinsen_zoo.zoo.fetch` — verified URL downloads and the hub fetcher;
* :mod:`~heinsen_zoo.zoo.entry` — ``ModelEntry`` and its parts; :mod:`~heinsen_zoo.zoo.entries` — the built-ins;
* :mod:`~heinsen_zoo.zoo.export_format` — ``config.json`` + ``model.safetensors``: validate, check, write;
* :mod:`~heinsen_zoo.zoo.checkpoints` — safe readers (``safe_torch_load``, the one Lightning ``.ckpt`` reader);
* :mod:`~heinsen_zoo.zoo.weights` — locating and verifying an entry's weights;
  :mod:`~heinsen_zoo.zoo.loading` — strict loaders;
* :mod:`~heinsen_zoo.zoo.registry` — ``list_models``, ``get_entry``, ``register_model``, ``create_model``;
* :mod:`~heinsen_zoo.zoo.hub` — ``save_pretrained`` / ``from_pretrained``; :mod:`~heinsen_zoo.zoo.convert`,
  :mod:`~heinsen_zoo.zoo.download` — the converters' and the downloader's command lines;
  :mod:`~heinsen_zoo.zoo.publish` — ``push_to_hub`` (``heinsen-zoo push``).

Example:
    >>> from heinsen_zoo.zoo import list_models
    >>> list_models("*demo")
    ['routing_minilm_l6.bbc_news_demo']
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are resolved lazily (``python -m heinsen_zoo.zoo.convert`` must not find convert pre-imported).
_EXPORTS = {
    "build_model_card": "card",
    "write_model_card": "export_format",
    "ChecksumMismatchError": "checksums",
    "sha256_file": "checksums",
    "verify": "checksums",
    "convert_original_state_dict": "convert",
    "export_lightning_checkpoint": "convert",
    "safe_torch_load": "convert",
    "BlobMismatchError": "download",
    "fetch_published": "download",
    "get_architecture": "architectures",
    "register_architecture": "architectures",
    "ClassCountMismatchError": "errors",
    "IncompatibleConfigError": "errors",
    "OfflineError": "errors",
    "StateDictMismatchError": "errors",
    "UnknownModelError": "errors",
    "UnsafeCheckpointError": "errors",
    "WeightsNotFoundError": "errors",
    "ZooError": "errors",
    "from_pretrained": "hub",
    "save_pretrained": "hub",
    "push_to_hub": "publish",
    "ExpectedMetric": "registry",
    "ModelEntry": "registry",
    "Preprocessing": "registry",
    "WeightSource": "registry",
    "create_model": "registry",
    "get_entry": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "resolve_weights": "registry",
}

__all__ = [
    "BlobMismatchError",
    "ChecksumMismatchError",
    "ClassCountMismatchError",
    "ExpectedMetric",
    "IncompatibleConfigError",
    "ModelEntry",
    "OfflineError",
    "Preprocessing",
    "StateDictMismatchError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WeightSource",
    "WeightsNotFoundError",
    "ZooError",
    "build_model_card",
    "convert_original_state_dict",
    "create_model",
    "export_lightning_checkpoint",
    "fetch_published",
    "from_pretrained",
    "get_architecture",
    "get_entry",
    "list_models",
    "push_to_hub",
    "register_architecture",
    "register_model",
    "resolve_weights",
    "safe_torch_load",
    "save_pretrained",
    "sha256_file",
    "verify",
    "write_model_card",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"heinsen_zoo.zoo.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'heinsen_zoo.zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
