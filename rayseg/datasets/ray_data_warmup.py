"""Starting Ray Data's per-cluster actors while a training job is still setting up.

Ray Data 2.60 creates three detached actors the first time a dataset runs on a cluster (its
``ActorLocationTracker``, ``_StatsActor`` and ``AutoscalingCoordinator``), and the executor's first scheduling
steps wait for them: the coordinator reports the CPUs the executor may use, and until it answers the budget is
zero. Each is a new worker process that imports ``ray.data`` (pandas and pyarrow included), which on a fresh
2-core machine ran in the same seconds as the training stream's own decode/augment actors. A training job's
driver spends its first seconds on one core (imports, checks, MLflow), so starting these actors from it, in the
background, takes them off the first batch's path. On a cluster that has run Ray Data before they already
exist and this only looks them up.
"""
from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


def _create_ray_data_actors() -> None:
    try:
        # Internal to Ray Data 2.60: if a later Ray moves them, Ray Data still creates the actors itself.
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.execution.node_trackers.actor_location import get_or_create_actor_location_tracker
        from ray.data._internal.stats import get_or_create_stats_actor

        for create in (get_or_create_autoscaling_coordinator, get_or_create_stats_actor,
                       get_or_create_actor_location_tracker):
            create()
    except Exception as exc:  # best effort: a failure here costs only the head start
        logger.debug("Ray Data's actors were not started ahead: %s", exc)


def warm_up_ray_data() -> threading.Thread:
    """Create Ray Data's per-cluster actors on a background thread of this (connected) driver; returns the
    thread, which ends as soon as the actors are asked for (their processes start on their own)."""
    thread = threading.Thread(target=_create_ray_data_actors, name="rayseg-ray-data-warm-up", daemon=True)
    thread.start()
    return thread
