"""Search hyper-parameters with Ray Tune: ``python jobs/tune.py SWEEP_CONFIG [--work-dir DIR] [--cfg-options K=V ...]``.

Each trial trains the sweep's base config with sampled values on Ray Train; the table of trials is printed at
the end and ``WORK_DIR/best_config.yaml`` holds the best trial's training config (docs/tune.md).
"""
import argparse
import os
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.engine.progress import VERBOSE_ENV, quiet_driver_logs, verbose_requested
from rayseg.tune import load_sweep, run_sweep
from rayseg.utils.ray_session import USER_ERRORS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_config", help="a sweep YAML: base_config, search_space, tune")
    parser.add_argument("--work-dir", help="where the trials, trials.csv and best_config.yaml go "
                                           "(default work_dirs/<sweep file name>)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override keys of the base training config of every trial")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep in the work dir; finished trials are not run again")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a new local instance)")
    parser.add_argument("--verbose", action="store_true", help=f"show everything Ray prints; same as {VERBOSE_ENV}=1")
    args = parser.parse_args()
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    if not verbose_requested():
        quiet_driver_logs()
    try:
        sweep = load_sweep(args.sweep_config, work_dir=args.work_dir, cfg_options=args.cfg_options)
        summary = run_sweep(sweep, address=args.address, resume=args.resume)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(summary["table"])
    print(f"trials:      {summary['table_path']}")
    print(f"best config: {summary['best_config']}   (python jobs/train.py {summary['best_config']})")
    if summary.get("best_checkpoint"):
        print(f"best checkpoint: {summary['best_checkpoint']}")
    if summary.get("registered"):
        reg = summary["registered"]
        print(f"registered model {reg['name']} version {reg['version']} ({reg['uri']})")
    if summary.get("parent_run_id"):
        print(f"MLflow sweep run {summary['parent_run_id']} in {summary['tracking_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
