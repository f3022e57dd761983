"""Safe checkpoint loading and conversion of original state dicts / Lightning checkpoints to exports."""

from __future__ import annotations

import json
import pickle
import re
import warnings

import pytest
import torch

from heinsen_zoo.heads import RoutingHead
from heinsen_zoo.zoo import registry
from heinsen_zoo.zoo.convert import (
    convert_original_state_dict,
    export_lightning_checkpoint,
    extract_head_state_dict,
    main,
    safe_torch_load,
)
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    IncompatibleConfigError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from heinsen_zoo.zoo.hub import from_pretrained

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}


pytestmark = pytest.mark.usefixtures("isolated_zoo")


def tiny_head_state(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    head = RoutingHead(d_depth=3, d_emb=16, n_classes=4, n_hid=8)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in head.state_dict().items()}


class _Payload:
    """Unpickling this object calls open(marker, "w"): creating the marker proves code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_bomb_is_refused_without_executing(tmp_path, monkeypatch):
    marker = tmp_path / "marker_created_by_unpickling"
    raw = tmp_path / "raw_pickle.pt"
    with raw.open("wb") as handle:
        pickle.dump({"W": torch.ones(2), "evil": _Payload(str(marker))}, handle, protocol=2)
    zipped = tmp_path / "torch_saved.pt"
    torch.save({"W": torch.ones(2), "evil": _Payload(str(marker))}, zipped)
    for path in (raw, zipped):
        with pytest.raises(
            UnsafeCheckpointError, match=re.escape(f"refusing to unpickle arbitrary objects from {path}")
        ):
            safe_torch_load(path)
        with pytest.raises(pickle.UnpicklingError):  # still an UnpicklingError for generic handlers
            convert_original_state_dict(path, tmp_path / "out", {"backbone": SPEC})
        assert not marker.exists()
    # Through the registry: a bomb placed where a published head is expected is refused too.
    registry_dir = tmp_path / "heinsen2022"
    registry_dir.mkdir()
    (registry_dir / "roberta_large_imdb_head.pt").write_bytes(zipped.read_bytes())
    monkeypatch.setenv("HEINSEN_2022_DIR", str(registry_dir))
    with pytest.raises(UnsafeCheckpointError):
        registry.create_model("routing_roberta_large.imdb_heinsen2022")
    assert not marker.exists()
    # Control: the payload is live — plain pickle would have run it.
    live = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(str(live)))).close()
    assert live.exists()


def test_corrupt_and_missing_checkpoints_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        safe_torch_load(tmp_path / "nope.pt")
    bad = tmp_path / "truncated.pt"
    torch.save(tiny_head_state(), bad)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        safe_torch_load(bad)


@pytest.mark.parametrize(
    "layout",
    ["plain", "head_prefix", "nested_lightning_style", "module_prefix_with_backbone", "compiled"],
)
def test_convert_original_state_dict_round_trip(tmp_path, layout):
    state = tiny_head_state()
    saved = {
        "plain": state,
        "head_prefix": {"head." + k: v for k, v in state.items()},
        "nested_lightning_style": {
            "state_dict": {"model.head." + k: v for k, v in state.items()},
            "epoch": 3,
        },
        "module_prefix_with_backbone": {
            **{"module.head." + k: v for k, v in state.items()},
            "module.backbone.embeddings.weight": torch.zeros(5, 16),
        },
        "compiled": {"_orig_mod.head." + k: v for k, v in state.items()},
    }[layout]
    path = tmp_path / "original.state_dict"
    torch.save(saved, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert_original_state_dict(
            path, tmp_path / "export", {"backbone": SPEC, "labels": list("wxyz")}
        )
    if layout == "module_prefix_with_backbone":
        assert any("left out 1 other keys" in str(w.message) for w in caught)
    config = json.loads((out / "config.json").read_text())
    assert config["head"] == {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8}
    assert config["converted_from"]["file"] == "original.state_dict"
    model = from_pretrained(out)
    loaded = model.head.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    reference = RoutingHead(3, 16, 4, n_hid=8)
    reference.load_state_dict(state)
    hidden = torch.randn(2, 5, 3, 16)
    with torch.no_grad():
        assert torch.equal(model({"hidden": hidden}), reference.eval()(hidden))


def test_convert_keeps_dtypes_bit_exact(tmp_path):
    state = tiny_head_state(dtype=torch.float16)
    torch.save(state, tmp_path / "half.pt")
    out = convert_original_state_dict(tmp_path / "half.pt", tmp_path / "export", {"backbone": SPEC})
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    assert all(written[k].dtype == v.dtype and torch.equal(written[k], v) for k, v in state.items())


def test_convert_by_registry_name_carries_the_entry_metadata(tmp_path):
    registry.register_model(
        {
            "name": "routing_roberta_large.tiny_test",
            "architecture": "routing_head",
            "head": {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8},
            "backbone": SPEC,
            "labels": ["w", "x", "y", "z"],
            "padding": "none",
            "preprocessing": {"max_length": 512, "chunking": "overflow_concat"},
        }
    )
    torch.save({"head." + k: v for k, v in tiny_head_state().items()}, tmp_path / "h.pt")
    out = convert_original_state_dict(
        tmp_path / "h.pt", tmp_path / "export", "routing_roberta_large.tiny_test"
    )
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "routing_roberta_large.tiny_test" and config["padding"] == "none"
    assert (
        config["labels"] == ["w", "x", "y", "z"] and config["preprocessing"]["chunking"] == "overflow_concat"
    )
    # The real SST-5 entry expects a 25 x 1024 head with 5 classes: the tiny weights are refused by name.
    with pytest.raises(ClassCountMismatchError, match="n_classes: config 5 vs weights 4"):
        convert_original_state_dict(
            tmp_path / "h.pt", tmp_path / "x", "routing_roberta_large.sst5r_heinsen2022"
        )
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_convert_errors_name_what_is_wrong(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(StateDictMismatchError, match="route.0.W_A"):
        convert_original_state_dict(tmp_path / "other.pt", tmp_path / "o", {"backbone": SPEC})
    state = tiny_head_state()
    state.pop("route.1.beta_use")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(StateDictMismatchError, match=r"missing keys \['route.1.beta_use'\]"):
        convert_original_state_dict(tmp_path / "partial.pt", tmp_path / "p", {"backbone": SPEC})
    torch.save(tiny_head_state(), tmp_path / "ok.pt")
    with pytest.raises(IncompatibleConfigError, match="'backbone' must be a spec object"):
        convert_original_state_dict(tmp_path / "ok.pt", tmp_path / "q", {})
    two = {**{"a." + k: v for k, v in state.items()}, **{"b." + k: v for k, v in state.items()}}
    torch.save(two, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="several RoutingHeads"):
        extract_head_state_dict(torch.load(tmp_path / "two.pt", weights_only=True), "two.pt")


def _lightning_layout_checkpoint(tmp_path):
    """A checkpoint in the layout RoutingClassificationTask saves (head keys under ``model.head.``, plain
    hyper_parameters), built without importing Lightning (slow); the real thing is tested below (slow)."""
    from heinsen_zoo.model import RoutingClassifier

    torch.manual_seed(0)
    model = RoutingClassifier(
        SPEC, n_classes=4, d_depth=3, d_emb=16, n_hid=8, labels=list("wxyz"), padding="none"
    )
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hparams = {
        "backbone": SPEC, "n_classes": 4, "d_depth": 3, "d_emb": 16, "n_hid": 8, "labels": list("wxyz"),
        "padding": "none", "lr": 1e-3, "pct_start": 0.3, "mixup_alpha": None, "top_k": [1], "freeze": "none",
        "init_from": None, "replace_last": False, "export_dir": None,
    }  # fmt: skip
    checkpoint = {
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "hyper_parameters": hparams,
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    return model.eval(), path


def _check_export_of(model, ckpt, out_dir, global_step):
    out = export_lightning_checkpoint(ckpt, out_dir)
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == SPEC and config["labels"] == list("wxyz") and config["padding"] == "none"
    assert config["converted_from"]["lightning_global_step"] == global_step
    loaded = from_pretrained(out)
    mine = model.head.state_dict()
    assert all(torch.equal(loaded.head.state_dict()[k], v) for k, v in mine.items())
    hidden = torch.randn(2, 5, 3, 16)
    with torch.no_grad():
        assert torch.equal(loaded({"hidden": hidden}), model({"hidden": hidden}))
    # The checkpoint itself loads too (no export needed).
    assert torch.equal(from_pretrained(ckpt).head.W, model.head.W)


def test_export_lightning_checkpoint(tmp_path):
    model, ckpt = _lightning_layout_checkpoint(tmp_path)
    _check_export_of(model, ckpt, tmp_path / "export", 40)


def test_export_lightning_checkpoint_missing_hparams_is_named(tmp_path):
    _, ckpt = _lightning_layout_checkpoint(tmp_path)
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint["hyper_parameters"]["d_emb"]
    torch.save(checkpoint, ckpt)
    with pytest.raises(IncompatibleConfigError, match=r"hyper_parameters lack \['d_emb'\]"):
        export_lightning_checkpoint(ckpt, tmp_path / "x")


@pytest.mark.slow
def test_export_real_lightning_checkpoint(tmp_path):
    """A checkpoint written by a real Trainer after one optimisation step of RoutingClassificationTask."""
    import lightning.pytorch as pl

    from heinsen_zoo.tasks import RoutingClassificationTask

    torch.manual_seed(0)
    task = RoutingClassificationTask(
        backbone=SPEC,
        n_classes=4,
        d_depth=3,
        d_emb=16,
        n_hid=8,
        labels=list("wxyz"),
        padding="none",
        mixup_alpha=None,
    )
    batches = [{"hidden": torch.randn(4, 5, 3, 16), "label": torch.tensor([0, 1, 2, 3])}]
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    ckpt = tmp_path / "real.ckpt"
    trainer.save_checkpoint(ckpt)
    _check_export_of(task.model.eval(), ckpt, tmp_path / "export", 1)


def test_main_command_line(tmp_path, capsys):
    torch.save(tiny_head_state(), tmp_path / "h.pt")
    (tmp_path / "cfg.json").write_text(json.dumps({"backbone": SPEC}))
    assert (
        main(
            ["original", str(tmp_path / "h.pt"), str(tmp_path / "e"), "--config", str(tmp_path / "cfg.json")]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "e")]) == 0
    assert "ok:" in capsys.readouterr().out
    assert (
        main(
            ["original", str(tmp_path / "h.pt"), str(tmp_path / "f"), "--name", "routing_roberta_large.sst5"]
        )
        == 1
    )
    assert "did you mean" in capsys.readouterr().err
