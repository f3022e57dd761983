"""Pose-trajectory plot of the 2019 paper: how the class capsule's pose moves as the viewpoint changes.

For smallNORB objects seen under views that differ in one viewpoint variable only (azimuth or elevation; same
category, instance, lighting and other variable), the 4×4 pose ``mu_out`` of the capsule of the object's
class is collected, projected to 2-D with classical multidimensional scaling (MDS, computed with numpy:
eigendecomposition of the double-centred squared-distance matrix), and drawn as one trajectory per object,
coloured by the varied angle, one panel per category. Smooth, ordered trajectories mean the pose tracks the
viewpoint.

Command::

    python -m heinsen_zoo.capsules2019_viewpoints --data-dir data/smallnorb --weights smallNORB \\
        --vary azimuth --out pose_azimuth.png

Example:
    >>> import numpy as np
    >>> points = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    >>> coords = classical_mds(points)
    >>> round(float(np.linalg.norm(coords[1] - coords[2])), 6)   # distances are preserved
    5.0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["class_poses", "classical_mds", "main", "plot_pose_trajectories", "select_trajectories"]

META_FIELDS = ("category", "instance", "elevation", "azimuth", "lighting")
CATEGORY_NAMES = ("animal", "human", "airplane", "truck", "car")
VARY_CHOICES = ("azimuth", "elevation")


def _degrees(vary: str, values: np.ndarray) -> np.ndarray:
    """File values → degrees: azimuth 0, 2, ..., 34 → 0°..340°; elevation 0..8 → 30°..70°."""
    return values * 10.0 if vary == "azimuth" else 30.0 + 5.0 * values


def classical_mds(points: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS of ``points`` ``[n, d]`` → ``[n, n_components]`` coordinates.

    ``B = -½ J D² J`` with ``D²`` the squared Euclidean distances and ``J = I - 1/n``; the coordinates are the
    top eigenvectors of ``B`` scaled by the square roots of their (non-negative) eigenvalues. For Euclidean
    inputs this reproduces the pairwise distances exactly when ``n_components`` spans the data.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points: expected a non-empty array of shape [n, d], got {list(points.shape)}")
    if not np.isfinite(points).all():
        raise ValueError("points: expected finite values")
    n = points.shape[0]
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)  # [n, n]
    centring = np.eye(n) - np.full((n, n), 1.0 / n)
    gram = -0.5 * centring @ squared @ centring  # [n, n], symmetric
    eigenvalues, eigenvectors = np.linalg.eigh((gram + gram.T) / 2)  # ascending
    order = np.argsort(eigenvalues)[::-1][:n_components]
    scale = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
    coords = eigenvectors[:, order] * scale  # [n, k]
    if coords.shape[1] < n_components:  # fewer points than components
        coords = np.pad(coords, ((0, 0), (0, n_components - coords.shape[1])))
    return coords


def select_trajectories(
    meta: np.ndarray, vary: str = "azimuth", max_per_category: int = 2, min_length: int = 3
) -> list[np.ndarray]:
    """Groups of sample indices that differ only in ``vary``, each sorted by it (one trajectory per group).

    Per category, the longest groups first (ties: lowest instance/elevation/azimuth/lighting), at most
    ``max_per_category``; groups with fewer than ``min_length`` distinct values of ``vary`` are dropped.
    ``meta`` is ``[N, 5]`` with columns category, instance, elevation, azimuth, lighting.
    """
    if vary not in VARY_CHOICES:
        raise ValueError(f"vary: expected one of {VARY_CHOICES}, got {vary!r}")
    meta = np.asarray(meta)
    if meta.ndim != 2 or meta.shape[1] != len(META_FIELDS):
        raise ValueError(f"meta: expected shape [N, 5] (columns {META_FIELDS}), got {list(meta.shape)}")
    column = META_FIELDS.index(vary)
    fixed = [c for c in range(len(META_FIELDS)) if c != column]
    groups: dict[tuple[int, ...], dict[int, int]] = {}
    for index, row in enumerate(meta.tolist()):
        groups.setdefault(tuple(row[c] for c in fixed), {}).setdefault(
            row[column], index
        )  # first of duplicates
    by_category: dict[int, list[tuple[int, tuple[int, ...], np.ndarray]]] = {}
    for key, members in groups.items():
        if len(members) >= min_length:
            indices = np.array([members[v] for v in sorted(members)], dtype=np.int64)
            by_category.setdefault(key[0], []).append((-len(members), key, indices))
    selected = []
    for category in sorted(by_category):
        selected += [
            indices for _, _, indices in sorted(by_category[category], key=lambda t: t[:2])[:max_per_category]
        ]
    return selected


@torch.no_grad()
def class_poses(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    batch_size: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Poses ``mu_out`` of each image's class capsule, flattened: ``([N, 16] float64, predicted class [N])``.

    ``images``: ``[N, 2, 96, 96]`` uint8 (divided by 255) or float; the model runs in eval mode on its device.
    """
    model.eval()
    param = next(model.parameters())
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    poses, predictions = [], []
    for start in range(0, len(labels), batch_size):
        batch = torch.as_tensor(np.asarray(images[start : start + batch_size]))
        batch = batch.to(param.dtype) / 255.0 if batch.dtype == torch.uint8 else batch.to(param.dtype)
        a_out, mu_out, _ = model(batch.to(param.device))  # [b, n_objs], [b, n_objs, 4, 4]
        rows = torch.arange(len(batch), device=param.device)
        poses.append(
            mu_out[rows, labels[start : start + batch_size].to(param.device)].flatten(1).double().cpu()
        )
        predictions.append(a_out.argmax(-1).cpu())
    if not poses:
        return np.zeros((0, 16)), np.zeros((0,), dtype=np.int64)
    return torch.cat(poses).numpy(), torch.cat(predictions).numpy()


def _arrays(data: Any, split: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """(images, labels, meta) from a SmallNORBDataModule, a (images, labels, meta) tuple or a dict."""
    if hasattr(data, "arrays"):
        return data.arrays(split)
    if isinstance(data, Mapping):
        missing = [k for k in ("image", "label", "meta") if k not in data]
        if missing:
            raise KeyError(f"data: missing key(s) {missing}; expected 'image', 'label' and 'meta'")
        return data["image"], np.asarray(data["label"]), np.asarray(data["meta"])
    if isinstance(data, Sequence) and len(data) == 3:
        images, labels, meta = data
        return images, np.asarray(labels), np.asarray(meta)
    raise TypeError(
        "data: expected a SmallNORBDataModule, a (images, labels, meta) tuple or a dict with keys "
        f"'image', 'label', 'meta'; got {type(data).__name__}"
    )


def plot_pose_trajectories(
    model: nn.Module,
    data: Any,
    vary: str = "azimuth",
    out_png: str | Path = "pose_trajectories.png",
    split: str = "test",
    max_per_category: int = 2,
    min_length: int = 3,
    batch_size: int = 20,
) -> dict[str, Any]:
    """Draw the pose trajectories (see the module docstring) to ``out_png``; returns a summary dict.

    Args:
        model: a :class:`~heinsen_zoo.capsules2019.SmallNORBClassifier` (e.g. ``create_model("capsules_smallnorb.heinsen2019")``).
        data: a :class:`~heinsen_zoo.data.smallnorb.SmallNORBDataModule` (its ``split`` files are read), a tuple
            ``(images [N, 2, 96, 96], labels [N], meta [N, 5])`` or a dict with keys ``image``, ``label``, ``meta``.
        vary: the viewpoint variable along each trajectory: "azimuth" or "elevation".
        out_png: output path (parent folders are created).
        split: "test" or "train" (data modules only).
        max_per_category, min_length: see :func:`select_trajectories`.
        batch_size: images per forward pass.

    Returns:
        ``{"out_png", "vary", "n_trajectories", "trajectories": [{"category", "indices", "degrees",
        "predicted"}...]}``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images, labels, meta = _arrays(data, split)
    if not (len(images) == len(labels) == len(meta)):
        raise ValueError(
            f"data: images ({len(images)}), labels ({len(labels)}) and meta ({len(meta)}) differ in length"
        )
    trajectories = select_trajectories(meta, vary, max_per_category, min_length)
    if not trajectories:
        raise ValueError(
            f"data: no group of at least {min_length} samples that differ only in {vary} (same category, instance, "
            "lighting and other angle); pass more views of the same objects"
        )
    flat = np.concatenate(trajectories)
    poses, predicted = class_poses(
        model,
        images[flat] if isinstance(images, np.ndarray) else images[torch.as_tensor(flat)],
        labels[flat],
        batch_size,
    )
    column = META_FIELDS.index(vary)
    categories = sorted({int(meta[t[0], 0]) for t in trajectories})
    n_cols = min(3, len(categories))
    n_rows = -(-len(categories) // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.0 * n_cols + 1.0, 3.8 * n_rows + 0.6), squeeze=False, layout="constrained"
    )
    panels = axes.ravel()
    for ax in panels[len(categories) :]:
        ax.set_axis_off()
    cmap = plt.get_cmap("twilight" if vary == "azimuth" else "viridis")
    vmin, vmax = (0.0, 360.0) if vary == "azimuth" else (30.0, 70.0)
    summary: list[dict[str, Any]] = []
    offsets = np.cumsum([0] + [len(t) for t in trajectories])
    scatter = None
    for ax, category in zip(panels, categories, strict=False):
        members = [k for k, t in enumerate(trajectories) if int(meta[t[0], 0]) == category]
        rows = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in members])
        coords = dict(zip(rows.tolist(), classical_mds(poses[rows]), strict=True))
        for k in members:
            indices = trajectories[k]
            xy = np.stack([coords[r] for r in range(offsets[k], offsets[k + 1])])  # [length, 2]
            degrees = _degrees(vary, meta[indices, column].astype(np.float64))
            ax.plot(xy[:, 0], xy[:, 1], "-", color="0.6", lw=1, zorder=1)
            scatter = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=degrees,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                s=28,
                zorder=2,
                edgecolors="k",
                linewidths=0.3,
            )
            ax.annotate(
                f"inst {int(meta[indices[0], 1])}",
                xy[0],
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
            summary.append(
                {
                    "category": CATEGORY_NAMES[category] if category < len(CATEGORY_NAMES) else str(category),
                    "indices": indices.tolist(),
                    "degrees": degrees.tolist(),
                    "predicted": predicted[offsets[k] : offsets[k + 1]].tolist(),
                }
            )
        name = CATEGORY_NAMES[category] if category < len(CATEGORY_NAMES) else str(category)
        ax.set_title(f"{name}: class-capsule pose (MDS)", fontsize=10)
        ax.set_xlabel("MDS 1")
        ax.set_ylabel("MDS 2")
        ax.set_aspect("equal", adjustable="datalim")
    fig.colorbar(scatter, ax=panels[: len(categories)].tolist(), label=f"{vary} (degrees)", shrink=0.8)
    fig.suptitle(f"Pose trajectories as {vary} changes (other viewpoint variables fixed)", fontsize=11)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return {
        "out_png": str(out_png),
        "vary": vary,
        "n_trajectories": len(trajectories),
        "trajectories": summary,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry: read smallNORB files, load weights, write the PNG, print a JSON summary."""
    parser = argparse.ArgumentParser(
        prog="python -m heinsen_zoo.capsules2019_viewpoints",
        description="Plot MDS trajectories of the class capsule's pose as azimuth or elevation changes.",
    )
    parser.add_argument("--data-dir", required=True, help="folder with the smallNORB .mat(.gz) files")
    parser.add_argument(
        "--weights",
        default="smallNORB",
        help="published name (smallNORB) or path to a SmallNORBClassifier state dict",
    )
    parser.add_argument("--out", default="pose_trajectories.png", help="output PNG path")
    parser.add_argument("--vary", choices=VARY_CHOICES, default="azimuth")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--max-per-category", type=int, default=2)
    parser.add_argument("--min-length", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from heinsen_zoo.capsules2019 import PUBLISHED_ENTRIES, SmallNORBClassifier
    from heinsen_zoo.data.smallnorb import SmallNORBDataModule
    from heinsen_zoo.zoo.registry import create_model

    if args.weights in PUBLISHED_ENTRIES:
        model = create_model(PUBLISHED_ENTRIES[args.weights])
    else:  # a state-dict file of the published architecture
        model = create_model(PUBLISHED_ENTRIES["smallNORB"], checkpoint_path=args.weights)
    if not isinstance(model, SmallNORBClassifier):
        parser.error(f"--weights: expected SmallNORBClassifier weights, got {type(model).__name__}")
    model = model.to(args.device)
    datamodule = SmallNORBDataModule(args.data_dir)
    summary = plot_pose_trajectories(
        model,
        datamodule,
        vary=args.vary,
        out_png=args.out,
        split=args.split,
        max_per_category=args.max_per_category,
        min_length=args.min_length,
        batch_size=args.batch_size,
    )
    print(json.dumps({k: summary[k] for k in ("out_png", "vary", "n_trajectories")}))
    return summary


if __name__ == "__main__":
    main()
