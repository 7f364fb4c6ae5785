"""Connecting to Ray and keeping its console output readable; shared by training, evaluation and prediction."""
from __future__ import annotations

import logging
import math
import os
import re
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


_RAY_RETRY_SUFFIX = re.compile(r"\nFailed to .* after \d+/\d+ attempts \(total backoff")


def _find_user_error(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The first rayseg error in ``exc``'s chain: Ray keeps a remote error on ``RayTaskError.cause``, Ray
    Train keeps each worker's in ``WorkerGroupError.worker_failures`` and the controller's in
    ``ControllerError.controller_failure``; Python chains the rest with ``__cause__``/``__context__``."""
    seen = set()
    pending = [exc]
    while pending:
        exc = pending.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, USER_ERRORS):
            return exc
        pending.extend(list((getattr(exc, "worker_failures", None) or {}).values()))
        pending.extend([getattr(exc, "controller_failure", None), getattr(exc, "cause", None),
                        exc.__cause__, exc.__context__])
    return None


def user_error(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The rayseg error (ConfigError/DataError/CheckpointError) behind an exception Ray wrapped, as a plain
    instance of its own class whose text is the message naming the file, key or value; None if there is none.

    Ray re-raises a remote error as a subclass of both ``RayTaskError`` and the error's class, whose text is
    the whole remote traceback, and Ray Data appends its retry advice ("… if you believe this to be
    transient") to the message; neither is what the user needs to read.
    """
    found = _find_user_error(exc)
    while found is not None and isinstance(getattr(found, "cause", None), USER_ERRORS):
        found = found.cause
    if found is None or not found.args or not isinstance(found.args[0], str):
        return found
    message = _RAY_RETRY_SUFFIX.split(found.args[0], maxsplit=1)[0]
    return type(found)(message, *found.args[1:])
