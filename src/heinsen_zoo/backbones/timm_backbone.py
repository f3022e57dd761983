"""Frozen timm vision transformers (ViT, DeiT, BEiT, Eva … any timm model with a ``blocks`` sequence).

Hidden states are collected with hooks: the input of the first block (the embedding output: patch
embeddings, class/distillation tokens and position embeddings, after ``norm_pre``) and the output of every
block, so ``d_depth = len(model.blocks) + 1``. The final norm and the classifier are not part of the
hidden states (``num_classes=0`` drops the classifier).

The paper's timm equivalent of its backbone is ``beit_large_patch16_224`` (tag ``in22k_ft_in22k_in1k``):
197 positions, d_depth 25, d_emb 1024. :func:`beit_hf_to_timm` converts Hugging Face BEiT weights
(``BeitModel`` / ``BeitForImageClassification``, transformers 4.x or 5.x key names) to timm's ``Beit``.

timm vs Hugging Face BEiT (tested on tiny random models, see tests/heinsen_zoo/test_backbones.py): for the
same weights the two implementations give the same hidden states and logits to float precision, both for
the BEiT-large layout (relative position bias per layer, layer scale, no absolute position embedding) and
for shared relative position bias with absolute position embeddings, once the LayerNorm eps agrees.
What differs:

* LayerNorm eps: timm's ``Beit`` uses 1e-6, ``transformers.BeitConfig`` defaults to 1e-12 (the paper's
  HF checkpoint config is expected to carry 1e-12; not checked offline). With identical weights the
  hidden states therefore differ slightly unless timm is built with
  ``norm_layer=functools.partial(nn.LayerNorm, eps=1e-12)``.
* Names/layout only: HF has separate q/k/v Linear layers (k without bias), timm a fused ``qkv`` weight
  plus ``q_bias``/``v_bias``; ``lambda_1/2`` ↔ ``gamma_1/2``; ``layernorm_before/after`` ↔
  ``norm1/norm2``; ``o_proj`` (4.x ``attention.output.dense``) ↔ ``attn.proj``; the relative position
  bias table has the same layout ``[(2·Wh−1)(2·Ww−1) + 3, heads]`` in both (HF under
  ``layers.N.relative_position_bias``, timm under ``blocks.N.attn``); mean-pooling norm
  ``pooler.layernorm`` ↔ ``fc_norm``; HF's ``mask_token`` has no timm counterpart (unused here).
* Final norm: neither backbone's last hidden state includes it (HF's ``layernorm`` is Identity under mean
  pooling; timm's hooks take block outputs).
* Other image sizes: HF interpolates position encodings on request; timm fixes ``img_size`` at build time.
* Weights: timm's ``beit_large_patch16_224.in22k_ft_in22k_in1k`` and ``microsoft/beit-large-patch16-224``
  are presumably the same original checkpoint (22k pretraining, 22k then 1k fine-tuning); not verified here.

Weights, offline first (see :mod:`heinsen_zoo.backbones._resolve`): ``local_path`` (a weight file or a
folder with ``model.safetensors`` / ``pytorch_model.bin``), ``$HEINSEN_MODEL_DIR/<id>``, the Hugging Face
cache of the model's timm hub repo (e.g. ``timm/beit_large_patch16_224.in22k_ft_in22k_in1k``) at
``revision``, then a download unless offline.

Example:
    >>> import torch
    >>> from heinsen_zoo.backbones.timm_backbone import TimmBackbone
    >>> spec = {"source": "timm", "id": "vit_tiny_patch16_224", "revision": None, "kind": "vision",
    ...         "pretrained": False, "model_kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}}
    >>> hidden, _ = TimmBackbone(spec)(torch.randn(1, 3, 32, 32))
    >>> hidden.shape                                         # [batch, 1 + 4 patches, 2 blocks + 1, 32]
    torch.Size([1, 5, 3, 32])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ._resolve import (
    MissingModelError,
    find_local_dir,
    is_offline,
    missing_model_message,
    resolve_cached_revision,
)
from .base import FrozenBackbone

__all__ = ["TimmBackbone", "create_timm_model", "beit_hf_to_timm"]

_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


def _weight_file_in(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in _WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name
    for pattern in ("*.safetensors", "*.pth", "*.pt", "*.bin"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    return None


def _resolve_timm_weights(spec: dict[str, Any]) -> Path | None:
    """A local weight file for a pretrained timm model, or None to let timm download (online only)."""
    import timm

    looked: list[str] = []
    local = find_local_dir(spec)
    if local is not None:
        found = _weight_file_in(local)
        if found is None:
            raise MissingModelError(
                f"local_path: no weight file ({', '.join(_WEIGHT_NAMES)}, *.safetensors, *.pth) in {str(local)!r} "
                f"for timm model {spec['id']!r}"
            )
        return found
    offline = is_offline(spec)
    cfg = timm.models.get_pretrained_cfg(spec["id"])
    hub_id = spec.get("hf_hub_id") or (cfg.hf_hub_id if cfg is not None else None)
    if hub_id:
        from huggingface_hub import hf_hub_download

        revision = resolve_cached_revision(hub_id, spec.get("revision")) if offline else spec.get("revision")
        filenames = [cfg.hf_hub_filename] if cfg is not None and cfg.hf_hub_filename else list(_WEIGHT_NAMES[:2])
        last_error: Exception | None = None
        for filename in filenames:
            try:
                return Path(hf_hub_download(hub_id, filename, revision=revision, local_files_only=offline))
            except Exception as error:  # not cached / not on the hub / no network
                last_error = error
        looked.append(f"Hugging Face cache of {hub_id} ({', '.join(filenames)})")
        raise MissingModelError(
            missing_model_message(spec, "timm weights for", repo_id=hub_id, looked="; ".join(looked))
            + f" (last error: {type(last_error).__name__}: {str(last_error)[:200]})"
        )
    if offline or cfg is None or not cfg.url:
        raise MissingModelError(missing_model_message(spec, "timm weights for", looked="; ".join(looked)))
    return None  # timm downloads from cfg.url


def create_timm_model(spec: dict[str, Any]) -> torch.nn.Module:
    """Build the timm model of ``spec`` (classifier removed), with local weights when pretrained."""
    import timm

    name = spec["id"]
    if not (name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(name)):
        raise ValueError(f"id: {name!r} is not a timm model name (see timm.list_models())")
    kwargs = dict(spec.get("model_kwargs") or {})
    kwargs.setdefault("num_classes", 0)
    if not spec.get("pretrained", True):
        return timm.create_model(name, pretrained=False, **kwargs)
    if name.startswith("local-dir:"):
        return timm.create_model(name, pretrained=True, **kwargs)
    weights = _resolve_timm_weights(spec)
    if weights is None:
        return timm.create_model(name, pretrained=True, **kwargs)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)


class TimmBackbone(FrozenBackbone):
    """A frozen timm transformer reporting its embedding output and every block's output.

    Spec keys: ``id`` (timm model name, optionally with a tag), ``revision`` (of the timm hub repo),
    ``pretrained`` (default True), ``model_kwargs`` (passed to ``timm.create_model``, e.g. ``img_size``),
    ``local_path``, ``local_files_only``, ``hf_hub_id`` (override of the hub repo), ``autocast``,
    ``output_dtype``.
    """

    input_key = "image"

    def __init__(self, spec: dict[str, Any], model: torch.nn.Module | None = None) -> None:
        super().__init__(spec, autocast=spec.get("autocast", True), output_dtype=spec.get("output_dtype"))
        self.model = model if model is not None else create_timm_model(self.spec)
        blocks = getattr(self.model, "blocks", None)
        if blocks is None or len(blocks) == 0:
            raise ValueError(
                f"id: timm model {spec['id']!r} has no 'blocks' sequence; only transformer families "
                "(ViT, DeiT, BEiT, Eva, ...) are supported"
            )
        self.blocks = list(blocks)
        self.d_depth = len(self.blocks) + 1
        self.d_emb = int(getattr(self.model, "embed_dim", None) or self.model.num_features)
        proj = getattr(getattr(self.model, "patch_embed", None), "proj", None)
        self.in_chans = int(proj.in_channels) if isinstance(proj, torch.nn.Conv2d) else None
        self.preprocessing = self._preprocessing()
        self.freeze()

    def _preprocessing(self) -> dict[str, Any]:
        try:
            import timm.data

            cfg = timm.data.resolve_data_config({}, model=self.model)
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        except Exception:  # pragma: no cover - informative only
            return {}

    def _hidden_states(self, images: Any) -> tuple[torch.Tensor, None]:
        images = self._check_images(images, self.in_chans)
        captured: list[torch.Tensor] = []

        def take_input(_module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> None:
            captured.append(args[0] if args else next(iter(kwargs.values())))

        def take_output(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

        handles = [self.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)]
        handles += [block.register_forward_hook(take_output) for block in self.blocks]
        try:
            self.model.forward_features(images)
        finally:
            for handle in handles:
                handle.remove()
        if len(captured) != self.d_depth:
            raise RuntimeError(f"expected {self.d_depth} hidden states from {self.spec['id']!r}, hooks saw {len(captured)}")
        dtype = torch.promote_types(captured[0].dtype, captured[-1].dtype)
        hidden = torch.stack([h.to(dtype) for h in captured], dim=2)  # [batch, n_pos, d_depth, d_emb]
        return hidden, None


# -- Hugging Face BEiT -> timm Beit ------------------------------------------------------------------------
_HF_LAYER = re.compile(r"^(?:beit\.)?(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_LAYER_MAP = {
    # transformers 5.x names
    "lambda_1": "gamma_1",
    "lambda_2": "gamma_2",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
    # transformers 4.x names
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "attention.attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
    # both
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
}
_QKV = {
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
}  # fmt: skip
_GLOBAL_MAP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "shared_position_bias.relative_position_bias_table": "rel_pos_bias.relative_position_bias_table",
    "encoder.relative_position_bias.relative_position_bias_table": "rel_pos_bias.relative_position_bias_table",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.layernorm.weight": "fc_norm.weight",
    "pooler.layernorm.bias": "fc_norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_DROPPED = ("embeddings.mask_token", "relative_position_index")


def beit_hf_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a Hugging Face BEiT state dict to timm ``Beit`` keys.

    Handles ``BeitModel`` and ``BeitForImageClassification`` (prefix ``beit.``), transformers 4.x
    (``encoder.layer.N.attention.attention.query``) and 5.x (``layers.N.attention.q_proj``) names.
    q/k/v weights are concatenated into timm's ``attn.qkv.weight``; HF's q and v biases become
    ``attn.q_bias`` / ``attn.v_bias`` (both sides have no key bias); layer scales ``lambda_1/2`` become
    ``gamma_1/2``; ``pooler.layernorm`` (mean pooling) becomes ``fc_norm``; the mask token and the
    relative position index buffers are dropped (timm rebuilds the index).

    Example:
        >>> import torch
        >>> sd = {"layers.0.attention.q_proj.weight": torch.ones(2, 2), "layers.0.attention.k_proj.weight":
        ...       torch.zeros(2, 2), "layers.0.attention.v_proj.weight": torch.ones(2, 2)}
        >>> beit_hf_to_timm(sd)["blocks.0.attn.qkv.weight"].shape
        torch.Size([6, 2])
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if any(part in key for part in _DROPPED):
            continue
        layer = _HF_LAYER.match(key)
        if layer is not None:
            index, rest = int(layer.group(1)), layer.group(2)
            if rest in _LAYER_MAP:
                out[f"blocks.{index}.{_LAYER_MAP[rest]}"] = value
                continue
            stem, _, kind = rest.rpartition(".")
            if stem in _QKV:
                qkv.setdefault((index, kind), {})[_QKV[stem]] = value
                continue
            unknown.append(key)
            continue
        bare = key[len("beit.") :] if key.startswith("beit.") else key
        if bare in _GLOBAL_MAP:
            out[_GLOBAL_MAP[bare]] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"state_dict: keys not recognised as Hugging Face BEiT weights: {unknown[:10]}")
    for (index, kind), parts in sorted(qkv.items()):
        if kind == "weight":
            missing = [p for p in "qkv" if p not in parts]
            if missing:
                raise KeyError(f"state_dict: layer {index} lacks attention weight(s) {missing}")
            out[f"blocks.{index}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        else:
            if "k" in parts and bool(parts["k"].abs().max() > 0):
                raise ValueError(f"state_dict: layer {index} has a non-zero key bias, which timm's Beit cannot hold")
            if "q" in parts:
                out[f"blocks.{index}.attn.q_bias"] = parts["q"]
            if "v" in parts:
                out[f"blocks.{index}.attn.v_bias"] = parts["v"]
    return out
