"""Run a ``ray.cluster_utils.Cluster`` (a head and N one-CPU worker nodes on this machine) in its own process.

``SimulatedCluster`` starts this script and drives it (tests and bench/elastic.py use it). Tests start it as a subprocess because ``Cluster.shutdown`` resets process-global Ray state (the internal KV
client, the recorded cluster address), which would break the test session's own connection to its Ray head.

    python tests/simulated_cluster.py DASHBOARD_PORT NUM_WORKER_NODES [HEAD_CPUS [NODE_CPUS]]

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
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, Optional

import ray._private.utils
from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimulatedCluster:
    """A ``ray.cluster_utils.Cluster`` (a head with ``head_cpus`` CPUs and ``num_nodes`` worker nodes of ``node_cpus`` CPUs offering
    ``trainer_slot``) run by tests/simulated_cluster.py in its own process; ``remove``/``add`` worker nodes
    while it runs. ``env``: extra environment for every process of the cluster."""

    def __init__(self, num_nodes: int = 2, env: Optional[Dict[str, str]] = None, head_cpus: int = 3,
                 node_cpus: int = 1):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(free_port()), str(num_nodes), str(head_cpus),
             str(node_cpus)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()  # blocks until every node is up (or the script died)
        if not line:
            self.proc.kill()
            raise RuntimeError("the simulated cluster did not start")
        info = json.loads(line)
        self.address, self.dashboard = info["address"], info["dashboard"]
        self.worker_node_ids = list(info["worker_node_ids"])

    def _command(self, text: str) -> Dict[str, Any]:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer
        return answer

    def remove(self, node_id: str) -> None:
        """Kill a worker node, as a preempted machine disappears."""
        self._command(f"remove {node_id}")
        self.worker_node_ids.remove(node_id)

    def add(self) -> str:
        """Add a worker node like the first ones; returns its node id."""
        node_id = self._command("add")["added"]
        self.worker_node_ids.append(node_id)
        return node_id

    def shutdown(self, stop_leftovers: Optional[Callable[[int], None]] = None) -> None:
        """Close the cluster; ``stop_leftovers(gcs_port)`` then kills any of its processes still running."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if stop_leftovers is not None:
            stop_leftovers(int(self.address.rsplit(":", 1)[1]))  # anything the script left behind


def main() -> int:
    dashboard_port, num_workers = int(sys.argv[1]), int(sys.argv[2])
    head_cpus = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    node_cpus = int(sys.argv[4]) if len(sys.argv) > 4 else 1
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
        **node_args, "gcs_server_port": gcs_port, "num_cpus": head_cpus, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
    })
    try:
        nodes = [cluster.add_node(num_cpus=node_cpus, resources={"trainer_slot": 1}, **node_args) for _ in range(num_workers)]
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
                node = cluster.add_node(num_cpus=node_cpus, resources={"trainer_slot": 1}, **node_args)
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
