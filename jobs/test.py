"""Evaluate a checkpoint: ``python jobs/test.py CONFIG CHECKPOINT [--out metrics.json] [--split test]``."""
import argparse
import json
import sys

from rayseg.apis import evaluate_checkpoint
from rayseg.config import load_config
from rayseg.errors import CheckpointError, ConfigError, DataError
from rayseg.evaluation import format_tables, metrics_to_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="latest.pth, another .pth weights file, or a Ray checkpoint folder")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--split", default="test", help="which data split to evaluate (default: test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, args.cfg_options)
        results = evaluate_checkpoint(cfg, args.checkpoint, split=args.split, device=args.device)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = results["classes"]
    print(format_tables(results, names))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(metrics_to_json(results, names), f, indent=2)
        print(f"metrics written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
