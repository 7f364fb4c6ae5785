"""Check a config's datasets before training: every image and mask header (``--full``: every pixel), on Ray.

    python jobs/check_dataset.py CONFIG [--split train|val|test ...] [--full] [--cfg-options KEY=VALUE ...]
        [--address ADDR] [--out report.json] [--no-progress]

Reports unreadable or truncated files, missing masks, masks whose size differs from their image or that are
not single-channel, and (``--full``) label values training would reject plus each class's pixel count.
Exit status: 0 when every split is clean, 1 when problems were found, 2 for a bad config or argument.
"""
import argparse
import json
import os
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.config import load_config
from rayseg.datasets.check import check_splits, format_report
from rayseg.engine.progress import quiet_driver_logs
from rayseg.utils.ray_session import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--split", nargs="+", choices=("train", "val", "test"),
                        help="the splits to check (default: every one of data.train/val/test the config sets)")
    parser.add_argument("--full", action="store_true",
                        help="also decode every pixel: corrupt files, out-of-range labels, class frequencies")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--out", help="write the full report (every problem, the pixel counts) as JSON here")
    parser.add_argument("--max-lines", type=int, default=20, help="problems printed per split (default 20)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_driver_logs()
    try:
        cfg = load_config(args.config, args.cfg_options)
        reports = check_splits(cfg, args.split, full=args.full, progress=not args.no_progress, address=args.address)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, report in reports.items():
        same = next(s for s, r in reports.items() if r is report)  # check_splits reads a repeated split once
        print(f"data.{split}: the same dataset as data.{same}, not read again" if same != split
              else format_report(split, report, max_lines=args.max_lines))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"config": os.path.abspath(args.config), "full": args.full,
                       "splits": {s: r.to_dict() for s, r in reports.items()}}, f, indent=2)
        print(f"report written to {args.out}")
    return 0 if all(r.ok for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
