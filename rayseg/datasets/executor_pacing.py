"""Keeping Ray Data's streaming executor from spinning while training is behind the data.

Ray Data 2.60's scheduling loop blocks in ``ray.wait`` only until some task is ready. When the data is ahead
of training (the usual case: the output queues are full, so finished tasks' outputs are left unread and no
new task is started), each loop step returns at once and the loop spins: measured on CamVid (1 worker, 8 crops, a 2200-
iteration stream), the ``SplitCoordinator`` actor used 74-78 % of a core and training ran at 0.53-0.56 it/s;
with ``IdleExecutorPacer`` (at most one step per ``MIN_STEP_S``) 10 % and 1.92 it/s (docs/benchmarks.md).
A step that waited in ``ray.wait`` is not slowed; data reaches the consumer at most ``MIN_STEP_S`` later.
"""
from __future__ import annotations

import time

from ray.data._internal.execution.execution_callback import ExecutionCallback

MIN_STEP_S = 0.02


class IdleExecutorPacer(ExecutionCallback):
    """A Ray Data execution callback that holds the scheduling loop to at most one step per ``MIN_STEP_S``.

    A step that waited for a task in ``ray.wait`` already took longer; only the steps that return at once
    (nothing in flight, or finished tasks whose outputs the full queues will not take yet) are slowed."""

    def __init__(self):
        self._last_step = time.monotonic()

    def on_execution_step(self, executor) -> None:
        now = time.monotonic()
        if now - self._last_step < MIN_STEP_S:
            time.sleep(MIN_STEP_S - (now - self._last_step))
        self._last_step = time.monotonic()


def pace_idle_executor() -> None:
    """Register ``IdleExecutorPacer`` on this process's Ray Data context (datasets created afterwards carry it,
    also into Ray Train's ``SplitCoordinator``)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    if IdleExecutorPacer not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(IdleExecutorPacer)
