"""Evaluate a checkpoint on a data split (MMSeg's tools/test.py), distributed over Ray inference actors.

    python jobs/test.py CONFIG CHECKPOINT [--split test] [--out metrics.json] [--eval mIoU mDice mFscore]
        [--show-dir DIR] [--aug-test] [--num-workers N] [--use-gpu] [--mlflow | --mlflow-run-id ID]

CHECKPOINT: a latest.pth, a Ray checkpoint folder, an MMSeg .pth or a URL. Without --num-workers the
evaluation runs in this process unless a Ray cluster is named (--address / RAY_ADDRESS, as under
`ray job submit`), where it uses one actor per GPU (--use-gpu) or per two CPUs.
"""
import argparse
import os
import sys
import tempfile

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.apis.distributed_eval import default_num_workers, evaluate_distributed
from rayseg.apis.eval_outputs import (AUTO_RUN_ID, confusion_png_path, log_evaluation, open_evaluation_run,
                                      training_run_id, write_confusion_png, write_metrics_json)
from rayseg.config import load_config
from rayseg.engine.checkpoint import load_weights_file
from rayseg.evaluation import format_tables
from rayseg.evaluation.report import ALLOWED_METRICS, eval_prefix
from rayseg.tracking import describe_store, ui_command
from rayseg.utils.ray_session import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="latest.pth, a Ray checkpoint folder, an MMSeg .pth, or a URL")
    parser.add_argument("--out", help="write the metrics as JSON here (and <stem>_confusion.png beside it)")
    parser.add_argument("--split", default="test", help="which data split to evaluate (default: test)")
    parser.add_argument("--eval", nargs="+", default=["mIoU"], choices=ALLOWED_METRICS,
                        help="table columns (aAcc always; the JSON keeps every metric)")
    parser.add_argument("--show-dir", help="write prediction | ground truth JPEGs here, one per image")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity for --show-dir")
    parser.add_argument("--aug-test", action="store_true", help="multi-scale (0.5-1.75) + flip test-time augmentation")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="inference actors on Ray; 0 = in this process (default: see above)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per actor call (default 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    tracking = parser.add_mutually_exclusive_group()
    tracking.add_argument("--mlflow-run-id", help="log metrics (<split>/<name>) and plots to this MLflow run; "
                          f"'{AUTO_RUN_ID}': the training run of the checkpoint's work dir (run_state.json)")
    tracking.add_argument("--mlflow", action="store_true", help="log to a new MLflow run tagged rayseg.kind=evaluation")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run, created = None, False
    try:
        cfg = load_config(args.config, args.cfg_options)
        state = load_weights_file(args.checkpoint)
        meta = state.get("meta") or {}
        if args.mlflow or args.mlflow_run_id:
            name = f"eval-{args.split}{'-aug' if args.aug_test else ''}-{os.path.basename(args.checkpoint.rstrip('/'))}"
            run_id = training_run_id(args.checkpoint, meta) if args.mlflow_run_id == AUTO_RUN_ID else args.mlflow_run_id
            run = open_evaluation_run(cfg, meta, run_id, tags={
                "mlflow.runName": name, "rayseg.config": args.config, "rayseg.checkpoint": args.checkpoint,
                "rayseg.split": args.split, "rayseg.aug_test": str(args.aug_test)})
            created = not run_id
            print(f"{describe_store(run.tracking_uri)}; logging to run {run.run_id}", flush=True)
        workers = args.num_workers if args.num_workers is not None else default_num_workers(args.use_gpu, args.address)
        results = evaluate_distributed(cfg, state, split=args.split, num_workers=workers, use_gpu=args.use_gpu,
                                       aug_test=args.aug_test, show_dir=args.show_dir, batch_size=args.batch_size,
                                       progress=not args.no_progress, address=args.address, opacity=args.opacity)
    except USER_ERRORS as exc:
        if created:
            run.finish("FAILED")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        if created:  # a run we opened must not stay RUNNING forever
            run.finish("FAILED")
        raise
    table = format_tables(results, results["classes"], metrics=args.eval)
    print(table)
    if args.show_dir:
        print(f"visualisations written to {args.show_dir}")
    with tempfile.TemporaryDirectory(prefix="rayseg-eval-") as tmp:
        files = []
        if args.out:
            files.append(write_metrics_json(results, args.out))
            print(f"metrics written to {args.out}")
        if args.out or run is not None:
            # Beside --out; without it the plot only goes to MLflow, from a temporary folder.
            png = confusion_png_path(args.out or os.path.join(tmp, f"{args.split}_metrics.json"))
            files.append(write_confusion_png(results, png, title=f"{args.split}: normalised confusion matrix"))
            if args.out:
                print(f"confusion matrix written to {png}")
        if run is not None:
            prefix = eval_prefix(args.split, args.aug_test)
            log_evaluation(run, results, prefix, step=int(meta.get("iter") or 0), table=table, confusion_png=files[-1],
                           finish=created)
            print(f"logged to MLflow run {run.run_id} as {prefix}/<metric>, artifacts in evaluation/{prefix}/")
            print(f"{describe_store(run.tracking_uri)}; open the UI: {ui_command(run.tracking_uri)}   then visit "
                  f"{run.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
