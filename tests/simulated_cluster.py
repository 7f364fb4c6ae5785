"""Run a ``ray.cluster_utils.Cluster`` (a head and N one-CPU worker nodes on this machine) in its own process.

Tests start it as a subprocess because ``Cluster.shutdown`` resets process-global Ray state (the internal KV
client, the recorded cluster address), which would break the test session's own connection to its Ray head.

    python tests/simulated_cluster.py DASHBOARD_PORT NUM_WORKER_NODES

Prints one JSON line ``{"address", "dashboard", "worker_node_ids"}`` once every node is up, then keeps the
cluster running until stdin is closed.
"""
import json
import os
import socket
import sys

from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    dashboard_port, num_workers = int(sys.argv[1]), int(sys.argv[2])
    gcs_port = free_port()
    # The cluster's processes inherit RAY_ADDRESS, so Ray's address auto-detection inside them (e.g. the state
    # API behind Ray Train's PlacementGroupCleaner) names this cluster, not whichever cluster was started last
    # on the machine (/tmp/ray/ray_current_cluster; see pin_ray_address in conftest.py).
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "gcs_server_port": gcs_port, "num_cpus": 3, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
    })
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"trainer_slot": 1}, node_ip_address="127.0.0.1")
                 for _ in range(num_workers)]
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "dashboard": f"http://127.0.0.1:{dashboard_port}",
                          "worker_node_ids": [n.node_id for n in nodes]}), flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
