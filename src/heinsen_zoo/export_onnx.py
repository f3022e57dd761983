"""ONNX export of a routing head, checked against PyTorch with onnxruntime.

What is exported is the head (:class:`heinsen_zoo.heads.RoutingHead`), not the frozen backbone: the
graph maps hidden states to class logits, so it deploys beside any runtime that produces the
backbone's hidden states (the backbone itself exports with its own tools, e.g. ``optimum``).

* Inputs: ``hidden`` float32 ``[batch, n_pos, d_depth, d_emb]``; for heads with ``padding="mask"``
  also ``padding_mask`` bool ``[batch, n_pos]`` (True = padding). Output: ``logits`` float32
  ``[batch, n_classes]``.
* ``batch`` and ``n_pos`` are dynamic axes: the first routing has ``n_inp=-1`` (any number of input
  vectors), the later ones have fixed sizes, so only those two axes may vary.
* The routings run on their plain PyTorch path: while torch.export traces, ``is_compiling()`` is True and
  :class:`~heinsen_routing.EfficientVectorRouting` skips its fused autograd Function (eager only), keeping
  ``memory_efficient=True`` — the votes ``[n, n_out, d_out]`` are never materialised (with
  ``memory_efficient=False`` a 512-token RoBERTa input would need > 3 GB for them).
* Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export → ONNX via onnxscript), **opset 18**
  by default (:data:`DEFAULT_OPSET`; LayerNormalization needs >= 17).
* Check: onnxruntime (CPU) runs two fresh input shapes (different batch and n_pos, with padding when the
  head masks) and the logits must match the PyTorch head on its default path within
  ``atol=1e-4, rtol=1e-3`` (``|onnx - torch| <= atol + rtol * |torch|``); measured differences at
  float32 are ~1e-6. The file is written only when the check passes (``.part`` then rename).
  The model's ``metadata_props`` record the opset, the input layout, the tolerance and the measured
  difference, and the export's ``config.json`` digest when exported from an export directory.

Command line::

    python -m heinsen_zoo.export_onnx MODEL OUT.onnx [--opset 18]      # MODEL: registry name or export dir
    heinsen-zoo export CKPT OUT_DIR --onnx                              # OUT_DIR/model.onnx beside the export

Example:
    >>> import tempfile, pathlib
    >>> from heinsen_zoo.heads import RoutingHead
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "head.onnx"
    >>> result = export_onnx(RoutingHead(2, 8, 3, n_hid=4), out, padding="mask")  # doctest: +SKIP
    >>> result.max_abs_diff < 1e-4                                                   # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_OPSET", "OnnxExport", "check_onnx", "export_onnx", "main"]

DEFAULT_OPSET = 18
ATOL, RTOL = 1e-4, 1e-3


@dataclass(frozen=True)
class OnnxExport:
    """The written file, its inputs, and the largest |onnx - torch| logit difference of the check."""

    path: Path
    opset: int
    input_names: tuple[str, ...]
    max_abs_diff: float
    shapes_checked: tuple[tuple[int, int], ...]


class _HeadGraph(nn.Module):
    """The head with positional inputs (what the exporter traces)."""

    def __init__(self, head: nn.Module, masked: bool) -> None:
        super().__init__()
        self.head, self.masked = head, masked

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(hidden, padding_mask if self.masked else None)


def _head_of(model: Any) -> tuple[nn.Module, str]:
    """(RoutingHead, padding) of a RoutingClassifier, a task holding one, or a bare RoutingHead."""
    from heinsen_zoo.heads import RoutingHead

    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(inner, "head", None), RoutingHead):
        model = inner
    if isinstance(model, RoutingHead):
        return model, "mask"
    head = getattr(model, "head", None)
    if isinstance(head, RoutingHead):
        return head, str(getattr(model, "padding", "mask"))
    raise TypeError(
        f"export_onnx: expected a RoutingClassifier, RoutingHead, export directory or registry name of a "
        f"routing_head model, got {type(model).__name__} (the 2019 capsule models are not exported to ONNX)"
    )


def _example(head: nn.Module, batch: int, n_pos: int, masked: bool, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(
        batch, n_pos, head.d_depth, head.d_emb, generator=generator
    )  # [b, n, d_depth, d_emb]
    if not masked:
        return (hidden,)
    mask = torch.zeros(batch, n_pos, dtype=torch.bool)  # [b, n]
    if batch > 1 and n_pos > 1:
        mask[-1, n_pos // 2 :] = True  # the last sequence is half padding
    return hidden, mask


def check_onnx(
    path: str | os.PathLike,
    head: nn.Module,
    masked: bool,
    shapes: tuple[tuple[int, int], ...] = ((3, 7), (1, 2)),
    atol: float = ATOL,
    rtol: float = RTOL,
) -> float:
    """Run ``path`` in onnxruntime on ``shapes`` (batch, n_pos) and compare with ``head``; returns max |Δ|.

    Raises AssertionError naming the shape and the difference when a logit is outside tolerance.
    """
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for seed, (batch, n_pos) in enumerate(shapes):
        inputs = _example(head, batch, n_pos, masked, seed=100 + seed)
        with torch.no_grad():
            expected = head(*inputs).float().numpy()  # [batch, n_classes], the default (fused) path
        (got,) = session.run(["logits"], {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        if not np.allclose(got, expected, atol=atol, rtol=rtol):
            raise AssertionError(
                f"ONNX check failed for batch={batch}, n_pos={n_pos}: max |onnx - torch| = {diff:.3g} exceeds "
                f"atol={atol} + rtol={rtol} * |torch|"
            )
    return worst


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    padding: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = ATOL,
    rtol: float = RTOL,
    metadata: dict[str, str] | None = None,
) -> OnnxExport:
    """Export a routing head to ONNX at ``path`` (see the module docstring); returns an :class:`OnnxExport`.

    ``model``: a RoutingClassifier (or task), a RoutingHead, an export directory or a registry name
    (loaded with ``from_pretrained``). ``padding`` overrides the model's (``"mask"`` adds the
    ``padding_mask`` input, ``"none"`` omits it).
    """
    if isinstance(model, (str, os.PathLike)):
        from heinsen_zoo.zoo.hub import from_pretrained

        model = from_pretrained(model)
    head, model_padding = _head_of(model)
    padding = padding or model_padding
    from heinsen_zoo.padding import check_padding  # the one definition of the padding policies

    check_padding(padding)
    if not isinstance(opset, int) or opset < 17:
        raise ValueError(f"opset: expected an int >= 17 (LayerNormalization), got {opset!r}")
    masked = padding == "mask"
    head = copy.deepcopy(head).float().cpu().eval()  # the reference; the caller's module is left as it was
    plain = copy.deepcopy(head)  # traced: plain path, memory-efficient (see the module docstring)
    names = ("hidden", "padding_mask") if masked else ("hidden",)
    batch, n_pos = torch.export.Dim("batch"), torch.export.Dim("n_pos")
    dynamic = {"hidden": {0: batch, 1: n_pos}}
    if masked:
        dynamic["padding_mask"] = {0: batch, 1: n_pos}
    example = _example(head, 2, 3, masked, seed=0)  # sizes > 1: torch.export specialises 0 and 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # exporter progress lines
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            program = torch.onnx.export(
                _HeadGraph(plain, masked).eval(),
                example,
                dynamo=True,
                opset_version=opset,
                input_names=list(names),
                output_names=["logits"],
                dynamic_shapes=dynamic,
                verbose=False,
            )
        shapes = ((3, 7), (1, 2))
        program.save(str(part))
        diff = check_onnx(part, head, masked, shapes, atol, rtol) if check else float("nan")
        _annotate(part, opset, names, head, padding, diff, atol, rtol, metadata or {})
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return OnnxExport(path, opset, names, diff, shapes if check else ())


def _annotate(
    path: Path,
    opset: int,
    names: tuple[str, ...],
    head: nn.Module,
    padding: str,
    diff: float,
    atol: float,
    rtol: float,
    extra: dict[str, str],
) -> None:
    import onnx

    proto = onnx.load(str(path))
    props = {
        "producer": "heinsen_zoo.export_onnx",
        "opset": str(opset),
        "inputs": ", ".join(names),
        "hidden": f"float32 [batch, n_pos, {head.d_depth}, {head.d_emb}]",
        "logits": f"float32 [batch, {head.n_classes}]",
        "padding": padding,
        "check": f"onnxruntime vs torch, max |diff| = {diff:.3g} (atol {atol}, rtol {rtol})",
        **{k: str(v) for k, v in extra.items()},
    }
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m heinsen_zoo.export_onnx MODEL OUT.onnx``; errors print ``error: …`` and return 2."""
    parser = argparse.ArgumentParser(
        prog="python -m heinsen_zoo.export_onnx",
        description="Export a routing head (registry name or export directory) to ONNX and check it with onnxruntime.",
    )
    parser.add_argument("model", help="registry name or export directory (config.json + model.safetensors)")
    parser.add_argument("out", help="the .onnx file to write")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    args = parser.parse_args(argv)
    from heinsen_zoo.zoo.errors import ZooError

    try:
        result = export_onnx(args.model, args.out, opset=args.opset)
    except (ZooError, ValueError, TypeError, OSError, AssertionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(result))
    return 0


def describe(result: OnnxExport) -> str:
    """One paragraph for the command line."""
    shapes = ", ".join(f"{b}x{n}" for b, n in result.shapes_checked)
    return (
        f"wrote {result.path} (opset {result.opset}, inputs {', '.join(result.input_names)}; dynamic batch and "
        f"n_pos)\nonnxruntime check: max |onnx - torch| = {result.max_abs_diff:.2g} over batch x n_pos = {shapes} "
        f"(tolerance atol {ATOL}, rtol {RTOL})"
    )


if __name__ == "__main__":
    sys.exit(main())
