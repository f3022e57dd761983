"""The zoo's error types: each says what went wrong, where, and how to fix it.

All derive from :class:`ZooError` and from the builtin error a caller would expect
(``KeyError`` for an unknown name, ``FileNotFoundError`` for missing weights, ``ValueError`` for
a bad file), so ``except KeyError`` keeps working.

Example:
    >>> err = UnknownModelError("routing_x", ["routing_y"])
    >>> isinstance(err, KeyError), "routing_y" in str(err)
    (True, True)
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose."""


class UnknownModelError(ZooError, KeyError):
    """A name that is not in the registry (with the closest registered names as suggestions)."""

    def __init__(self, name: str, suggestions: Sequence[str] = (), hint: str = "") -> None:
        self.name = name
        self.suggestions = list(suggestions)
        message = f"unknown model name {name!r}"
        if self.suggestions:
            message += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        else:
            message += "; `heinsen-zoo list` (or heinsen_zoo.zoo.list_models()) shows the registered names"
        if hint:
            message += f" {hint}"
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.message


class WeightsNotFoundError(ZooError, FileNotFoundError):
    """No weight source of an entry could be found locally (and none could be fetched)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OfflineError(ZooError, OSError):
    """Something has to be downloaded but the zoo runs offline (``HF_HUB_OFFLINE`` / ``local_files_only``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IncompatibleConfigError(ZooError, ValueError):
    """A config.json (or registry entry) this code cannot honour: schema version, architecture, fields."""


class ClassCountMismatchError(IncompatibleConfigError):
    """The number of classes differs between the config, the labels and the weights."""


class StateDictMismatchError(ZooError, ValueError):
    """Weights whose keys or shapes do not match the model they are loaded into.

    Attributes ``missing``, ``unexpected`` (key lists), ``mismatched`` (``(key, got, expected)`` shapes) and
    ``dtypes`` (``(key, got, expected)`` dtype names).
    """

    def __init__(
        self,
        source: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        dtypes: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.dtypes = list(dtypes)
        parts = []
        if self.dtypes:
            parts.append(
                "dtype mismatches "
                + ", ".join(f"{k}: checkpoint {got} vs model {want}" for k, got, want in self.dtypes[:8])
                + " (integer and floating tensors are not converted into each other)"
            )
        if self.missing:
            parts.append(f"missing keys {_some(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys {_some(self.unexpected)}")
        if self.mismatched:
            shapes = ", ".join(
                f"{k}: checkpoint {list(got)} vs model {list(want)}" for k, got, want in self.mismatched[:8]
            )
            more = f" (+{len(self.mismatched) - 8} more)" if len(self.mismatched) > 8 else ""
            parts.append(f"shape mismatches {shapes}{more}")
        super().__init__(f"weights from {source} do not match the model: " + "; ".join(parts))


class UnsafeCheckpointError(ZooError, pickle.UnpicklingError):
    """A checkpoint that holds arbitrary Python objects; the zoo refuses to unpickle it."""


class CorruptFileError(ZooError, ValueError):
    """A weight or data file that cannot be read: truncated, corrupt, or with inconsistent sizes.

    Raised before anything is allocated from the sizes the file claims; the message names the file.
    """


class UntrustedSpecError(IncompatibleConfigError):
    """A backbone spec read from a file (export, registry file, checkpoint) asks for something only a
    user's own Python call may ask for (``trust_remote_code``, an option outside the allow-list)."""


def _some(keys: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:limit])
    return f"[{shown}{f', … (+{len(keys) - limit} more)' if len(keys) > limit else ''}]"
