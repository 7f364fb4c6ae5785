"""The workers' torch process group, with its rendezvous store listening only where it has to.

Ray Train's default setup has rank 0 start torch's ``TCPStore`` on ``MASTER_ADDR:PORT``, and the store binds
every interface (``*:PORT``) with no authentication, even when all workers share one machine. Here rank 0
binds the listening socket itself and hands it to the store (``master_listen_fd``): on loopback when every
worker runs on rank 0's node, on that node's cluster address otherwise. A single worker needs no store
server at all. On one node gloo's own connections are kept on loopback too (``GLOO_SOCKET_IFNAME``).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional, Tuple

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK = "127.0.0.1"
# Rank 0's listening socket, kept referenced for the life of the worker: the store uses its file descriptor,
# which closing the Python object would pull from under it.
_STORE_SOCKET: Optional[socket.socket] = None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def open_store_socket(loopback: bool) -> Tuple[str, int]:
    """(host, port) of a new listening socket for the store, on loopback or on this node's Ray address."""
    global _STORE_SOCKET
    import ray.util

    host = LOOPBACK if loopback else ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    if _STORE_SOCKET is not None:
        _STORE_SOCKET.close()
    _STORE_SOCKET = sock
    return host, sock.getsockname()[1]


def loopback_interface() -> Optional[str]:
    """The name of the interface that holds 127.0.0.1 (``lo`` on Linux), or None if none can be found."""
    try:
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
                return name
    except Exception:  # psutil missing or the platform hides interfaces: leave gloo's default
        pass
    return None


def init_process_group(backend: str, rank: int, world_size: int, host: Optional[str], port: Optional[int],
                       loopback: bool, timeout_s: int) -> None:
    """Join the process group through the store rank 0 serves at ``host:port`` (None for one worker)."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if world_size == 1:
        store = dist.HashStore()  # nothing to rendezvous with: no socket at all
    else:
        if loopback and backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
            interface = loopback_interface()
            if interface:
                os.environ["GLOO_SOCKET_IFNAME"] = interface
        if rank == 0:
            store = dist.TCPStore(host, port, world_size, True, timeout, wait_for_workers=False,
                                  master_listen_fd=_STORE_SOCKET.fileno())
        else:
            store = dist.TCPStore(host, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


class _BoundStoreBackend(_TorchBackend):
    """Ray Train's torch backend with the process-group setup above (shutdown and the rest are Ray's)."""

    def on_start(self, worker_group, backend_config: "BoundStoreTorchConfig") -> None:
        backend = backend_config.backend
        if backend not in ("gloo", "nccl") or not hasattr(worker_group, "execute_single_async"):
            return super().on_start(worker_group, backend_config)  # TPUs and Ray Train V1: Ray's own setup
        import ray

        world_size = len(worker_group)
        loopback = len(set(worker_group.execute(_node_id))) == 1
        host, port = worker_group.execute_single(0, open_store_socket, loopback) if world_size > 1 else (None, None)
        worker_group.execute(_set_torch_distributed_env_vars)
        # Positional: execute_single_async's own first parameter is called ``rank``.
        ray.get([worker_group.execute_single_async(i, init_process_group, backend, i, world_size, host, port,
                                                   loopback, backend_config.timeout_s)
                 for i in range(world_size)])


@dataclass
class BoundStoreTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous store listens on loopback (one node) or the node's address only."""

    @property
    def backend_cls(self):
        return _BoundStoreBackend
