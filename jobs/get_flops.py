"""Parameters and FLOPs of a config's model, total and per module (MMSeg's tools/analysis_tools/get_flops.py).

    python jobs/get_flops.py CONFIG [--shape H W] [--depth N] [--checkpoint PATH] [--cfg-options KEY=VALUE ...]
        [--out report.json]

Counts one whole-image forward (backbone, neck, decode head; auxiliary heads do not run at inference)
on a (1, 3, H, W) input with torch.utils.flop_counter. MMSeg's "Flops" are multiply-adds (MACs); torch
counts 2 FLOPs per multiply-add: both are printed. Weights do not change the count, so the model is
randomly initialised unless --checkpoint is given. Exit status: 0, or 2 for a bad config or argument.
"""
import argparse
import json
import os
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.config import load_config
from rayseg.tools.flops import count_flops
from rayseg.tools.model import build_model, parse_shape
from rayseg.utils.ray_session import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--shape", type=int, nargs="+", metavar="H W",
                        help="input height and width (one value: a square; default 512 1024)")
    parser.add_argument("--depth", type=int, default=2, help="module depth of the per-module table (default 2; 0: none)")
    parser.add_argument("--checkpoint", help="load these weights first (not needed for the count)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="also write the report (every module) as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        shape = parse_shape(args.shape)
        cfg = load_config(args.config, args.cfg_options)
        report = count_flops(build_model(cfg, args.checkpoint), shape)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format(depth=args.depth))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(report.to_dict(), config=os.path.abspath(args.config)), f, indent=2)
        print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
