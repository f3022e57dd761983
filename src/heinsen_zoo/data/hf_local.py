"""Open a Hugging Face dataset stored locally: a ``save_to_disk`` folder or the hub's parquet files.

Never downloads: both forms are read from ``data_dir`` only. Recognised layouts:

* ``<data_dir>/dataset_dict.json`` (+ one folder per split), written by ``DatasetDict.save_to_disk``;
* ``<data_dir>/**/<split>-*.parquet`` (e.g. the hub's ``plain_text/train-00000-of-00001.parquet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["HF_LAYOUT", "has_hf_dataset", "load_hf_splits"]

HF_LAYOUT = (
    "a datasets.DatasetDict.save_to_disk folder (<data_dir>/dataset_dict.json) or parquet files "
    "<data_dir>/**/<split>-*.parquet"
)


def _parquet_files(data_dir: Path, split: str) -> list[Path]:
    return sorted(data_dir.rglob(f"{split}-*.parquet"))


def has_hf_dataset(data_dir: Path) -> bool:
    """True when ``data_dir`` holds a save_to_disk DatasetDict or ``train-*.parquet`` files."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return False
    return (data_dir / "dataset_dict.json").is_file() or bool(_parquet_files(data_dir, "train"))


def load_hf_splits(data_dir: Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` for the requested splits found in ``data_dir`` (missing splits omitted).

    Example (with a folder written by ``DatasetDict.save_to_disk``):
        >>> import datasets, tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1]})}).save_to_disk(root)
        >>> list(load_hf_splits(root)["train"]["x"])
        [1]
    """
    import datasets  # heavy import, only when a HF layout is used

    data_dir = Path(data_dir)
    if (data_dir / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(data_dir))
        if not isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{data_dir}: expected a DatasetDict with splits {splits}, got {type(loaded).__name__}")
        return {split: loaded[split] for split in splits if split in loaded}
    found = {split: _parquet_files(data_dir, split) for split in splits}
    found = {split: files for split, files in found.items() if files}
    if not found:
        raise FileNotFoundError(f"data_dir: no Hugging Face dataset at {str(data_dir)!r}; expected {HF_LAYOUT}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Read the tables directly (no cache folder is written); the features (ClassLabel names, Image) come
    # from the "huggingface" metadata the hub stores in each parquet schema.
    return {
        split: datasets.Dataset(pa.concat_tables([pq.read_table(str(f)) for f in files]))
        for split, files in found.items()
    }
