"""save_pretrained / from_pretrained: bit-exact round trips, checksums, strict loads, offline behaviour."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from heinsen_zoo.model import RoutingClassifier
from heinsen_zoo.zoo import hub, registry
from heinsen_zoo.zoo.checksums import ChecksumMismatchError, sha256_file
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    IncompatibleConfigError,
    OfflineError,
    StateDictMismatchError,
    UnknownModelError,
    WeightsNotFoundError,
)
from heinsen_zoo.zoo.hub import from_pretrained, save_pretrained, write_export

SHARED = Path(os.environ.get("HEINSEN_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
PUBLISHED_2019 = SHARED / "checkpoints" / "heinsen2019"
SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text", "max_length": 512}


pytestmark = pytest.mark.usefixtures("isolated_zoo")


def tiny_classifier(seed: int = 0, n_classes: int = 4) -> RoutingClassifier:
    """d_depth 3, d_emb 16, n_classes 4, with parameters moved away from their init values."""
    torch.manual_seed(seed)
    model = RoutingClassifier(
        SPEC, n_classes=n_classes, d_depth=3, d_emb=16, n_hid=8, labels=list("abcd")[:n_classes]
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def cached_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    padding_mask = torch.zeros(3, 6, dtype=torch.bool)
    padding_mask[1, 4:] = True  # the second sample has 4 tokens
    return {"hidden": torch.randn(3, 6, 3, 16, generator=g), "padding_mask": padding_mask}


def test_round_trip_is_bit_exact(tmp_path):
    model = tiny_classifier()
    out = save_pretrained(model, tmp_path / "export", extra_config={"metrics": {"val/acc": 0.75}})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["schema_version"] == 1 and config["architecture"] == "routing_head"
    assert config["head"] == {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8}
    assert config["backbone"] == SPEC and config["labels"] == ["a", "b", "c", "d"]
    assert config["sha256"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    assert config["preprocessing"]["max_length"] == 512 and config["metrics"] == {"val/acc": 0.75}
    from safetensors.torch import load_file

    assert set(load_file(str(out / "model.safetensors"))) == set(model.head.state_dict())  # unprefixed keys

    loaded = from_pretrained(out)
    assert isinstance(loaded, RoutingClassifier) and not loaded.training
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    batch = cached_batch()
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    assert loaded.labels == ["a", "b", "c", "d"] and loaded.backbone_spec["revision"] == "5069d8a"
    assert loaded.pretrained_cfg["weights_sha256"] == config["sha256"]["model.safetensors"]
    assert from_pretrained(f"local-dir:{out}").head.W.equal(model.head.W)


def test_tampered_weights_are_rejected_on_every_read(tmp_path):
    out = save_pretrained(tiny_classifier(), tmp_path / "export")
    from_pretrained(out)  # fine once
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # flip one bit of a parameter value: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as info:
        from_pretrained(out)
    assert info.value.path == weights and "config.json" in str(info.value)


def _rewrite_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_class_count_mismatch_between_config_and_weights(tmp_path):
    out = save_pretrained(tiny_classifier(), tmp_path / "export")
    _rewrite_config(out, head={"d_depth": 3, "d_emb": 16, "n_classes": 3, "n_hid": 8}, labels=["a", "b", "c"])
    with pytest.raises(
        ClassCountMismatchError, match="config says n_classes=3 but the weights have 4 classes"
    ):
        from_pretrained(out)
    _rewrite_config(out, head={"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8}, labels=["a", "b"])
    with pytest.raises(ClassCountMismatchError, match="2 labels but the head has 4 classes"):
        from_pretrained(out)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_version": 2}, "schema_version 2 was written by a newer heinsen_zoo"),
        ({"schema_version": None}, "'schema_version' is missing"),
        ({"schema_version": "1"}, "schema_version must be an int"),
        ({"architecture": "mlp_head"}, "architecture 'mlp_head' is unknown"),
        ({"head": {"d_depth": 3, "d_emb": 16, "n_classes": 4}}, r"missing \['n_hid'\]"),
        ({"backbone": None}, "'backbone' must be a spec object"),
        ({"padding": "zeros"}, "padding must be 'mask' or 'none'"),
        ({"sha256": None}, "no sha256 of model.safetensors recorded"),
    ],
)
def test_incompatible_configs_are_refused_clearly(tmp_path, changes, message):
    out = save_pretrained(tiny_classifier(), tmp_path / "export")
    _rewrite_config(out, **changes)
    with pytest.raises(IncompatibleConfigError, match=message):
        from_pretrained(out)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    state = dict(tiny_classifier().head.state_dict())
    config = {
        "architecture": "routing_head",
        "backbone": SPEC,
        "head": {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8},
    }
    missing = {k: v for k, v in state.items() if k != "route.2.beta_use"}
    write_export({**missing, "route.3.W_A": torch.zeros(2)}, config, tmp_path / "a")
    with pytest.raises(StateDictMismatchError) as info:
        from_pretrained(tmp_path / "a")
    err = info.value
    assert err.missing == ["route.2.beta_use"] and err.unexpected == ["route.3.W_A"]
    assert "missing keys ['route.2.beta_use']" in str(err) and "unexpected keys ['route.3.W_A']" in str(err)
    # strict=False tolerates missing/unexpected keys (named in the exception only when strict) ...
    loose = from_pretrained(tmp_path / "a", strict=False)
    assert torch.equal(loose.head.W, state["W"])
    # ... but never a shape mismatch.
    write_export({**state, "B": torch.zeros(3, 15)}, config, tmp_path / "b")
    with pytest.raises(StateDictMismatchError, match=r"B: checkpoint \[3, 15\] vs model \[3, 16\]"):
        from_pretrained(tmp_path / "b", strict=False)


def test_non_finite_weights_are_refused(tmp_path):
    state = dict(tiny_classifier().head.state_dict())
    state["W"] = state["W"].clone()
    state["W"][0, 0] = float("nan")
    config = {
        "architecture": "routing_head",
        "backbone": SPEC,
        "head": {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8},
    }
    write_export(state, config, tmp_path / "nan")
    with pytest.raises(ValueError, match="'W' holds NaN/inf"):
        from_pretrained(tmp_path / "nan")


def test_save_pretrained_refuses_contradicting_extra_config(tmp_path):
    model = tiny_classifier()
    with pytest.raises(IncompatibleConfigError, match="disagrees with the model's weights"):
        save_pretrained(
            model,
            tmp_path / "x",
            extra_config={"head": {"d_depth": 3, "d_emb": 16, "n_classes": 5, "n_hid": 8}},
        )
    with pytest.raises(ValueError, match="may not set 'sha256'"):
        save_pretrained(model, tmp_path / "x", extra_config={"sha256": {}})
    with pytest.raises(ClassCountMismatchError, match="1 labels but the head has 4 classes"):
        save_pretrained(model, tmp_path / "x", extra_config={"labels": ["only one"]})
    with pytest.raises(TypeError, match="plain JSON values"):
        save_pretrained(model, tmp_path / "x", extra_config={"metrics": {"acc": torch.tensor(1.0)}})


def test_bare_routing_head_needs_a_backbone_spec(tmp_path):
    head = tiny_classifier().head
    with pytest.raises(ValueError, match="no backbone spec"):
        save_pretrained(head, tmp_path / "h")
    out = save_pretrained(head, tmp_path / "h", extra_config={"backbone": SPEC})
    assert torch.equal(from_pretrained(out).head.W, head.W)


def test_capsule_model_round_trip(tmp_path):
    from heinsen_zoo.capsules2019 import SSTClassifier

    torch.manual_seed(0)
    model = SSTClassifier(d_depth=2, d_emb=8, d_inp=4, d_cap=2, n_parts=3, n_classes=2).eval()
    out = save_pretrained(model, tmp_path / "sst")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "capsules2019_sst" and config["head"]["n_parts"] == 3
    loaded = from_pretrained(out)
    mask, embs = torch.ones(2, 5), torch.randn(2, 5, 2, 8)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(mask, embs), loaded(mask, embs), strict=True))


def test_unknown_name_and_missing_paths():
    with pytest.raises(
        UnknownModelError, match="did you mean 'capsules_smallnorb.heinsen2019'.*not an existing path"
    ):
        from_pretrained("capsules_smallnorb.heinsen2091")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        from_pretrained("./no/such/export")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        from_pretrained("local-dir:no_such_dir")


def test_hf_hub_offline_fails_fast_with_instructions(monkeypatch):
    start = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        from_pretrained("hf-hub:nobody-here/no-such-routing-head")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "nothing was downloaded" in message
    assert "huggingface-cli download nobody-here/no-such-routing-head" in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OfflineError, match="local_files_only=True"):
        from_pretrained("hf-hub:nobody-here/no-such-routing-head@v1", local_files_only=True)
    with pytest.raises(ValueError, match="owner/repo"):
        from_pretrained("hf-hub:not-a-repo-id")


def test_hf_hub_loads_from_the_local_cache_offline_and_checks_it(tmp_path, monkeypatch):
    """A populated Hugging Face cache (as a connected machine would leave it) is used offline."""
    from huggingface_hub import constants

    model = tiny_classifier()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hf" / "models--someone--routing-head"
    save_pretrained(model, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    loaded = from_pretrained("hf-hub:someone/routing-head")
    assert torch.equal(loaded.head.W, model.head.W)
    lock = tmp_path / "cache" / "sha256.lock"
    assert f"hf-hub:someone/routing-head:{commit}" in lock.read_text()
    weights = repo_dir / "snapshots" / commit / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        from_pretrained("hf-hub:someone/routing-head")


def test_backbone_missing_offline_is_a_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf"))
    spec = {"source": "hf", "id": "nobody-here/no-such-backbone", "revision": "abc1234", "kind": "text"}
    with pytest.raises(OfflineError) as info:
        hub.ensure_backbone_available(spec)
    message = str(info.value)
    assert "nobody-here/no-such-backbone" in message and "abc1234" in message
    assert "huggingface-cli download nobody-here/no-such-backbone --revision abc1234" in message
    assert "HEINSEN_MODEL_DIR" in message
    folder = tmp_path / "models" / "nobody-here--no-such-backbone"
    folder.mkdir(parents=True)
    monkeypatch.setenv("HEINSEN_MODEL_DIR", str(tmp_path / "models"))
    hub.ensure_backbone_available(spec)  # found locally: no error
    out = save_pretrained(RoutingClassifier(spec, n_classes=2, d_depth=2, d_emb=8, n_hid=4), tmp_path / "e")
    monkeypatch.delenv("HEINSEN_MODEL_DIR")
    with pytest.raises(OfflineError, match="not available offline"):
        from_pretrained(out, check_backbone=True)


def test_published_2019_weights_load_strictly_by_name():
    if not (PUBLISHED_2019 / "SHA256SUMS").is_file():
        pytest.skip("shared/checkpoints/heinsen2019 not available")
    sums = dict(
        reversed(line.split()) for line in (PUBLISHED_2019 / "SHA256SUMS").read_text().splitlines() if line
    )
    files = {
        "capsules_smallnorb.heinsen2019": "smallNORB_pretrained_model_state_dict.pt",
        "capsules_gpt2_large.sst5r_heinsen2019": "SST5R_pretrained_model_state_dict.pt",
        "capsules_gpt2_large.sst2r_heinsen2019": "SST2R_pretrained_model_state_dict.pt",
    }
    for name, filename in files.items():
        model = registry.create_model(name)
        published = torch.load(PUBLISHED_2019 / filename, map_location="cpu", weights_only=True)
        state = model.state_dict()
        assert list(state) == list(published) or set(state) == set(published), name
        assert all(torch.equal(state[k], published[k]) for k in published), name
        assert model.pretrained_cfg["weights_sha256"] == sums[filename]
        assert not model.training
    sst2 = registry.create_model("capsules_gpt2_large.sst2r_heinsen2019")
    with torch.no_grad():
        a_out, _, _ = sst2(torch.ones(1, 3), torch.randn(1, 3, 37, 1280))
    assert a_out.shape == (1, 2) and torch.isfinite(a_out).all()


def test_published_2019_copy_with_a_wrong_digest_is_refused(tmp_path, monkeypatch):
    source = PUBLISHED_2019 / "SST2R_pretrained_model_state_dict.pt"
    if not source.is_file():
        pytest.skip("shared/checkpoints/heinsen2019 not available")
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / source.name).write_bytes(bytes(data))
    monkeypatch.setenv("HEINSEN_2019_DIR", str(tmp_path))  # tried before the shared copy
    with pytest.raises(
        ChecksumMismatchError, match="9f1a804c449af5d6c04892035b1c070abafd6c207afaae9a15becfface9a9870"
    ):
        registry.create_model("capsules_gpt2_large.sst2r_heinsen2019")
