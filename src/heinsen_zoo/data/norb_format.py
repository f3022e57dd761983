"""The NORB binary matrix format (smallNORB's files): reader (plain or gzipped, size-checked) and writer.

Little-endian: int32 magic (0x1E3D4C55 uint8, 0x1E3D4C54 int32, 0x1E3D4C56 int16, 0x1E3D4C51 float32,
0x1E3D4C53 float64), int32 ndim, then max(3, ndim) int32 dims (only the first ndim count), then the data in
C order.

Example:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/m.mat"
    >>> write_norb_matrix(path, np.arange(6, dtype=np.int32).reshape(2, 3))
    >>> read_norb_matrix(path).tolist()
    [[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["MAX_GZ_BYTES", "read_norb_matrix", "write_norb_matrix"]

MAGIC_TO_DTYPE = {
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C55: np.dtype("u1"),
    0x1E3D4C56: np.dtype("<i2"),
}
DTYPE_TO_MAGIC = {dtype: magic for magic, dtype in MAGIC_TO_DTYPE.items()}
PACKED_MAGIC = 0x1E3D4C52
MAX_NDIM = 32
#: Largest gzipped NORB matrix decompressed by default (the training ``dat`` file holds 448 MB).
MAX_GZ_BYTES = 1 << 30
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data more than ~1032:1


# ---------------------------------------------------------------------------------------------------------------
# NORB binary matrix format.


def _parse_header(path: Path, header: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header size in bytes) from the first bytes of a NORB matrix file."""
    if len(header) < 8:
        raise ValueError(
            f"{path}: not a NORB matrix file (only {len(header)} bytes, a header needs at least 20)"
        )
    magic, ndim = (int(v) for v in np.frombuffer(header[:8], dtype="<i4"))
    magic &= 0xFFFFFFFF
    if magic == PACKED_MAGIC:
        raise ValueError(f"{path}: packed NORB matrices (magic 0x{magic:08X}) are not supported")
    if magic not in MAGIC_TO_DTYPE:
        known = ", ".join(f"0x{m:08X} ({d})" for m, d in MAGIC_TO_DTYPE.items())
        raise ValueError(f"{path}: unknown NORB magic number 0x{magic:08X}; expected one of {known}")
    if not 0 <= ndim <= MAX_NDIM:
        raise ValueError(f"{path}: corrupt NORB header (ndim = {ndim}, expected 0..{MAX_NDIM})")
    n_dims_stored = max(3, ndim)
    header_size = 8 + 4 * n_dims_stored
    if len(header) < header_size:
        raise ValueError(f"{path}: truncated NORB header ({len(header)} bytes, expected {header_size})")
    dims = tuple(int(v) for v in np.frombuffer(header[8:header_size], dtype="<i4"))[:ndim]
    if any(d < 0 for d in dims):
        raise ValueError(f"{path}: corrupt NORB header (negative dims {dims})")
    return MAGIC_TO_DTYPE[magic], dims, header_size


def read_norb_matrix(path: str | os.PathLike, mmap: bool = True, max_bytes: int = MAX_GZ_BYTES) -> np.ndarray:
    """Read a NORB binary matrix (plain or ``.gz``) as a numpy array of its stored dtype and shape.

    Plain files are memory-mapped read-only when ``mmap`` is True (the 448 MB training ``dat`` file then costs
    no RAM until read); gzipped files are decompressed into memory — after their header was read and checked
    (at most ``max_bytes`` of data, and no more than the compressed size can hold), streaming exactly the
    size the header states, so a decompression bomb is refused without being inflated.

    Example:
        >>> import tempfile, numpy as np
        >>> path = Path(tempfile.mkdtemp()) / "m.mat.gz"
        >>> write_norb_matrix(path, np.arange(6, dtype=np.int32).reshape(2, 3))
        >>> read_norb_matrix(path).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NORB matrix file not found: {path}")
    if path.suffix == ".gz":
        return _read_gz_matrix(path, max_bytes)

    with open(path, "rb") as f:
        head = f.read(8 + 4 * MAX_NDIM)
    dtype, shape, offset = _parse_header(path, head)
    expected = math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size - offset
    if actual != expected:
        raise ValueError(
            f"{path}: expected {expected} data bytes for a {dtype} matrix of shape {list(shape)}, "
            f"found {actual} (truncated or corrupt file)"
        )
    if mmap and expected > 0:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    with open(path, "rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(), dtype=dtype).reshape(shape)


def _read_gz_matrix(path: Path, max_bytes: int) -> np.ndarray:
    """Stream-decompress a gzipped NORB matrix: header first, sizes checked, then exactly that many bytes."""
    compressed = path.stat().st_size
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                ndim = int(np.frombuffer(head[4:8], dtype="<i4")[0])
                head += f.read(4 * max(3, ndim)) if 0 <= ndim <= MAX_NDIM else b""
            dtype, shape, offset = _parse_header(path, head)
            expected = math.prod(shape) * dtype.itemsize
            if expected > max_bytes:
                raise ValueError(
                    f"{path}: the header claims a {dtype} matrix of shape {list(shape)} ({expected} bytes), more than "
                    f"the limit of {max_bytes} bytes (pass max_bytes= to read_norb_matrix to raise it)"
                )
            if expected > _DEFLATE_MAX_RATIO * compressed + 1024:
                raise ValueError(
                    f"{path}: the header claims {expected} data bytes, more than {compressed} compressed bytes can "
                    "hold (corrupt file)"
                )
            data = np.empty(expected, dtype=np.uint8)
            view, filled = memoryview(data), 0
            while filled < expected:
                n = f.readinto(view[filled : filled + (1 << 24)])
                if not n:
                    break
                filled += n
            if filled != expected or f.read(1):
                found = f"{filled}" if filled != expected else f"more than {expected}"
                raise ValueError(
                    f"{path}: expected {expected} data bytes for a {dtype} matrix of shape {list(shape)}, "
                    f"found {found} (truncated or corrupt file)"
                )
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip file ({err})") from err
    return data.view(dtype).reshape(shape)


def write_norb_matrix(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (uint8, int16, int32, float32 or float64) as a NORB binary matrix; gzip if ``.gz``.

    Example:
        >>> import tempfile, numpy as np
        >>> path = Path(tempfile.mkdtemp()) / "m.mat"
        >>> write_norb_matrix(path, np.zeros((2, 2, 96, 96), dtype=np.uint8))
        >>> read_norb_matrix(path).shape
        (2, 2, 96, 96)
    """
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in DTYPE_TO_MAGIC:
        raise TypeError(
            f"array: expected dtype uint8, int16, int32, float32 or float64 (the NORB matrix types), got {array.dtype}"
        )
    if array.ndim > MAX_NDIM:
        raise ValueError(f"array: expected at most {MAX_NDIM} dims, got {array.ndim}")
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    header = np.array([DTYPE_TO_MAGIC[dtype], array.ndim, *dims], dtype="<u4").tobytes()
    data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header)
        f.write(data)
