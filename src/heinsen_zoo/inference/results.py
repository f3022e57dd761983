"""Prediction results of :func:`heinsen_zoo.inference.predict` and their table / JSON renderings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Prediction:
    """The top-k classes of one input.

    Attributes:
        input_id: where the input came from (a file path, ``file[row]`` for NORB rows, ``text[3]: …`` for
            literal strings, ``tensor[0]`` / ``image[0]`` for in-memory inputs).
        top_k: ``(label, probability)`` pairs, most probable first.
        class_indices: the class index of each ``top_k`` entry.
        index: position of the input in the expanded input list.
        explanation: path of the credit-assignment PNG (with ``explain_dir``), else None.
    """

    input_id: str
    top_k: list[tuple[str, float]]
    class_indices: list[int]
    index: int
    explanation: str | None = None
    note: str | None = None  # e.g. how a long text was truncated

    @property
    def label(self) -> str:
        """The predicted (top-1) label."""
        return self.top_k[0][0]

    @property
    def probability(self) -> float:
        """The probability of the predicted label."""
        return self.top_k[0][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: ``input``, ``index``, ``top_k`` (label, class_index, probability), ``explanation``."""
        return {
            "input": self.input_id,
            "index": self.index,
            "top_k": [
                {"label": label, "class_index": k, "probability": prob}
                for (label, prob), k in zip(self.top_k, self.class_indices, strict=True)
            ],
            "explanation": self.explanation,
            "note": self.note,
        }


def format_json(predictions: Sequence[Prediction], indent: int | None = 2) -> str:
    """A JSON list with one object per prediction (see :meth:`Prediction.to_dict`)."""
    return json.dumps([p.to_dict() for p in predictions], indent=indent, ensure_ascii=False)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _shorten_id(input_id: str, width: int) -> str:
    """Texts keep their start; file ids keep their end (the file name)."""
    if input_id.startswith("text[") or len(input_id) <= width:
        return _shorten(input_id, width)
    return "…" + input_id[-(width - 1) :]


def format_table(predictions: Sequence[Prediction], input_width: int = 48) -> str:
    """A plain-text table: one row per input, one column per rank (``label probability%``)."""
    if not predictions:
        return "(no inputs)"
    k = max(len(p.top_k) for p in predictions)
    rows = [["#", "input", *[f"top-{r + 1}" for r in range(k)]]]
    for p in predictions:
        cells = [f"{label} {prob:.1%}" for label, prob in p.top_k]
        rows.append([str(p.index), _shorten_id(p.input_id, input_width), *cells, *[""] * (k - len(cells))])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    explained = [p for p in predictions if p.explanation]
    if explained:
        lines.append(
            f"credit assignment written for {len(explained)} input(s) to {Path(explained[0].explanation).parent}"
        )
    return "\n".join(lines)
