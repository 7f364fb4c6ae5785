"""Write the synthetic shapes dataset (MMSeg custom layout) used by demos and smoke tests.

    python jobs/make_demo_data.py DST [--num-train 240] [--num-val 60] [--size 128 128] [--seed 0]
"""
from __future__ import annotations

import argparse
import json

from rayseg.datasets.demo import make_demo_dataset


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dst", help="output directory (created if needed)")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = make_demo_dataset(args.dst, num_train=args.num_train, num_val=args.num_val,
                                size=tuple(args.size), seed=args.seed)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
