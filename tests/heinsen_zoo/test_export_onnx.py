"""ONNX export of a routing head: onnxruntime logits match PyTorch; dynamic batch and sequence length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from heinsen_zoo.export_onnx import ATOL, DEFAULT_OPSET, RTOL, export_onnx, main  # noqa: E402
from heinsen_zoo.heads import RoutingHead  # noqa: E402
from heinsen_zoo.model import RoutingClassifier  # noqa: E402
from heinsen_zoo.zoo.hub import save_pretrained  # noqa: E402

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}


def trained_like(padding: str = "mask") -> RoutingClassifier:
    torch.manual_seed(0)
    model = RoutingClassifier(SPEC, n_classes=3, d_depth=3, d_emb=16, n_hid=4, padding=padding)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.slow  # torch.onnx.export(dynamo=True) alone takes 12-35 s on 2 shared cores (`make test-all`)
def test_masked_head_round_trip_with_dynamic_axes(tmp_path, capsys):
    """One export: CLI, metadata, fresh shapes, padding."""
    model = trained_like("mask")
    export_dir = save_pretrained(model, tmp_path / "export")
    assert main([str(export_dir), str(tmp_path / "head.onnx")]) == 0
    assert "onnxruntime check: max |onnx - torch|" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "head.onnx"))
    assert proto.opset_import[0].version == DEFAULT_OPSET or any(
        o.version == DEFAULT_OPSET for o in proto.opset_import if o.domain in ("", "ai.onnx")
    )
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["inputs"] == "hidden, padding_mask" and props["padding"] == "mask"
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["hidden", "padding_mask"]
    for batch, n_pos in [(5, 11), (2, 1)]:  # neither shape was used by the export or its check
        hidden = torch.randn(batch, n_pos, 3, 16)
        mask = torch.zeros(batch, n_pos, dtype=torch.bool)
        mask[0, n_pos - n_pos // 2 :] = True
        with torch.no_grad():
            expected = model.head(hidden, mask).numpy()
        (got,) = session.run(None, {"hidden": hidden.numpy(), "padding_mask": mask.numpy()})
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
    # Padding really is removed: a padded row equals that sequence alone.
    hidden = torch.randn(2, 6, 3, 16)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True
    (padded,) = session.run(None, {"hidden": hidden.numpy(), "padding_mask": mask.numpy()})
    (alone,) = session.run(
        None, {"hidden": hidden[1:, :4].numpy(), "padding_mask": np.zeros((1, 4), dtype=bool)}
    )
    np.testing.assert_allclose(padded[1], alone[0], atol=1e-5)


@pytest.mark.slow
def test_unmasked_head_has_no_mask_input(tmp_path):
    model = trained_like("none")
    result = export_onnx(model, tmp_path / "h.onnx")
    assert result.input_names == ("hidden",) and result.max_abs_diff < ATOL
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["hidden"]


def test_bad_arguments_are_refused_before_exporting(tmp_path):
    with pytest.raises(TypeError, match="routing_head"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(RoutingHead(2, 8, 3, n_hid=4), tmp_path / "x.onnx", opset=11)
    with pytest.raises(ValueError, match="padding"):
        export_onnx(RoutingHead(2, 8, 3, n_hid=4), tmp_path / "x.onnx", padding="zeros")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_export_with_onnx(tmp_path, capsys):
    """`heinsen-zoo export CKPT OUT_DIR --onnx`: export directory with card and a checked model.onnx."""
    from heinsen_zoo.cli import main as cli_main

    model = trained_like("none")
    hparams = {"backbone": SPEC, "n_classes": 3, "d_depth": 3, "d_emb": 16, "n_hid": 4, "labels": None,
               "padding": "none", "lr": 1e-3, "pct_start": 0.3, "mixup_alpha": None, "top_k": [1],
               "freeze": "none", "init_from": None, "replace_last": False, "export_dir": None}  # fmt: skip
    checkpoint = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.5.0", "hyper_parameters": hparams,
                  "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}  # fmt: skip
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert cli_main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "out"), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "README.md model card" in printed and "onnxruntime check" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md", "config.json", "model.onnx", "model.safetensors",
    ]  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    hidden = torch.randn(4, 9, 3, 16)
    with torch.no_grad():
        expected = model.head(hidden).numpy()
    np.testing.assert_allclose(
        session.run(None, {"hidden": hidden.numpy()})[0], expected, atol=ATOL, rtol=RTOL
    )
    # Re-exporting into the same directory replaces it (model.onnx belongs to an export).
    assert cli_main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "out")]) == 0
