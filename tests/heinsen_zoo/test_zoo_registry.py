"""The model registry: names, patterns, entries, weight resolution and the messages when weights are missing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from heinsen_zoo.zoo import registry
from heinsen_zoo.zoo.checksums import ChecksumMismatchError
from heinsen_zoo.zoo.errors import (
    ClassCountMismatchError,
    IncompatibleConfigError,
    OfflineError,
    UnknownModelError,
    WeightsNotFoundError,
)
from heinsen_zoo.zoo.registry import ModelEntry, create_model, get_entry, list_models, register_model

SHARED = Path(os.environ.get("HEINSEN_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared"))
PUBLISHED_2019 = SHARED / "checkpoints" / "heinsen2019"

ALL_NAMES = [
    "capsules_gpt2_large.sst2r_heinsen2019",
    "capsules_gpt2_large.sst5r_heinsen2019",
    "capsules_smallnorb.heinsen2019",
    "routing_beit_large_p16_224.cifar100_heinsen2022",
    "routing_beit_large_p16_224.cifar10_heinsen2022",
    "routing_beit_large_p16_224.in1k_heinsen2022",
    "routing_minilm_l6.bbc_news_demo",
    "routing_roberta_large.imdb_heinsen2022",
    "routing_roberta_large.sst2r_heinsen2022",
    "routing_roberta_large.sst5r_heinsen2022",
]


pytestmark = pytest.mark.usefixtures("isolated_zoo")


def test_list_models_patterns():
    assert list_models() == ALL_NAMES
    assert list_models("routing_beit*") == [n for n in ALL_NAMES if n.startswith("routing_beit")]
    assert len(list_models("routing_beit*")) == 3
    assert list_models(["capsules_smallnorb.*", "*demo"]) == [
        "capsules_smallnorb.heinsen2019",
        "routing_minilm_l6.bbc_news_demo",
    ]
    assert list_models("*sst?r_heinsen20??") == [n for n in ALL_NAMES if "sst2r" in n or "sst5r" in n]
    assert list_models("no_such_model*") == []


def test_list_models_pretrained_keeps_only_names_with_local_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HEINSEN_SHARED", str(tmp_path / "no_shared"))
    assert list_models(pretrained=True) == []
    folder = tmp_path / "w2019"
    folder.mkdir()
    (folder / "SST2R_pretrained_model_state_dict.pt").write_bytes(b"x")  # only existence is checked here
    monkeypatch.setenv("HEINSEN_2019_DIR", str(folder))
    assert list_models(pretrained=True) == ["capsules_gpt2_large.sst2r_heinsen2019"]


def test_get_entry_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        get_entry("routing_beit_large_p16_224.in1k")
    err = info.value
    assert isinstance(err, KeyError)
    assert "routing_beit_large_p16_224.in1k_heinsen2022" in err.suggestions
    message = str(err)
    assert message.startswith("unknown model name 'routing_beit_large_p16_224.in1k'")
    assert "did you mean" in message and "in1k_heinsen2022" in message
    with pytest.raises(KeyError, match="capsules_smallnorb.heinsen2019"):
        get_entry("capsules_smalnorb.heinsen2019")  # a typo


def test_get_entry_architecture_without_tag():
    assert get_entry("capsules_smallnorb").name == "capsules_smallnorb.heinsen2019"
    with pytest.raises(UnknownModelError, match="several tags") as info:
        get_entry("routing_roberta_large")
    assert len(info.value.suggestions) == 3


def test_builtin_entries_match_the_papers_and_read_the_rows():
    published = {
        "routing_beit_large_p16_224.in1k_heinsen2022": (1000, 86.7),
        "routing_beit_large_p16_224.cifar10_heinsen2022": (10, 99.2),
        "routing_beit_large_p16_224.cifar100_heinsen2022": (100, 93.8),
        "routing_roberta_large.imdb_heinsen2022": (2, 96.2),
        "routing_roberta_large.sst5r_heinsen2022": (5, 59.8),
        "routing_roberta_large.sst2r_heinsen2022": (2, 96.0),
        "capsules_smallnorb.heinsen2019": (5, 99.1),
        "capsules_gpt2_large.sst5r_heinsen2019": (5, 58.5),
        "capsules_gpt2_large.sst2r_heinsen2019": (2, 95.6),
    }
    for name, (n_classes, value) in published.items():
        entry = get_entry(name)
        assert entry.n_classes == n_classes, name
        assert len(entry.get_labels()) == n_classes, name
        assert entry.metric.value == value and entry.metric.tolerance > 0, name
        assert entry.paper and entry.license, name
        if entry.architecture == "routing_head":
            assert (entry.head["d_depth"], entry.head["d_emb"], entry.head["n_hid"]) == (25, 1024, 64)
            rev = {"microsoft/beit-large-patch16-224": "0bd443c", "roberta-large": "5069d8a"}
            assert entry.backbone["revision"] == rev[entry.backbone["id"]]
    assert len(set(get_entry("routing_beit_large_p16_224.cifar100_heinsen2022").get_labels())) == 100
    # The entries read their numbers from the one row file: every metric names its row, and a row added or
    # changed there is what the registry reports.
    from heinsen_zoo.reproduction.rows import load_rows

    rows = load_rows()
    for name in published:
        metric = get_entry(name).metric
        row = rows[metric.reproduce_row]
        assert (row.published, row.tolerance, row.split) == (metric.value, metric.tolerance, metric.split), (
            name
        )


def test_2019_digests_equal_the_published_sha256sums():
    sums = PUBLISHED_2019 / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("shared/checkpoints/heinsen2019 not available")
    published = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    for name in list_models("capsules_*"):
        for source in get_entry(name).weights:
            assert source.sha256 == published[Path(source.location).name]


def test_describe_is_honest_about_unknown_digests():
    text = get_entry("routing_roberta_large.imdb_heinsen2022").describe()
    assert "sha256 unknown (none published)" in text and "first use" in text and "sha256.lock" in text
    assert "$HEINSEN_2022_DIR/roberta_large_imdb_head.pt" in text
    assert "top1 96.2% ±0.5" in text and "roberta-large @ 5069d8a" in text
    text_2019 = get_entry("capsules_smallnorb.heinsen2019").describe()
    assert "e4dca94f4ee01ae8dcdf1278b409e29dfc0bbf894d897d9f98e16de6d7ae7520 (published" in text_2019
    assert "make demo" in get_entry("routing_minilm_l6.bbc_news_demo").describe()


def test_2022_weights_missing_message_says_where_to_put_the_file():
    with pytest.raises(WeightsNotFoundError) as info:
        create_model("routing_roberta_large.sst5r_heinsen2022")
    message = str(info.value)
    assert "$HEINSEN_2022_DIR is not set" in message
    assert "roberta_large_sst5r_head.pt" in message and "checkpoints/heinsen2022" in message
    assert "HEINSEN_2022_DIR" in message.splitlines()[-1]  # the hint: how to provide it


def test_demo_without_make_demo_says_run_make_demo_first():
    with pytest.raises(WeightsNotFoundError, match="run `make demo` first"):
        create_model("routing_minilm_l6.bbc_news_demo")


def test_create_model_without_weights_and_overrides():
    model = create_model("routing_minilm_l6.bbc_news_demo", pretrained=False)
    assert type(model).__name__ == "RoutingClassifier"
    assert (model.head.d_depth, model.head.d_emb, model.n_classes) == (7, 384, 5)
    assert model.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert model.pretrained_cfg["name"] == "routing_minilm_l6.bbc_news_demo"
    smaller = create_model("routing_minilm_l6.bbc_news_demo", pretrained=False, n_classes=3, n_hid=8)
    assert smaller.n_classes == 3 and smaller.labels is None and smaller.head.n_hid == 8
    with pytest.raises(IncompatibleConfigError, match="cannot override .*n_classes"):
        create_model("routing_minilm_l6.bbc_news_demo", pretrained=True, n_classes=3)
    with pytest.raises(ClassCountMismatchError, match="2 labels for 5 classes"):
        create_model("routing_minilm_l6.bbc_news_demo", pretrained=False, labels=["a", "b"])
    with pytest.raises(TypeError, match="unknown overrides"):
        create_model("routing_minilm_l6.bbc_news_demo", pretrained=False, n_layers=3)


def _head_state(d_depth: int, d_emb: int, n_classes: int, n_hid: int = 64, seed: int = 0) -> dict:
    from heinsen_zoo.heads import RoutingHead

    torch.manual_seed(seed)
    head = RoutingHead(d_depth, d_emb, n_classes, n_hid=n_hid)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the init values
    return head.state_dict()


def test_2022_original_file_in_env_dir_loads_and_is_locked_on_first_use(tmp_path, monkeypatch):
    folder = tmp_path / "heinsen2022"
    folder.mkdir()
    monkeypatch.setenv("HEINSEN_2022_DIR", str(folder))
    state = _head_state(25, 1024, 5)
    path = folder / "roberta_large_sst5r_head.pt"
    torch.save({"head." + k: v for k, v in state.items()}, path)  # the published layout may carry a prefix
    model = create_model("routing_roberta_large.sst5r_heinsen2022")
    loaded = model.head.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert model.padding == "none" and model.labels[0] == "very negative"
    lock = tmp_path / "cache" / "sha256.lock"
    assert model.pretrained_cfg["weights_sha256"] in lock.read_text()
    create_model("routing_roberta_large.sst5r_heinsen2022")  # verified against the record
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a single flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="recorded on first use"):
        create_model("routing_roberta_large.sst5r_heinsen2022")


def test_2022_entry_rejects_weights_with_another_class_count(tmp_path, monkeypatch):
    monkeypatch.setenv("HEINSEN_2022_DIR", str(tmp_path))
    torch.save(_head_state(25, 1024, 3, n_hid=8), tmp_path / "roberta_large_sst2r_head.pt")
    with pytest.raises(ClassCountMismatchError, match="n_classes=2 but the weights have 3 classes"):
        create_model("routing_roberta_large.sst2r_heinsen2022")


def test_register_model_validates_entries():
    head = {"d_depth": 2, "d_emb": 8, "n_classes": 3, "n_hid": 4}
    spec = {"source": "hf", "id": "x", "revision": None, "kind": "text"}
    with pytest.raises(ValueError, match="architecture.tag"):
        ModelEntry(name="NoDot", architecture="routing_head", head=head, backbone=spec)
    with pytest.raises(IncompatibleConfigError, match="architecture 'mlp' is unknown"):
        ModelEntry(name="a.b", architecture="mlp", head=head)
    with pytest.raises(IncompatibleConfigError, match=r"missing \['n_hid'\]"):
        ModelEntry(name="a.b", architecture="routing_head", head={"d_depth": 2, "d_emb": 8, "n_classes": 3})
    with pytest.raises(ClassCountMismatchError, match="2 labels given but the head has 3 classes"):
        ModelEntry(name="a.b", architecture="routing_head", head=head, backbone=spec, labels=("x", "y"))
    register_model(ModelEntry(name="routing_tiny.t1", architecture="routing_head", head=head, backbone=spec))
    with pytest.raises(ValueError, match="already registered"):
        register_model(
            {"name": "routing_tiny.t1", "architecture": "routing_head", "head": head, "backbone": spec}
        )


def test_user_registry_file_adds_entries_with_paths_relative_to_the_file(tmp_path, monkeypatch):
    from heinsen_zoo.model import RoutingClassifier
    from heinsen_zoo.zoo.hub import save_pretrained

    spec = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}
    model = RoutingClassifier(spec, n_classes=3, d_depth=2, d_emb=8, n_hid=4, labels=["a", "b", "c"])
    save_pretrained(model, tmp_path / "exports" / "mine")
    reg = tmp_path / "my_registry.json"
    entry = {
        "name": "routing_roberta_large.my_task",
        "architecture": "routing_head",
        "head": {"d_depth": 2, "d_emb": 8, "n_classes": 3, "n_hid": 4},
        "backbone": spec,
        "labels": ["a", "b", "c"],
        "weights": ["exports/mine"],
        "metric": {"name": "top1", "split": "test", "value": 90.0, "tolerance": 1.0},
    }
    reg.write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    monkeypatch.setenv("HEINSEN_ZOO_REGISTRY", str(reg))
    assert "routing_roberta_large.my_task" in list_models("routing_roberta_large.*")
    loaded = create_model("routing_roberta_large.my_task")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.head.state_dict().values(), loaded.head.state_dict().values(), strict=True)
    )
    assert loaded.pretrained_cfg["name"] == "routing_roberta_large.my_task"
    # The export must agree with its entry: an entry claiming another backbone revision is refused.
    entry["name"], entry["backbone"] = "routing_roberta_large.my_task2", {**spec, "revision": "abcdef0"}
    reg2 = tmp_path / "reg2.json"
    reg2.write_text(json.dumps([entry]))
    monkeypatch.setenv("HEINSEN_ZOO_REGISTRY", str(reg2))
    with pytest.raises(IncompatibleConfigError, match="backbone revision '5069d8a' vs 'abcdef0'"):
        create_model("routing_roberta_large.my_task2")


def test_url_weights_fail_fast_offline():
    entry = ModelEntry(
        name="routing_tiny.url_only",
        architecture="routing_head",
        head={"d_depth": 2, "d_emb": 8, "n_classes": 3, "n_hid": 4},
        backbone={"source": "hf", "id": "x", "revision": None, "kind": "text"},
        weights=(registry.WeightSource("https://example.invalid/heads/tiny.safetensors", sha256="a" * 64),),
    )
    register_model(entry)
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="offline .* not yet downloaded"):
        create_model("routing_tiny.url_only")
    assert time.perf_counter() - start < 5.0
