"""Print a config as the engine will see it: bases merged, defaults filled in, overrides applied.

Usage: python jobs/print_config.py CONFIG [--cfg-options KEY=VALUE ...] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys

from rayseg.config import dump_config, load_config
from rayseg.errors import ConfigError


def main(argv=None) -> int:
    """Parse arguments, print the resolved config, return the exit status (2 on a config error)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("--cfg-options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override keys, e.g. lr_config.power=1.0 data.samples_per_gpu=4")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of YAML")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(cfg, indent=2) + "\n" if args.json else dump_config(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
