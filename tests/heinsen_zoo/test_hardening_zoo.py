"""Untrusted exports, registry files and checkpoints (issue #14): data, never code; sizes checked before
allocating; atomic, deterministic exports; clean errors; trust on first use only for files that loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from heinsen_zoo.heads import RoutingHead
from heinsen_zoo.model import RoutingClassifier
from heinsen_zoo.zoo import checksums, hub, registry
from heinsen_zoo.zoo.errors import (
    IncompatibleConfigError,
    StateDictMismatchError,
    UnsafeCheckpointError,
    UntrustedSpecError,
    ZooError,
)
from heinsen_zoo.zoo.hub import from_pretrained, save_pretrained, write_export

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text", "max_length": 512}


pytestmark = pytest.mark.usefixtures("isolated_zoo")


def tiny_model(seed: int = 0) -> RoutingClassifier:
    torch.manual_seed(seed)
    return RoutingClassifier(SPEC, n_classes=4, d_depth=3, d_emb=16, n_hid=8, labels=list("abcd")).eval()


def head_config(**head) -> dict:
    return {"schema_version": 1, "architecture": "routing_head", "backbone": dict(SPEC),
            "head": {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8, **head}}  # fmt: skip


def remote_code_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A Hugging Face model folder whose config asks for custom code that writes a marker when imported."""
    folder, marker = tmp_path / "evil_model", tmp_path / "CODE_RAN"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    }))  # fmt: skip
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


# ------------------------------------------------------------------------------------------------ 1. specs


def test_export_asking_for_remote_code_is_refused_and_runs_nothing(tmp_path, capsys):
    folder, marker = remote_code_dir(tmp_path)
    out = save_pretrained(tiny_model(), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["backbone"] = {"source": "hf", "id": "evil", "revision": None, "kind": "text",
                          "local_path": str(folder), "model_kwargs": {"trust_remote_code": True}}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedSpecError, match=r"\['model_kwargs'\]\['trust_remote_code'\] is not allowed"):
        from_pretrained(out)
    from heinsen_zoo.cli import main

    assert main(["infer", str(out), "hello world"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "trust_remote_code" in err[0]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("backbone", "named"),
    [
        ({**SPEC, "model_kwargs": {"code_revision": "main"}}, "'code_revision'"),
        (
            {**SPEC, "model_kwargs": {"attn_implementation": "kernels-community/flash-attn"}},
            "attn_implementation",
        ),
        ({**SPEC, "model_kwargs": {"img_size": {"nested": "object"}}}, "'img_size'"),
        ({**SPEC, "class_path": "os.system"}, "'class_path'"),
        ({**SPEC, "max_chunks": "8"}, "'max_chunks'"),
    ],
)
def test_spec_from_a_file_is_plain_data_with_the_key_named(backbone, named):
    with pytest.raises(UntrustedSpecError, match=named):
        hub.validate_config({**head_config(), "backbone": backbone}, "x/config.json")


def test_registry_file_spec_is_checked_and_python_callers_may_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(
        textwrap.dedent("""
        models:
          - name: routing_x.evil
            architecture: routing_head
            head: {d_depth: 3, d_emb: 16, n_classes: 4, n_hid: 8}
            backbone: {source: hf, id: evil, kind: text, model_kwargs: {trust_remote_code: true}}
    """)
    )
    monkeypatch.setenv("HEINSEN_ZOO_REGISTRY", str(path))
    with pytest.raises(
        UntrustedSpecError, match=r"mine.yaml: entry 0 \('routing_x.evil'\).*trust_remote_code"
    ):
        registry.list_models()
    from heinsen_zoo.backbones import check_backbone_spec

    mine = {"source": "hf", "id": "x", "kind": "text", "model_kwargs": {"trust_remote_code": True}}
    assert check_backbone_spec(mine)["model_kwargs"] == {"trust_remote_code": True}  # the user's own call


def test_checkpoint_hparams_spec_is_checked(tmp_path):
    state = {"model.head." + k: v for k, v in RoutingHead(3, 16, 4, n_hid=8).state_dict().items()}
    spec = {**SPEC, "model_kwargs": {"trust_remote_code": True}}
    hp = {"backbone": spec, "n_classes": 4, "d_depth": 3, "d_emb": 16, "n_hid": 8}
    torch.save({"state_dict": state, "hyper_parameters": hp}, tmp_path / "x.ckpt")
    with pytest.raises(UntrustedSpecError, match="trust_remote_code"):
        from_pretrained(tmp_path / "x.ckpt")


# ------------------------------------------------------------------------------------------------ 4. sizes


@pytest.mark.parametrize("head", [{"n_hid": 100_000}, {"d_emb": 1_000_000}, {"n_hid": 2**70}])
def test_head_sizes_are_checked_against_the_weights_before_building(tmp_path, monkeypatch, head):
    out = save_pretrained(tiny_model(), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["head"].update(head)
    (out / "config.json").write_text(json.dumps(config))

    def never(*args, **kwargs):
        raise AssertionError("a model was built before its sizes were checked")

    monkeypatch.setattr(hub, "build_model", never)
    with pytest.raises(IncompatibleConfigError, match=next(iter(head))):
        from_pretrained(out)


# ------------------------------------------------------------------------------------------------ 10. files


def test_identical_weights_give_identical_files_with_ordinary_modes(tmp_path):
    old = os.umask(0o022)
    try:
        digests = {checksums.sha256_file(save_pretrained(tiny_model(), tmp_path / f"e{i}") / "model.safetensors")
                   for i in range(5)}  # fmt: skip
    finally:
        os.umask(old)
    assert len(digests) == 1
    out = tmp_path / "e0"
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644,
    }  # fmt: skip
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header) == sorted(header)


def test_integer_tensor_where_floats_are_expected_is_refused_and_fp16_reported(tmp_path):
    state = RoutingHead(3, 16, 4, n_hid=8).state_dict()
    write_export({**state, "W": (state["W"] * 100).long()}, head_config(), tmp_path / "int")
    with pytest.raises(StateDictMismatchError, match=r"'?W'?: checkpoint torch.int64 vs model torch.float32"):
        from_pretrained(tmp_path / "int")
    write_export({k: v.half() for k, v in state.items()}, head_config(), tmp_path / "half")
    with pytest.warns(UserWarning, match="cast to the model's float32"):
        from_pretrained(tmp_path / "half")


# ------------------------------------------------------------------------------------------------ 6. atomic

_KILL_DRIVER = r"""
import hashlib, json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
from heinsen_zoo.zoo.hub import write_export
target, n_kills = sys.argv[1], int(sys.argv[2])
config = json.loads(sys.argv[3])
states = [torch.load(path, weights_only=True) for path in sys.argv[4:6]]   # ~5 MB of weights each
digests = {json.loads((write_export(s, config, target + f".ref{i}") / "config.json").read_text())
           ["sha256"]["model.safetensors"] for i, s in enumerate(states)}
write_export(states[0], config, target)
rng = random.Random(1234)
broken = 0
for _ in range(n_kills):
    pid = os.fork()
    if pid == 0:
        k = 1
        while True:
            write_export(states[k % 2], config, target)
            k += 1
    time.sleep(rng.uniform(0.002, 0.08))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    try:
        recorded = json.loads(open(os.path.join(target, "config.json")).read())["sha256"]["model.safetensors"]
        actual = hashlib.sha256(open(os.path.join(target, "model.safetensors"), "rb").read()).hexdigest()
        broken += recorded != actual or actual not in digests
    except (OSError, ValueError, KeyError):
        broken += 1
write_export(states[1], config, target)   # a later write sweeps what killed writers left behind
parent = os.path.dirname(os.path.abspath(target))
print(json.dumps({"broken": broken, "leftovers": sorted(n for n in os.listdir(parent) if n.startswith("."))}))
"""


def test_kill_during_export_leaves_old_or_new_and_no_temporaries(tmp_path):
    config = head_config(d_emb=256, n_hid=64)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(RoutingHead(3, 256, 4, n_hid=64).state_dict(), tmp_path / f"state{seed}.pt")
        states.append(str(tmp_path / f"state{seed}.pt"))
    result = subprocess.run(
        [sys.executable, "-c", _KILL_DRIVER, str(tmp_path / "export"), "8", json.dumps(config), *states],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"broken": 0, "leftovers": []}
    assert from_pretrained(tmp_path / "export").pretrained_cfg["head"]["d_emb"] == 256


def test_failed_export_keeps_the_old_one_and_removes_its_temporaries(tmp_path, monkeypatch):
    out = save_pretrained(tiny_model(0), tmp_path / "export")
    before = (out / "model.safetensors").read_bytes()
    from heinsen_zoo.zoo import files

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files, "save_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_model(1), out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="holds other files \\(notes.txt\\)"):
        save_pretrained(tiny_model(), tmp_path / "mixed")


# ------------------------------------------------------------------------------------------------ 9. TOFU


class _Bomb:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_trust_on_first_use_never_pins_a_refused_file(tmp_path):
    weights = tmp_path / "w" / "head.pt"
    weights.parent.mkdir()
    torch.save({"head": _Bomb(str(tmp_path / "RAN"))}, weights)
    registry.register_model({
        "name": "routing_tofu.test", "architecture": "routing_head", "backbone": dict(SPEC),
        "head": {"d_depth": 3, "d_emb": 16, "n_classes": 4, "n_hid": 8}, "weights": [str(weights)],
    }, overwrite=True)  # fmt: skip
    with pytest.raises(UnsafeCheckpointError):
        registry.create_model("routing_tofu.test")
    lock = tmp_path / "cache" / checksums.LOCK_FILENAME
    assert checksums.read_lock(lock) == {} and not (tmp_path / "RAN").exists()
    torch.save(RoutingHead(3, 16, 4, n_hid=8).state_dict(), weights)  # the genuine file, put there later
    model = registry.create_model("routing_tofu.test")
    assert list(checksums.read_lock(lock).values()) == [model.pretrained_cfg["weights_sha256"]]


# ------------------------------------------------------------------------------------------------ 7. errors


def test_malformed_registry_yaml_is_a_clean_error(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - name: x\n    head: !!python/object/apply:os.system ['echo hi']\n")
    monkeypatch.setenv("HEINSEN_ZOO_REGISTRY", str(path))
    with pytest.raises(IncompatibleConfigError, match=r"bad.yaml: line 3: not valid \(safe\) YAML"):
        registry.list_models()
    from heinsen_zoo.cli import main

    assert main(["list"]) == 2
    assert capsys.readouterr().err.startswith("error: HEINSEN_ZOO_REGISTRY file")


def test_garbage_safetensors_to_convert_is_a_clean_error(tmp_path, capsys):
    from heinsen_zoo.zoo.convert import main

    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (tmp_path / "c.json").write_text(json.dumps({"backbone": SPEC}))
    assert main(["original", str(tmp_path / "garbage.safetensors"), str(tmp_path / "o"),
                 "--config", str(tmp_path / "c.json")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "garbage.safetensors: not a valid safetensors file" in err


def _mutations(data: bytes, rng, n: int):
    """Fixed-seed corruptions of ``data``: truncations, byte flips, splices, zeroed and duplicated runs."""
    for _ in range(n):
        kind = rng.randrange(5)
        buf = bytearray(data)
        if kind == 0:
            yield bytes(buf[: rng.randrange(len(buf))])
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            yield bytes(buf)
        elif kind == 2:
            start = rng.randrange(len(buf))
            yield bytes(
                buf[:start] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + buf[start:]
            )
        elif kind == 3:
            start = rng.randrange(len(buf))
            buf[start : start + rng.randint(1, 256)] = bytes(min(256, len(buf) - start))
            yield bytes(buf[: len(data)])
        else:
            start = rng.randrange(len(buf))
            yield bytes(buf[:start] + buf[start : start + rng.randint(1, 512)] + buf[start:])


def test_fuzzed_checkpoints_raise_only_zoo_errors(tmp_path):
    import random

    from heinsen_zoo.zoo import convert

    rng = random.Random(14)
    torch.manual_seed(14)
    state = RoutingHead(3, 16, 4, n_hid=8).state_dict()
    hp = {"backbone": SPEC, "n_classes": 4, "d_depth": 3, "d_emb": 16, "n_hid": 8}
    torch.save(state, tmp_path / "head.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # the 2019 files' format
    torch.save({"state_dict": {"model.head." + k: v for k, v in state.items()}, "hyper_parameters": hp,
                "epoch": 1, "global_step": 3}, tmp_path / "run.ckpt")  # fmt: skip
    export = write_export(state, head_config(), tmp_path / "export")

    def convert_it(path):
        convert.convert_original_state_dict(path, tmp_path / "out", {"backbone": SPEC})

    loaders = {
        "head.pt": convert_it,
        "legacy.pt": convert_it,
        "run.ckpt": convert.read_lightning_checkpoint,
        "model.safetensors": convert_it,
    }
    sources = {"head.pt": tmp_path / "head.pt", "legacy.pt": tmp_path / "legacy.pt",
               "run.ckpt": tmp_path / "run.ckpt", "model.safetensors": export / "model.safetensors"}  # fmt: skip
    escaped, cases = [], 0
    for name, load in loaders.items():
        data = sources[name].read_bytes()
        for k, corrupt in enumerate(_mutations(data, rng, 100)):
            path = tmp_path / "fuzz" / f"{k}_{name}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(corrupt)
            cases += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load(path)
            except ZooError:
                pass
            except Exception as err:  # noqa: BLE001 - what the test looks for
                escaped.append(f"{path.name}: {type(err).__name__}: {str(err)[:120]}")
            path.unlink()
    assert cases == 400
    assert escaped == []


def test_published_2019_loader_refuses_integer_weights(tmp_path):
    from heinsen_zoo.capsules2019 import SSTClassifier, load_published

    sd = SSTClassifier(d_depth=3, d_emb=8, n_classes=4).state_dict()
    torch.save({**sd, "routings.1.B": (sd["routings.1.B"] * 10).long()}, tmp_path / "int.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int.pt is not listed in a SHA256SUMS
        with pytest.raises(
            ValueError, match=r"dtype mismatches routings.1.B: checkpoint torch.int64 vs model"
        ):
            load_published(tmp_path / "int.pt")


def test_file_spec_allow_list_covers_every_backbone_option():
    """A new backbone option must be added to the file allow-list (with its type) or exports using it break."""
    from heinsen_zoo.backbones import _KEYS
    from heinsen_zoo.backbones._resolve import FILE_SPEC_KEYS

    assert set(FILE_SPEC_KEYS) == set().union(*_KEYS.values())
