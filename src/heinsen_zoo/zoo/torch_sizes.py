"""How many bytes of tensor storage a torch file declares, read without building or importing anything.

``torch.load`` allocates every storage at the size its pickle declares before it reads the bytes, so a
crafted (or corrupt) file could ask for terabytes. :func:`check_declared_storage` reads the pickle with an
unpickler that resolves no global (every class a file names becomes an inert stand-in; nothing is imported or
called) and compares what the storages declare with what the file holds:

* zip files (``torch.save`` since 1.6): each storage ``key`` must fit in its record ``<archive>/data/<key>``;
* legacy files (``_use_new_zipfile_serialization=False``, e.g. the 2019 checkpoints): all storages together
  must fit in the bytes after the pickles.

Example:
    >>> import io, torch
    >>> buf = io.BytesIO()
    >>> torch.save({"w": torch.zeros(10), "b": torch.zeros(2, dtype=torch.float64)}, buf,
    ...            _use_new_zipfile_serialization=False)
    >>> declared_storage_bytes(io.BytesIO(buf.getvalue()))
    56
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from heinsen_zoo.zoo.errors import CorruptFileError

__all__ = ["MAX_PICKLE_BYTES", "check_declared_storage", "declared_storage_bytes"]

#: the largest ``data.pkl`` record read from a zip checkpoint (a state dict needs ~200 bytes per tensor)
MAX_PICKLE_BYTES = 256 * 2**20
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_ITEMSIZE = 16  # unknown storage types count at the widest element


def _storage_itemsizes() -> dict[str, int]:
    """``{"FloatStorage": 4, ...}``: element sizes of the legacy storage class names, from torch's own map."""
    names = getattr(torch.storage, "_dtype_to_storage_type_map", dict)()
    return {name: dtype.itemsize for dtype, name in names.items()}


_ITEMSIZE = _storage_itemsizes()


class _Inert:
    """What every global of the file becomes: accepts any construction, call or state, does nothing."""

    itemsize = _MAX_ITEMSIZE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _ScanningUnpickler(pickle.Unpickler):
    """Records the storages a torch pickle declares (``key -> bytes``); resolves no global."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="bytes")
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> type:
        return type(name, (_Inert,), {"itemsize": _ITEMSIZE.get(name, _MAX_ITEMSIZE)})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and _text(pid[0]) == "storage":
            storage_type, key, numel = pid[1], _text(pid[2]), pid[4]
            itemsize = getattr(storage_type, "itemsize", _MAX_ITEMSIZE)
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"storage {key!r} declares {numel!r} elements")
            nbytes = (
                numel
                if _text(getattr(storage_type, "__name__", "")) == "UntypedStorage"
                else numel * itemsize
            )
            self.storages[key] = max(self.storages.get(key, 0), nbytes)
        return _Inert()


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _scan(file: BinaryIO) -> tuple[Any, dict[str, int]]:
    """The next pickle of ``file`` read inertly: ``(its value, the storages it declared)``."""
    scanner = _ScanningUnpickler(file)
    return scanner.load(), scanner.storages


def _zip_records(archive: zipfile.ZipFile) -> tuple[str, dict[str, int]]:
    """``(prefix, {storage key: record bytes})`` of a torch zip checkpoint."""
    pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise pickle.UnpicklingError(f"expected one <archive>/data.pkl record, found {len(pickles)}")
    prefix = pickles[0].filename[: -len("data.pkl")]
    records = {
        info.filename[len(prefix) + len("data/") :]: info.file_size
        for info in archive.infolist()
        if info.filename.startswith(prefix + "data/")
    }
    return pickles[0].filename, records


def declared_storage_bytes(file: BinaryIO) -> int | None:
    """Total bytes the storages of a torch file declare (zip or legacy format), None for a file in neither
    format (``torch.load`` rejects those before it reads a storage: no magic number); raises
    ``pickle.UnpicklingError`` when a declaration does not fit in the file."""
    start = file.tell()
    if zipfile.is_zipfile(file):
        file.seek(start)
        with zipfile.ZipFile(file) as archive:
            name, records = _zip_records(archive)
            size = archive.getinfo(name).file_size
            if size > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError(
                    f"{name} is {size} bytes, over the {MAX_PICKLE_BYTES}-byte limit"
                )
            _, storages = _scan(io.BytesIO(archive.read(name)))
        for key, nbytes in storages.items():
            if key not in records:
                raise pickle.UnpicklingError(f"storage {key!r} has no data record")
            if nbytes > records[key]:
                raise pickle.UnpicklingError(
                    f"storage {key!r} declares {nbytes} bytes, its record holds {records[key]}"
                )
        return sum(storages.values())
    file.seek(0, os.SEEK_END)
    end = file.tell()
    file.seek(start)
    magic, _ = _scan(file)
    if not isinstance(magic, int) or magic != _LEGACY_MAGIC:
        return None  # neither format: torch.load refuses it before reading any storage
    _scan(file)  # protocol version
    _scan(file)  # sys_info
    _, storages = _scan(file)
    _scan(file)  # the sorted storage keys
    total = sum(storages.values())
    if total > end - file.tell():
        raise pickle.UnpicklingError(
            f"its storages declare {total} bytes, the file holds {end - file.tell()} after the pickles"
        )
    return total


def check_declared_storage(path: str | os.PathLike) -> int | None:
    """:func:`declared_storage_bytes` of the file at ``path``; call before ``torch.load``.

    Raises :class:`~heinsen_zoo.zoo.errors.CorruptFileError` (a ValueError) naming the file when the pickle
    cannot be read or a storage declares more bytes than the file holds; nothing is allocated for it.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return declared_storage_bytes(f)
        except (
            pickle.UnpicklingError,
            EOFError,
            zipfile.BadZipFile,
            ValueError,
            TypeError,
            IndexError,
        ) as err:
            raise CorruptFileError(
                f"{path}: not a readable torch checkpoint (corrupt, truncated or crafted?): {err}; refused before "
                "torch.load allocated anything"
            ) from None
