"""Read the official CIFAR "python version" pickles without executing arbitrary code.

Why: ``pickle.load`` runs whatever callables a file names (``os.system`` included), so loading a CIFAR
file obtained from anywhere but the official site would be remote code execution. The official files are
(Python 2) pickles of plain dicts whose values are bytes, ints, lists and numpy arrays; building them needs
no global except the ones numpy uses to rebuild an array. :class:`RestrictedUnpickler` resolves only those
(``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``) and raises ``pickle.UnpicklingError`` for any other global, before anything is called.
Object arrays are refused as well (their elements could smuggle references), so every array loaded holds
plain numbers.

Note: Python 3 writes bytes at pickle protocols 0-2 as calls to ``_codecs.encode``, which is refused too; the
official (Python 2) files do not need it. Re-save such a file with protocol >= 3 if you made it yourself.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "ALLOWED_GLOBALS",
    "PickleDataError",
    "RestrictedUnpickler",
    "load_data_pickle",
    "safe_load_pickle",
    "safe_loads_pickle",
]

#: (module, name) pairs a file may reference; everything else is refused.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


def _resolve(module: str, name: str) -> Any:
    if module == "numpy.core.multiarray":  # numpy >= 2 keeps the implementation in numpy._core
        try:
            return getattr(importlib.import_module("numpy._core.multiarray"), name)
        except ImportError:  # numpy 1.x
            pass
    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only :data:`ALLOWED_GLOBALS` (numpy array reconstruction).

    Example:
        >>> import io, pickle, numpy as np
        >>> data = pickle.dumps({b"data": np.zeros((2, 3), np.uint8), b"labels": [0, 1]}, protocol=4)
        >>> RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()[b"labels"]
        [0, 1]
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: this loader only accepts pickles of plain data and "
                f"numpy arrays (allowed: {sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS)}); the file is not an "
                "official CIFAR batch or has been tampered with"
            )
        return _resolve(module, name)


def _check_no_object_arrays(value: Any, where: str = "root") -> None:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise pickle.UnpicklingError(f"refusing numpy object array at {where}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_no_object_arrays(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _check_no_object_arrays(item, f"{where}[{position}]")


def safe_load_pickle(file: BinaryIO, encoding: str = "bytes") -> Any:
    """Load a pickle of plain data and numpy arrays from an open binary file; refuse anything else.

    ``encoding="bytes"`` reads Python-2 strings as bytes, as the official CIFAR files need (their keys are
    ``b"data"``, ``b"labels"``...).
    """
    value = RestrictedUnpickler(file, encoding=encoding).load()
    _check_no_object_arrays(value)
    return value


def safe_loads_pickle(data: bytes, encoding: str = "bytes") -> Any:
    """:func:`safe_load_pickle` on bytes.

    Example:
        >>> import os, pickle
        >>> class Evil:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo pwned",))
        >>> try:
        ...     safe_loads_pickle(pickle.dumps(Evil()))
        ... except pickle.UnpicklingError as error:
        ...     print(str(error)[:23])
        refusing to load global
    """
    return safe_load_pickle(io.BytesIO(data), encoding=encoding)


class PickleDataError(ValueError, pickle.UnpicklingError):
    """A data pickle that was refused or could not be read; the message names the file."""


def load_data_pickle(file: BinaryIO, name: str | os.PathLike, encoding: str = "bytes") -> Any:
    """:func:`safe_load_pickle` of a data file, every failure a :class:`PickleDataError` naming ``name``.

    A refused global, an object array, a truncated or an empty file, or bytes that are no pickle at all
    (``UnpicklingError``, ``EOFError``, ``ValueError``, ``MemoryError`` ... from the unpickler) become
    ``PickleDataError("<name>: ...")`` (a ValueError and an UnpicklingError) so the user learns which file is bad.
    """
    try:
        return safe_load_pickle(file, encoding=encoding)
    except pickle.UnpicklingError as err:
        if "refusing" in str(err):
            raise PickleDataError(f"{name}: {err}") from None
        raise PickleDataError(f"{name}: not a readable pickle (truncated or corrupt: {err})") from None
    except EOFError:
        raise PickleDataError(
            f"{name}: empty or truncated pickle (the file ends before the data does)"
        ) from None
    except MemoryError:
        raise PickleDataError(f"{name}: corrupt pickle (claims more memory than is available)") from None
    except Exception as err:  # noqa: BLE001 - the unpickler raises anything on corrupt bytes
        raise PickleDataError(
            f"{name}: not a readable pickle (corrupt: {type(err).__name__}: {err})"
        ) from None
