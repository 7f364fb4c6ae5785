"""Opening an MLflow store safely when several jobs start at once.

Two trainings started together against a SQLite store that does not exist yet both try to create its tables
(MLflow runs its alembic migrations on first use) and the experiment; the loser used to get ``UNIQUE constraint
failed`` or an alembic error and train without MLflow. Here the first use of a SQLite store is serialised by a
lock file beside the database, an experiment that another job created meanwhile is simply looked up, and the
errors SQLite gives under concurrent writers ("database is locked") are retried.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar

T = TypeVar("T")

# What a concurrent writer or creator makes MLflow raise; anything else is a real failure, reported at once.
_TRANSIENT = ("database is locked", "unique constraint failed", "already exists", "resource_already_exists",
              "alembic", "no such table", "database schema has changed", "disk i/o error")
RETRY_SECONDS = 60.0


def is_transient(exc: BaseException) -> bool:
    """True for the errors concurrent jobs on one store cause, which a retry gets past."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _TRANSIENT)


def retry_transient(fn: Callable[[], T], deadline_s: float = RETRY_SECONDS) -> T:
    """``fn()``, retried with jittered backoff while it fails with a transient store error (``is_transient``)."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() > end:
                raise
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` while a SQLite store is first opened (tables created) and its experiment made.

    Other stores (a tracking server, a database server) serialise creation themselves: no lock.
    """
    path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else None
    if not path:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks: creation takes a second or two
        yield
    finally:
        os.close(fd)


def open_experiment(tracking_uri: str, name: str, artifact_location: Optional[str]) -> Tuple[Any, str]:
    """(MlflowClient, experiment id) of experiment ``name`` in the store, creating store and experiment if
    needed; safe when several processes do it at the same moment."""
    from mlflow.tracking import MlflowClient

    def get_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception as exc:
            # Another job created it between our lookup and our insert: theirs is ours too.
            experiment = client.get_experiment_by_name(name) if is_transient(exc) else None
            if experiment is None:
                raise
            return experiment.experiment_id

    with store_creation_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = retry_transient(get_or_create)
    return client, experiment_id
