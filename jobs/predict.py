"""Segment many images on Ray: one palette label PNG per image (and, with --overlay, a blended JPEG).

    python jobs/predict.py CONFIG CHECKPOINT INPUTS... --out-dir DIR [--overlay] [--batch-size N]
        [--num-replicas N] [--use-gpu] [--opacity 0.5]

INPUTS: image files, folders (searched recursively for image files), glob patterns (quote them), local
or object-storage URIs (s3://, gs://, file://, ...). Outputs keep each image's path relative to its input
folder: DIR/<name>.png (class indices, dataset colours, input size). Unreadable inputs are skipped and
listed at the end; the exit code is 1 if any failed, 0 otherwise (2 for a config/checkpoint error).
"""
import argparse
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.apis.batch_predict import predict_images
from rayseg.config import load_config
from rayseg.utils.ray_session import USER_ERRORS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="latest.pth, a Ray checkpoint folder, an MMSeg .pth, or a URL")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")
    parser.add_argument("--out-dir", required=True, help="output folder (or object-storage URI)")
    parser.add_argument("--overlay", action="store_true", help="also write <name>.jpg: the prediction over the image")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per replica call (default 4)")
    parser.add_argument("--num-replicas", type=int, default=1, help="model replicas (Ray actors); 0 = in this process")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per replica")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        summary = predict_images(cfg, args.checkpoint, args.inputs, args.out_dir, overlay=args.overlay,
                                 batch_size=args.batch_size, num_replicas=args.num_replicas, use_gpu=args.use_gpu,
                                 opacity=args.opacity, progress=not args.no_progress, address=args.address)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    print(f"outputs in {args.out_dir}")
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
