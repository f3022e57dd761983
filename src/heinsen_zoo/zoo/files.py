"""Weight files the zoo reads from outside and writes for users: checked before allocating, written atomically.

* :func:`read_safetensors_header` — the header of a ``.safetensors`` file, validated (size limits, known
  dtypes, shapes that match their byte ranges, ranges that tile the file exactly) before any tensor is read;
* :func:`load_safetensors` — the tensors of a validated file (a corrupt file raises :class:`CorruptFileError`,
  never a library error);
* :func:`save_safetensors` — a deterministic file: keys sorted, compact sorted JSON header, so identical
  weights give identical bytes (and sha256);
* :func:`replace_directory` — write a whole directory (an export) into a temporary directory beside the
  target, fsync it, then swap it in with one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two
  renames). A kill at any moment leaves the old or the new directory, never a mix; temporaries of killed
  writers are removed by the next write. Files get ordinary modes (0666 / 0777 minus the umask).

Example:
    >>> import tempfile, torch
    >>> d = Path(tempfile.mkdtemp())
    >>> save_safetensors({"b": torch.ones(2), "a": torch.zeros(3, dtype=torch.int64)}, d / "w.safetensors")
    >>> sorted(read_safetensors_header(d / "w.safetensors").tensors)
    ['a', 'b']
    >>> load_safetensors(d / "w.safetensors")["a"].dtype
    torch.int64
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heinsen_zoo.zoo.errors import CorruptFileError

__all__ = [
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "load_safetensors",
    "ordinary_mode",
    "read_safetensors_header",
    "replace_directory",
    "save_safetensors",
]

#: Largest safetensors header accepted (the format's own reference limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: dtype, shape and byte range within the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: ``tensors`` (name → :class:`TensorInfo`), ``metadata``, ``data_start``."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file without reading (or allocating) any tensor.

    Raises :class:`CorruptFileError` naming the file and what is wrong; FileNotFoundError when absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weight file")
    size = path.stat().st_size

    def bad(why: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: not a valid safetensors file ({why})")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    with path.open("rb") as handle:
        (n_header,) = struct.unpack("<Q", handle.read(8))
        if n_header > min(MAX_HEADER_BYTES, size - 8):
            raise bad(
                f"header of {n_header} bytes claimed, the file holds {size - 8} after the length field "
                f"(limit {MAX_HEADER_BYTES})"
            )
        raw = handle.read(n_header)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("'__metadata__' must map names to strings")
    data_start = 8 + n_header
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise bad(f"entry {name!r} is not {{dtype, shape, data_offsets}}: {str(info)[:80]}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES:
            raise bad(f"{name!r}: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or len(shape) > 64:
            raise bad(f"{name!r}: shape must be a list of non-negative ints, got {str(shape)[:80]}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise bad(f"{name!r}: data_offsets must be [begin, end], got {str(offsets)[:80]}")
        begin, end = offsets
        n_bytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if end < begin or end - begin != n_bytes:
            raise bad(
                f"{name!r}: shape {shape} of {dtype} needs {n_bytes} bytes, data_offsets give {end - begin}"
            )
        tensors[name] = TensorInfo(_DTYPES[dtype], tuple(shape), begin, end)
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            raise bad(f"{name!r}: data starts at byte {info.begin}, expected {position} (overlap or gap)")
        position = info.end
    if data_start + position != size:
        raise bad(
            f"the header describes {position} data bytes, the file holds {size - data_start} "
            "(truncated or padded)"
        )
    return SafetensorsHeader(tensors, dict(metadata), data_start)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def load_safetensors(
    path: str | os.PathLike, header: SafetensorsHeader | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on CPU, after :func:`read_safetensors_header` validated it."""
    path = Path(path)
    header = header or read_safetensors_header(path)
    out: dict[str, torch.Tensor] = {}
    with path.open("rb") as handle:
        for name, info in header.tensors.items():
            handle.seek(header.data_start + info.begin)
            data = bytearray(handle.read(info.end - info.begin))
            if len(data) != info.end - info.begin:
                raise CorruptFileError(f"{path}: {name!r} truncated while reading (the file changed?)")
            flat = torch.frombuffer(data, dtype=info.dtype) if data else torch.empty(0, dtype=info.dtype)
            out[name] = flat.reshape(info.shape)
    return out


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as a deterministic safetensors file: keys sorted, sorted compact JSON header."""
    entries: dict[str, Any] = {}
    blobs: list[bytes] = []
    position = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _NAMES:
            what = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(
                f"save_safetensors: {name!r} is {what}, expected a tensor of {sorted(_NAMES.values(), key=str)}"
            )
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        blob = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        entries[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                         "data_offsets": [position, position + len(blob)]}  # fmt: skip
        blobs.append(blob)
        position += len(blob)
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)))
        handle.write(header)
        for blob in blobs:
            handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------- atomic writes


def ordinary_mode(directory: bool = False) -> int:
    """0o666 (files) or 0o777 (directories) minus the process umask (what ``open``/``mkdir`` would give)."""
    mask = None
    with contextlib.suppress(OSError, ValueError):  # Linux: read it without changing it (thread-safe)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
    if mask is None:
        mask = os.umask(0)
        os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


_TEMP_RE = r"^\.{name}\.(?:new|old)-(\d+)-[A-Za-z0-9_]+$"


def _sweep_stale(parent: Path, name: str) -> None:
    """Remove temporaries of ``name`` left by writers that were killed (their process is gone)."""
    pattern = re.compile(_TEMP_RE.format(name=re.escape(name)))
    for entry in parent.iterdir() if parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # a live writer
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(entry, ignore_errors=True)


def replace_directory(
    target: str | os.PathLike, fill: Callable[[Path], None], replaceable: frozenset[str] | set[str]
) -> Path:
    """Create or replace the directory ``target`` as a whole: ``fill(tmp)`` writes it, then one swap.

    ``replaceable``: the names an existing ``target`` may hold (a directory with anything else is not ours
    to replace: refused with FileExistsError naming the other entries). Returns ``target``.
    """
    target = Path(target).absolute()
    parent, name = target.parent, target.name
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise FileExistsError(f"{target} exists and is not a directory; choose another output directory")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in replaceable)
        if foreign:
            raise FileExistsError(
                f"{target} holds other files ({', '.join(foreign[:5])}{', …' if len(foreign) > 5 else ''}); an "
                f"export replaces its directory as a whole — write it to a new or empty directory"
            )
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(parent, name)
    new = Path(tempfile.mkdtemp(prefix=f".{name}.new-{os.getpid()}-", dir=parent))
    old = None
    try:
        fill(new)
        file_mode = ordinary_mode()
        for entry in new.iterdir():
            if entry.is_file():
                entry.chmod(file_mode)
                with open(entry, "rb") as handle:
                    os.fsync(handle.fileno())
        new.chmod(ordinary_mode(directory=True))
        _fsync_dir(new)
        if not target.exists():
            os.rename(new, target)
        elif not _exchange(new, target):  # no atomic swap here: two renames (a kill between loses neither)
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent))
            os.rename(target, old / name)
            os.rename(new, target)
        _fsync_dir(parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # after a swap: the previous contents
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target
