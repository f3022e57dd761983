"""The demo's baselines: logistic regression on mean-pooled hidden states of the same frozen backbone.

Two feature sets, both read from the hidden-state cache the routing head trains on: the last layer's hidden
states averaged over each article's real tokens (``[d_emb]``), and every layer's average concatenated
(``[d_depth · d_emb]``). Features are standardised with the training split's statistics. The inverse
regularisation ``C`` is chosen on the validation split (highest accuracy; ties go to the smaller C, the
stronger regularisation); the test split is only scored, once, with the chosen model.

Example:
    >>> import torch
    >>> from heinsen_zoo.features import HiddenStatesDataset
    >>> g = torch.Generator().manual_seed(0)
    >>> def split(n):
    ...     labels = torch.arange(n) % 2
    ...     hidden = torch.randn(n * 3, 2, 4, generator=g) + labels.repeat_interleave(3)[:, None, None]
    ...     return HiddenStatesDataset(hidden, torch.arange(0, 3 * n + 1, 3), torch.arange(n), labels)
    >>> rows = fit_baselines({"train": split(20), "val": split(10), "test": split(10)}, c_grid=(0.1, 1.0))
    >>> [row.name for row in rows], rows[0].val_acc > 0.5
    (['logistic regression, mean-pooled last layer', 'logistic regression, mean-pooled all 2 layers concatenated'], True)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["C_GRID", "BaselineResult", "mean_pooled_features", "fit_baselines"]

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass
class BaselineResult:
    """One baseline row: its name, the chosen C, accuracies and the seconds spent (pooling + search + fit).

    ``test_acc`` and ``test_pred`` are None when the test split was not scored (``score_test=False``).
    """

    name: str
    c: float
    val_acc: float
    test_acc: float | None
    seconds: float
    test_pred: np.ndarray | None
    val_by_c: dict[float, float]


def mean_pooled_features(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, every layer's hidden states averaged over its real (unpadded) positions.

    Returns ``(features [n_samples, d_depth, d_emb] float32, labels [n_samples] int64)``.
    """
    feats, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        hidden = item["hidden"]  # [n_pos, d_depth, d_emb]
        pad = item.get("padding_mask")
        if pad is not None:
            hidden = hidden[~pad]
        if hidden.shape[0] == 0:
            raise ValueError(f"dataset: sample {i} has no unpadded position to average")
        feats.append(hidden.float().mean(0))  # [d_depth, d_emb]
        labels.append(int(item["label"]))
    return torch.stack(feats), torch.tensor(labels)


def _select_and_fit(
    name: str,
    x: Mapping[str, np.ndarray],
    y: Mapping[str, np.ndarray],
    c_grid: Sequence[float],
    seconds: float,
) -> BaselineResult:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    scaler = StandardScaler().fit(x["train"])
    xs = {split: scaler.transform(values) for split, values in x.items()}
    val_by_c: dict[float, float] = {}
    best = None
    for c in sorted(c_grid):
        clf = LogisticRegression(C=c, max_iter=3000).fit(xs["train"], y["train"])
        val_by_c[c] = float((clf.predict(xs["val"]) == y["val"]).mean())
        if best is None or val_by_c[c] > val_by_c[best[0]]:  # ties keep the smaller C
            best = (c, clf)
    c, clf = best
    pred = clf.predict(xs["test"]) if "test" in xs else None
    return BaselineResult(
        name,
        c,
        val_by_c[c],
        None if pred is None else float((pred == y["test"]).mean()),
        seconds + time.perf_counter() - start,
        pred,
        val_by_c,
    )


def fit_baselines(
    cached: Mapping[str, object], c_grid: Sequence[float] = C_GRID, *, score_test: bool = True
) -> list[BaselineResult]:
    """Both baselines on the cached ``train``/``val``/``test`` splits (C chosen on ``val``).

    With ``score_test=False`` only ``train`` and ``val`` are read (any ``test`` in ``cached`` is ignored) and
    the rows' test fields are None.
    """
    splits = ("train", "val", "test") if score_test else ("train", "val")
    missing = [split for split in splits if split not in cached]
    if missing:
        raise KeyError(
            f"cached: expected splits {', '.join(splits)}; missing {missing}, got {sorted(cached)}"
        )
    start = time.perf_counter()
    pooled = {split: mean_pooled_features(cached[split]) for split in splits}
    pool_seconds = time.perf_counter() - start  # shared by both rows
    y = {split: labels.numpy() for split, (_, labels) in pooled.items()}
    last = {split: feats[:, -1].numpy() for split, (feats, _) in pooled.items()}
    concat = {split: feats.flatten(1).numpy() for split, (feats, _) in pooled.items()}
    depth = pooled["train"][0].shape[1]
    return [
        _select_and_fit("logistic regression, mean-pooled last layer", last, y, c_grid, pool_seconds),
        _select_and_fit(
            f"logistic regression, mean-pooled all {depth} layers concatenated",
            concat,
            y,
            c_grid,
            pool_seconds,
        ),
    ]
