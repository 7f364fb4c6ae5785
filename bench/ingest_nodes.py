"""Benchmark: training-stream preprocessing on CPU-only nodes of a simulated cluster, with 1 and 2 such nodes.

    python bench/ingest_nodes.py [--data-root ../shared/data/camvid] [--nodes 1 2] [--images 800] [--batch 8]

A ``ray.cluster_utils.Cluster`` on this machine: a head advertising 0 CPUs, where this script consumes the
batches as the training worker would (so no decode/augment actor can run there, as on ``cluster/gpu.yaml``'s
GPU nodes once their CPUs are taken by training), and N worker nodes of 1 CPU each. The stream is rayseg's
training stream on CamVid train with the CamVid config's pipeline (``build_train_stream``, one decode/augment
actor per CPU node, ``--cache-decoded`` as in training).

For each N it prints the steady images/s, the time to the first batch, and the bytes each node's object store
took in per image (Ray's per-node ``cumulative_created_bytes``: objects made there plus copies pulled from other
nodes), split into the consumer's node and the CPU nodes; on one machine the nodes share its cores and loopback,
so the figures say what moves where, not what a network would allow. The last line is machine-readable:

    ingest_nodes: n1=R1 n2=R2 ratio=R2/R1 consumer_bytes_per_image=B
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))


def created_bytes() -> dict:
    """Node id -> bytes created in its object store so far (its own objects and pulled copies)."""
    import ray
    from ray._private.internal_api import node_stats

    out = {}
    for node in ray.nodes():
        if node["Alive"]:
            reply = node_stats(node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=False)
            out[node["NodeID"]] = reply.store_stats.cumulative_created_bytes
    return out


def run(dataset, nodes: int, batch: int, warmup: int, images: int, cache_decoded: str) -> dict:
    import ray
    import ray._private.utils
    from ray.cluster_utils import Cluster

    from ingest import _steady_rate
    from rayseg.datasets.ray_data import build_train_stream
    from rayseg.utils.ray_session import quiet_ray_data

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Keep this cluster's address out of /tmp/ray/ray_current_cluster, which other Ray instances read.
    write_address = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda address, _=None: write_address(address, temp_dir)
    node_args = {"node_ip_address": "127.0.0.1", "temp_dir": temp_dir}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={**node_args, "num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, **node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        head = ray.get_runtime_context().get_node_id()
        quiet_ray_data()
        before = created_bytes()
        rows = (warmup + 2) * batch + images
        stream = build_train_stream(dataset, rows, seed=0, num_actors=nodes, actor_num_cpus=1.0,
                                    cache_decoded=cache_decoded)
        seen = {"images": 0, "bytes": 0}

        def counted(batches):
            for b in batches:
                seen["images"] += len(b["img"])
                seen["bytes"] += sum(t.numel() * t.element_size() for t in b.values() if hasattr(t, "numel"))
                yield b

        batches = stream.iter_torch_batches(batch_size=batch, dtypes=None, drop_last=True)
        first, rate = _steady_rate(counted(batches), batch, warmup, images)
        after = created_bytes()
        taken = {node: after[node] - before.get(node, 0) for node in after}
        n = seen["images"]
        return {"nodes": nodes, "first_batch_s": first, "rate": rate, "images": n,
                "batch_bytes_per_image": seen["bytes"] / n,
                "consumer_bytes_per_image": taken.get(head, 0) / n,
                "cpu_nodes_bytes_per_image": sum(v for k, v in taken.items() if k != head) / n}
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray._private.utils.write_ray_address = write_address
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.path.join(REPO, "..", "shared", "data", "camvid"))
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=800, help="images timed in steady state")
    parser.add_argument("--warmup", type=int, default=10, help="batches left out before timing")
    parser.add_argument("--cache-decoded", default="auto", choices=("auto", "true", "false"))
    args = parser.parse_args(argv)

    import cv2
    import ray
    import torch

    from ingest import build_dataset

    from rayseg.datasets import decoded_cache

    dataset = build_dataset(args.data_root)
    decoded = decoded_cache.estimate_bytes(dataset) / len(dataset.samples)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, ray {ray.__version__}, "
          f"opencv {cv2.__version__}; CamVid train {len(dataset.samples)} images; batch {args.batch}, "
          f"cache_decoded {args.cache_decoded}; a decoded sample (image + mask) {decoded / 1e3:.0f} kB")
    results = []
    for nodes in args.nodes:
        r = run(dataset, nodes, args.batch, args.warmup, args.images, args.cache_decoded)
        results.append(r)
        print(f"{nodes} CPU node(s): first batch {r['first_batch_s']:.2f} s, steady {r['rate']:.1f} img/s; "
              f"per image: batches {r['batch_bytes_per_image'] / 1e3:.0f} kB, into the consumer's node "
              f"{r['consumer_bytes_per_image'] / 1e3:.0f} kB, into the CPU nodes {r['cpu_nodes_bytes_per_image'] / 1e3:.0f} kB",
              flush=True)
    by_nodes = {r["nodes"]: r for r in results}
    n1, n2 = by_nodes.get(1, results[0]), by_nodes.get(2, results[-1])
    print(f"ingest_nodes: n1={n1['rate']:.1f} n2={n2['rate']:.1f} ratio={n2['rate'] / n1['rate']:.3f} "
          f"consumer_bytes_per_image={n2['consumer_bytes_per_image']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
