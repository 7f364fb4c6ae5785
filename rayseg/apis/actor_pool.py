"""Rows of file paths through model replicas: a Ray Data actor pool, or one replica in this process.

Distributed evaluation and batch prediction both load the checkpoint once in the driver and ship it to
their replicas through Ray's object store, so a checkpoint only the driver can see (a local
``latest.pth`` on the head node, a URL fetched once) still reaches actors on every node.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

from rayseg.utils.ray_session import connect_ray, quiet_ray_data, user_error


def map_rows(replica_cls: type, columns: Dict[str, Sequence[Optional[str]]], state: Dict[str, Any],
             replica_kwargs: Dict[str, Any], batch_size: int = 1, num_replicas: int = 1, use_gpu: bool = False,
             cpus_per_replica: float = 1.0, max_block_rows: int = 16,
             address: Optional[str] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Yield ``replica_cls(state=..., **replica_kwargs)(batch)`` for batches of ``batch_size`` rows.

    ``columns``: equal-length lists of strings (or None), one per column. ``state`` is the loaded
    checkpoint; with ``num_replicas`` ≥ 1 it goes once into the object store and each actor receives
    its ObjectRef (one GPU each with ``use_gpu``), otherwise one replica runs here without Ray. The rows
    travel as small Arrow blocks (at most ``max_block_rows``, and at least four blocks per replica) so
    they spread evenly and results stream back steadily. A rayseg error raised inside an actor is
    re-raised as itself, not as Ray's wrapper around it.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    if num_replicas == 0:
        replica = replica_cls(state=state, **replica_kwargs)
        for i in range(0, n, batch_size):
            yield replica({k: np.array(list(v[i:i + batch_size]), dtype=object) for k, v in columns.items()})
        return
    import pyarrow as pa
    import ray
    import ray.data

    connect_ray(address, num_replicas * cpus_per_replica)
    quiet_ray_data()
    kwargs = dict(replica_kwargs, state=ray.put(state))
    table = pa.table({k: pa.array(list(v), pa.string()) for k, v in columns.items()})
    rows = max(batch_size, min(max_block_rows, math.ceil(n / (4 * num_replicas))))
    ds = ray.data.from_arrow([table.slice(i, rows) for i in range(0, n, rows)])
    resources = {"num_cpus": cpus_per_replica, **({"num_gpus": 1} if use_gpu else {})}
    ds = ds.map_batches(replica_cls, batch_size=batch_size, fn_constructor_kwargs=kwargs,
                        compute=ray.data.ActorPoolStrategy(size=num_replicas), **resources)
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as exc:
        cause = user_error(exc)
        if cause is None:
            raise
        raise cause from None  # the rayseg error's own message, not Ray's wrapper around it
