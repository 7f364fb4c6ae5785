"""Convert an official dataset download into the layout rayseg's dataset classes read, on Ray.

    python jobs/convert_dataset.py NAME SRC DST [--nproc N] [--address ADDR] [--no-progress]
        [--option KEY=VALUE ...]
    python jobs/convert_dataset.py --list          (or NAME=list): the known converters

Each input file is one Ray task (``--nproc`` at once, default: the cluster's CPUs), with a progress bar.
Resumable: outputs a previous run completed are skipped. Inputs that cannot be read are listed at the end
while everything else is converted. docs/dataset_conversion.md describes each converter and its options.
Exit status: 0 when everything was converted, 1 when some inputs failed (listed), 2 for a bad name, option
or source layout.
"""
import argparse
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.datasets.converters.base import converter_descriptions, run_conversion
from rayseg.engine.progress import quiet_driver_logs
from rayseg.errors import ConfigError
from rayseg.utils.ray_session import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="the dataset (see --list)")
    parser.add_argument("src", nargs="?", help="the official download (its root folder, as its section says)")
    parser.add_argument("dst", nargs="?", help="where to write the converted dataset (may be SRC: in place)")
    parser.add_argument("--list", action="store_true", help="print the known converters and exit")
    parser.add_argument("--nproc", type=int, help="conversion tasks running at once (default: the cluster's CPUs)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--option", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="a converter option (values are YAML: link=true, aug_dir=benchmark_RELEASE)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def parse_options(items):
    """``KEY=VALUE`` strings → a dict, each value read as YAML (``true`` → True, ``3`` → 3)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = value
    return options


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list or args.name == "list":
        for name, line in converter_descriptions().items():
            print(f"{name:16s} {line}")
        return 0
    try:
        if not (args.name and args.src and args.dst):
            raise ConfigError("give NAME SRC DST (or --list for the known converters)")
        if args.nproc is not None and args.nproc < 1:
            raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
        options = parse_options(args.option)
        quiet_driver_logs()
        report = run_conversion(args.name, args.src, args.dst, nproc=args.nproc, progress=not args.no_progress,
                                address=args.address, **options)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
