"""Model cards: YAML front matter (library, tags, licence, datasets, base model, metrics) and body."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard

from heinsen_zoo.model import RoutingClassifier
from heinsen_zoo.zoo import card, export_format, registry
from heinsen_zoo.zoo.convert import _base_config
from heinsen_zoo.zoo.hub import save_pretrained

SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HEINSEN_ZOO_CACHE", str(tmp_path / "cache"))


def test_card_of_a_registry_entry_has_both_metrics():
    config = _base_config("routing_beit_large_p16_224.cifar10_heinsen2022")
    config["metrics"] = {"test/acc": 0.9912, "test/loss": 0.05}
    text = card.build_model_card(config, repo_id="someone/beit-cifar10")
    parsed = ModelCard(text)
    data = parsed.data.to_dict()
    assert data["library_name"] == "heinsen-zoo"
    assert data["license"] == "mit"
    assert data["base_model"] == "microsoft/beit-large-patch16-224"
    assert data["datasets"] == ["uoft-cs/cifar10"]
    assert data["pipeline_tag"] == "image-classification"
    assert {"heinsen-routing", "routing_head", "vision"} <= set(data["tags"])
    results = parsed.data.eval_results
    values = {r.metric_name: r.metric_value for r in results}
    assert values["test/acc (this export, measured)"] == pytest.approx(99.12)
    assert values["top-1 (published, ±0.5 tolerance)"] == 99.2
    # The Hub groups results by task and dataset with one source per group: the paper is named as the source
    # only where no measurement of ours shares the group (never credited with our number).
    assert all(r.source_name is None for r in results)
    del config["metrics"]
    (published,) = ModelCard(card.build_model_card(config)).data.eval_results
    assert published.source_name == "Heinsen, F. A. (2022)"
    assert published.source_url == "https://arxiv.org/abs/2211.11754"
    assert all(r.dataset_split == "test" and r.task_type == "image-classification" for r in results)
    assert 'from_pretrained("hf-hub:someone/beit-cifar10")' in text
    assert "airplane, automobile" in text  # labels
    assert "arXiv:2211.11754" in text


def test_write_model_card_into_an_export(tmp_path):
    torch.manual_seed(0)
    model = RoutingClassifier(SPEC, n_classes=2, d_depth=3, d_emb=16, n_hid=4, labels=["neg", "pos"])
    out = save_pretrained(model, tmp_path / "export", extra_config={"metrics": {"val/acc": 0.5}})
    path = export_format.write_model_card(out, repo_id="me/tiny")
    parsed = ModelCard.load(path)
    assert parsed.data.base_model == "roberta-large"
    assert parsed.data.pipeline_tag == "text-classification"
    assert parsed.data.eval_results[0].metric_value == 50.0
    assert parsed.data.eval_results[0].dataset_split == "val"
    config_sha = __import__("json").loads((out / "config.json").read_text())["sha256"]["model.safetensors"]
    assert config_sha in path.read_text()
    path.write_text("kept")
    export_format.write_model_card(out, overwrite=False)
    assert path.read_text() == "kept"


def test_licence_mapping_and_unknown_text():
    assert card._license("MIT, (c) 2019 GlassRoom Software LLC") == ("mit", None)
    assert card._license("Apache-2.0") == ("apache-2.0", None)
    assert card._license("custom research licence") == ("other", "custom research licence")
    assert card._license("") == ("unknown", None)


def test_every_builtin_entry_gets_a_valid_card():
    for name in registry.list_models():
        text = card.build_model_card(_base_config(name), repo_id=f"me/{name.replace('.', '-')}")
        data = ModelCard(text).data
        assert data.library_name == "heinsen-zoo", name
        if registry.get_entry(name).metric is not None:
            assert any("published" in r.metric_name for r in data.eval_results), name
