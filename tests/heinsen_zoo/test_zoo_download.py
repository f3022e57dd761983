"""Published-weight downloads against a loopback HTTP server on 127.0.0.1 (never the internet).

The server serves a generated plain state_dict (the layout of the author's published heads); the tests
check the git blob id, atomic cache writes, the conversion to an export, strict loading, refusal of a
flipped byte and the offline message naming the URL.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from heinsen_zoo.heads import RoutingHead
from heinsen_zoo.zoo import download, hub, registry
from heinsen_zoo.zoo.errors import OfflineError

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}
NAME = "routing_tiny.loopback_test"
HEAD = {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def served(tmp_path):
    """(base_url, folder): a loopback HTTP server serving ``folder``."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def register_entry(weights: list | None = None) -> None:
    """The tiny test entry (d_depth 3, d_emb 16, 4 classes), optionally with weight sources."""
    entry = {
        "name": NAME,
        "architecture": "routing_head",
        "head": HEAD,
        "backbone": SPEC,
        "labels": list("abcd"),
    }
    registry.register_model({**entry, "weights": weights or []}, overwrite=True)


@pytest.fixture()
def entry(tmp_path, monkeypatch):
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "cache"))
    register_entry()
    yield registry.get_entry(NAME)
    registry._REGISTRY.pop(NAME, None)  # leave the registry as other tests expect it


def published_head(folder: Path, filename: str = "head.state_dict") -> tuple[Path, dict, str]:
    """A plain state_dict saved with torch.save, its tensors, and its git blob id."""
    torch.manual_seed(0)
    head = RoutingHead(**HEAD)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = folder / filename
    torch.save(head.state_dict(), path)
    return path, head.state_dict(), download.git_blob_id(path)


def test_git_blob_id_matches_git(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 10)
    try:
        expected = subprocess.run(
            ["git", "hash-object", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    assert download.git_blob_id(path) == expected


def test_fetch_published_downloads_verifies_converts(served, entry, tmp_path):
    base, folder = served
    path, state, blob = published_head(folder)
    export = download.fetch_published(f"{base}/{path.name}", blob, NAME, tmp_path / "cache", progress=False)
    config = json.loads((export / "config.json").read_text())
    assert config["converted_from"]["git_blob"] == blob
    assert config["converted_from"]["url"] == f"{base}/{path.name}"
    assert config["head"] == HEAD and config["backbone"]["id"] == "roberta-large"
    assert not list((tmp_path / "cache" / "downloads" / NAME).glob("*.part"))
    model = hub.load_export(export, entry=entry)  # strict
    for key, value in state.items():
        assert torch.equal(model.head.state_dict()[key], value), key
    # Second call: cached, no server needed.
    path.unlink()
    assert (
        download.fetch_published(f"{base}/{path.name}", blob, NAME, tmp_path / "cache", offline=True)
        == export
    )


def test_flipped_byte_is_refused_and_not_kept(served, entry, tmp_path):
    base, folder = served
    path, _, blob = published_head(folder)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(download.BlobMismatchError, match=f"published id is {blob}"):
        download.fetch_published(f"{base}/{path.name}", blob, NAME, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("head.state_dict*"))  # neither the file nor its .part
    assert not (tmp_path / "cache" / "exports" / NAME / blob[:12]).exists()


def test_offline_names_the_url(entry, tmp_path):
    url = "http://127.0.0.1:9/never/head.state_dict"
    with pytest.raises(OfflineError, match="downloads are disabled") as info:
        download.fetch_published(url, "0" * 40, NAME, tmp_path / "cache", offline=True)
    assert url in str(info.value)


def test_http_error_and_size_cap(served, tmp_path):
    base, folder = served
    with pytest.raises(download.DownloadError, match="404"):
        download.download_verified(f"{base}/missing.bin", tmp_path / "x.bin", None, progress=False)
    (folder / "big.bin").write_bytes(b"x" * 1000)
    with pytest.raises(download.DownloadError, match="exceeds the limit"):
        download.download_verified(f"{base}/big.bin", tmp_path / "y.bin", None, progress=False, max_bytes=100)
    assert not list(tmp_path.glob("y.bin*"))  # neither the file nor its .part


def test_changed_cache_file_is_refused(served, tmp_path):
    base, folder = served
    path, _, blob = published_head(folder)
    target = tmp_path / "dl" / path.name
    download.download_verified(f"{base}/{path.name}", target, blob, progress=False)
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(download.BlobMismatchError):
        download.download_verified(f"{base}/{path.name}", target, blob, progress=False)


# ------------------------------------------------------------------ create_model: registry URL sources, timm keywords


def register_url_entry(url: str, blob: str) -> None:
    register_entry([{"location": url, "git_blob": blob}])


def test_create_model_downloads_verifies_and_loads_strictly(served, entry, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HEINSEN_ZOO_OFFLINE", raising=False)
    base, folder = served
    path, state, blob = published_head(folder)
    register_url_entry(f"{base}/{path.name}", blob)
    model = registry.create_model(NAME, pretrained=True, local_files_only=False)
    for key, value in state.items():
        assert torch.equal(model.head.state_dict()[key], value), key
    assert model.pretrained_cfg["converted_from"]["git_blob"] == blob
    # Later loads: offline, from the cache, sha256 recorded on first use and verified.
    path.unlink()
    again = registry.create_model(NAME, pretrained=True, local_files_only=True)
    assert again.pretrained_cfg["weights_sha256"] == model.pretrained_cfg["weights_sha256"]


def test_create_model_refuses_a_flipped_byte(served, entry, tmp_path):
    base, folder = served
    path, _, blob = published_head(folder)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x80
    path.write_bytes(bytes(data))
    register_url_entry(f"{base}/{path.name}", blob)
    with pytest.raises(download.BlobMismatchError, match="nothing was loaded"):
        registry.create_model(NAME, pretrained=True, local_files_only=False)


def test_create_model_offline_names_the_url(entry):
    url = "http://127.0.0.1:9/heads/head.state_dict"
    register_url_entry(url, "1" * 40)
    with pytest.raises(OfflineError) as info:
        registry.create_model(NAME, pretrained=True, local_files_only=True)
    assert url in str(info.value) and "downloads are disabled" in str(info.value)


def test_published_2022_entries_carry_pinned_urls_and_blob_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HEINSEN_ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HEINSEN_2022_DIR", raising=False)
    names = registry.list_models("*_heinsen2022")
    assert len(names) == 6
    for name in names:
        (source,) = [s for s in registry.get_entry(name).weights if s.kind == "url"]
        assert source.location.startswith(
            "https://github.com/glassroom/heinsen_routing_2022_paper/raw/5fc88058d3a3d6e04e244451f5f056ee3255f76c/checkpoints/"
        )
        assert len(source.git_blob) == 40
    with pytest.raises(Exception) as info:  # offline in the test suite: nothing is downloaded
        registry.create_model(
            "routing_roberta_large.sst5r_heinsen2022", pretrained=True, local_files_only=True
        )
    assert "pretrained_sst5_head_for_roberta-large.state_dict" in str(info.value)
    assert "6233dd0c574a134202e5d80b6f6314836def1ed6" in str(info.value)


def test_checkpoint_path_and_pretrained_cfg_overlay(entry, tmp_path):
    path, state, _ = published_head(tmp_path)
    for kwargs in ({"checkpoint_path": path}, {"pretrained_cfg_overlay": {"file": str(path)}}):
        model = registry.create_model(NAME, pretrained=True, **kwargs)
        for key, value in state.items():
            assert torch.equal(model.head.state_dict()[key], value), (kwargs, key)
    export = hub.save_pretrained(model, tmp_path / "export")
    from_dir = registry.create_model(NAME, checkpoint_path=export)
    assert torch.equal(from_dir.head.W, model.head.W)
    with pytest.raises(download.ChecksumMismatchError):
        registry.create_model(NAME, pretrained_cfg_overlay={"file": str(path), "sha256": "0" * 64})
    with pytest.raises(TypeError, match="not supported"):
        registry.create_model(NAME, pretrained_cfg_overlay={"fiel": str(path)})
    with pytest.raises(ValueError, match="one weight location"):
        registry.create_model(NAME, checkpoint_path=path, pretrained_cfg_overlay={"file": str(path)})
    with pytest.raises(Exception, match="missing.pt"):
        registry.create_model(NAME, checkpoint_path=tmp_path / "missing.pt")
    # A fine-tuned checkpoint with another class count: the head is resized, the weights must fit.
    small = RoutingHead(**{**HEAD, "n_classes": 2}).state_dict()
    torch.save(small, tmp_path / "two.pt")
    two = registry.create_model(NAME, n_classes=2, labels=["x", "y"], checkpoint_path=tmp_path / "two.pt")
    assert two.head.n_classes == 2


def test_local_copy_of_a_published_file_is_checked_against_its_blob_id(entry, tmp_path):
    path, state, blob = published_head(tmp_path)
    register_entry([{"location": str(path), "git_blob": blob}])
    model = registry.create_model(NAME, pretrained=True)
    assert torch.equal(model.head.W, state["W"])
    data = bytearray(path.read_bytes())
    data[-50] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(download.BlobMismatchError, match="not the published file"):
        registry.create_model(NAME, pretrained=True)
    assert path.is_file()  # a user's own file is reported, never deleted
