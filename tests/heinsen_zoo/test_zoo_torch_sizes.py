"""Storage sizes a torch file declares are checked against the file before ``torch.load`` allocates them."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch

from heinsen_zoo.zoo.checkpoints import safe_torch_load
from heinsen_zoo.zoo.errors import CorruptFileError
from heinsen_zoo.zoo.torch_sizes import check_declared_storage, declared_storage_bytes

N = 777  # a length whose pickle (BININT2 0x0309) is easy to find: first in the storage's persistent id
BININT2_N = b"M\x09\x03"
HUGE = b"J\x00\x00\x00\x40"  # BININT 2**30 elements: 4 GiB of float32 declared


def _state() -> dict[str, torch.Tensor]:
    return {"W": torch.arange(N, dtype=torch.float32), "B": torch.ones(2, 3, dtype=torch.float64)}


def _legacy_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(_state(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _no_torch_load(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("legacy", [True, False])
def test_declared_bytes_of_real_files(tmp_path, legacy):
    path = tmp_path / "w.pt"
    torch.save(_state(), path, _use_new_zipfile_serialization=not legacy)
    expected = N * 4 + 6 * 8
    assert check_declared_storage(path) == expected
    loaded = safe_torch_load(path)
    assert torch.equal(loaded["W"], _state()["W"]) and torch.equal(loaded["B"], _state()["B"])


def test_shared_storage_counts_once():
    base = torch.zeros(10)
    buf = io.BytesIO()
    torch.save({"a": base, "view": base[2:5]}, buf, _use_new_zipfile_serialization=False)
    assert declared_storage_bytes(io.BytesIO(buf.getvalue())) == 40


def test_legacy_file_declaring_more_than_it_holds_is_refused_before_loading(tmp_path, monkeypatch):
    data = _legacy_bytes()
    assert data.count(BININT2_N) == 2  # the storage's numel, then the tensor's shape
    path = tmp_path / "crafted.pt"
    path.write_bytes(data.replace(BININT2_N, HUGE, 1))
    _no_torch_load(monkeypatch)
    with pytest.raises(CorruptFileError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert str(path) in message and f"declare {2**32 + 48} bytes" in message
    assert "refused before torch.load allocated anything" in message


def test_zip_file_declaring_more_than_its_record_is_refused(tmp_path, monkeypatch):
    good = tmp_path / "good.pt"
    torch.save(_state(), good)
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename.endswith("/data.pkl"):
                assert payload.count(BININT2_N) == 2
                payload = payload.replace(BININT2_N, HUGE, 1)
            dst.writestr(info, payload)
    _no_torch_load(monkeypatch)
    with pytest.raises(CorruptFileError, match=r"declares 4294967296 bytes, its record holds 3108") as info:
        safe_torch_load(crafted)
    assert str(crafted) in str(info.value)


def test_zip_storage_without_record_is_refused(tmp_path):
    good, crafted = tmp_path / "good.pt", tmp_path / "crafted.pt"
    torch.save({"W": torch.ones(3)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:  # drop every storage record
                dst.writestr(info, src.read(info))
    with pytest.raises(CorruptFileError, match="storage '0' has no data record"):
        check_declared_storage(crafted)


def test_neither_format_is_left_to_torch_load(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(b"\x80\x02K\x01.")  # pickle of the int 1: no magic number
    assert check_declared_storage(path) is None
    with pytest.raises(CorruptFileError, match="not a readable torch checkpoint"):
        safe_torch_load(path)


def test_the_2019_checkpoints_pass_the_check():
    shared = Path(os.environ.get("HEINSEN_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
    folder = shared / "checkpoints" / "heinsen2019"
    files = sorted(folder.glob("*.pt"))
    if not files:
        pytest.skip(f"no 2019 checkpoints in {folder}")
    for path in files:
        declared = check_declared_storage(path)
        assert declared is not None and 0 < declared <= path.stat().st_size
