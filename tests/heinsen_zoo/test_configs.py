"""Every experiment config parses, carries the papers' settings, and trains one step on tiny stand-ins.

The experiments are discovered with a glob over ``configs/experiments/*.yaml``, so a new experiment is
covered (or fails here, asking for a stand-in) without editing this file. Each one goes through the real
command-line path (``heinsen_zoo.cli.build_experiment``: ``defaults:`` fragments, the experiment's own keys,
then the overrides) with its backbone and data swapped for tiny stand-ins (paper rows: the reproduction
runner's ``prepare_smoke``; the demos: a tiny BERT and a few BBC articles), then fits with
``fast_dev_run`` on CPU.
"""

from __future__ import annotations

import importlib
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from heinsen_zoo.cli import build_experiment, configs_dir, expand_experiment_args

EXPERIMENTS = sorted(p.stem for p in (configs_dir() / "experiments").glob("*.yaml"))
FRAGMENTS = sorted(p.relative_to(configs_dir()).as_posix() for p in configs_dir().glob("*/*.yaml"))
FRAGMENT_SECTIONS = {"seed_everything", "trainer", "model", "data"}

# One vision row, one text row, the demo and fine-tuning (init_from + freeze) run by default; every other
# experiment is marked slow.
DEFAULT_RUN = {"cifar10", "sst5", "bbc_minilm_demo", "finetune_demo"}
DEMOS = {"bbc_minilm_demo", "finetune_demo"}

# SPEC §5: batch, epochs, steps per epoch (None = full pass), classes, backbone kind.
PAPER_2022 = {
    "imagenet1k": dict(batch=50, epochs=10, steps=None, n_classes=1000, kind="vision", data="ImageNetDataModule"),
    "cifar10": dict(batch=50, epochs=10, steps=2000, n_classes=10, kind="vision", data="CIFAR10DataModule"),
    "cifar100": dict(batch=50, epochs=10, steps=2000, n_classes=100, kind="vision", data="CIFAR100DataModule"),
    "imdb": dict(batch=5, epochs=10, steps=10000, n_classes=2, kind="text", data="IMDBDataModule"),
    "sst5": dict(batch=50, epochs=10, steps=2000, n_classes=5, kind="text", data="SSTDataModule"),
    "sst2": dict(batch=50, epochs=3, steps=2000, n_classes=2, kind="text", data="SSTDataModule"),
}
BACKBONE_2022 = {
    "vision": {"source": "hf", "id": "microsoft/beit-large-patch16-224", "revision": "0bd443c"},
    "text": {"source": "hf", "id": "roberta-large", "revision": "5069d8a"},
}
MIXUP_2022 = {"vision": 0.2, "text": 0.65}
# SPEC §6: epochs, task class, classes.
PAPER_2019 = {
    "smallnorb2019": dict(epochs=50, task="SmallNORBTask", n_classes=5),
    "sst5_2019": dict(epochs=3, task="SSTCapsuleTask", n_classes=5),
    "sst2_2019": dict(epochs=3, task="SSTCapsuleTask", n_classes=2),
}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch, tmp_path):
    """LightningCLI warns when both ``args`` and sys.argv (pytest's) are present; the experiment's own keys,
    which the CLI writes to a temporary file, go to the test's folder rather than the shared /tmp."""
    monkeypatch.setattr(sys, "argv", ["heinsen-zoo"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


# ---------------------------------------------------------------------------------------------- helpers
def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested-dict merge like LightningCLI's config merging (a backbone spec dict is replaced whole)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "backbone":
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def merged_experiment(name: str) -> dict[str, Any]:
    """The experiment's ``defaults:`` fragments merged in order, then its own keys (no CLI involved)."""
    spec = _read_yaml(configs_dir() / "experiments" / f"{name}.yaml")
    merged: dict[str, Any] = {}
    for fragment in spec.pop("defaults", []):
        _merge(merged, _read_yaml(configs_dir() / fragment))
    return _merge(merged, spec)


def resolve(class_path: str) -> type:
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _class_paths(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [p for value in node.values() for p in _class_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _class_paths(value)]
    return []


def _param(name: str):
    return pytest.param(name, id=name, marks=() if name in DEFAULT_RUN else pytest.mark.slow)


def _real_build(name: str, root: Path):
    """Instantiate an experiment as written (real backbone spec; the backbone is lazy), on CPU."""
    return build_experiment(name, ["--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(root)])


# ---------------------------------------------------------------------------------------------- structure
def test_experiments_are_discovered():
    assert set(PAPER_2022) | set(PAPER_2019) | DEMOS <= set(EXPERIMENTS)


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_every_config_fragment_parses_and_names_importable_classes(fragment):
    config = _read_yaml(configs_dir() / fragment)
    assert isinstance(config, dict) and config, f"{fragment}: expected a non-empty YAML mapping"
    allowed = FRAGMENT_SECTIONS | ({"defaults"} if fragment.startswith("experiments/") else set())
    assert set(config) <= allowed, f"{fragment}: unexpected top-level keys {set(config) - allowed}"
    for class_path in _class_paths(config):
        assert isinstance(resolve(class_path), type), f"{fragment}: {class_path} is not a class"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_defaults_exist_and_expand_in_order(name):
    path = configs_dir() / "experiments" / f"{name}.yaml"
    assert path.read_text().startswith("# "), f"{path}: the first line must be a comment (its title)"
    defaults = _read_yaml(path)["defaults"]
    assert defaults and defaults[0] == "trainer/base.yaml"
    for fragment in defaults:
        assert (configs_dir() / fragment).is_file(), f"{name}: defaults entry {fragment} missing"
    argv, options = expand_experiment_args(["fit", "--experiment", name])
    assert options["experiment"] == name
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    assert configs[: len(defaults)] == [str(configs_dir() / f) for f in defaults]
    assert len(configs) == len(defaults) + 1  # the experiment's own keys come last
    own = _read_yaml(path)
    own.pop("defaults")
    assert _read_yaml(Path(configs[-1])) == own
    # Every experiment resolves to a LightningModule and a LightningDataModule.
    merged = merged_experiment(name)
    import lightning.pytorch as pl

    assert issubclass(resolve(merged["model"]["class_path"]), pl.LightningModule)
    assert issubclass(resolve(merged["data"]["class_path"]), pl.LightningDataModule)


# ---------------------------------------------------------------------------------------------- paper settings
@pytest.mark.parametrize("name", list(PAPER_2022))
def test_2022_rows_carry_the_paper_settings(name, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from heinsen_zoo.tasks import RoutingClassificationTask

    row = PAPER_2022[name]
    merged = merged_experiment(name)
    assert merged["trainer"]["accelerator"] == "gpu"
    cli = _real_build(name, tmp_path)
    task, data = cli.model, cli.datamodule
    assert type(task) is RoutingClassificationTask
    assert type(data).__name__ == row["data"]
    hp = task.hparams
    backbone = hp.backbone
    assert {k: backbone.get(k) for k in ("source", "id", "revision")} == BACKBONE_2022[row["kind"]]
    assert backbone["kind"] == row["kind"]
    assert (hp.d_depth, hp.d_emb, hp.n_hid, hp.n_classes) == (25, 1024, 64, row["n_classes"])
    assert hp.lr == pytest.approx(1e-3) and hp.pct_start == pytest.approx(0.3)
    assert hp.mixup_alpha == pytest.approx(MIXUP_2022[row["kind"]])
    assert data.batch_size == row["batch"]
    assert data.steps_per_epoch == row["steps"]
    assert cli.trainer.max_epochs == row["epochs"]
    if row["kind"] == "text":
        assert backbone["max_length"] == 512 and backbone["pad_mode"] == "empty_chunk"  # 512-token chunks
    if name.startswith("sst"):
        assert data.n_classes == row["n_classes"]
    # A checkpoint after each epoch and last.ckpt = the latest one, in <root>/checkpoints; nothing is selected
    # by a metric (validation runs on the test split for several rows).
    checkpoints = [cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert len(checkpoints) == 1 and checkpoints[0].monitor is None and checkpoints[0].save_last is True
    assert checkpoints[0].save_top_k == -1 and checkpoints[0]._every_n_epochs == 1
    assert Path(checkpoints[0].dirpath) == Path(cli.trainer.default_root_dir).resolve() / "checkpoints"
    if name == "sst2":  # from the SST-5 head, all but the last routing frozen, the last re-created
        assert hp.init_from == merged_experiment("sst5")["model"]["init_args"]["export_dir"]
        assert hp.freeze == "all_but_last" and hp.replace_last is True
        trainable = {".".join(n.split(".")[:2]) for n, p in task.model.head.named_parameters() if p.requires_grad}
        assert trainable == {"route.2"}
    else:
        assert hp.init_from is None and hp.freeze == "none"


@pytest.mark.parametrize("name", list(PAPER_2019))
def test_2019_rows_carry_the_paper_settings(name, tmp_path):
    row = PAPER_2019[name]
    assert merged_experiment(name)["trainer"]["accelerator"] == "gpu"
    cli = _real_build(name, tmp_path)
    task, data = cli.model, cli.datamodule
    assert type(task).__name__ == row["task"]
    hp = task.hparams
    assert hp.lr == pytest.approx(5e-4) and hp.min_lr == pytest.approx(1e-5) and hp.pct_start == pytest.approx(0.1)
    assert data.batch_size == 20 and data.steps_per_epoch is None
    assert cli.trainer.max_epochs == row["epochs"]
    if name == "smallnorb2019":
        assert type(data).__name__ == "SmallNORBDataModule"
        assert (hp.n_objs, hp.n_parts, hp.d_chns) == (5, 64, 64)
        assert hp.mixup_alpha == pytest.approx(0.2)
    else:
        assert type(data).__name__ == "SSTDataModule" and data.n_classes == row["n_classes"]
        assert (hp.n_classes, hp.d_depth, hp.d_emb, hp.d_inp, hp.d_cap, hp.n_parts) == (
            row["n_classes"], 37, 1280, 64, 2, 64
        )
        assert hp.backbone["id"] == "gpt2-large" and hp.backbone["kind"] == "text"


# ---------------------------------------------------------------------------------------------- one step each
def _smoke_rows() -> dict[str, str]:
    """Experiment name -> reproduction row name, for the rows that prepare_smoke knows."""
    from heinsen_zoo.reproduction.expected import load_expected

    return {row.experiment: row.name for row in load_expected().values()}


def _write_head_export(spec: dict[str, Any], n_classes: int, d_depth: int, d_emb: int, n_hid: int,
                       directory: Path) -> Path:
    """A tiny trained-looking head over ``spec`` in the export format (non-trivial W and B)."""
    from heinsen_zoo.model import RoutingClassifier
    from heinsen_zoo.zoo.hub import save_pretrained

    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(123)
        model = RoutingClassifier(backbone=spec, n_classes=n_classes, d_depth=d_depth, d_emb=d_emb, n_hid=n_hid)
        model.head.W.add_(0.1 * torch.randn_like(model.head.W))  # unlike a fresh head's ones / zeros
        model.head.B.add_(0.1 * torch.randn_like(model.head.B))
    save_pretrained(model, directory)
    return directory


def _demo_overrides(name: str, work: Path) -> list[str]:
    """A tiny BERT in place of MiniLM and three BBC articles per class; finetune_demo starts from a tiny export."""
    from heinsen_zoo.backbones.tiny import write_tiny_backbone

    spec = write_tiny_backbone("bert", work / "backbone")
    d_depth, d_emb = spec.pop("d_depth"), spec.pop("d_emb")
    init_args = merged_experiment(name)["model"]["init_args"]
    model: dict[str, Any] = {"backbone": spec, "d_depth": d_depth, "d_emb": d_emb,
                             "export_dir": str(work / "export")}
    if init_args.get("init_from"):
        export = _write_head_export(spec, init_args["n_classes"], d_depth, d_emb, init_args["n_hid"],
                                    work / "init_export")
        model["init_from"] = str(export)
    config = {
        "trainer": {"default_root_dir": str(work / "run")},
        "model": {"init_args": model},
        # 3 per class: val_fraction 0.2 rounds to one validation article per class.
        "data": {"init_args": {"datamodule": {"init_args": {"max_per_class": 3}}, "storage": "memory"}},
    }
    path = work / "demo_smoke.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ["--config", str(path)]


def _row_overrides(row: str, work: Path) -> list[str]:
    from heinsen_zoo.reproduction.smoke import prepare_smoke

    results_dir = work / "results"
    overrides = prepare_smoke(row, work / "stand-ins", results_dir)
    smoke = _read_yaml(Path(overrides[-1]))
    # The swap keeps the experiment's task and DataModule classes (same code path, tiny sizes).
    assert "class_path" not in smoke.get("model", {}), "the smoke stand-ins must not change the task class"
    experiment = merged_experiment(row)
    if "class_path" in smoke.get("data", {}):
        assert resolve(smoke["data"]["class_path"]) is resolve(experiment["data"]["class_path"])
    init_from = smoke.get("model", {}).get("init_args", {}).get("init_from")
    if init_from:  # sst2 starts from the smoke SST-5 export; stand in for it with a tiny head
        init_args = {**experiment["model"]["init_args"], **smoke["model"]["init_args"]}
        spec = smoke["model"]["init_args"]["backbone"]
        source_classes = merged_experiment(_dependency(row))["model"]["init_args"]["n_classes"]
        _write_head_export(spec, source_classes, init_args["d_depth"], init_args["d_emb"], init_args["n_hid"],
                           Path(init_from))
    return overrides


def _dependency(row: str) -> str:
    from heinsen_zoo.reproduction.expected import load_expected

    dependency = load_expected()[row].depends_on
    assert dependency, f"{row}: init_from is set but the row depends on no other row"
    return dependency


def _check_init_from(task) -> None:
    """The head keys loaded from ``init_from`` (and frozen) still equal the export's after the step."""
    from safetensors.torch import load_file

    source = load_file(str(Path(task.hparams.init_from) / "model.safetensors"))
    head = task.model.head.state_dict()
    last = sorted(key for key in head if key.startswith("route.2."))
    assert last and task.reinitialized_keys == (last if task.hparams.replace_last else [])
    loaded = sorted(set(head) - set(task.reinitialized_keys))
    for key in loaded:
        if task.hparams.freeze == "all_but_last" and key.startswith("route.2."):
            continue  # trained in the step
        assert torch.equal(head[key].cpu(), source[key]), f"{key} differs from the init_from export"


@pytest.mark.parametrize("name", [_param(n) for n in EXPERIMENTS])
def test_experiment_instantiates_and_fits_one_step_on_stand_ins(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository (runs/, lightning_logs/)
    rows = _smoke_rows()
    if name in DEMOS:
        overrides = _demo_overrides(name, tmp_path)
    elif name in rows:
        overrides = _row_overrides(rows[name], tmp_path)
    else:
        pytest.fail(f"experiment {name!r} has no tiny stand-ins: add it to reproduce/expected.yaml + "
                    "heinsen_zoo.reproduction.smoke, or give it overrides in this test")
    from lightning.pytorch.accelerators import CPUAccelerator

    cli = build_experiment(name, [*overrides, "--trainer.fast_dev_run", "true"])
    experiment = merged_experiment(name)
    assert type(cli.model) is resolve(experiment["model"]["class_path"])
    assert type(cli.datamodule) is resolve(experiment["data"]["class_path"])
    if name in DEMOS:  # the hidden-state cache computes features with the model's (swapped) backbone
        from heinsen_zoo.model import encoder_spec  # the backbone the model builds (its padding policy)

        assert cli.datamodule.backbone_spec == encoder_spec(cli.model.hparams.backbone, cli.model.hparams.padding)
        assert cli.model.hparams.backbone["id"] == "tiny-bert-smoke"
    assert isinstance(cli.trainer.accelerator, CPUAccelerator)

    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/loss"):
        assert key in metrics, f"{name}: {key} not logged, got {sorted(metrics)}"
        assert math.isfinite(float(metrics[key])), f"{name}: {key} = {float(metrics[key])}"
    if cli.model.hparams.get("init_from"):
        _check_init_from(cli.model)
    assert not (tmp_path / "runs").exists()  # every output went to the stand-ins' folders
