"""The model zoo: a registry of named models, strict save/load, checksums and checkpoint conversion.

* :mod:`~heinsen_zoo.zoo.registry` — ``list_models``, ``get_entry``, ``create_model``, ``register_model``;
* :mod:`~heinsen_zoo.zoo.hub` — ``save_pretrained`` / ``from_pretrained`` (``config.json`` + ``model.safetensors``);
* :mod:`~heinsen_zoo.zoo.checksums` — streaming SHA-256, ``verify``, the trust-on-first-use lock;
* :mod:`~heinsen_zoo.zoo.convert` — ``safe_torch_load``, original state dicts and Lightning checkpoints → exports;
* :mod:`~heinsen_zoo.zoo.entries` — the built-in entries; :mod:`~heinsen_zoo.zoo.errors` — the error types;
* :mod:`~heinsen_zoo.zoo.download` — verified downloads (git blob id) into the cache, converted to exports;
* :mod:`~heinsen_zoo.zoo.card` — model cards (``README.md`` with Hugging Face front matter);
* :mod:`~heinsen_zoo.zoo.publish` — ``push_to_hub`` (``heinsen-zoo push``).

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
    "write_model_card": "card",
    "ChecksumMismatchError": "checksums",
    "sha256_file": "checksums",
    "verify": "checksums",
    "convert_original_state_dict": "convert",
    "export_lightning_checkpoint": "convert",
    "safe_torch_load": "convert",
    "BlobMismatchError": "download",
    "fetch_published": "download",
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
    "get_entry",
    "list_models",
    "push_to_hub",
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
