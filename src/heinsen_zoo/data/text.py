"""Text classification DataModules of the 2022 paper: IMDB (binary sentiment) and SST-5 / SST-2.

Batches: ``{"text": list[str], "label": LongTensor [B], "index": LongTensor [B]}``. Nothing is downloaded.

* IMDB: the original ``aclImdb`` folder (``train/{neg,pos}/*.txt``, ``test/{neg,pos}/*.txt``; ``unsup`` is
  ignored) or a local Hugging Face copy of the ``imdb`` dataset (``save_to_disk`` folder or its parquet files,
  columns ``text``/``label``). ``<br />`` tags become newlines (SPEC §5). Labels: 0 = neg, 1 = pos.
* SST: the PTB-tree text form (``trees/train.txt``, ``trees/dev.txt``, ``trees/test.txt``). Train on every
  subtree (phrase) of the training trees; validate on the dev root sentences, test/predict on the test root
  sentences. Texts are detokenised (:func:`~heinsen_zoo.data.ptb_trees.detokenize`); training phrases are
  deduplicated (majority label per text, ties -> the label seen first; done on the 5-class labels, before
  the SST-2 mapping). SST-2 drops neutral (2) and maps 0, 1 -> 0 and 3, 4 -> 1. Dev/test root sentences are
  kept as they are (``dedup_eval=True`` deduplicates them too), so their counts match the published splits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from heinsen_zoo.labels import IMDB_LABELS

from .base import (
    TextDataset,
    ZooDataModule,
    check_labels,
    missing_data_error,
    seeded_order,
    split_source_with_carved_val,
    stratified_split,
)
from .hf_local import HF_LAYOUT, has_hf_dataset, load_hf_splits
from .ptb_trees import SST2_LABELS, SST5_LABELS, dedup_majority, detokenize, read_tree_file, to_sst2

__all__ = ["IMDB_LABELS", "IMDBDataModule", "SSTDataModule", "clean_imdb_text"]

_BR = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)


def clean_imdb_text(text: str) -> str:
    """Replace the HTML line breaks of IMDB reviews (``<br />``, also ``<br/>``, ``<br>``) by newlines.

    Example:
        >>> clean_imdb_text("Great.<br /><br />Loved it.")
        'Great.\\n\\nLoved it.'
    """
    return _BR.sub("\n", text)


def _check_max_per_class(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"max_per_class must be a positive int or None, got {value!r}")
    return value


def _check_fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {value!r}")
    return float(value)


class IMDBDataModule(ZooDataModule):
    """IMDB movie reviews (25k train, 25k test), binary sentiment.

    Args:
        data_dir: the ``aclImdb`` folder or its parent, or a local Hugging Face ``imdb`` copy
            (save_to_disk folder or parquet files).
        val_fraction: 0 (default, the paper reports test accuracy): validate on the test split;
            > 0: hold out this seeded, stratified share of train.
        max_per_class: keep at most this many reviews per class in every split (seeded subset), for tiny runs.
        **loader: the loader arguments (batch_size, num_workers, pin_memory, persistent_workers,
            steps_per_epoch, seed, eval_batch_size) of :class:`~heinsen_zoo.data.base.ZooDataModule`
            (the paper: batch 5, 10000 steps per epoch).

    Example (a tiny folder written by :func:`heinsen_zoo.data.synthetic.write_imdb`):
        >>> import tempfile
        >>> from heinsen_zoo.data.synthetic import write_imdb
        >>> dm = IMDBDataModule(write_imdb(tempfile.mkdtemp(), n_per_class=3), batch_size=2)
        >>> dm.labels, len(dm.train_dataset), "<br />" in dm.train_dataset[0]["text"]
        (['neg', 'pos'], 6, False)
    """

    default_batch_size = 5

    def __init__(
        self,
        data_dir: str | Path,
        val_fraction: float = 0.0,
        max_per_class: int | None = None,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.val_fraction = _check_fraction(val_fraction)
        self.max_per_class = _check_max_per_class(max_per_class)
        self._splits: dict[str, tuple[list[str], list[str], list[int]]] | None = None

    @property
    def labels(self) -> list[str]:
        return list(IMDB_LABELS)

    def _expected(self) -> str:
        return (
            f"{self.data_dir}/aclImdb/{{train,test}}/{{neg,pos}}/*.txt (or data_dir = the aclImdb folder), "
            f"or " + HF_LAYOUT + " with train/test splits and columns text, label"
        )

    def _read_acl(self, root: Path, split: str) -> tuple[list[str], list[str], list[int]]:
        ids: list[str] = []
        texts: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(IMDB_LABELS):
            folder = root / split / name
            files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
            if not files:
                raise missing_data_error("data_dir", folder, self._expected())
            for path in files:
                ids.append(f"{split}/{name}/{path.name}")
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
                labels.append(label)
        return ids, texts, labels

    def _read(self) -> dict[str, tuple[list[str], list[str], list[int]]]:
        if self._splits is not None:
            return self._splits
        acl = next(
            (c for c in (self.data_dir / "aclImdb", self.data_dir) if (c / "train" / "pos").is_dir()), None
        )
        raw: dict[str, tuple[list[str], list[str], list[int]]] = {}
        if acl is not None:
            for split in ("train", "test"):
                raw[split] = self._read_acl(acl, split)
        elif has_hf_dataset(self.data_dir):
            splits = load_hf_splits(self.data_dir, ("train", "test"))
            for split in ("train", "test"):
                if split not in splits:
                    raise missing_data_error(
                        "data_dir", self.data_dir, self._expected() + f" (no {split} split)"
                    )
                columns = splits[split].column_names
                if "text" not in columns or "label" not in columns:
                    raise ValueError(
                        f"{self.data_dir}: HF imdb split {split!r} needs columns text, label; "
                        f"it has {columns}"
                    )
                texts = list(splits[split]["text"])
                labels = [int(v) for v in splits[split]["label"]]
                raw[split] = ([f"{split}/{i:06d}" for i in range(len(texts))], texts, labels)
        else:
            raise missing_data_error("data_dir", self.data_dir, self._expected())
        out = {}
        for split, (ids, texts, labels) in raw.items():
            check_labels(f"imdb {split}", labels, 2)
            if self.max_per_class is not None:
                keep: list[int] = []
                for label in (0, 1):
                    members = [i for i, y in enumerate(labels) if y == label]
                    ordered = seeded_order([ids[i] for i in members], self.seed)
                    keep.extend(members[i] for i in ordered[: self.max_per_class])
                keep.sort()
                ids, texts, labels = (
                    [ids[i] for i in keep],
                    [texts[i] for i in keep],
                    [labels[i] for i in keep],
                )
            out[split] = (ids, [clean_imdb_text(t) for t in texts], labels)
        self._splits = out
        return out

    def split_source(self, split: str) -> str:
        """val -> test unless ``val_fraction > 0``; predict -> test (shared dataset objects)."""
        return split_source_with_carved_val(split, self.val_fraction)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "text", "dataset": "imdb", "replace": {"<br />": "\n"}}

    def _build_split(self, split: str) -> TextDataset:
        raw = self._read()
        if split in ("train", "val"):
            ids, texts, labels = raw["train"]
            train_rows, val_rows = stratified_split(ids, labels, self.val_fraction, self.seed)
            rows = train_rows if split == "train" else val_rows
            return TextDataset([texts[i] for i in rows], [labels[i] for i in rows], [ids[i] for i in rows])
        ids, texts, labels = raw["test"]
        return TextDataset(texts, labels, ids)


class SSTDataModule(ZooDataModule):
    """Stanford Sentiment Treebank, 5 classes (SST-5) or binary (SST-2), from the PTB trees.

    Args:
        data_dir: folder with ``trees/{train,dev,test}.txt``, or the ``trees`` folder itself.
        n_classes: 5 (very negative .. very positive) or 2 (negative, positive; neutral dropped).
        train_phrases: True (the paper): train on all subtrees; False: root sentences only.
        dedup_eval: also deduplicate the dev/test root sentences (default False: keep the published counts).
        **loader: the loader arguments (batch_size, num_workers, pin_memory, persistent_workers,
            steps_per_epoch, seed, eval_batch_size) of :class:`~heinsen_zoo.data.base.ZooDataModule`
            (the paper: batch 50, 2000 steps per epoch).

    Example (tiny trees written by :func:`heinsen_zoo.data.synthetic.write_sst_trees`):
        >>> import tempfile
        >>> from heinsen_zoo.data.synthetic import write_sst_trees
        >>> root = write_sst_trees(tempfile.mkdtemp(), n_train=4, n_dev=2, n_test=2)
        >>> dm = SSTDataModule(root, n_classes=2, batch_size=4)
        >>> dm.labels, len(dm.val_dataset) <= 2
        (['negative', 'positive'], True)
    """

    default_batch_size = 50

    def __init__(
        self,
        data_dir: str | Path,
        n_classes: int = 5,
        train_phrases: bool = True,
        dedup_eval: bool = False,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.save_hyperparameters()
        if n_classes not in (5, 2) or isinstance(n_classes, bool):
            raise ValueError(f"n_classes must be 5 (SST-5) or 2 (SST-2), got {n_classes!r}")
        self.data_dir = Path(data_dir)
        self.n_classes = n_classes
        self.train_phrases = bool(train_phrases)
        self.dedup_eval = bool(dedup_eval)

    @property
    def labels(self) -> list[str]:
        return list(SST5_LABELS if self.n_classes == 5 else SST2_LABELS)

    def _tree_file(self, name: str) -> Path:
        for folder in (self.data_dir / "trees", self.data_dir):
            if (folder / name).is_file():
                return folder / name
        raise missing_data_error(
            "data_dir",
            self.data_dir,
            f"{self.data_dir}/trees/{{train,dev,test}}.txt (PTB trees, one per line; or data_dir = the trees "
            f"folder); {name} not found",
        )

    def _examples(self, file_name: str, phrases: bool, dedup: bool) -> tuple[list[str], list[int], list[str]]:
        path = self._tree_file(file_name)
        trees = read_tree_file(path)  # names the file and line of bad bytes or trees
        if not trees:
            raise ValueError(f"{path}: no trees")
        texts: list[str] = []
        labels: list[int] = []
        ids: list[str] = []
        for number, tree in enumerate(trees, 1):
            tokens = tree.leaves()
            for node, start, stop in tree.spans() if phrases else ((tree, 0, len(tokens)),):
                texts.append(detokenize(tokens[start:stop]))
                labels.append(node.label)
                ids.append(f"{file_name}:{number}")
        if dedup:
            first_id = {}
            for text, tree_id in zip(texts, ids, strict=True):
                first_id.setdefault(text, tree_id)
            texts, labels = dedup_majority(texts, labels)
            ids = [first_id[text] for text in texts]
        if phrases:  # several phrases per tree: make ids unique by position
            ids = [f"{tree_id}#{position}" for position, tree_id in enumerate(ids)]
        if self.n_classes == 2:
            keep = [i for i, label in enumerate(labels) if to_sst2(label) is not None]
            texts, ids = [texts[i] for i in keep], [ids[i] for i in keep]
            labels = [int(to_sst2(labels[i])) for i in keep]
        return texts, labels, ids

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "text", "dataset": f"sst{self.n_classes}", "detokenize": "ptb"}

    def _build_split(self, split: str) -> TextDataset:
        if split == "train":
            examples = self._examples("train.txt", phrases=self.train_phrases, dedup=True)
        elif split == "val":
            examples = self._examples("dev.txt", phrases=False, dedup=self.dedup_eval)
        else:
            examples = self._examples("test.txt", phrases=False, dedup=self.dedup_eval)
        return TextDataset(*examples)
