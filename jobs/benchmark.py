"""Inference speed of a config's model: img/s and latency after warm-up (MMSeg's tools/analysis_tools/benchmark.py).

    python jobs/benchmark.py CONFIG [CHECKPOINT] [--use-gpu] [--shape H W] [--batch-size N] [--warmup N]
        [--iters N] [--threads N] [--cfg-options KEY=VALUE ...] [--out result.json]

Times the model's inference (test_cfg.mode: whole or slide; logits at the input size) on a random,
already normalised batch in this process: no dataset, no decoding, no Ray. Without CHECKPOINT the model
is randomly initialised (the speed does not depend on the weights) and the output says so. Prints the
device, torch's thread count and the input shape with the figures. Exit status: 0, or 2 for a bad
config, checkpoint or argument.
"""
import argparse
import json
import os
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

import torch

from rayseg.config import load_config
from rayseg.errors import ConfigError
from rayseg.inference import inference_device
from rayseg.tools.benchmark import benchmark
from rayseg.tools.model import build_model, parse_shape
from rayseg.utils.ray_session import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", nargs="?", help="weights to load (default: random init)")
    parser.add_argument("--use-gpu", action="store_true", help="run on the GPU (default: the CPU)")
    parser.add_argument("--shape", type=int, nargs="+", metavar="H W",
                        help="input height and width (one value: a square; default 512 1024)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument("--iters", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="also write the result (every latency) as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        shape = parse_shape(args.shape)
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be positive, got {args.threads}")
            torch.set_num_threads(args.threads)
        cfg = load_config(args.config, args.cfg_options)
        model = build_model(cfg, args.checkpoint, inference_device(args.use_gpu))
        result = benchmark(model, shape, batch_size=args.batch_size, warmup=args.warmup, iters=args.iters,
                           weights=args.checkpoint and f"checkpoint {args.checkpoint}")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.format())
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(result.to_dict(), config=os.path.abspath(args.config)), f, indent=2)
        print(f"result written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
