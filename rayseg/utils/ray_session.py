"""Connecting to Ray and keeping its console output readable; shared by training, evaluation and prediction."""
from __future__ import annotations

import logging
import math
import os
from typing import Optional, Tuple, Type

from rayseg.errors import CheckpointError, ConfigError, DataError

USER_ERRORS: Tuple[Type[BaseException], ...] = (ConfigError, DataError, CheckpointError)


def connect_ray(address: Optional[str] = None, num_cpus_needed: float = 1.0, dashboard: bool = False) -> None:
    """Connect to ``address``/``RAY_ADDRESS``, or start a local Ray with enough logical CPUs for the job.

    ``address="local"`` for the local case: a cluster somebody started with ``ray start`` on this machine
    is not ours to join (plain ``ray.init()`` would attach to it and then refuse ``num_cpus``).
    ``dashboard`` starts the dashboard locally; Ray Train's placement-group cleaner polls its state API.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    num_cpus = max(os.cpu_count() or 1, math.ceil(num_cpus_needed) + 1)
    if dashboard:
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1")
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def quiet_ray_data(context=None) -> None:
    """Ray Data's per-operator progress bars and start-up lines would drown rayseg's own progress line.

    ``context``: the ``DataContext`` to change (default: this process's current one).
    """
    import ray.data

    ctx = context or ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def user_error(exc: BaseException) -> Optional[BaseException]:
    """The rayseg error (ConfigError/DataError/CheckpointError) behind an exception Ray wrapped, if any.

    Ray keeps a worker's exception on ``RayTaskError.cause``; Ray Train and Ray Data chain theirs with
    ``__cause__``/``__context__``; this walks all of them.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, USER_ERRORS):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None
