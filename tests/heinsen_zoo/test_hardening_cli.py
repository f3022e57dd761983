"""The command line on bad input (issue #14): one ``error: ...`` line in every subcommand, checkpoints from
URLs refused, local checkpoints checked before Lightning unpickles them, ``--gpus`` without a GPU, no
temporary config left behind by a killed run, and ``infer`` with bounded cost per input."""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

from heinsen_zoo.cli import main

CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:  # Lightning's handlers hold the stream of the test that first imported it
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                monkeypatch.setattr(handler, "stream", sys.stderr)


def _one_error_line(capsys) -> str:
    """The one ``error: ...`` line on stderr (last), with no raw exception line (``SomeError: ...``)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    raw = [line for line in err if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)]
    assert len(errors) == 1 and errors[0] == err[-1] and not raw, err[-8:]
    return errors[0]


class _Bomb:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bomb_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "bomb.ckpt"
    torch.save(
        {"state_dict": {}, "pytorch-lightning_version": "2.6.0", "x": _Bomb(str(tmp_path / "RAN"))}, path
    )
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------ 2. ckpt_path


def test_ckpt_path_url_is_refused_and_never_fetched(tmp_path, capsys):
    payload, requests = _bomb_bytes(tmp_path), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/bomb.ckpt"
    try:
        rc = main(["validate", "--experiment", "smallnorb2019", *CPU, "--ckpt_path", url,
                   "--data.init_args.data_dir", str(tmp_path / "norb")])  # fmt: skip
    finally:
        server.shutdown()
    assert rc == 2
    assert "checkpoints are not loaded from URLs" in _one_error_line(capsys)
    assert requests == [] and not (tmp_path / "RAN").exists()


def test_local_ckpt_path_goes_through_the_safe_loader_first(tmp_path, capsys):
    (tmp_path / "bomb.ckpt").write_bytes(_bomb_bytes(tmp_path))
    rc = main(["validate", "--experiment", "smallnorb2019", *CPU, "--ckpt_path", str(tmp_path / "bomb.ckpt"),
               "--data.init_args.data_dir", str(tmp_path / "norb")])  # fmt: skip
    assert rc == 2
    assert "refusing to unpickle arbitrary objects from" in _one_error_line(capsys)
    assert not (tmp_path / "RAN").exists()


# ------------------------------------------------------------------------------------------------ 7. errors


def test_missing_data_dir_is_one_error_line(tmp_path, capsys):
    rc = main(
        ["fit", "--experiment", "smallnorb2019", *CPU, "--data.init_args.data_dir", str(tmp_path / "nope")]
    )
    assert rc == 2
    assert "data_dir" in _one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("gpus", ["1", "3"])
def test_gpus_on_a_machine_without_cuda_says_no_gpu(gpus, capsys):
    assert main(["fit", "--experiment", "cifar10", "--gpus", gpus]) == 2
    assert f"--gpus {gpus}: no GPU on this machine" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------------ 12. temp config


def test_killed_run_leaves_no_temporary_config(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = (
        "import os, signal\n"
        "from heinsen_zoo.cli import expand_experiment_args\n"
        "argv, _ = expand_experiment_args(['fit', '--experiment', 'bbc_minilm_demo'])\n"
        "print(argv[-1], flush=True)  # the experiment's own keys: the last --config\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no atexit, no finally\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp), "HEINSEN_ZOO_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == -9, result.stderr[-2000:]
    assert sorted(p.name for p in tmp.iterdir()) == []
    from heinsen_zoo.cli import expand_experiment_args

    again, _ = expand_experiment_args(
        ["fit", "--experiment", "bbc_minilm_demo"]
    )  # a later run: the same file
    configs = [str(p) for p in (tmp_path / "cache" / "experiment-configs").iterdir()]
    assert configs == [result.stdout.strip().splitlines()[-1]] == [again[-1]]


# ------------------------------------------------------------------------------------------------ 3. infer


@pytest.fixture(scope="module")
def tiny_text_export(tmp_path_factory):
    from heinsen_zoo.backbones.tiny import write_tiny_backbone
    from heinsen_zoo.model import RoutingClassifier
    from heinsen_zoo.zoo.hub import save_pretrained

    root = tmp_path_factory.mktemp("tiny_text")
    spec = write_tiny_backbone("bert", root / "bert", max_length=32)
    d_depth, d_emb = spec.pop("d_depth"), spec.pop("d_emb")
    model = RoutingClassifier(spec, n_classes=2, d_depth=d_depth, d_emb=d_emb, n_hid=4, labels=["neg", "pos"])
    return save_pretrained(model, root / "export")


def _positions_seen(model) -> list[int]:
    seen: list[int] = []
    model.head.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[1])))
    return seen


def test_infer_cost_is_bounded_and_truncation_reported(tiny_text_export, tmp_path, capsys):
    from heinsen_zoo.inference import DEFAULT_MAX_CHUNKS, InputTruncatedWarning, predict
    from heinsen_zoo.zoo.hub import from_pretrained

    model = from_pretrained(tiny_text_export)
    seen = _positions_seen(model)
    words = "the quick brown fox jumps over the lazy dog " * 5000  # 225 KB
    (tmp_path / "long.txt").write_text(words * 20)  # 4.5 MB, read no further than the cap
    with pytest.warns(InputTruncatedWarning, match="only the first 8 used"):
        preds = predict(model, ["short text", words, str(tmp_path / "long.txt")], batch_size=1)
    cap = DEFAULT_MAX_CHUNKS * 32
    assert seen[0] <= 32 and max(seen) <= cap and seen[1] == seen[2], seen  # flat with input size
    assert preds[0].note is None and "max_chunks" in preds[1].note and "max_chars" in preds[2].note
    with pytest.warns(InputTruncatedWarning, match="only the first 2 used"):
        predict(model, [words], max_chunks=2)
    assert seen[-1] <= 2 * 32
    assert main(["infer", str(tiny_text_export), words[:20000], "--max-chunks", "3", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["note"].endswith("only the first 3 used (max_chunks)")
    assert any(line.startswith("note: input 'text[0]: the quick") for line in out.err.splitlines())


def test_infer_on_long_error_refuses_long_texts(tiny_text_export, capsys):
    from heinsen_zoo.inference import predict
    from heinsen_zoo.zoo.hub import from_pretrained

    model = from_pretrained(tiny_text_export)
    words = "the quick brown fox jumps over the lazy dog " * 200  # > 2 chunks of 32 tokens
    with pytest.raises(
        ValueError, match=r"input 'text\[1\]: the quick.*only the first 2 used.*on_long='error'"
    ):
        predict(model, ["short text", words], max_chunks=2, on_long="error")
    assert predict(model, ["short text"], max_chunks=2, on_long="error")[0].note is None  # short texts pass
    with pytest.raises(ValueError, match="on_long: expected 'truncate' or 'error', got 'drop'"):
        predict(model, ["short text"], on_long="drop")
    rc = main(["infer", str(tiny_text_export), words, "--max-chunks", "2", "--on-long", "error"])
    assert rc == 2
    line = _one_error_line(capsys)
    assert (
        line.startswith("error: input 'text[0]: the quick") and "only the first 2 used (max_chunks)" in line
    )


def test_imdb_entry_bounds_its_inputs():
    from heinsen_zoo.zoo.registry import get_entry

    assert get_entry("routing_roberta_large.imdb_heinsen2022").preprocessing.to_dict()["max_chunks"] == 8


def test_explain_naming_an_existing_file_is_one_error_line(tiny_text_export, tmp_path, capsys):
    (tmp_path / "taken.png").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["infer", str(tiny_text_export), "hello world", "--explain", str(tmp_path / "taken.png")])
    assert rc == 2
    assert "taken.png' exists and is not a folder" in _one_error_line(capsys)
