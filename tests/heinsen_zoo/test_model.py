"""RoutingClassifier: lazy frozen backbone outside the state dict, raw/cached batches, strict loading."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("timm")

from heinsen_zoo.backbones import FrozenBackbone  # noqa: E402
from heinsen_zoo.model import RoutingClassifier  # noqa: E402

SPEC = {
    "source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision", "pretrained": False,
    "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2},
}  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make(**kwargs):
    torch.manual_seed(0)
    options = {"n_classes": 3, "d_depth": 3, "d_emb": 32, "n_hid": 8, "labels": ["cat", "dog", "eel"]}
    options.update(kwargs)
    return RoutingClassifier(SPEC, **options)


def test_state_dict_and_parameters_hold_the_head_only_before_and_after_building():
    model = make()
    keys_before = list(model.state_dict())
    n_params_before = len(list(model.parameters()))
    assert model.built_backbone() is None
    assert all(key.startswith("head.") for key in keys_before)
    assert {"head.W", "head.B", "head.route.0.W_A", "head.route.2.W_F2"} <= set(keys_before)
    logits = model({"image": torch.randn(2, 3, 32, 32)})
    assert logits.shape == (2, 3)
    assert isinstance(model.built_backbone(), FrozenBackbone)
    assert list(model.state_dict()) == keys_before
    assert len(list(model.parameters())) == n_params_before
    assert all(not name.startswith("_backbone") for name, _ in model.named_modules())


def test_load_state_dict_strict_with_head_only_state():
    source, target = make(), make()
    with torch.no_grad():
        source.head.W.mul_(2.0)
        source.head.route[0].W_A.add_(1.0)
    target({"image": torch.randn(1, 3, 32, 32)})  # backbone built: must not change what loads
    target.load_state_dict(source.state_dict(), strict=True)
    hidden = torch.randn(2, 5, 3, 32)
    torch.testing.assert_close(target({"hidden": hidden}), source({"hidden": hidden}))
    # the bare RoutingHead keys (export format) load into .head
    target.head.load_state_dict({k.removeprefix("head."): v for k, v in source.state_dict().items()}, strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        target.load_state_dict({"head.W": source.head.W.detach()}, strict=True)


def test_raw_and_cached_batches_give_the_same_logits():
    model = make()
    images = torch.randn(2, 3, 32, 32)
    hidden, padding_mask = model.hidden_states({"image": images, "label": torch.tensor([0, 1])})
    assert hidden.shape == (2, 5, 3, 32) and padding_mask is None
    torch.testing.assert_close(model({"image": images}), model({"hidden": hidden}))
    cached_model = make()
    cached_model({"hidden": hidden})
    assert cached_model.built_backbone() is None  # cached batches never build the backbone


def test_train_mode_keeps_backbone_frozen_and_head_trainable():
    model = make()
    model({"image": torch.randn(2, 3, 32, 32)})
    model.train()
    backbone = model.built_backbone()
    assert model.head.training and not backbone.training
    loss = model({"image": torch.randn(2, 3, 32, 32)}).sum()
    loss.backward()
    assert model.head.W.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())


def test_padding_modes():
    hidden = torch.randn(2, 6, 3, 32)
    padding_mask = torch.zeros(2, 6, dtype=torch.bool)
    padding_mask[1, 3:] = True
    masked, routed_all = make(padding="mask"), make(padding="none")
    routed_all.load_state_dict(masked.state_dict())
    torch.testing.assert_close(
        masked({"hidden": hidden, "padding_mask": padding_mask})[1], masked({"hidden": hidden[1:, :3]})[0],
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    torch.testing.assert_close(
        routed_all({"hidden": hidden, "padding_mask": padding_mask}), routed_all({"hidden": hidden})
    )
    text = RoutingClassifier({"source": "minilm"}, n_classes=2, d_depth=7, d_emb=384, padding="none")
    assert text._build_spec()["pad_mode"] == "empty_chunk"
    with pytest.raises(ValueError, match="padding"):
        make(padding="zeros")


def test_predictions_and_labels():
    model = make()
    batch = {"hidden": torch.randn(4, 5, 3, 32)}
    probs = model.predict_proba(batch)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    names = model.predict(batch)
    assert names == [model.labels[i] for i in probs.argmax(-1).tolist()]
    assert make(labels=None).predict(batch).shape == (4,)
    with pytest.raises(ValueError, match="labels: expected 3 names"):
        make(labels=["a", "b"])


def test_bad_batches_and_mismatched_backbone_raise_clear_errors():
    model = make()
    with pytest.raises(TypeError, match="batch: expected a dict"):
        model(torch.randn(2, 5, 3, 32))
    with pytest.raises(KeyError, match="'hidden' .* or 'image'"):
        model({"text": ["a"]})
    with pytest.raises(ValueError, match="d_emb"):
        make(d_emb=64)({"image": torch.randn(1, 3, 32, 32)})


def test_deepcopy_shares_the_frozen_backbone():
    model = make()
    model({"image": torch.randn(1, 3, 32, 32)})
    clone = copy.deepcopy(model)
    assert clone.built_backbone() is model.built_backbone()
    assert clone.head.W is not model.head.W


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backbone_follows_the_head_under_fp16_autocast():
    model = make().cuda()
    images = torch.randn(2, 3, 32, 32)  # on the CPU: the backbone moves its inputs
    hidden, _ = model.hidden_states({"image": images})
    assert hidden.device.type == "cuda" and hidden.dtype == torch.float16
    assert model.built_backbone().device.type == "cuda"
    logits = model({"image": images})
    logits.float().sum().backward()
    assert model.head.W.grad is not None and bool(torch.isfinite(model.head.W.grad).all())
    model.cpu()
    assert model({"image": images}).device.type == "cpu"  # the backbone follows the head back


def test_encode_applies_the_padding_policy_once_and_forward_is_classify_of_encode():
    from heinsen_zoo.model import PADDING_MODES, check_padding, encoder_spec

    hidden = torch.randn(2, 4, 3, 32)
    mask = torch.tensor([[False, False, True, True], [False, False, False, False]])
    hidden[0, 2:] = 100.0  # padded positions: the masked head must never read them
    masked, unmasked = make(padding="mask"), make(padding="none")
    unmasked.load_state_dict(masked.state_dict())
    h, m = masked.encode({"hidden": hidden, "padding_mask": mask})
    assert torch.equal(m, mask)
    logits = masked.classify(h, m)
    assert torch.equal(logits, masked({"hidden": hidden, "padding_mask": mask}))
    torch.testing.assert_close(logits[:1], masked({"hidden": hidden[:1, :2]}))  # padding removed
    h, m = unmasked.encode({"hidden": hidden, "padding_mask": mask})
    assert m is None  # "none" routes every position: the mask is dropped here, nowhere else
    routed_all = unmasked({"hidden": hidden, "padding_mask": mask})
    torch.testing.assert_close(routed_all[1], logits[1])  # no padding: both policies agree
    assert not torch.allclose(routed_all[0], logits[0])  # the padded positions were routed
    # the policy's text pad_mode, one definition for the model's backbone and the hidden-state cache
    text = {"source": "hf", "id": "x", "kind": "text"}
    assert [encoder_spec(text, p)["pad_mode"] for p in PADDING_MODES] == ["mask", "empty_chunk"]
    assert encoder_spec({**text, "pad_mode": "mask"}, "none")["pad_mode"] == "mask"
    assert encoder_spec(SPEC, "none") == SPEC
    with pytest.raises(ValueError, match=r"padding: expected one of \('mask', 'none'\), got 'zeros'"):
        make(padding="zeros")
    with pytest.raises(ValueError, match="model.init_args.padding"):
        check_padding(None, "model.init_args.padding")
