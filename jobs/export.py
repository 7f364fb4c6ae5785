"""Export a config's model with its checkpoint to ONNX or TorchScript, for deployment without rayseg.

    python jobs/export.py CONFIG CHECKPOINT --format onnx|torchscript [--shape H W] [--dynamic]
        [--output seg|logits] [--with-normalize [--input-dtype float32|uint8]] [--opset N] [--out PATH]
        [--no-verify] [--cfg-options KEY=VALUE ...]

The file holds the model's inference in eval mode (BatchNorm/SyncBN with their running statistics,
test_cfg.mode whole, or slide at the fixed --shape), input "input" NCHW, output "output":
  --output seg (default, as MMSeg's pytorch2onnx and mmdeploy): int64 label map (N, 1, H, W);
  --output logits: float32 class scores (N, num_classes, H, W).
The input is a normalised float32 image batch, or with --with-normalize the image as OpenCV decodes it
(BGR, 0-255; --input-dtype uint8 or float32), normalised inside the model as the config's test pipeline
says. --dynamic frees the batch, height and width. Afterwards the file is run in a Python that cannot
import rayseg (onnxruntime / torch.jit.load) and compared with PyTorch (--no-verify skips this).
Exit status: 0; 1 when the exported model's output differs from PyTorch's; 2 for a bad config,
checkpoint, argument or a model the exporter cannot handle.
"""
import argparse
import os
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.config import load_config
from rayseg.tools.export import DEFAULT_OPSET, FORMATS, INPUT_DTYPES, OUTPUTS, export_model, reference_model
from rayseg.tools.export_check import check_export
from rayseg.tools.model import build_model, parse_shape
from rayseg.utils.ray_session import USER_ERRORS

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="latest.pth, a Ray checkpoint folder, an MMSeg .pth, or a URL")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--shape", type=int, nargs="+", metavar="H W",
                        help="input height and width traced (one value: a square; default 512 1024)")
    parser.add_argument("--dynamic", action="store_true", help="batch, height and width free in the exported model")
    parser.add_argument("--output", choices=OUTPUTS, default="seg",
                        help="seg: int64 label map (N, 1, H, W) (default); logits: (N, num_classes, H, W)")
    parser.add_argument("--with-normalize", action="store_true",
                        help="take the BGR 0-255 image and normalise it inside the model (test pipeline's Normalize)")
    parser.add_argument("--input-dtype", choices=INPUT_DTYPES, default="float32",
                        help="input type with --with-normalize (default float32)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--out", help="output file (default: CONFIG's name + .onnx / .torchscript.pt, here)")
    parser.add_argument("--no-verify", action="store_true", help="do not run and compare the exported file")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or os.path.splitext(os.path.basename(args.config))[0] + SUFFIX[args.format]
    try:
        shape = parse_shape(args.shape)
        cfg = load_config(args.config, args.cfg_options)
        model = build_model(cfg, args.checkpoint)
        export_model(model, cfg, out, fmt=args.format, shape=shape, output=args.output,
                              dynamic=args.dynamic, opset=args.opset, with_normalize=args.with_normalize,
                              input_dtype=args.input_dtype)
        print(f"exported {args.format} to {out} ({os.path.getsize(out) / 2 ** 20:.1f} MiB)")
        dims = "N, 3, H, W), dynamic" if args.dynamic else f"1, 3, {shape[0]}, {shape[1]})"
        kind = (f"image (BGR, 0-255, {args.input_dtype}), normalised inside" if args.with_normalize
                else "normalised image, float32")
        result = ("int64 label map (N, 1, H, W)" if args.output == "seg"
                  else f"float32 logits (N, {model.num_classes}, H, W)")
        print(f"input 'input': ({dims}, {kind}\noutput 'output': {result}")
        if args.no_verify:
            return 0
        reference = reference_model(model, cfg, args.output, args.with_normalize)
        checks = check_export(reference, out, args.format, shape, dynamic=args.dynamic, input_dtype=args.input_dtype)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
    print(f"verified with {runner} in a Python without rayseg:")
    for check in checks:
        print(f"  {check.format()}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
