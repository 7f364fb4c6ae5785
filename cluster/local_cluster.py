"""Keep a simulated N-node Ray cluster (``ray.cluster_utils.Cluster``) on 127.0.0.1 alive; started by local.sh.

    python cluster/local_cluster.py STATE_DIR NUM_NODES CPUS_PER_NODE

Why a Python launcher and not N ``ray start`` calls: ``ray start --address`` refuses to add a node unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``, and with that setting Ray replaces 127.0.0.1 with the machine's interface
address and its processes listen on every interface. ``Cluster`` starts the same processes (a GCS, one raylet,
object store and dashboard agent per node) with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, so everything binds and
connects on 127.0.0.1 only.

The cluster runs with the environment this process was given (local.sh sets ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH``, so token authentication is on). Once every node is up it writes ``STATE_DIR/env``
(the variables a client needs) and keeps the cluster until SIGTERM/SIGINT, then shuts it down.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    """Start the cluster described by ``argv`` (STATE_DIR NUM_NODES CPUS_PER_NODE) and serve until signalled."""
    state_dir, num_nodes, cpus = Path(argv[0]), int(argv[1]), float(argv[2])
    temp_dir = (state_dir / "temp_dir").read_text().strip()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only (see the module docstring)
    gcs_port, dashboard_port = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    # Inherited by every process of the cluster: the job supervisor of `ray job submit` otherwise looks the
    # cluster up in a ray_current_cluster file, which may name another cluster on this machine.
    os.environ["RAY_ADDRESS"] = address

    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster records its address in Ray's default /tmp/ray/ray_current_cluster, which every other cluster
    # on the machine reads too: write it into this cluster's own temp dir instead.
    write_ray_address = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda addr, _=None: write_ray_address(addr, temp_dir)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    node_args = {"node_ip_address": "127.0.0.1", "temp_dir": temp_dir, "num_cpus": cpus}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        **node_args, "gcs_server_port": gcs_port, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
    })
    try:
        for i in range(1, num_nodes):
            cluster.add_node(resources={f"local_node_{i}": 1}, **node_args)
        cluster.wait_for_nodes()
        env = {"RAY_ADDRESS": address, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
               "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", ""),
               "RAY_AUTH_TOKEN_PATH": os.environ.get("RAY_AUTH_TOKEN_PATH", ""),
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        (state_dir / "cluster.json").write_text(json.dumps({"nodes": num_nodes, "cpus_per_node": cpus, **env}))
        # written last: local.sh waits for this file
        (state_dir / "env").write_text(" ".join(f"{k}={v}" for k, v in env.items() if v) + "\n")
        print(f"local cluster up at {address}", flush=True)
        stop.wait()
    finally:
        cluster.shutdown()
    print("local cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
