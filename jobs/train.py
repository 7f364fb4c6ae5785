"""Train a segmentation model on Ray: ``python jobs/train.py CONFIG [--work-dir DIR] [--cfg-options K=V ...]``."""
import argparse
import os
import shlex
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.config import load_config
from rayseg.engine.interrupt import RunInterrupted
from rayseg.engine.progress import VERBOSE_ENV, quiet_driver_logs, verbose_requested
from rayseg.engine.trainer import train
from rayseg.spec.resolve import resolve_run
from rayseg.utils.ray_session import USER_ERRORS


def resume_command(work_dir: str) -> str:
    """This job's command line with ``--work-dir`` and ``--resume``: what continues the run."""
    argv = list(sys.argv[1:])
    if "--resume" not in argv:
        argv.append("--resume")
    if not any(a == "--work-dir" or a.startswith("--work-dir=") for a in argv):
        argv += ["--work-dir", work_dir]
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    return shlex.join([python, sys.argv[0], *argv])


def stopped_message(stop: RunInterrupted) -> str:
    """Where an interrupted run stands and the command that continues it."""
    reached = f" after iteration {stop.iteration} of {stop.max_iters} (the last one logged)" if stop.iteration else ""
    if stop.checkpoint_iteration:
        how = (f"--resume continues from its checkpoint at iteration {stop.checkpoint_iteration}:\n  "
               f"{resume_command(stop.work_dir)}")
    else:
        how = "no checkpoint was written yet, so a new run starts from iteration 0"
    return f"stopped by {stop.signal_name}{reached}; MLflow run marked KILLED; {how}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--work-dir", help="where latest.pth, log.jsonl and the tables go")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. runner.max_iters=100 data.samples_per_gpu=4")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the work dir: weights, optimizer, lr schedule, iteration, data position")
    parser.add_argument("--load-from", help="initialise the weights from this .pth / checkpoint and start at iteration 0")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels and data order: the same seed gives bit-identical losses")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a new local instance)")
    parser.add_argument("--verbose", action="store_true",
                        help=f"show everything Ray prints (its logs, the workers' stderr); same as {VERBOSE_ENV}=1")
    args = parser.parse_args()
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # what the training console reads; library callers can set it too
    if not verbose_requested():
        quiet_driver_logs()
    try:
        cfg = load_config(args.config, args.cfg_options)
        spec = resolve_run(cfg, work_dir=args.work_dir, config_path=args.config, resume=args.resume,
                           load_from=args.load_from, seed=args.seed, deterministic=args.deterministic)
        for note in spec.notes:
            print(f"note: {note}")
        summary = train(spec, address=args.address)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(stopped_message(stop), file=sys.stderr)
        return stop.exit_code
    if summary.get("already_finished"):
        print(f"The run in {summary['work_dir']} already finished at iteration {summary['iter']}; nothing to do.")
        return 0
    if summary.get("table"):
        print(summary["table"])
    print(f"work dir: {summary['work_dir']}")
    if summary.get("latest"):
        print(f"weights:  {summary['latest']}")
    print(f"log:      {summary['log']}")
    if summary.get("mlflow"):
        ml = summary["mlflow"]
        print(f"MLflow run {ml['run_id']} in {ml['tracking_uri']}")
        print(f"open the UI: {ml['ui']}   then visit {ml['url']}")
    if summary.get("registered"):
        reg = summary["registered"]
        print(f"registered model {reg['name']} version {reg['version']} ({reg['uri']}) from {reg['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
