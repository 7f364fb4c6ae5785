"""Print a config as the training job runs it: bases merged, defaults and derived keys filled in, overrides applied.

Usage: python jobs/print_config.py CONFIG [--cfg-options KEY=VALUE ...] [--work-dir DIR] [--json] [--check-data]

It runs the training job's own checks (resolve the run, build the model on the meta device, its losses, the
optimizer, the lr schedule and every pipeline), so it fails, with exit status 2, on exactly the configs
``jobs/train.py`` refuses. ``--check-data`` also lists the train and val datasets.
"""
from __future__ import annotations

import argparse
import json
import sys

from rayseg.config import dump_config, load_config
from rayseg.spec.check import check_run
from rayseg.spec.resolve import resolve_run
from rayseg.utils.ray_session import USER_ERRORS


def main(argv=None) -> int:
    """Parse arguments, print the resolved config, return the exit status (2 on a config or data error)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="path to a YAML config or an MMSegmentation .py config")
    parser.add_argument("--cfg-options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override keys, e.g. lr_config.power=1.0 data.samples_per_gpu=4")
    parser.add_argument("--work-dir", help="the work dir the run would use (it decides the default MLflow store)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of YAML")
    parser.add_argument("--check-data", action="store_true",
                        help="also list the train and val datasets (root exists, split not empty, masks present)")
    args = parser.parse_args(argv)
    try:
        spec = resolve_run(load_config(args.config, args.cfg_options), work_dir=args.work_dir,
                           config_path=args.config)
        check_run(spec, list_data=args.check_data)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for note in spec.notes:  # stdout stays one JSON document
            print(f"note: {note}", file=sys.stderr)
        sys.stdout.write(json.dumps(spec.config, indent=2) + "\n")
    else:
        sys.stdout.write("".join(f"# note: {note}\n" for note in spec.notes) + dump_config(spec.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
