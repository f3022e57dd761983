"""push_to_hub with the Hugging Face API patched (no network): files, card, hf-hub round trip."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

from heinsen_zoo.model import RoutingClassifier
from heinsen_zoo.zoo import publish
from heinsen_zoo.zoo.errors import OfflineError
from heinsen_zoo.zoo.hub import from_pretrained, save_pretrained

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}


class FakeHub:
    """Stands in for HfApi and hf_hub_download: a 'remote' folder per repository and commit."""

    def __init__(self, root: Path) -> None:
        self.root, self.repos, self.commits = root, {}, []

    def create_repo(self, repo_id, repo_type="model", private=None, exist_ok=False, **_):
        if repo_id in self.repos and not exist_ok:
            raise RuntimeError("exists")
        self.repos.setdefault(repo_id, {"private": private})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, allow_patterns, commit_message, **kwargs):
        assert repo_id in self.repos, "upload before create_repo"
        sha = f"{len(self.commits):040d}"
        snapshot = self.root / repo_id.replace("/", "--") / "snapshots" / sha
        snapshot.mkdir(parents=True)
        sent = sorted(p.name for p in Path(folder_path).iterdir() if p.name in allow_patterns)
        for name in sent:
            shutil.copy(Path(folder_path) / name, snapshot / name)
        self.commits.append({"repo_id": repo_id, "files": sent, "message": commit_message, **kwargs})
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", oid=sha)

    def hf_hub_download(self, repo_id, filename, revision=None, local_files_only=False, **_):
        snapshots = sorted((self.root / repo_id.replace("/", "--") / "snapshots").iterdir())
        path = snapshots[-1] / filename
        if not path.is_file():
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("heinsen_zoo.backbones._resolve.is_offline", lambda *a, **k: False, raising=False)
    fake = FakeHub(tmp_path / "remote")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(publish, "_make_api", lambda token: fake)
    return fake


def exported(tmp_path) -> tuple[RoutingClassifier, Path]:
    torch.manual_seed(0)
    model = RoutingClassifier(SPEC, n_classes=3, d_depth=3, d_emb=16, n_hid=4, labels=["a", "b", "c"])
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, save_pretrained(model, tmp_path / "export", extra_config={"metrics": {"test/acc": 0.75}})


def test_push_uploads_export_and_card_then_round_trips(fake_hub, tmp_path, capsys):
    model, out = exported(tmp_path)
    assert publish.main([str(out), "me/tiny-head", "--private"]) == 0
    printed = capsys.readouterr().out
    assert "pushed" in printed and 'from_pretrained("hf-hub:me/tiny-head")' in printed
    (commit,) = fake_hub.commits
    assert commit["files"] == ["README.md", "config.json", "model.safetensors"]
    assert fake_hub.repos["me/tiny-head"]["private"] is True
    uploaded = tmp_path / "remote" / "me--tiny-head" / "snapshots" / f"{0:040d}"
    data = ModelCard.load(uploaded / "README.md").data
    assert data.library_name == "heinsen-zoo" and data.base_model == "roberta-large"
    assert data.eval_results[0].metric_value == 75.0
    again = from_pretrained("hf-hub:me/tiny-head")
    for (key, a), b in zip(model.head.state_dict().items(), again.head.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    hidden = torch.randn(2, 5, 3, 16)
    assert torch.equal(model.head(hidden), again.head(hidden))


def test_broken_export_is_not_pushed(fake_hub, tmp_path, capsys):
    _, out = exported(tmp_path)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert publish.main([str(out), "me/tiny-head"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert fake_hub.commits == [] and fake_hub.repos == {}


def test_bad_repo_id_and_offline(tmp_path, monkeypatch):
    _, out = exported(tmp_path)
    with pytest.raises(ValueError, match="OWNER/REPO"):
        publish.push_to_hub(out, "no-owner", api=object())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        publish.push_to_hub(out, "me/x", api=object())


def test_heinsen_zoo_push_command(fake_hub, tmp_path, capsys):
    from heinsen_zoo.cli import main

    _, out = exported(tmp_path)
    assert main(["push", str(out), "me/cli-head", "--message", "first head"]) == 0
    assert fake_hub.commits[0]["message"] == "first head"
    assert "https://huggingface.co/me/cli-head" in capsys.readouterr().out
    assert main(["push", str(out), "not-a-repo-id"]) == 2
    assert "error: repo_id: expected 'OWNER/REPO'" in capsys.readouterr().err
