"""Write a split's manifest once: the (image, mask, size) list as Parquet, for configs that name it in ``manifest:``.

    python jobs/build_manifest.py CONFIG --split train --out s3://BUCKET/camvid/train.parquet
        [--cfg-options KEY=VALUE ...] [--address ADDR] [--no-progress]

The split's files are listed once here (local folders or ``s3://``/``gs://``), each image's size is read in
parallel Ray tasks, and the table goes to ``--out`` (a path or a URI). A run that sets
``data.train.manifest=...`` then lists nothing: every node reads the one file. Exit status 0 when written,
2 for a bad config, argument or unreadable file.
"""
import argparse
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.config import load_config
from rayseg.datasets.manifest import build_split_manifest
from rayseg.engine.progress import quiet_driver_logs
from rayseg.utils.ray_session import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--out", required=True, help="where to write the Parquet manifest (path or s3://, gs:// URI)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_driver_logs()
    try:
        cfg = load_config(args.config, args.cfg_options)
        out, count = build_split_manifest(cfg, args.split, args.out, progress=not args.no_progress,
                                          address=args.address)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the manifest of data.{args.split} ({count} samples) to {out}")
    print(f"use it with:  --cfg-options data.{args.split}.manifest={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
