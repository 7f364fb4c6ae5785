"""Benchmark, simulated: the training stream's preprocessing on extra CPU-only nodes, batches to the training node.

    python bench/ingest_nodes.py [--nodes 1 2] [--data-root ../shared/data/camvid] [--images 400]

For each --nodes value: a ``ray.cluster_utils.Cluster`` (tests/simulated_cluster.py) whose head has no CPUs
(the "training node": nothing CPU-bound can be placed there) and N two-CPU worker nodes (the preprocessing
nodes). ``ray job submit`` starts this script on the head (``--inside``), where it builds rayseg's CamVid
training stream (build_train_stream, one decode/augment actor per preprocessing node) and consumes uint8 torch
batches as the training worker would. It reports where Ray placed the stream's actors, images/s in steady
state, the bytes of batch data the training node received per image, and the encoded bytes per image the
preprocessing nodes read from storage (once per job with the decoded cache).

Every "node" here is a process group on the same machine: they share its cores and memory, so images/s shows
that the stream works across nodes, not how it scales with real machines. Last line:
``ingest_nodes: nodes=N img_s=R batch_kb_per_img=B actors_on_training_node=K`` per --nodes value.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CAMVID = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "camvid"))
RESULT = "ingest_nodes_result "


def inside(args) -> int:
    """The job's driver, on the head (training) node: build the stream, consume it, report as one JSON line."""
    import ray
    from ray.util.state import list_actors

    from ingest import build_dataset
    from rayseg.datasets.ray_data import build_train_stream
    from rayseg.utils.ray_session import quiet_ray_data

    ray.init()
    quiet_ray_data()
    head = ray.get_runtime_context().get_node_id()
    dataset = build_dataset(args.data_root)
    encoded = sum(os.path.getsize(s["img_path"]) + os.path.getsize(s["seg_path"]) for s in dataset.samples)
    rows = (args.warmup + 2) * args.batch + args.images
    start = time.perf_counter()
    stream = build_train_stream(dataset, rows, seed=0, num_actors=args.actors, actor_num_cpus=1.0)
    batches = stream.iter_torch_batches(batch_size=args.batch, dtypes=None, drop_last=True, prefetch_batches=2)
    first = steady_start = None
    seen = nbytes = 0
    placement = Counter()
    for i, batch in enumerate(batches):
        now = time.perf_counter()
        if first is None:
            first = now - start
        if i == args.warmup:
            steady_start, seen, nbytes = now, 0, 0
            # the stream's actors are all up by now
            for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
                if "MapWorker" in actor.class_name:
                    placement["training node" if actor.node_id == head else "preprocessing nodes"] += 1
        seen += args.batch
        nbytes += sum(t.numel() * t.element_size() for t in batch.values())
        if steady_start is not None and seen >= args.images:
            break
    rate = seen / (time.perf_counter() - steady_start)
    print(RESULT + json.dumps({
        "img_s": rate, "first_batch_s": first, "batch_bytes_per_img": nbytes / seen,
        "encoded_bytes_per_img": encoded / len(dataset.samples), "actors": dict(placement)}), flush=True)
    return 0


def run_nodes(num_nodes: int, args) -> dict:
    """One simulated cluster with ``num_nodes`` preprocessing nodes; the --inside job's result."""
    from simulated_cluster import SimulatedCluster

    # two CPUs per preprocessing node: its decode/augment actor holds one, the stream's reads and decoder the other
    sim = SimulatedCluster(num_nodes, head_cpus=0, node_cpus=2)
    try:
        cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address", sim.dashboard,
               "--", sys.executable, os.path.abspath(__file__), "--inside", "--data-root", args.data_root,
               "--actors", str(num_nodes), "--images", str(args.images), "--warmup", str(args.warmup),
               "--batch", str(args.batch)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"the job took over {args.timeout:g} s; its output:\n"
                               f"{(exc.stdout or b'')[-3000:]!r}") from None
    finally:
        sim.shutdown()
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"the job failed (rc {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="preprocessing node counts")
    parser.add_argument("--data-root", default=CAMVID)
    parser.add_argument("--images", type=int, default=400, help="images timed after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="batches left out")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600, help="seconds one job may take")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print(f"machine: {os.cpu_count()} CPUs; CamVid train at {args.data_root}; batch {args.batch}, "
          f"{args.images} images timed after {args.warmup} batches")
    summary = []
    for n in args.nodes:
        r = run_nodes(n, args)
        on_training = r["actors"].get("training node", 0)
        print(f"{n} preprocessing node(s): {r['img_s']:.1f} img/s, first batch {r['first_batch_s']:.1f} s; "
              f"decode/augment actors {r['actors']}; to the training node {r['batch_bytes_per_img'] / 1024:.0f} KiB "
              f"of uint8 batch per image; read from storage {r['encoded_bytes_per_img'] / 1024:.0f} KiB encoded "
              f"per image (once per job with the decoded cache)", flush=True)
        summary.append(f"ingest_nodes: nodes={n} img_s={r['img_s']:.1f} "
                       f"batch_kb_per_img={r['batch_bytes_per_img'] / 1024:.0f} actors_on_training_node={on_training}")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
