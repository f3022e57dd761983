"""Tiny random stand-ins for the paper backbones, written offline in the Hugging Face local format.

Used by smoke reproductions (``make reproduce-* SMOKE=1``) and tests: same code path as the real
backbones (``source: hf`` with a ``local_path``), a thousand times smaller, random weights — so the numbers
they give check the chain and mean nothing else.

Example:
    >>> import tempfile
    >>> spec = write_tiny_backbone("beit", tempfile.mkdtemp())
    >>> spec["kind"], spec["d_depth"], spec["d_emb"]
    ('vision', 3, 32)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

TINY_KINDS = ("beit", "bert", "gpt2")


def _text_tokenizer(out_dir: Path):
    """The packaged MiniLM WordPiece tokenizer (real vocabulary, offline), saved into ``out_dir``."""
    import transformers

    from .hf_backbone import minilm_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def write_tiny_backbone(kind: str, out_dir: str | Path, seed: int = 0, width: int = 32, layers: int = 2,
                        image_size: int = 32, max_length: int = 32) -> dict[str, Any]:
    """Write a tiny random ``kind`` model (beit | bert | gpt2) to ``out_dir``.

    Returns the backbone spec to use plus ``d_depth``/``d_emb`` (keys outside the spec proper: pop them
    before passing the spec to :func:`heinsen_zoo.backbones.build_backbone`).
    """
    import transformers

    if kind not in TINY_KINDS:
        raise ValueError(f"kind: expected one of {TINY_KINDS}, got {kind!r}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    common = dict(num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * width)
    if kind == "beit":
        config = transformers.BeitConfig(hidden_size=width, image_size=image_size, patch_size=16,
                                         use_relative_position_bias=True, use_absolute_position_embeddings=False,
                                         layer_scale_init_value=0.1, **common)
        transformers.BeitModel(config).save_pretrained(out)
        spec: dict[str, Any] = {"source": "hf", "kind": "vision", "id": "tiny-beit-smoke", "revision": None}
    elif kind == "bert":
        tokenizer = _text_tokenizer(out)
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width,
                                         max_position_embeddings=max(64, max_length), **common)
        transformers.BertModel(config).save_pretrained(out)
        spec = {"source": "hf", "kind": "text", "id": "tiny-bert-smoke", "revision": None, "max_length": max_length}
    else:
        tokenizer = _text_tokenizer(out)
        config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=width, n_layer=layers, n_head=2,
                                         n_positions=max(64, max_length), bos_token_id=tokenizer.cls_token_id,
                                         eos_token_id=tokenizer.sep_token_id)
        transformers.GPT2Model(config).save_pretrained(out)
        spec = {"source": "hf", "kind": "text", "id": "tiny-gpt2-smoke", "revision": None, "max_length": max_length}
    spec["local_path"] = str(out)
    spec["d_depth"], spec["d_emb"] = layers + 1, width
    return spec
