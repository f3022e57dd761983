"""The ``heinsen-zoo`` command line: experiment expansion, ``--gpus``, ``--logger``, help and listings.

Everything runs in-process through :func:`heinsen_zoo.cli.main` / :func:`heinsen_zoo.cli.build_experiment`;
experiments are instantiated with their real (lazy) backbone specs on CPU, so nothing is downloaded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from heinsen_zoo.cli import (
    LOGGERS,
    build_experiment,
    configs_dir,
    expand_experiment_args,
    list_experiments,
    main,
)
from heinsen_zoo.cli import lightning_run as zoo_cli
from heinsen_zoo.cli.lightning_run import _apply_gpus

EXPERIMENTS = sorted(p.stem for p in (configs_dir() / "experiments").glob("*.yaml"))
CIFAR10_DEFAULTS = ["trainer/base.yaml", "trainer/gpu.yaml", "model/beit_large.yaml", "data/cifar10.yaml"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch, tmp_path):
    """LightningCLI warns when both ``args`` and sys.argv (pytest's) are present; the experiment's own keys,
    which the CLI writes to a temporary file, go to the test's folder rather than the shared /tmp."""
    monkeypatch.setattr(sys, "argv", ["heinsen-zoo"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _configs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]


def _frag(name: str) -> str:
    return str(configs_dir() / name)


# ---------------------------------------------------------------------------------------------- expansion
def test_expand_puts_defaults_first_then_the_experiment_then_user_arguments():
    argv, options = expand_experiment_args(
        ["fit", "--experiment", "cifar10", "--trainer.max_epochs", "1", "--config", "mine.yaml"]
    )
    assert options == {"experiment": "cifar10", "gpus": None, "logger": "csv"}
    assert argv[0] == "fit"
    configs = _configs(argv)
    assert configs[:4] == [_frag(f) for f in CIFAR10_DEFAULTS]
    own = yaml.safe_load(Path(configs[4]).read_text())
    assert "defaults" not in own and own["model"]["init_args"]["n_classes"] == 10
    assert own["trainer"] == {"max_epochs": 10, "default_root_dir": "runs/cifar10"}
    # The user's own arguments come after everything the experiment inserted, in their order.
    assert argv[-4:] == ["--trainer.max_epochs", "1", "--config", "mine.yaml"]
    assert configs[-1] == "mine.yaml"


def test_expand_without_subcommand_and_equals_forms():
    argv, options = expand_experiment_args(["--experiment=sst5", "--logger=tensorboard", "--gpus=1"])
    assert options == {"experiment": "sst5", "gpus": 1, "logger": "tensorboard"}
    assert argv[0] == "--config" and _configs(argv)[0] == _frag("trainer/base.yaml")
    assert _frag("trainer/ddp.yaml") not in argv  # one GPU: no DDP
    # Without an experiment the arguments pass through untouched.
    assert expand_experiment_args(["fit", "--config", "x.yaml"]) == (
        ["fit", "--config", "x.yaml"], {"experiment": None, "gpus": None, "logger": "csv"}
    )


def test_expand_accepts_a_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"defaults": ["trainer/base.yaml", "trainer/cpu.yaml"],
                                    "trainer": {"max_epochs": 2}}))
    argv, options = expand_experiment_args(["validate", "--experiment", str(path)])
    assert argv[0] == "validate" and options["experiment"] == str(path)
    configs = _configs(argv)
    assert configs[:2] == [_frag("trainer/base.yaml"), _frag("trainer/cpu.yaml")]
    assert yaml.safe_load(Path(configs[2]).read_text()) == {"trainer": {"max_epochs": 2}}


def test_expand_gpus_adds_ddp_after_the_defaults():
    argv, options = expand_experiment_args(["fit", "--experiment", "cifar10", "--gpus", "4"])
    assert options["gpus"] == 4
    configs = _configs(argv)
    assert configs[:5] == [_frag(f) for f in CIFAR10_DEFAULTS] + [_frag("trainer/ddp.yaml")]
    assert yaml.safe_load(Path(configs[5]).read_text())["model"]["init_args"]["n_classes"] == 10
    # Also without an experiment.
    argv, _ = expand_experiment_args(["fit", "--gpus", "2", "--config", "x.yaml"])
    assert argv == ["fit", "--config", _frag("trainer/ddp.yaml"), "--config", "x.yaml"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "--gpus", "0"], "--gpus: expected an integer >= 1, got 0"),
        (["fit", "--gpus", "-2"], "--gpus: expected an integer >= 1, got -2"),
        (["fit", "--gpus", "two"], "--gpus: expected an integer >= 1, got 'two'"),
        (["fit", "--gpus", "1.5"], "--gpus: expected an integer >= 1, got '1.5'"),
        (["fit", "--gpus"], "--gpus: expected a value"),
        (["fit", "--logger", "mlflow"], "--logger: expected one of ['csv', 'tensorboard', 'wandb'], got 'mlflow'"),
        (["fit", "--experiment"], "--experiment: expected a value"),
    ],
)
def test_expand_rejects_bad_options(argv, message):
    with pytest.raises(SystemExit) as err:
        expand_experiment_args(argv)
    assert str(err.value) == message


@pytest.mark.parametrize("logger", sorted(LOGGERS))
def test_expand_accepts_every_logger(logger):
    assert expand_experiment_args(["fit", "--logger", logger])[1]["logger"] == logger


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(SystemExit) as err:
        expand_experiment_args(["fit", "--experiment", "cifar11"])
    message = str(err.value)
    assert message.startswith("--experiment: no experiment named 'cifar11'")
    assert f"known: {EXPERIMENTS}" in message


def test_missing_defaults_fragment_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"defaults": ["trainer/base.yaml", "trainer/nope.yaml"]}))
    with pytest.raises(SystemExit, match=r"defaults entry 'trainer/nope.yaml' not found"):
        expand_experiment_args(["fit", "--experiment", str(path)])


# ---------------------------------------------------------------------------------------------- zoo commands
def test_no_arguments_and_help_print_the_usage(capsys):
    for argv in ([], ["--help"], ["-h"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "heinsen-zoo fit --experiment cifar10" in out
        for command in ("list", "info", "experiments", "infer", "convert", "export"):
            assert f"heinsen-zoo {command}" in out


def test_experiments_prints_every_experiment_with_its_command(capsys):
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    titles = list_experiments()
    assert sorted(titles) == EXPERIMENTS
    for name, title in titles.items():
        assert title and not title.startswith("#")
        assert f"heinsen-zoo fit --experiment {name}\n" in out
        assert f"{name:18s} {title}\n" in out


# ---------------------------------------------------------------------------------------------- --gpus
def _config(batch: int | None = 50) -> dict:
    data = {"init_args": {"batch_size": batch}} if batch is not None else {"init_args": {}}
    return {"trainer": {"accelerator": "cpu", "devices": 1, "strategy": "auto"}, "data": data}


def test_apply_gpus_sets_devices_and_never_touches_the_global_batch():
    """The config's batch is the paper's effective batch; the DataModule divides it (one place)."""
    config = _config(50)
    _apply_gpus(config, 2)
    assert config["trainer"] == {"accelerator": "gpu", "devices": 2, "strategy": "ddp"}
    assert config["data"]["init_args"]["batch_size"] == 50
    config = _config(50)
    _apply_gpus(config, 1)  # one GPU: same batch, no DDP
    assert config["trainer"] == {"accelerator": "gpu", "devices": 1, "strategy": "auto"}
    assert config["data"]["init_args"]["batch_size"] == 50
    config = _config(50)
    _apply_gpus(config, None)  # no --gpus: the config decides
    assert config == _config(50)
    config = _config(None)  # a datamodule without batch_size is left alone
    _apply_gpus(config, 2)
    assert config["data"]["init_args"] == {} and config["trainer"]["devices"] == 2


def test_apply_gpus_refuses_an_uneven_split():
    with pytest.raises(SystemExit, match=r"error: --gpus: .*batch 50 does not divide over world_size=3"):
        _apply_gpus(_config(50), 3)
    config = _config(50)
    config["trainer"]["num_nodes"] = 2  # 2 nodes x 5 GPUs = 10 processes: 50 / 10 divides
    _apply_gpus(config, 5)
    with pytest.raises(SystemExit, match=r"world_size=8"):  # 2 nodes x 4 GPUs
        config = _config(50)
        config["trainer"]["num_nodes"] = 2
        _apply_gpus(config, 4)


def _build_on_cpu_recording_gpus(monkeypatch, experiment: str, gpus: int, root: Path) -> tuple[object, dict]:
    """build_experiment(..., gpus=N) through the real CLI; the GPU settings are recorded, then put back to CPU
    so that the trainer can be built on a machine without GPUs."""
    seen: dict = {}
    real_apply = zoo_cli._apply_gpus

    def apply_then_record(config, n):
        real_apply(config, n)
        seen.update(trainer={k: config["trainer"][k] for k in ("accelerator", "devices", "strategy")},
                    batch=config["data"]["init_args"]["batch_size"])
        config["trainer"]["accelerator"], config["trainer"]["devices"] = "cpu", 1
        config["trainer"]["strategy"] = "auto"

    monkeypatch.setattr(zoo_cli, "_apply_gpus", apply_then_record)
    cli = build_experiment(experiment, ["--trainer.default_root_dir", str(root)], gpus=gpus)
    return cli, seen


def test_gpus_keeps_the_effective_batch_through_the_cli(monkeypatch, tmp_path):
    from types import SimpleNamespace

    cli, seen = _build_on_cpu_recording_gpus(monkeypatch, "cifar10", 2, tmp_path)
    assert seen == {"trainer": {"accelerator": "gpu", "devices": 2, "strategy": "ddp"}, "batch": 50}
    assert cli.datamodule.batch_size == 50 and cli.datamodule.steps_per_epoch == 2000
    # the DataModule alone divides it: 2 ranks x 25 = the paper's 50 per optimizer step
    from heinsen_zoo.data.sampling import DistributedCyclingSampler

    dm = cli.datamodule
    dm._datasets["train"] = list(range(100))  # stand-in examples; only the loader's arithmetic is checked
    for rank in range(2):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        loader = dm.train_dataloader()
        assert loader.batch_size == 25 and isinstance(loader.sampler, DistributedCyclingSampler)
        assert len(loader) == 2000  # steps per epoch unchanged


def test_gpus_uneven_batch_is_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match=r"error: --gpus: .*batch 5 does not divide over world_size=2"):
        _build_on_cpu_recording_gpus(monkeypatch, "imdb", 2, tmp_path)


# ---------------------------------------------------------------------------------------------- --logger
def _build_cpu(tmp_path: Path, logger: str | None, *extra: str):
    return build_experiment(
        "cifar10", ["--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), *extra],
        logger=logger,
    )


@pytest.mark.parametrize("logger", [None, "csv", "tensorboard"])
def test_logger_switch_writes_under_default_root_dir(logger, tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cli = _build_cpu(tmp_path, logger)
    expected = TensorBoardLogger if logger == "tensorboard" else CSVLogger  # CSV by default
    assert type(cli.trainer.logger) is expected
    assert Path(cli.trainer.logger.save_dir) == tmp_path
    cli.trainer.logger.log_metrics({"probe": 1.0}, step=0)
    cli.trainer.logger.save()
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.is_relative_to(tmp_path)
    written = [p for p in log_dir.rglob("*") if p.is_file()]
    assert any(p.name == "metrics.csv" for p in written) if expected is CSVLogger else any(
        p.name.startswith("events.out.tfevents") for p in written
    ), written
    # a CSV log is always kept (the learning-curve PNGs are drawn from it), beside tensorboard/wandb
    csv = [lg for lg in cli.trainer.loggers if isinstance(lg, CSVLogger)]
    assert len(csv) == 1 and len(cli.trainer.loggers) == (1 if expected is CSVLogger else 2)
    assert Path(csv[0].log_dir).is_relative_to(tmp_path / "logs")
    if expected is TensorBoardLogger:  # its own folder: versions under logs/ stay the CSV log's alone
        assert Path(cli.trainer.logger.log_dir).is_relative_to(tmp_path / "tensorboard")


def test_wandb_logger_runs_offline_without_an_api_key(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "placeholder")  # recorded, so the test restores the environment
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cli = _build_cpu(tmp_path, "wandb")
    assert type(cli.trainer.logger) is WandbLogger
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["WandbLogger", "CSVLogger"]
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert Path(cli.trainer.logger.save_dir) == tmp_path


def test_a_logger_set_in_the_config_is_kept(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    assert _build_cpu(tmp_path, "tensorboard", "--trainer.logger", "false").trainer.logger is None
    mine = tmp_path / "logger.yaml"
    mine.write_text(yaml.safe_dump({"trainer": {"logger": {
        "class_path": LOGGERS["tensorboard"], "init_args": {"save_dir": str(tmp_path / "mine")}}}}))
    logger = _build_cpu(tmp_path, "csv", "--config", str(mine)).trainer.logger
    assert type(logger) is TensorBoardLogger and Path(logger.save_dir) == tmp_path / "mine"


# ---------------------------------------------------------------------------------------------- fit, end to end
def test_fit_subcommand_trains_and_logs_under_default_root_dir(tmp_path, monkeypatch):
    """``heinsen-zoo fit --experiment sst5 --config <tiny stand-ins>``: one epoch of three steps, CSV logs,
    checkpoints, the saved config and the exported head all under the run's folders."""
    from heinsen_zoo.reproduction.smoke import prepare_smoke

    monkeypatch.chdir(tmp_path)
    overrides = prepare_smoke("sst5", tmp_path / "work", tmp_path / "results")
    assert main(["fit", "--experiment", "sst5", *overrides, "--trainer.max_epochs", "1"]) == 0
    root = tmp_path / "work" / "run"
    (metrics,) = root.glob("logs/version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "val/acc"} <= set(header)
    assert (root / "checkpoints" / "last.ckpt").is_file()  # a fixed place: RESUME=1 finds it
    saved = yaml.safe_load(next(root.glob("logs/version_*/config.yaml")).read_text())
    assert saved["model"]["class_path"] == "heinsen_zoo.tasks.RoutingClassificationTask"
    assert saved["trainer"]["logger"]["class_path"] == LOGGERS["csv"]
    assert (tmp_path / "work" / "export" / "model.safetensors").is_file()
    assert not (tmp_path / "runs").exists()
