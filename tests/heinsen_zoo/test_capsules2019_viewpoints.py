"""Pose-trajectory plot: classical MDS, trajectory selection, PNG from the function and from the command."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from heinsen_zoo.capsules2019 import SmallNORBClassifier
from heinsen_zoo.capsules2019_viewpoints import (
    classical_mds,
    main,
    plot_pose_trajectories,
    select_trajectories,
)
from heinsen_zoo.data.smallnorb import load_smallnorb_split, write_tiny_smallnorb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _published_file() -> Path:
    shared = os.environ.get("HEINSEN_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / ".." / "shared"
    return base / "checkpoints" / "heinsen2019" / "smallNORB_pretrained_model_state_dict.pt"


def _check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000
    pixels = matplotlib.image.imread(path)  # [H, W, 4] floats in [0, 1]
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.shape[2] in (3, 4)
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_classical_mds_preserves_distances() -> None:
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(12, 2))  # a 2-D configuration ...
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    points = np.pad(flat, ((0, 0), (0, 4))) @ rotation + 3.0  # ... rotated and shifted in 6-D
    coords = classical_mds(points)
    assert coords.shape == (12, 2)

    def distances(x: np.ndarray) -> np.ndarray:
        return np.linalg.norm(x[:, None] - x[None], axis=-1)

    np.testing.assert_allclose(distances(coords), distances(flat), atol=1e-9)
    np.testing.assert_allclose(coords.mean(0), 0.0, atol=1e-9)  # centred
    assert classical_mds(np.ones((1, 16))).shape == (1, 2)
    with pytest.raises(ValueError, match="points: expected a non-empty array"):
        classical_mds(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="finite"):
        classical_mds(np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_select_trajectories() -> None:
    # category, instance, elevation, azimuth, lighting
    meta = np.array([
        [0, 4, 0, 4, 0], [0, 4, 0, 0, 0], [0, 4, 0, 2, 0],            # one azimuth trajectory (unsorted)
        [0, 4, 1, 0, 0], [0, 4, 2, 0, 0],                            # with row 1: an elevation trajectory
        [1, 6, 0, 0, 0], [1, 6, 0, 2, 0],                            # too short
        [2, 7, 0, 0, 3], [2, 7, 0, 2, 3], [2, 7, 0, 6, 3], [2, 7, 0, 8, 3],
    ])  # fmt: skip
    assert [t.tolist() for t in select_trajectories(meta, "azimuth")] == [[1, 2, 0], [7, 8, 9, 10]]
    assert [t.tolist() for t in select_trajectories(meta, "elevation")] == [[1, 3, 4]]
    assert [t.tolist() for t in select_trajectories(meta, "azimuth", min_length=2)][1] == [5, 6]
    with pytest.raises(ValueError, match="vary"):
        select_trajectories(meta, "lighting")
    with pytest.raises(ValueError, match=r"meta: expected shape \[N, 5\]"):
        select_trajectories(meta[:, :4])


def test_plot_from_arrays_varying_elevation(tmp_path: Path) -> None:
    write_tiny_smallnorb(tmp_path, n_train=0, n_test=10, seed=0)
    images, labels, meta = load_smallnorb_split(tmp_path, "test")
    meta = meta.copy()
    meta[:, 2] = np.arange(10) // 5  # rows k and k+5: same object, elevations 0 and 1 ...
    meta[:, 3] = 0
    images = np.concatenate([images, images[:5]])  # ... plus a third elevation of the same objects
    labels = np.concatenate([labels, labels[:5]])
    meta = np.concatenate([meta, meta[:5] + np.array([0, 0, 2, 0, 0])])
    torch.manual_seed(0)
    model = SmallNORBClassifier(n_parts=4, d_chns=8)
    summary = plot_pose_trajectories(
        model, {"image": images, "label": labels, "meta": meta}, vary="elevation", out_png=tmp_path / "sub" / "e.png"
    )
    assert summary["n_trajectories"] == 5 and not model.training
    assert summary["trajectories"][0]["degrees"] == [30.0, 35.0, 40.0]
    assert summary["trajectories"][0]["category"] == "animal"
    _check_png(tmp_path / "sub" / "e.png")
    with pytest.raises(ValueError, match="no group of at least 3 samples"):
        plot_pose_trajectories(model, (images[:10], labels[:10], meta[:10]), vary="azimuth", out_png=tmp_path / "x.png")


@pytest.mark.skipif(not _published_file().is_file(), reason="published smallNORB weights not found (HEINSEN_SHARED)")
def test_command_with_published_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tiny_smallnorb(tmp_path / "norb", n_train=0, n_test=10, seed=0, compress=True)
    out = tmp_path / "pose.png"
    summary = main([
        "--data-dir", str(tmp_path / "norb"), "--weights", str(_published_file()), "--out", str(out),
        "--vary", "azimuth", "--batch-size", "2", "--min-length", "2",
    ])  # fmt: skip
    assert '"n_trajectories": 5' in capsys.readouterr().out
    assert summary["n_trajectories"] == 5
    assert [t["degrees"] for t in summary["trajectories"]] == [[0.0, 20.0]] * 5
    assert all(0 <= p < 5 for t in summary["trajectories"] for p in t["predicted"])
    _check_png(out)
