"""Inference (`heinsen-zoo infer`): text / image / smallNORB predictions, explanations, CLI errors, export,
and fine-tuning from a zoo model in one command (the finetune_demo experiment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
PIL_Image = pytest.importorskip("PIL.Image")

from heinsen_zoo.backbones import minilm_dir  # noqa: E402
from heinsen_zoo.cli import main  # noqa: E402
from heinsen_zoo.inference import (  # noqa: E402
    DEFAULT_MAX_CHUNKS,
    format_json,
    format_table,
    image_transform,
    predict,
    resolve_image_preprocessing,
    text_tokens,
)
from heinsen_zoo.model import RoutingClassifier  # noqa: E402
from heinsen_zoo.zoo.hub import from_pretrained, save_pretrained  # noqa: E402

SHARED = Path(os.environ.get("HEINSEN_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
SMALLNORB_WEIGHTS = SHARED / "checkpoints" / "heinsen2019" / "smallNORB_pretrained_model_state_dict.pt"
TEXT_LABELS = ["sport", "tech", "politics"]
IMAGE_LABELS = ["cat", "dog", "bird", "fish"]
LONG_TEXT = " ".join(f"word{i} of a long text about football and computers" for i in range(12))


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "zoo-cache"))
    monkeypatch.setenv("HEINSEN_ZOO_HOME", str(tmp_path / "zoo-home"))
    monkeypatch.setenv("HEINSEN_MODEL_DIR", str(tmp_path / "no-models-here"))
    for var in ("HEINSEN_2022_DIR", "HEINSEN_ZOO_REGISTRY"):
        monkeypatch.delenv(var, raising=False)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer (local_path format)."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _text_spec(path: Path) -> dict:
    return {"source": "hf", "id": "tiny-bert", "revision": None, "kind": "text", "local_path": str(path),
            "max_length": 16, "pad_mode": "mask"}  # fmt: skip


def _text_export(directory: Path, bert_dir: Path, n_classes: int, labels: list[str] | None, seed: int) -> Path:
    model = RoutingClassifier(_text_spec(bert_dir), n_classes=n_classes, d_depth=3, d_emb=32, n_hid=8, labels=labels)
    _perturb(model, seed)
    return save_pretrained(model, directory)


@pytest.fixture(scope="module")
def text_export(tmp_path_factory, tiny_bert_dir) -> Path:
    return _text_export(tmp_path_factory.mktemp("text-export"), tiny_bert_dir, 3, TEXT_LABELS, seed=1)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory) -> Path:
    """A RoutingClassifier over a tiny random HF ViT (32×32 images, 4×4 patches → 1 + 64 positions)."""
    vit_dir = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(vit_dir)
    spec = {"source": "hf", "id": "tiny-vit", "revision": None, "kind": "vision", "local_path": str(vit_dir)}
    model = RoutingClassifier(spec, n_classes=4, d_depth=3, d_emb=32, n_hid=8, labels=IMAGE_LABELS)
    _perturb(model, seed=2)
    preprocessing = {"image_size": 32, "crop_pct": 0.875, "interpolation": "bicubic",
                     "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 0.5]}  # fmt: skip
    return save_pretrained(model, tmp_path_factory.mktemp("image-export"), {"preprocessing": preprocessing})


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Five PNGs of different sizes and modes, one in a subfolder."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for name, (h, w), mode in [("b.png", (40, 48), "RGB"), ("a.png", (32, 32), "RGB"), ("sub/c.png", (50, 36), "L"),
                               ("d.png", (64, 64), "RGBA"), ("e.png", (33, 47), "RGB")]:  # fmt: skip
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        PIL_Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / name)
    (root / "notes.md").write_text("not an image")
    return root


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _check_png(path: str | Path) -> None:
    image = PIL_Image.open(path)
    image.load()
    assert image.width > 100 and image.height > 50
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 5.0  # not blank
    assert len(np.unique(pixels)) > 20


# ---------------------------------------------------------------------------------------------------- text


def test_infer_text_json_matches_the_model(capsys, text_export):
    texts = ["the match ended in a draw", LONG_TEXT]
    code, out, err = _run(capsys, ["infer", str(text_export), *texts, "--top-k", "2", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert [r["index"] for r in result] == [0, 1]
    assert result[0]["input"].startswith("text[0]: the match")
    assert "only the first 8 used (max_chunks)" in result[1]["note"] and result[0]["note"] is None
    model = from_pretrained(str(text_export))
    model.backbone.max_chunks = DEFAULT_MAX_CHUNKS  # infer's cap when the export records none
    expected = model.predict_proba({"text": texts})  # [2, 3]
    for row, probs in zip(result, expected, strict=True):
        top = row["top_k"]
        assert len(top) == 2 and all(t["label"] in TEXT_LABELS for t in top)
        values = [t["probability"] for t in top]
        assert values == sorted(values, reverse=True) and 0 < sum(values) <= 1 + 1e-6
        for t in top:
            assert TEXT_LABELS[t["class_index"]] == t["label"]
            assert t["probability"] == pytest.approx(float(probs[t["class_index"]]), abs=1e-5)
        assert row["explanation"] is None


def test_text_files_folders_and_force_text(capsys, text_export, tmp_path):
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("the election results", encoding="utf-8")
    (tmp_path / "docs" / "deep" / "a.txt").write_text("a new phone", encoding="utf-8")
    model = from_pretrained(str(text_export))
    from_folder = predict(model, [str(tmp_path / "docs")], top_k=3)
    assert [Path(p.input_id).name for p in from_folder] == ["b.txt", "a.txt"]  # sorted paths: b.txt < deep/a.txt
    literal = predict(model, ["the election results", "a new phone"], top_k=3)
    for a, b in zip(from_folder, literal, strict=True):
        assert a.class_indices == b.class_indices
        assert [p for _, p in a.top_k] == pytest.approx([p for _, p in b.top_k], abs=1e-6)
    path = str(tmp_path / "docs" / "b.txt")
    forced = predict(model, [path], force_text=True)
    assert forced[0].input_id.startswith("text[0]: /")  # the path string itself was classified
    assert len(forced[0].top_k) == 3  # top_k capped at n_classes


def test_text_tokens_are_the_unpadded_positions(text_export):
    model = from_pretrained(str(text_export))
    texts = ["short one", LONG_TEXT]
    hidden, padding_mask = model.hidden_states({"text": texts})
    assert hidden.shape[1] > 16  # the long text spans several chunks
    for i, text in enumerate(texts):
        tokens, positions = text_tokens(model.backbone, text)
        assert positions == torch.nonzero(~padding_mask[i]).flatten().tolist()
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == len(positions)
    assert tokens.count("[CLS]") == hidden.shape[1] // 16  # one [CLS] per chunk, chunks concatenated


def test_text_explain_writes_readable_pngs(capsys, text_export, tmp_path):
    out_dir = tmp_path / "explain"
    code, out, err = _run(capsys, ["infer", str(text_export), "short text", LONG_TEXT, "--explain", str(out_dir),
                                   "--json"])  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    paths = [r["explanation"] for r in result]
    assert sorted(Path(p).name for p in paths) == sorted(p.name for p in out_dir.iterdir()) and len(paths) == 2
    for p in paths:
        _check_png(p)
    # The explained run predicts exactly what the plain run predicts.
    plain = predict(from_pretrained(str(text_export)), ["short text", LONG_TEXT])
    assert [r["top_k"][0]["label"] for r in result] == [p.label for p in plain]


# ---------------------------------------------------------------------------------------------------- images


def test_image_preprocessing_resolution():
    assert resolve_image_preprocessing({}) == {"interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
                                               "resize": 248, "crop": 224}  # fmt: skip
    cifar = resolve_image_preprocessing({"resize": 32, "center_crop": None, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert (cifar["resize"], cifar["crop"]) == (32, None)
    timm_style = resolve_image_preprocessing({"input_size": [3, 64, 64], "crop_pct": 0.8, "interpolation": "bilinear"})
    assert (timm_style["resize"], timm_style["crop"], timm_style["interpolation"]) == (80, 64, "bilinear")
    with pytest.raises(ValueError, match="interpolation"):
        image_transform({"interpolation": "magic"})
    with pytest.raises(ValueError, match="std"):
        resolve_image_preprocessing({"std": [0.5, 0.0, 0.5]})


def test_infer_image_folder_recursive_sorted_and_preprocessed(capsys, image_export, image_folder):
    code, out, err = _run(capsys, ["infer", str(image_export), str(image_folder), "--top-k", "3", "--json",
                                   "--batch-size", "2"])  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    names = [Path(r["input"]).relative_to(image_folder).as_posix() for r in result]
    assert names == ["a.png", "b.png", "d.png", "e.png", "sub/c.png"]  # recursive, sorted, notes.md skipped
    # Reference preprocessing written out by hand: square bicubic resize to floor(32 / 0.875) = 36, centre crop
    # 32, per-channel normalisation with the recorded mean/std.
    from torchvision.transforms import functional as TF

    model = from_pretrained(str(image_export))
    images = []
    for r in result:
        image = PIL_Image.open(r["input"]).convert("RGB")
        x = TF.center_crop(TF.resize(TF.pil_to_tensor(image).float() / 255, [36, 36],
                                     interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [32, 32])  # fmt: skip
        images.append(TF.normalize(x, [0.5, 0.5, 0.5], [0.25, 0.5, 0.5]))
    expected = model.predict_proba({"image": torch.stack(images)})
    for row, probs in zip(result, expected, strict=True):
        assert [t["label"] for t in row["top_k"]] == [IMAGE_LABELS[i] for i in probs.topk(3).indices.tolist()]
        assert [t["probability"] for t in row["top_k"]] == pytest.approx(probs.topk(3).values.tolist(), abs=1e-4)
    # The table shows one row per input with the top-1 label.
    code, out, _ = _run(capsys, ["infer", str(image_export), str(image_folder / "a.png"), "--top-k", "1"])
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["#", "input", "top-1"] and "a.png" in lines[1] and result[0]["top_k"][0]["label"] in lines[1]


def test_image_inputs_in_memory_and_explain(image_export, image_folder, tmp_path):
    model = from_pretrained(str(image_export))
    pil = PIL_Image.open(image_folder / "b.png")
    as_tensor = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()  # uint8 [3, H, W]
    preds = predict(model, [pil, as_tensor, str(image_folder / "b.png")], top_k=4, explain_dir=tmp_path / "x")
    assert [p.input_id for p in preds][:2] == ["image[0]", "tensor[1]"]
    probs = [[p for _, p in pred.top_k] for pred in preds]
    assert probs[0] == pytest.approx(probs[1], abs=1e-5) and probs[0] == pytest.approx(probs[2], abs=1e-5)
    assert sum(probs[0]) == pytest.approx(1.0, abs=1e-5)  # top_k = n_classes: the whole distribution
    for pred in preds:
        _check_png(pred.explanation)
    assert "credit assignment written for 3 input(s)" in format_table(preds)
    assert json.loads(format_json(preds))[2]["explanation"] == preds[2].explanation


# ---------------------------------------------------------------------------------------------------- smallNORB


@pytest.mark.skipif(not SMALLNORB_WEIGHTS.is_file(), reason="published 2019 weights (../shared) not available")
def test_infer_smallnorb_dat_file_and_png_pairs(capsys, tmp_path):
    from heinsen_zoo.data.smallnorb import SMALLNORB_LABELS, read_norb_matrix, write_tiny_smallnorb

    paths = write_tiny_smallnorb(tmp_path / "norb", n_train=0, n_test=2, compress=True)
    dat = next(p for name, p in paths.items() if name.endswith("testing-dat.mat"))
    code, out, err = _run(capsys, ["infer", "capsules_smallnorb.heinsen2019", str(dat), "--top-k", "5"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[:3] == ["#", "input", "top-1"]
    assert all(row.split()[2] in SMALLNORB_LABELS for row in lines[1:])  # a class printed per stereo pair
    # The same stereo pair as a file row and as two grey PNGs (left, right) gives the same prediction.
    pair = read_norb_matrix(dat)[1]
    for view, name in zip(pair, ("left.png", "right.png"), strict=True):
        PIL_Image.fromarray(view, "L").save(tmp_path / name)
    code, out, err = _run(capsys, ["infer", "capsules_smallnorb.heinsen2019", str(dat), str(tmp_path / "left.png"),
                                   str(tmp_path / "right.png"), "--json", "--top-k", "5"])  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert [r["input"] for r in result] == [f"{dat}[0]", f"{dat}[1]", f"{tmp_path / 'left.png'}+right.png"]
    for row in result:
        assert sorted(t["label"] for t in row["top_k"]) == sorted(SMALLNORB_LABELS)
        assert sum(t["probability"] for t in row["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert [t["label"] for t in result[2]["top_k"]] == [t["label"] for t in result[1]["top_k"]]
    assert [t["probability"] for t in result[2]["top_k"]] == pytest.approx([t["probability"] for t in result[1]["top_k"]])
    assert result[1]["top_k"][0]["label"] == lines[2].split()[2]
    # Bad smallNORB inputs: an odd number of PNGs, a wrong-size view, an explanation request.
    code, _, err = _run(capsys, ["infer", "capsules_smallnorb.heinsen2019", str(tmp_path / "left.png")])
    assert code == 2 and "pairs" in err
    PIL_Image.new("L", (64, 64)).save(tmp_path / "small.png")
    code, _, err = _run(capsys, ["infer", "capsules_smallnorb.heinsen2019", str(tmp_path / "left.png"),
                                 str(tmp_path / "small.png")])  # fmt: skip
    assert code == 2 and "96×96" in err
    code, _, err = _run(capsys, ["infer", "capsules_smallnorb.heinsen2019", str(dat), "--explain", str(tmp_path)])
    assert code == 2 and "routing-head" in err


# ---------------------------------------------------------------------------------------------------- errors


def test_cli_errors_exit_2_with_a_message(capsys, text_export, image_export, tmp_path):
    code, out, err = _run(capsys, ["infer", "routing_minilm_l6.bbc_news_dem", "some text"])
    assert code == 2 and out == ""
    assert err.startswith("error: unknown model name") and "routing_minilm_l6.bbc_news_demo" in err
    assert "Traceback" not in err
    code, _, err = _run(capsys, ["infer", str(image_export), str(tmp_path / "missing.png")])
    assert code == 2 and "missing.png" in err and "no such file" in err
    code, _, err = _run(capsys, ["infer", str(text_export), str(tmp_path / "missing.txt")])
    assert code == 2 and "missing.txt" in err
    code, _, err = _run(capsys, ["infer", str(image_export), "a cat", "--text"])
    assert code == 2 and "--text" in err
    code, _, err = _run(capsys, ["infer", str(text_export), "x", "--top-k", "0"])
    assert code == 2 and "top_k" in err
    code, _, err = _run(capsys, ["infer", str(text_export), "x", "--device", "tpu"])
    assert code == 2 and "--device" in err
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code, _, err = _run(capsys, ["infer", str(image_export), str(tmp_path / "broken.png")])
    assert code == 2 and "not a readable image" in err
    code, _, err = _run(capsys, ["infer", str(tmp_path / "no-export"), "x"])
    assert code == 2 and "does not exist" in err


def test_export_and_convert_subcommands(capsys, tiny_bert_dir, tmp_path):
    model = RoutingClassifier(_text_spec(tiny_bert_dir), n_classes=3, d_depth=3, d_emb=32, n_hid=8, labels=TEXT_LABELS)
    _perturb(model, seed=3)
    hparams = {"backbone": _text_spec(tiny_bert_dir), "n_classes": 3, "d_depth": 3, "d_emb": 32, "n_hid": 8,
               "labels": TEXT_LABELS, "padding": "mask"}  # fmt: skip
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "hyper_parameters": hparams,
                "epoch": 0, "global_step": 1}, ckpt)  # fmt: skip
    code, out, err = _run(capsys, ["export", str(ckpt), str(tmp_path / "exported")])
    assert code == 0, err and "wrote" in out
    loaded = from_pretrained(str(tmp_path / "exported"))
    for key, value in model.head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[key], value)
    code, out, err = _run(capsys, ["convert", "verify", str(tmp_path / "exported")])
    assert code == 0 and out.startswith("ok:")
    code, _, err = _run(capsys, ["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    assert code == 2 and "nope.ckpt" in err
    code, _, err = _run(capsys, ["convert", "verify", str(tmp_path / "nope")])
    assert code == 2 and err.startswith("error:")


# ---------------------------------------------------------------------------------------------------- fine-tune


def test_finetune_demo_from_an_export_trains_only_the_last_routing(tiny_bert_dir, tmp_path, monkeypatch):
    from heinsen_zoo.cli import run_lightning

    monkeypatch.setattr("sys.argv", ["heinsen-zoo"])  # LightningCLI reads args only from the list below

    start = _text_export(tmp_path / "start", tiny_bert_dir, 5, None, seed=4)
    initial = from_pretrained(str(start)).head.state_dict()
    cli = run_lightning([
        "fit", "--experiment", "finetune_demo",
        "--model.init_args.init_from", str(start),
        "--model.init_args.backbone", json.dumps(_text_spec(tiny_bert_dir)),
        "--model.init_args.d_depth", "3", "--model.init_args.d_emb", "32", "--model.init_args.n_hid", "8",
        "--model.init_args.export_dir", str(tmp_path / "finetuned"),
        "--data.init_args.datamodule.init_args.max_per_class", "3",
        "--data.init_args.datamodule.init_args.val_fraction", "0.4",
        "--data.init_args.progress", "false",
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    task = cli.model
    assert task.hparams.freeze == "all_but_last" and task.reinitialized_keys == []
    trained = from_pretrained(str(tmp_path / "finetuned")).head.state_dict()
    assert set(trained) == set(initial)
    changed = sorted(k for k in initial if not torch.equal(initial[k], trained[k]))
    assert changed and all(k.startswith("route.2.") for k in changed)
    assert all(torch.equal(initial[k], trained[k]) for k in initial if not k.startswith("route.2."))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predict_on_cuda_matches_cpu(text_export, image_export, image_folder, tmp_path):
    for export, inputs in ((text_export, ["a short text", LONG_TEXT]), (image_export, [str(image_folder)])):
        on_cpu = predict(str(export), inputs, top_k=2)
        on_gpu = predict(str(export), inputs, top_k=2, device="cuda", explain_dir=tmp_path / export.name)
        for a, b in zip(on_cpu, on_gpu, strict=True):
            assert a.class_indices == b.class_indices  # fp16 autocast in the backbone: probabilities close
            assert [p for _, p in a.top_k] == pytest.approx([p for _, p in b.top_k], abs=2e-2)
            _check_png(b.explanation)
