"""The zoo subcommands (list, info, experiments, infer, convert, export, push): plain argparse."""

from __future__ import annotations

import argparse
import sys
import warnings

from .experiments import list_experiments

__all__ = ["run_zoo"]


def _zoo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heinsen-zoo", description="Heinsen routing model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list registered model names")
    p_list.add_argument("pattern", nargs="?", default="*")
    p_list.add_argument("--pretrained", action="store_true", help="only names whose weights are available")
    p_info = sub.add_parser("info", help="describe one registered model")
    p_info.add_argument("name")
    sub.add_parser("experiments", help="list experiment configs and their commands")
    p_infer = sub.add_parser(
        "infer",
        help="predict the classes of images, texts or smallNORB pairs",
        description="Top-k predictions of a zoo model (registry name or export directory) for INPUTs: image files "
        "or folders, texts or .txt files, NORB *-dat.mat[.gz] files or (left, right) pairs of 96x96 grey PNGs.",
    )
    p_infer.add_argument("model", help="registry name (heinsen-zoo list) or export directory")
    p_infer.add_argument("inputs", nargs="+", metavar="INPUT", help="image/text/NORB files, folders or texts")
    p_infer.add_argument("--top-k", type=int, default=5, help="classes reported per input (default 5)")
    p_infer.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_infer.add_argument("--explain", metavar="DIR", default=None, help="write credit-assignment PNGs to DIR")
    p_infer.add_argument("--batch-size", type=int, default=8, help="inputs per forward pass (default 8)")
    p_infer.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p_infer.add_argument(
        "--text", action="store_true", help="treat every INPUT as text, even if it names a file"
    )
    p_infer.add_argument(
        "--max-chunks",
        type=int,
        default=None,
        help="text: chunks kept per input (default: the model's max_chunks, else 8)",
    )
    p_infer.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="text: characters read per input (default: what max-chunks chunks can hold)",
    )
    p_infer.add_argument(
        "--on-long",
        choices=["truncate", "error"],
        default="truncate",
        help="text longer than max-chunks/max-chars: predict its first chunks and say so (default), or stop with "
        "an error",
    )
    p_convert = sub.add_parser(
        "convert",
        help="convert checkpoints into the export format (original | lightning | verify)",
        add_help=False,
    )
    p_convert.add_argument("args", nargs=argparse.REMAINDER)
    p_export = sub.add_parser("export", help="export a Lightning .ckpt of a routing head to OUT_DIR")
    p_export.add_argument("ckpt", help="a RoutingClassificationTask checkpoint (.ckpt)")
    p_export.add_argument("out_dir", help="the export directory to write (config.json + model.safetensors)")
    p_export.add_argument(
        "--onnx", action="store_true", help="also write OUT_DIR/model.onnx (checked with onnxruntime)"
    )
    p_export.add_argument("--opset", type=int, default=18, help="ONNX opset for --onnx (default 18)")
    p_push = sub.add_parser("push", help="upload an export directory with its model card to the Hugging Face Hub",
                            add_help=False)  # fmt: skip
    p_push.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def run_zoo(argv: list[str]) -> int:
    """The registry/inference subcommands; errors print ``error: <message>`` to stderr and return 2."""
    if argv and argv[0] == "convert":  # its own parser (subcommands original | lightning | verify)
        from heinsen_zoo.zoo import convert

        return 0 if convert.main(argv[1:]) == 0 else 2
    if argv and argv[0] == "push":  # its own parser (heinsen_zoo.zoo.publish)
        from heinsen_zoo.zoo import publish

        return 0 if publish.main(argv[1:]) == 0 else 2
    args = _zoo_parser().parse_args(argv)
    if args.command == "experiments":
        for name, title in list_experiments().items():
            print(f"{name:18s} {title}\n{'':18s} heinsen-zoo fit --experiment {name}")
        return 0
    from heinsen_zoo.zoo import registry
    from heinsen_zoo.zoo.errors import ZooError

    try:
        if args.command == "list":
            for name in registry.list_models(args.pattern, pretrained=args.pretrained):
                print(name)
            return 0
        if args.command == "info":
            print(registry.get_entry(args.name).describe())
            return 0
        if args.command == "export":
            from heinsen_zoo.zoo.convert import export_lightning_checkpoint

            out = export_lightning_checkpoint(args.ckpt, args.out_dir)
            print(f"wrote {out} (config.json + model.safetensors + README.md model card)")
            if args.onnx:
                from heinsen_zoo.export_onnx import describe, export_onnx

                print(describe(export_onnx(out, out / "model.onnx", opset=args.opset)))
            return 0
        if args.command == "infer":
            from heinsen_zoo.inference import InputTruncatedWarning, format_json, format_table, predict
            from heinsen_zoo.zoo.hub import from_pretrained

            if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
                raise ValueError(f"--device: expected cpu or cuda, got {args.device!r}")
            model = from_pretrained(args.model, map_location="cpu")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputTruncatedWarning)
                predictions = predict(
                    model, args.inputs, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
                    explain_dir=args.explain, force_text=args.text, max_chunks=args.max_chunks,
                    max_chars=args.max_chars, on_long=args.on_long,
                )  # fmt: skip
            for warning in caught:
                if issubclass(warning.category, InputTruncatedWarning):
                    print(f"note: {warning.message}", file=sys.stderr)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
            print(format_json(predictions) if args.json else format_table(predictions))
            return 0
    except (ZooError, KeyError, FileNotFoundError, ValueError) as err:
        plain_key_error = isinstance(err, KeyError) and not isinstance(err, ZooError) and err.args
        print(f"error: {err.args[0] if plain_key_error else err}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)
