"""Convert an MMSegmentation .py config (0.x or 1.x) into rayseg YAML:
``python jobs/convert_config.py MMSEG_CONFIG OUT.yaml [--partial]``.

The .py file and its _base_ chain are read, never run. Keys with no meaning under rayseg are listed as ignored,
with their reason, in the output's header and on stdout; keys that cannot be translated stop the conversion with
one ``error: …`` line naming each key path and why (``--partial`` writes the rest and lists them in the header).
Any job also takes the .py config directly (``jobs/train.py MMSEG_CONFIG``); this writes the YAML to read or edit.
"""
import argparse
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.errors import ConfigError
from rayseg.mmseg_config.convert import convert


def main(argv=None) -> int:
    """Parse arguments, convert, print the report; exit status 2 on a config error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an MMSegmentation .py config (0.x or 1.x)")
    parser.add_argument("out", help="the rayseg YAML config to write")
    parser.add_argument("--partial", action="store_true",
                        help="write what can be translated and list the rest in the file's header")
    args = parser.parse_args(argv)
    try:
        report = convert(args.config, args.out, partial=args.partial)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report.text())
    print(f"wrote {args.out}")
    if report.untranslatable:
        print(f"warning: {len(report.untranslatable)} key(s) could not be translated and were left out "
              "(listed above and in the file's header)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
