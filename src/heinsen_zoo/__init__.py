"""The Heinsen routing model zoo: frozen backbones → routing heads, Lightning tasks, data, registry.

Public names are imported lazily (Lightning, timm and transformers take seconds to import):

    >>> from heinsen_zoo import RoutingHead
    >>> head = RoutingHead(d_depth=3, d_emb=16, n_classes=4)
    >>> sorted(head.state_dict())[:3]
    ['B', 'W', 'route.0.B_A']
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RoutingHead": "heinsen_zoo.heads",
    "RoutingClassifier": "heinsen_zoo.model",
    "build_backbone": "heinsen_zoo.backbones",
    "SmallNORBClassifier": "heinsen_zoo.capsules2019",
    "SSTClassifier": "heinsen_zoo.capsules2019",
    "RoutingClassificationTask": "heinsen_zoo.tasks",
    "create_model": "heinsen_zoo.zoo",
    "list_models": "heinsen_zoo.zoo",
    "from_pretrained": "heinsen_zoo.zoo",
    "save_pretrained": "heinsen_zoo.zoo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heinsen_zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
