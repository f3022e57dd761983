"""One record per model family (as timm's ``register_model``): the zoo reads everything it knows about a
family from here — how to build it from head arguments, how to infer those from a state dict, how to
recognise its weights, which module holds them and what it takes as input.

Each family registers its own record, in its own module: ``routing_head`` in :mod:`heinsen_zoo.heads`,
``capsules2019_smallnorb`` / ``capsules2019_sst`` in :mod:`heinsen_zoo.capsules2019`. This module imports
neither (they import it, to register): the first lookup imports the modules named in
:data:`FAMILY_MODULES` by name, as plug-ins are loaded, so the table is complete whoever asks first and
no import circle arises. A new family registers a record and adds its module to :data:`FAMILY_MODULES`.

Example:
    >>> arch = get_architecture("routing_head")
    >>> arch.args, arch.n_classes_arg, arch.anchor
    (('d_depth', 'd_emb', 'n_classes', 'n_hid'), 'n_classes', 'route.0.W_A')
    >>> sorted(architecture_names())
    ['capsules2019_smallnorb', 'capsules2019_sst', 'routing_head']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from heinsen_zoo.zoo.errors import IncompatibleConfigError, StateDictMismatchError

__all__ = [
    "FAMILY_MODULES",
    "Architecture",
    "architecture_for_model",
    "architecture_names",
    "get_architecture",
    "infer_head_args",
    "register_architecture",
]

#: Modules that register the built-in families (imported by name on the first lookup).
FAMILY_MODULES: tuple[str, ...] = ("heinsen_zoo.heads", "heinsen_zoo.capsules2019")

_TABLE: dict[str, Architecture] = {}
_LOADED = False


def _resolve(ref: Any) -> Any:
    """A class given directly, or as ``"module:attribute"`` (imported on use)."""
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Architecture:
    """What the zoo knows about one model family.

    Attributes:
        name: the ``architecture`` of registry entries and of ``config.json``.
        args: the constructor (head) arguments, all positive ints, in config order.
        n_classes_arg: which of ``args`` is the number of classes.
        anchor: a key only this family's weights hold (any prefix allowed): finds them in a checkpoint.
        infer_args: ``state_dict -> args`` from the shapes (values need only ``.shape``); a missing key
            raises KeyError, a malformed shape ValueError/IndexError.
        model_class: the class built (or ``"module:Class"``, imported on use).
        build_kwargs: ``(args, backbone, labels, padding) -> kwargs`` of ``model_class``.
        weights_attr: the attribute holding the saved weights (``"head"``), or None for the whole model.
        weights_class: a bare weights module saved as this family too (or ``"module:Class"``), or None.
        needs_backbone: a backbone spec is part of the model's config.
        inputs: what the model takes, in words (model cards, errors).
        input_kind: ``model -> "text" | "vision" | "norb"`` for inference; raises ValueError for a family
            inference does not serve.
        task: the Hugging Face pipeline task of its model cards, or ``""``: from the backbone's kind.
    """

    name: str
    args: tuple[str, ...]
    n_classes_arg: str
    anchor: str
    infer_args: Callable[[Mapping[str, Any]], dict[str, int]]
    model_class: Any
    build_kwargs: Callable[..., dict[str, Any]]
    weights_attr: str | None = None
    weights_class: Any = None
    needs_backbone: bool = False
    inputs: str = ""
    input_kind: Callable[[Any], str] | None = None
    task: str = ""

    def build(
        self,
        head: Mapping[str, Any],
        backbone: Mapping[str, Any] | None = None,
        labels: list[str] | None = None,
        padding: str = "mask",
    ) -> Any:
        """A fresh, untrained model with head arguments ``head`` (the backbone, if any, is built lazily)."""
        args = {k: int(head[k]) for k in self.args}
        if self.needs_backbone and backbone is None:
            raise IncompatibleConfigError(f"{self.name}: a backbone spec is required (config 'backbone')")
        kwargs = self.build_kwargs(args, backbone, list(labels) if labels is not None else None, padding)
        return _resolve(self.model_class)(**kwargs)

    def weights_module(self, model: Any) -> Any:
        """The module whose state dict the weights file holds."""
        if self.weights_attr is None:
            return model
        module = getattr(model, self.weights_attr, None)
        if module is None:
            raise TypeError(
                f"{self.name}: expected a model with a .{self.weights_attr} module, got {type(model).__name__}"
            )
        return module

    def weights_state(self, model: Any) -> dict[str, Any]:
        """The state dict saved for ``model`` (a full model, or the bare weights module itself)."""
        if self.weights_class is not None and isinstance(model, _resolve(self.weights_class)):
            return model.state_dict()
        return self.weights_module(model).state_dict()

    def infer_head_args(self, state_dict: Mapping[str, Any]) -> dict[str, int]:
        """Head arguments implied by the shapes of a canonical (unprefixed) state dict."""
        try:
            return self.infer_args(state_dict)
        except KeyError as err:
            raise StateDictMismatchError(f"a {self.name} state dict", missing=[str(err.args[0])]) from err
        except (ValueError, IndexError, TypeError) as err:
            raise IncompatibleConfigError(f"{self.name}: malformed weights ({err})") from err

    def owns(self, model: Any, bare: bool = True) -> bool:
        """True when ``model`` is this family's model (or, with ``bare``, its bare weights module)."""
        classes = [_resolve(self.model_class)]
        if bare and self.weights_class is not None:
            classes.append(_resolve(self.weights_class))
        return isinstance(model, tuple(classes))


def register_architecture(arch: Architecture, overwrite: bool = False) -> Architecture:
    """Add a family's record (called by the family's own module at import time)."""
    if arch.name in _TABLE and not overwrite and _TABLE[arch.name] != arch:
        raise ValueError(f"register_architecture: {arch.name!r} is already registered; pass overwrite=True")
    if arch.n_classes_arg not in arch.args:
        raise ValueError(
            f"register_architecture: {arch.name}: n_classes_arg {arch.n_classes_arg!r} not in args"
        )
    _TABLE[arch.name] = arch
    return arch


def _load_families() -> None:
    global _LOADED
    if not _LOADED:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        _LOADED = True


def architecture_names() -> list[str]:
    """The registered family names."""
    _load_families()
    return list(_TABLE)


def get_architecture(name: Any, source: str = "") -> Architecture:
    """The record of ``name``; an unknown name raises :class:`IncompatibleConfigError` listing the known."""
    _load_families()
    if isinstance(name, str) and name in _TABLE:
        return _TABLE[name]
    where = f"{source}: " if source else ""
    raise IncompatibleConfigError(
        f"{where}architecture {name!r} is unknown (not supported by this heinsen_zoo); expected one of {sorted(_TABLE)}"
    )


def architecture_for_model(model: Any, bare: bool = True) -> Architecture | None:
    """The family ``model`` belongs to (its model class, or with ``bare`` its bare weights module), or None."""
    _load_families()
    return next((arch for arch in _TABLE.values() if arch.owns(model, bare)), None)


def infer_head_args(architecture: str, state_dict: Mapping[str, Any]) -> dict[str, int]:
    """Constructor arguments of ``architecture`` implied by the shapes of a (canonical) state dict.

    Example:
        >>> from heinsen_zoo.heads import RoutingHead
        >>> infer_head_args("routing_head", RoutingHead(3, 16, 4, n_hid=8).state_dict())
        {'d_depth': 3, 'd_emb': 16, 'n_classes': 4, 'n_hid': 8}
    """
    return get_architecture(architecture).infer_head_args(state_dict)
