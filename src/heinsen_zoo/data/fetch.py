"""Fetch the public datasets of the reproduction rows into ``DATA_DIR``, pinned and verified.

What is fetched, and how it is checked (each into ``<DATA_DIR>/<folder>``, the layout its DataModule reads):

* CIFAR-10 / CIFAR-100: ``cifar-{10,100}-python.tar.gz`` with torchvision's downloader, verified against
  the md5 torchvision pins (the DataModules read the archive without extracting it).
* IMDB: the Hugging Face dataset ``stanfordnlp/imdb`` at a pinned commit, its two parquet files
  (``plain_text/{train,test}-00000-of-00001.parquet``) verified by sha256.
* SST (SST-5 / SST-2, 2022 and 2019 rows): the PTB-tree form (``trees/{train,dev,test}.txt``, SPEC §5)
  from the treebank's published zip; verified by content (every line parses as a tree; 8,544 / 1,101 /
  2,210 trees), since no checksum of the zip was available to pin.
* smallNORB: the six published ``*.mat.gz`` files, verified by their decompressed sizes (known from the
  NORB format: 24,300 pairs per split) and their headers; kept gzipped (the DataModule reads them).
* ImageNet: never fetched (licence); :func:`fetch` raises with the exact layout to provide.

Every download goes to a temporary file in the target folder and is renamed into place only after it
was verified (a corrupt or truncated download never looks like data). Offline (``HF_HUB_OFFLINE=1``,
``--offline``) nothing is fetched and the missing-data message of the preflight stands.

Command line::

    python -m heinsen_zoo.data.fetch cifar10 sst5 --data-dir data

The ``base_url`` of each source can be redirected (tests serve stand-ins on a loopback HTTP server).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["FETCHERS", "FetchError", "IMAGENET_LAYOUT", "SOURCES", "fetch"]

IMAGENET_LAYOUT = (
    "ImageNet-1k is not downloaded (its licence requires registration at https://image-net.org). Put the "
    "ILSVRC2012 images in <DATA_DIR>/imagenet/train/<wnid>/*.JPEG (1,281,167 images, 1,000 wnid folders) and "
    "<DATA_DIR>/imagenet/val/<wnid>/*.JPEG (50,000 images, the same 1,000 wnid folders: sort the validation "
    "images into class folders with the devkit's ground truth), then run again."
)

IMDB_REVISION = "e6281661ce1c48d982bc483cf8a173c1bbeb5d31"  # stanfordnlp/imdb
SMALLNORB_PAIRS = 24300  # per split
_NORB_SIZES = {"dat": 24 + SMALLNORB_PAIRS * 2 * 96 * 96, "cat": 20 + SMALLNORB_PAIRS * 4,
               "info": 20 + SMALLNORB_PAIRS * 4 * 4}  # fmt: skip
_NORB_MAGIC = {"dat": 0x1E3D4C55, "cat": 0x1E3D4C54, "info": 0x1E3D4C54}  # uint8 / int32 matrices
SST_TREES = {"train.txt": 8544, "dev.txt": 1101, "test.txt": 2210}

# Where each source lives (``base_url`` may be replaced, e.g. by a loopback server in tests).
SOURCES: dict[str, dict] = {
    "cifar10": {"base_url": "https://www.cs.toronto.edu/~kriz", "file": "cifar-10-python.tar.gz",
                "md5": "torchvision.datasets.CIFAR10.tgz_md5"},
    "cifar100": {"base_url": "https://www.cs.toronto.edu/~kriz", "file": "cifar-100-python.tar.gz",
                 "md5": "torchvision.datasets.CIFAR100.tgz_md5"},
    "imdb": {"base_url": f"https://huggingface.co/datasets/stanfordnlp/imdb/resolve/{IMDB_REVISION}",
             "files": {"plain_text/train-00000-of-00001.parquet":
                       "db47d16b5c297cc0dd625e519c81319c24c9149e70e8496de5475f6fa928342c",
                       "plain_text/test-00000-of-00001.parquet":
                       "b52e26e2f872d282ffac460bf9770b25ac6f102cda0e6ca7158df98c94e8b3da"}},
    "sst": {"base_url": "https://nlp.stanford.edu/sentiment", "file": "trainDevTestTrees_PTB.zip"},
    "smallnorb": {"base_url": "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small"},
}  # fmt: skip


class FetchError(RuntimeError):
    """A download failed, or its result did not verify (nothing was put in place)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, verify: Callable[[Path], None]) -> Path:
    """Download ``url`` to ``dest`` atomically: a temporary file, ``verify(tmp)``, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        verify(tmp)
        os.replace(tmp, dest)
    except FetchError:
        raise
    except Exception as error:  # network errors come in many types; name the URL
        raise FetchError(f"download of {url} failed: {error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch_cifar(kind: str, folder: Path, base_url: str | None = None) -> list[Path]:
    """CIFAR-10/100 archive via torchvision's downloader, md5-checked (torchvision's pinned md5)."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity, download_url

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    base = base_url or SOURCES[kind]["base_url"]
    dest = folder / cls.filename
    if check_integrity(str(dest), cls.tgz_md5):
        return [dest]
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=_mkdir(folder)))
    try:
        download_url(f"{base}/{cls.filename}", str(staging), cls.filename, cls.tgz_md5)
        if not check_integrity(str(staging / cls.filename), cls.tgz_md5):
            raise FetchError(f"{kind}: {base}/{cls.filename} does not match torchvision's md5 {cls.tgz_md5}")
        os.replace(staging / cls.filename, dest)
    except FetchError:
        raise
    except Exception as error:  # torchvision raises RuntimeError/URLError on a bad download
        raise FetchError(f"{kind}: download of {base}/{cls.filename} failed: {error}") from error
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink(missing_ok=True)
        staging.rmdir()
    return [dest]


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fetch_imdb(folder: Path, base_url: str | None = None) -> list[Path]:
    """The two parquet files of stanfordnlp/imdb at the pinned revision, sha256-checked."""
    base = base_url or SOURCES["imdb"]["base_url"]
    out = []
    for name, sha256 in SOURCES["imdb"]["files"].items():
        dest = folder / name
        if not (dest.is_file() and _sha256(dest) == sha256):

            def verify(path: Path, name: str = name, sha256: str = sha256) -> None:
                actual = _sha256(path)
                if actual != sha256:
                    raise FetchError(f"imdb: {base}/{name} has sha256 {actual}, expected {sha256} (pinned)")

            _download(f"{base}/{name}", dest, verify)
        out.append(dest)
    return out


def _check_trees(path: Path, name: str, expected: int) -> None:
    from .ptb_trees import read_tree_file

    try:
        trees = read_tree_file(path)
    except ValueError as error:
        raise FetchError(f"sst: {name} is not a PTB-tree file: {error}") from error
    if len(trees) != expected:
        raise FetchError(f"sst: {name} holds {len(trees)} trees, the treebank's has {expected}")


def _fetch_sst(folder: Path, base_url: str | None = None) -> list[Path]:
    """``trees/{train,dev,test}.txt`` from the treebank's PTB zip, verified by tree counts."""
    trees = folder / "trees"
    targets = [trees / name for name in SST_TREES]
    if all(t.is_file() for t in targets):
        return targets
    base = base_url or SOURCES["sst"]["base_url"]
    name = SOURCES["sst"]["file"]
    _mkdir(trees)

    def verify(path: Path) -> None:
        if not zipfile.is_zipfile(path):
            raise FetchError(f"sst: {base}/{name} is not a zip archive")

    archive = _download(f"{base}/{name}", folder / name, verify)
    with zipfile.ZipFile(archive) as zipped:
        members = {Path(m).name: m for m in zipped.namelist() if Path(m).name in SST_TREES}
        missing = sorted(set(SST_TREES) - set(members))
        if missing:
            raise FetchError(f"sst: {archive} lacks {missing}; it holds {zipped.namelist()[:8]}")
        for file_name, expected in SST_TREES.items():
            tmp = trees / f".{file_name}.part"
            tmp.write_bytes(zipped.read(members[file_name]))
            try:
                _check_trees(tmp, file_name, expected)
                os.replace(tmp, trees / file_name)
            finally:
                tmp.unlink(missing_ok=True)
    archive.unlink()
    return targets


def _check_norb(path: Path, kind: str) -> None:
    """Decompressed size and header of a smallNORB ``.mat.gz`` against the format's known values."""
    size = 0
    with gzip.open(path, "rb") as handle:
        header = handle.read(8)
        size += len(header)
        for block in iter(lambda: handle.read(1 << 22), b""):
            size += len(block)
    magic = int.from_bytes(header[:4], "little") if len(header) == 8 else None
    if magic != _NORB_MAGIC[kind] or size != _NORB_SIZES[kind]:
        raise FetchError(
            f"smallnorb: {path.name} decompresses to {size} bytes with magic {magic!r}; the published {kind} "
            f"matrix has {_NORB_SIZES[kind]} bytes and magic {_NORB_MAGIC[kind]:#x}"
        )


def _fetch_smallnorb(folder: Path, base_url: str | None = None) -> list[Path]:
    from .smallnorb import expected_files

    base = base_url or SOURCES["smallnorb"]["base_url"]
    out = []
    for split in ("train", "test"):
        for name in expected_files(split):
            dest = folder / f"{name}.gz"
            if not (dest.is_file() or (folder / name).is_file()):
                kind = name.rsplit("-", 1)[1].split(".")[0]
                _download(f"{base}/{name}.gz", dest, lambda path, kind=kind: _check_norb(path, kind))
            out.append(dest)
    return out


def _fetch_imagenet(folder: Path, base_url: str | None = None) -> list[Path]:
    raise FetchError(IMAGENET_LAYOUT)


FETCHERS: dict[str, Callable[..., list[Path]]] = {
    "cifar10": lambda folder, base_url=None: _fetch_cifar("cifar10", folder, base_url),
    "cifar100": lambda folder, base_url=None: _fetch_cifar("cifar100", folder, base_url),
    "imdb": _fetch_imdb,
    "sst": _fetch_sst,
    "smallnorb": _fetch_smallnorb,
    "imagenet": _fetch_imagenet,
}


def fetch(row: str, data_dir: str | Path, base_url: str | None = None) -> list[Path]:
    """Fetch (and verify) the data of reproduction row ``row`` into ``<data_dir>/<folder>``; returns the files.

    Files already present and valid are kept. Raises :class:`FetchError` (ImageNet: with the manual layout).
    """
    folders = row_folders()
    if row not in folders:
        raise KeyError(f"row: no data source for {row!r}; known rows {sorted(folders)}")
    folder = folders[row]
    return FETCHERS[folder](Path(data_dir) / folder, base_url)


def row_folders() -> dict[str, str]:
    """Row -> DATA_DIR sub-folder, for the rows (``configs/rows.yaml``) whose folder has a fetcher here."""
    from heinsen_zoo.reproduction.rows import load_rows

    return {name: row.data_folder for name, row in load_rows().items() if row.data_folder in FETCHERS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heinsen-zoo-fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", choices=sorted(row_folders()), metavar="ROW")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    for row in args.rows:
        try:
            files = fetch(row, args.data_dir)
        except FetchError as error:
            print(f"error: {row}: {error}", file=sys.stderr)
            return 2
        print(f"{row}: " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
