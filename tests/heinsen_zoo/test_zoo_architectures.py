"""The architecture records: one per family, registered by the family's module, read by every zoo path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heinsen_zoo.zoo import architectures, checkpoints, hub, registry
from heinsen_zoo.zoo.architectures import Architecture, get_architecture, register_architecture
from heinsen_zoo.zoo.errors import IncompatibleConfigError

TINY = {
    "routing_head": {"d_depth": 2, "d_emb": 8, "n_classes": 3, "n_hid": 4},
    "capsules2019_smallnorb": {"n_objs": 3, "n_parts": 4, "d_chns": 8},
    "capsules2019_sst": {"d_depth": 2, "d_emb": 8, "d_inp": 4, "d_cap": 2, "n_parts": 4, "n_classes": 3},
}
SPEC = {"source": "hf", "id": "roberta-large", "revision": "5069d8a", "kind": "text"}


def test_builtin_families_register_themselves():
    assert sorted(architectures.architecture_names()) == sorted(TINY)
    assert architectures.FAMILY_MODULES == ("heinsen_zoo.heads", "heinsen_zoo.capsules2019")
    for name in TINY:
        arch = get_architecture(name)
        assert arch.inputs and arch.n_classes_arg in arch.args


@pytest.mark.parametrize("name", sorted(TINY))
def test_build_infer_and_recognise_round_trip(name):
    arch = get_architecture(name)
    model = arch.build(TINY[name], SPEC if arch.needs_backbone else None)
    assert architectures.architecture_for_model(model) is arch
    state = arch.weights_state(model)
    assert arch.infer_head_args(state) == TINY[name]
    prefixed = {"state_dict": {f"model.{k}": v for k, v in state.items()}}
    assert checkpoints.detect_architecture(prefixed) == name
    assert checkpoints.extract_state_dict(prefixed, name, "test").keys() == state.keys()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_family_saves_and_loads_through_the_one_path(name, tmp_path):
    arch = get_architecture(name)
    torch.manual_seed(0)
    model = arch.build(TINY[name], SPEC if arch.needs_backbone else None)
    out = hub.save_pretrained(model, tmp_path / "export", extra_config={"preprocessing": {"x": 1}})
    again = hub.from_pretrained(str(out))
    assert type(again) is type(model) and again.pretrained_cfg["architecture"] == name
    for key, value in arch.weights_state(model).items():
        assert torch.equal(arch.weights_state(again)[key], value), key


def test_unknown_architecture_is_named_with_the_known_ones():
    with pytest.raises(
        IncompatibleConfigError, match=r"config.json: architecture 'mlp' is unknown .*routing_head"
    ):
        get_architecture("mlp", "config.json")
    with pytest.raises(IncompatibleConfigError, match="no known architecture recognised"):
        checkpoints.detect_architecture({"weight": torch.zeros(1)})


class ToyLinear(nn.Module):
    """A stand-in family: a linear classifier over ``d_inp`` features."""

    def __init__(self, d_inp: int, n_classes: int) -> None:
        super().__init__()
        self.toy_proj = nn.Linear(d_inp, n_classes)


@pytest.fixture
def toy_family():
    arch = register_architecture(
        Architecture(
            name="toy_linear",
            args=("d_inp", "n_classes"),
            n_classes_arg="n_classes",
            anchor="toy_proj.weight",
            infer_args=lambda s: {
                "d_inp": int(s["toy_proj.weight"].shape[1]),
                "n_classes": int(s["toy_proj.weight"].shape[0]),
            },
            model_class=ToyLinear,
            build_kwargs=lambda args, backbone, labels, padding: dict(args),
            inputs="features [..., d_inp]",
        )
    )
    saved = dict(registry._REGISTRY)
    yield arch
    architectures._TABLE.pop("toy_linear", None)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_a_new_family_needs_only_its_record(toy_family, tmp_path):
    """Registering one record is enough for export, conversion, the registry and create_model."""
    torch.manual_seed(0)
    model = ToyLinear(6, 3)
    out = hub.save_pretrained(model, tmp_path / "export", extra_config={"labels": ["a", "b", "c"]})
    assert hub.read_config(out)["head"] == {"d_inp": 6, "n_classes": 3}
    torch.save(
        {"net": {"module.toy_proj." + k: v for k, v in model.toy_proj.state_dict().items()}},
        tmp_path / "t.pt",
    )
    converted = checkpoints.export_state_dict_file(
        tmp_path / "t.pt", tmp_path / "conv", {"architecture": "toy_linear"}
    )
    registry.register_model(
        {
            "name": "toy_linear.test",
            "architecture": "toy_linear",
            "head": {"d_inp": 6, "n_classes": 3},
            "labels": ["a", "b", "c"],
            "weights": [{"location": str(converted), "trust_on_first_use": False}],
        }
    )
    loaded = registry.create_model("toy_linear.test", cache_dir=tmp_path / "cache")
    assert torch.equal(loaded.toy_proj.weight, model.toy_proj.weight)
    assert loaded.pretrained_cfg["labels"] == ["a", "b", "c"]
    with pytest.raises(IncompatibleConfigError, match="toy_linear"):
        registry.register_model(
            {"name": "toy_linear.bad", "architecture": "toy_linear", "head": {"d_inp": 6}}
        )
