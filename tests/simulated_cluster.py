"""Run a ``ray.cluster_utils.Cluster`` (a head and N one-CPU worker nodes on this machine) in its own process.

Tests start it as a subprocess because ``Cluster.shutdown`` resets process-global Ray state (the internal KV
client, the recorded cluster address), which would break the test session's own connection to its Ray head.

    python tests/simulated_cluster.py DASHBOARD_PORT NUM_WORKER_NODES

Prints one JSON line ``{"address", "dashboard", "worker_node_ids"}`` once every node is up, then keeps the
cluster running until stdin is closed. Meanwhile it takes commands on stdin, one per line, and answers each
with a JSON line: ``remove NODE_ID`` (the node dies, as a preempted machine would) and ``add`` (a new
worker node like the first ones; ``{"added": NODE_ID}``). Nodes are added here, on the main thread, because
``Cluster.add_node`` installs a signal handler.

Like the session head (conftest.RayHead), the cluster keeps to itself on a machine shared with other Ray
clusters: its own Ray temp dir, holding its own ``ray_current_cluster`` file, and RAY_ADDRESS in its processes'
environment (see the comment above ``own_ray_temp_dir`` in conftest.py).
"""
import json
import os
import shutil
import socket
import sys
import tempfile

import ray._private.utils
from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    dashboard_port, num_workers = int(sys.argv[1]), int(sys.argv[2])
    gcs_port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Unix socket paths live below it
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"  # inherited by every process of the cluster
    # Cluster records its address in Ray's default /tmp/ray/ray_current_cluster, the file every other cluster
    # on the machine reads too (the job supervisor of `ray job submit` reads the one in its node's temp dir):
    # write this cluster's into its own temp dir instead.
    write_ray_address = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda address, _=None: write_ray_address(address, temp_dir)
    node_args = {"node_ip_address": "127.0.0.1", "temp_dir": temp_dir}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        **node_args, "gcs_server_port": gcs_port, "num_cpus": 3, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
    })
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"trainer_slot": 1}, **node_args) for _ in range(num_workers)]
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "dashboard": f"http://127.0.0.1:{dashboard_port}",
                          "worker_node_ids": [n.node_id for n in nodes]}), flush=True)
        by_id = {n.node_id: n for n in nodes}
        for line in sys.stdin:  # until the test closes our stdin
            command = line.split()
            if command[:1] == ["remove"] and len(command) == 2 and command[1] in by_id:
                cluster.remove_node(by_id.pop(command[1]))
                print(json.dumps({"removed": command[1]}), flush=True)
            elif command == ["add"]:
                node = cluster.add_node(num_cpus=1, resources={"trainer_slot": 1}, **node_args)
                by_id[node.node_id] = node
                print(json.dumps({"added": node.node_id}), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
