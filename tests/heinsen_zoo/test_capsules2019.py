"""2019 capsule classifiers: strict loading of the published weights, stored reference outputs, validation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from heinsen_zoo.capsules2019 import (
    PUBLISHED_ENTRIES,
    SmallNORBClassifier,
    SSTClassifier,
    load_published,
)
from heinsen_zoo.heads import RoutingHead
from heinsen_zoo.zoo.architectures import get_architecture
from heinsen_zoo.zoo.checksums import ChecksumMismatchError
from heinsen_zoo.zoo.errors import StateDictMismatchError, UnsafeCheckpointError
from heinsen_zoo.zoo.registry import get_entry

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = FIXTURES / "capsules2019_reference.safetensors"


def _published_dir() -> Path:
    shared = os.environ.get("HEINSEN_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / ".." / "shared"
    return base / "checkpoints" / "heinsen2019"


PUBLISHED_DIR = _published_dir()


def _published(name: str) -> tuple[str, type, dict]:
    """(file name, class, constructor arguments) of a published 2019 model, from its registry entry."""
    entry = get_entry(PUBLISHED_ENTRIES[name])
    return (
        Path(entry.weights[-1].location).name,
        get_architecture(entry.architecture).model_class,
        dict(entry.head),
    )


PUBLISHED = {name: _published(name) for name in PUBLISHED_ENTRIES}
needs_published = pytest.mark.skipif(
    not all((PUBLISHED_DIR / entry[0]).is_file() for entry in PUBLISHED.values()),
    reason=f"published 2019 weights not found in {PUBLISHED_DIR} (set HEINSEN_SHARED)",
)


def _load_reference_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_capsules2019_reference", FIXTURES / "make_capsules2019_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def published_models() -> dict[str, torch.nn.Module]:
    if not all((PUBLISHED_DIR / entry[0]).is_file() for entry in PUBLISHED.values()):
        pytest.skip(f"published 2019 weights not found in {PUBLISHED_DIR} (set HEINSEN_SHARED)")
    return {name: load_published(PUBLISHED_DIR / entry[0]) for name, entry in PUBLISHED.items()}


# ---------------------------------------------------------------------------------------------------------------
# Published weights.


@needs_published
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_state_dicts_load_strictly(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    file_name, cls, kwargs = PUBLISHED[name]
    state_dict = torch.load(PUBLISHED_DIR / file_name, map_location="cpu", weights_only=True)
    model = cls(**kwargs)
    model.load_state_dict(state_dict, strict=True)
    assert list(model.state_dict()) == list(state_dict)  # same names, same order
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    # The loader: by name (via $HEINSEN_SHARED), and by path; eval mode; architecture inferred or known.
    monkeypatch.setenv("HEINSEN_SHARED", str(PUBLISHED_DIR.parent.parent))
    loaded = load_published(name)
    assert type(loaded) is cls and not loaded.training
    arch = get_architecture(get_entry(PUBLISHED_ENTRIES[name]).architecture)
    assert type(arch.build(arch.infer_head_args(state_dict))) is cls
    with pytest.deprecated_call(match="create_model"):
        load_published(name)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


def test_reference_fixture_is_small_and_complete() -> None:
    assert REFERENCE.stat().st_size < 200_000
    tensors = load_file(str(REFERENCE))
    for name in PUBLISHED:
        for key in ("a_out", "mu_out", "sig2_out"):
            assert tensors[f"{name}/{key}"].dtype == torch.float64
    # The stored inputs are the ones the generator script builds (seeded, reproducible).
    made = _load_reference_module().make_inputs()
    for key, value in made.items():
        assert torch.equal(tensors[key], value), key


@needs_published
def test_outputs_match_stored_reference(published_models: dict[str, torch.nn.Module]) -> None:
    tensors = load_file(str(REFERENCE))
    args = _load_reference_module().model_inputs(tensors, torch.float32)
    for name, model in published_models.items():
        with torch.no_grad():
            outputs = model(*args[name])
        for key, got in zip(("a_out", "mu_out", "sig2_out"), outputs, strict=True):
            want = tensors[f"{name}/{key}"]
            assert got.dtype == torch.float32 and got.shape == want.shape, (name, key)
            torch.testing.assert_close(got.double(), want, rtol=5e-5, atol=2e-5, msg=f"{name}/{key}")


@needs_published
def test_sst_outputs_match_stored_reference_in_float64(published_models: dict[str, torch.nn.Module]) -> None:
    tensors = load_file(str(REFERENCE))
    args = _load_reference_module().model_inputs(tensors, torch.float64)
    for name in ("SST5R", "SST2R"):
        model = load_published(PUBLISHED_DIR / PUBLISHED[name][0]).double()
        with torch.no_grad():
            outputs = model(*args[name])
        for key, got in zip(("a_out", "mu_out", "sig2_out"), outputs, strict=True):
            torch.testing.assert_close(got, tensors[f"{name}/{key}"], rtol=1e-9, atol=1e-10)


@needs_published
def test_smallnorb_constant_image_and_eval_determinism(published_models: dict[str, torch.nn.Module]) -> None:
    model = published_models["smallNORB"]
    images = torch.cat([torch.full((1, 2, 96, 96), 0.7), torch.zeros(1, 2, 96, 96)])
    with torch.no_grad():
        first = model(images)
        second = model(images)
        single = model(images[0])  # unbatched [2, 96, 96]
    a_out, mu_out, sig2_out = first
    assert a_out.shape == (2, 5) and mu_out.shape == sig2_out.shape == (2, 5, 4, 4)
    assert all(torch.isfinite(t).all() for t in first) and torch.all(sig2_out > 0)
    assert 0 <= int(a_out[0].argmax()) < 5
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)  # eval mode: BatchNorm uses running statistics, nothing random
    for a, b in zip(single, first, strict=True):
        torch.testing.assert_close(a, b[0], rtol=1e-5, atol=1e-5)


@needs_published
def test_sst_padding_has_no_influence(published_models: dict[str, torch.nn.Module]) -> None:
    model = published_models["SST5R"]
    gen = torch.Generator().manual_seed(0)
    embs = torch.randn(1, 6, 37, 1280, generator=gen)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        padded = model(mask, embs)
        other_padding = model(
            mask, torch.cat([embs[:, :4], 50 * torch.randn(1, 2, 37, 1280, generator=gen)], dim=1)
        )
        unpadded = model(torch.ones(1, 4), embs[:, :4])
        as_bool = model(mask.bool(), embs)
    for a, b, c, d in zip(padded, other_padding, unpadded, as_bool, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(a, d)


# ---------------------------------------------------------------------------------------------------------------
# Architecture and validation (no published weights needed).


def test_architecture_names_and_shapes() -> None:
    norb = SmallNORBClassifier()
    sd = norb.state_dict()
    assert [k for k in sd if k.endswith(".weight") and sd[k].dim() == 4][:2] == [
        "convolve.1.weight",
        "convolve.4.weight",
    ]
    assert sd["compute_mu.1.weight"].shape == (1024, 64, 1, 1) and sd["routings.0.W"].shape == (1, 64, 4, 4)
    assert sd["routings.1.W"].shape == (64, 5, 4, 4) and "convolve.16.weight" in sd
    assert SmallNORBClassifier.feature_map_size(96) == 9
    sst = SSTClassifier(n_classes=5)
    assert {k: tuple(v.shape) for k, v in sst.state_dict().items() if not k.startswith("routings")} == {
        "depth_emb": (37, 1280),
        "detect_parts.0.weight": (64, 1280),
        "detect_parts.0.bias": (64,),
        "detect_parts.2.weight": (64,),
        "detect_parts.2.bias": (64,),
    }
    assert sst.state_dict()["routings.0.W"].shape == (1, 64, 64, 2)
    assert sst.state_dict()["routings.1.B"].shape == (64, 5, 1, 2)
    assert torch.all(sst.depth_emb == 0)


def test_capsule_order_is_part_major_then_row_then_column() -> None:
    # With the routings replaced by a probe, the capsules reaching the first routing are checked directly.
    torch.manual_seed(0)
    model = SmallNORBClassifier(n_parts=3, d_chns=4).eval()
    seen = {}

    def probe(module, args):
        seen["a"], seen["mu"] = args

    model.routings[0].register_forward_pre_hook(probe)
    images = torch.rand(2, 2, 96, 96)
    with torch.no_grad():
        model(images)
        features = model.convolve(model.add_coord_grid(images))  # [2, 4, 9, 9]
        a_map = model.compute_a(features)  # [2, 3, 9, 9]
        mu_map = model.compute_mu(features)  # [2, 48, 9, 9]
    part, row, col = 2, 5, 7
    capsule = part * 81 + row * 9 + col
    assert seen["a"].shape == (2, 243) and seen["mu"].shape == (2, 243, 4, 4)
    torch.testing.assert_close(seen["a"][:, capsule], a_map[:, part, row, col])
    torch.testing.assert_close(
        seen["mu"][:, capsule].reshape(2, 16), mu_map[:, part * 16 : (part + 1) * 16, row, col]
    )
    # The coordinate grid: rows then columns, each linspace(-1, 1).
    grid = SmallNORBClassifier.add_coord_grid(torch.zeros(1, 2, 3, 5))
    torch.testing.assert_close(grid[0, 2, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(grid[0, 3, 0], torch.linspace(-1, 1, 5))


def test_input_validation_errors() -> None:
    norb = SmallNORBClassifier(n_parts=2, d_chns=4).eval()
    with pytest.raises(ValueError, match=r"images: expected 2 channels .* got 3"):
        norb(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"images: expected a tensor of shape \[..., 2, H, W\]"):
        norb(torch.rand(96, 96))
    with pytest.raises(ValueError, match="H and W of at least 29"):
        norb(torch.rand(1, 2, 28, 96))
    assert SmallNORBClassifier.min_size() == 29 and norb(torch.rand(1, 2, 29, 29))[0].shape == (1, 5)
    with pytest.raises(TypeError, match="images: expected a floating-point tensor"):
        norb(torch.zeros(1, 2, 96, 96, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images: expected finite values"):
        norb(torch.full((1, 2, 96, 96), float("nan")))
    with pytest.raises(ValueError, match="images: expected device"):
        norb(torch.rand(1, 2, 96, 96, device="meta"))
    assert norb(torch.rand(3, 2, 2, 96, 96))[0].shape == (3, 2, 5)  # any leading dims

    sst = SSTClassifier(d_depth=3, d_emb=8, n_classes=2).eval()
    embs = torch.randn(2, 4, 3, 8)
    with pytest.raises(ValueError, match=r"embs: expected \(d_depth, d_emb\) = \(3, 8\)"):
        sst(torch.ones(2, 4), torch.randn(2, 4, 3, 9))
    with pytest.raises(ValueError, match=r"mask: expected shape \[..., n_tok\] = \[2, 4\]"):
        sst(torch.ones(2, 5), embs)
    with pytest.raises(ValueError, match=r"mask: expected values in \[0, 1\]"):
        sst(torch.full((2, 4), 2.0), embs)
    with pytest.raises(TypeError, match="mask: expected a bool or floating-point tensor"):
        sst(torch.ones(2, 4, dtype=torch.long), embs)
    with pytest.raises(ValueError, match="embs: expected finite values"):
        sst(torch.ones(2, 4), embs.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="at least one token"):
        sst(torch.ones(2, 0), embs[:, :0])
    with pytest.raises(ValueError, match="n_classes: required"):
        SSTClassifier()
    with pytest.raises(ValueError, match="n_parts"):
        SmallNORBClassifier(n_parts=0)


def _save_tiny(path: Path, state_dict: dict[str, torch.Tensor]) -> str:
    torch.save(state_dict, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_published_errors(tmp_path: Path) -> None:
    """The deprecated alias loads through create_model: strict, weights-only, published digests verified."""
    sd = SSTClassifier(d_depth=3, d_emb=8, n_classes=4).state_dict()
    good = tmp_path / "good.pt"
    _save_tiny(good, sd)
    model = load_published(good)  # head arguments inferred from the shapes
    assert isinstance(model, SSTClassifier) and model.n_classes == 4 and not model.training

    _save_tiny(tmp_path / "SST5R_pretrained_model_state_dict.pt", sd)  # named like a published file
    with pytest.raises(
        ChecksumMismatchError, match="SST5R_pretrained_model_state_dict.pt: expected sha256 15f26c"
    ):
        load_published(tmp_path / "SST5R_pretrained_model_state_dict.pt")
    _save_tiny(tmp_path / "extra.pt", {**sd, "surprise": torch.zeros(1)})
    with pytest.raises(StateDictMismatchError, match=r"unexpected keys \['surprise'\]"):
        load_published(tmp_path / "extra.pt")
    _save_tiny(tmp_path / "missing.pt", {k: v for k, v in sd.items() if k != "routings.1.beta_ign"})
    with pytest.raises(StateDictMismatchError, match=r"missing keys \['routings.1.beta_ign'\]"):
        load_published(tmp_path / "missing.pt")
    _save_tiny(tmp_path / "shapes.pt", {**sd, "routings.1.B": torch.zeros(64, 4, 1, 3)})
    with pytest.raises(StateDictMismatchError, match="shape mismatches routings.1.B"):
        load_published(tmp_path / "shapes.pt")
    torch.save({"not": "tensors", "x": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(
        UnsafeCheckpointError, match="refusing to unpickle arbitrary objects from .*pickled.pt"
    ):
        load_published(tmp_path / "pickled.pt")
    _save_tiny(tmp_path / "unknown.pt", {"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown.pt: no known architecture recognised"):
        load_published(tmp_path / "unknown.pt")
    head = RoutingHead(2, 8, 3, n_hid=4).state_dict()
    _save_tiny(tmp_path / "head.pt", head)
    with pytest.raises(ValueError, match="not a 2019 capsule classifier"):
        load_published(tmp_path / "head.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        load_published(tmp_path / "nope.pt")


@pytest.mark.gpu
@needs_published
def test_cuda_matches_stored_reference_and_autocast_runs() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tensors = load_file(str(REFERENCE))
    args = _load_reference_module().model_inputs(tensors, torch.float32)
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 on the GPU
    try:
        for name in PUBLISHED:
            model = load_published(PUBLISHED_DIR / PUBLISHED[name][0], map_location="cuda")
            with torch.no_grad():
                outputs = model(*(t.cuda() for t in args[name]))
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    mixed = model(*(t.cuda() for t in args[name]))
            for key, got in zip(("a_out", "mu_out", "sig2_out"), outputs, strict=True):
                torch.testing.assert_close(got.double().cpu(), tensors[f"{name}/{key}"], rtol=1e-4, atol=1e-4)
            assert all(torch.isfinite(t).all() for t in mixed), name
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
