"""Data fetching (heinsen_zoo.data.fetch) against local stand-ins served on a loopback HTTP server: never the
internet. Each source lands in the layout its DataModule reads, verified, atomically; bad downloads leave
nothing behind; ImageNet names its manual layout; the runner fetches only when online."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import shutil
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from heinsen_zoo.data import fetch as fetch_module
from heinsen_zoo.data.fetch import FetchError, fetch
from heinsen_zoo.reproduction.preflight import check_data


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server for ``tmp_path / "www"``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cifar10_via_torchvision_downloader_md5_checked(served, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    from heinsen_zoo.data import CIFAR10DataModule
    from heinsen_zoo.data.synthetic import write_cifar

    www, base = served
    archive = write_cifar(tmp_path / "standin", "cifar10", n_train=20, n_test=10, archive=True)
    archive = (
        next(Path(archive).parent.rglob("cifar-10-python.tar.gz"))
        if Path(archive).is_dir()
        else Path(archive)
    )
    shutil.copy(archive, www / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    data = tmp_path / "data"
    assert not check_data("cifar10", data) == []
    (path,) = fetch("cifar10", data, base_url=base)
    assert path == data / "cifar10" / "cifar-10-python.tar.gz" and check_data("cifar10", data) == []
    dm = CIFAR10DataModule(data_dir=str(data / "cifar10"), image_size=8, batch_size=4)
    assert len(dm.train_dataset) == 20 and len(dm.test_dataset) == 10
    assert fetch("cifar10", data, base_url="http://127.0.0.1:9/nothing") == [path]  # valid: kept, no request


def test_cifar_bad_download_leaves_nothing(served, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    www, base = served
    (www / "cifar-100-python.tar.gz").write_bytes(b"not the archive")
    monkeypatch.setattr(CIFAR100, "tgz_md5", "0" * 32)
    with pytest.raises(FetchError, match="cifar100"):
        fetch("cifar100", tmp_path / "data", base_url=base)
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))


def test_imdb_parquet_at_pinned_revision_sha256_checked(served, tmp_path, monkeypatch):
    import datasets

    from heinsen_zoo.data import IMDBDataModule

    www, base = served
    files = {}
    for split, n in (("train", 6), ("test", 4)):
        path = www / "plain_text" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(exist_ok=True)
        datasets.Dataset.from_dict({"text": [f"review {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
                                   ).to_parquet(str(path))  # fmt: skip
        files[f"plain_text/{path.name}"] = _sha256(path)
    monkeypatch.setitem(fetch_module.SOURCES["imdb"], "files", files)
    data = tmp_path / "data"
    fetched = fetch("imdb", data, base_url=base)
    assert [p.relative_to(data / "imdb").as_posix() for p in fetched] == list(files)
    assert check_data("imdb", data) == []  # the preflight accepts the parquet layout
    dm = IMDBDataModule(data_dir=str(data / "imdb"), batch_size=2)
    assert len(dm.train_dataset) == 6 and len(dm.test_dataset) == 4
    # a file that does not match its pinned sha256 is rejected and not put in place
    monkeypatch.setitem(
        fetch_module.SOURCES["imdb"], "files", {"plain_text/test-00000-of-00001.parquet": "0" * 64}
    )
    with pytest.raises(FetchError, match="sha256 .* expected 0{64}"):
        fetch("imdb", tmp_path / "other", base_url=base)
    assert not list((tmp_path / "other").rglob("*.parquet"))


def test_sst_ptb_trees_from_the_zip(served, tmp_path, monkeypatch):
    from heinsen_zoo.data import SSTDataModule
    from heinsen_zoo.data.synthetic import write_sst_trees

    www, base = served
    root = write_sst_trees(tmp_path / "standin", n_train=12, n_dev=5, n_test=7)
    with zipfile.ZipFile(www / "trainDevTestTrees_PTB.zip", "w") as zipped:
        for name in ("train.txt", "dev.txt", "test.txt"):
            zipped.write(Path(root) / "trees" / name, f"trees/{name}")
    monkeypatch.setattr(fetch_module, "SST_TREES", {"train.txt": 12, "dev.txt": 5, "test.txt": 7})
    data = tmp_path / "data"
    fetch("sst5", data, base_url=base)
    assert check_data("sst5", data) == [] and not (data / "sst" / "trainDevTestTrees_PTB.zip").exists()
    dm = SSTDataModule(data_dir=str(data / "sst"), n_classes=5, batch_size=2)
    assert len(dm.test_dataset) == 7
    monkeypatch.setattr(fetch_module, "SST_TREES", {"train.txt": 8544, "dev.txt": 1101, "test.txt": 2210})
    with pytest.raises(FetchError, match="train.txt holds 12 trees, the treebank's has 8544"):
        fetch("sst5", tmp_path / "other", base_url=base)
    assert not (tmp_path / "other" / "sst" / "trees" / "train.txt").exists()


def test_smallnorb_gz_files_checked_by_decompressed_size_and_header(served, tmp_path, monkeypatch):
    from heinsen_zoo.data.smallnorb import SmallNORBDataModule, write_tiny_smallnorb

    www, base = served
    plain = tmp_path / "standin"
    write_tiny_smallnorb(plain, n_train=6, n_test=6, seed=0)
    sizes = {}
    for path in sorted(plain.glob("*.mat")):
        (www / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        sizes[path.name.rsplit("-", 1)[1].split(".")[0]] = path.stat().st_size
    monkeypatch.setattr(fetch_module, "_NORB_SIZES", sizes)
    data = tmp_path / "data"
    assert len(fetch("smallnorb2019", data, base_url=base)) == 6
    assert check_data("smallnorb2019", data) == []
    assert len(SmallNORBDataModule(data_dir=str(data / "smallnorb"), batch_size=2).test_dataset) == 6
    monkeypatch.setattr(fetch_module, "_NORB_SIZES", {k: v + 1 for k, v in sizes.items()})
    with pytest.raises(FetchError, match="decompresses to .* bytes"):
        fetch("smallnorb2019", tmp_path / "other", base_url=base)
    assert not list((tmp_path / "other").rglob("*.gz"))


def test_imagenet_is_manual_with_the_exact_layout(tmp_path):
    with pytest.raises(
        FetchError, match=r"<DATA_DIR>/imagenet/train/<wnid>/\*\.JPEG .* <DATA_DIR>/imagenet/val/<wnid>"
    ):
        fetch("imagenet1k", tmp_path)
    with pytest.raises(KeyError, match="no data source"):
        fetch("mnist", tmp_path)


def test_unreachable_source_is_a_fetch_error(tmp_path):
    with pytest.raises(FetchError, match=r"download of http://127\.0\.0\.1:9/.* failed"):
        fetch("imdb", tmp_path, base_url="http://127.0.0.1:9")


def test_runner_fetches_only_when_online(tmp_path, monkeypatch, capsys):
    from heinsen_zoo.reproduction import runner

    calls = []
    monkeypatch.setattr(fetch_module, "fetch", lambda row, data_dir: calls.append(row) or [])
    runner.fetch_missing(["cifar10"], tmp_path, offline=True)
    assert calls == [] and "offline: nothing fetched" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner.fetch_missing(["cifar10"], tmp_path, offline=False)
    assert calls == []
    monkeypatch.setattr("heinsen_zoo.backbones.is_offline", lambda *a: False)
    runner.fetch_missing(["cifar10", "sst5"], tmp_path, offline=False)
    assert calls == ["cifar10", "sst5"]
