"""Ray Data's per-cluster actors started ahead by a training driver (rayseg.datasets.ray_data_warmup)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def test_warm_up_starts_ray_datas_cluster_actors_on_a_fresh_cluster_and_streams_still_run(tmp_path):
    """On a fresh local Ray (its own, so no earlier dataset can have made them) the warm-up alone creates the
    three actors a dataset's executor waits for, and a dataset then runs with them."""
    script = textwrap.dedent("""
        import logging, sys
        import ray
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        names = lambda: sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
        print("BEFORE", names())
        from rayseg.datasets.ray_data_warmup import warm_up_ray_data
        warm_up_ray_data().join(timeout=60)
        print("AFTER", names())
        import ray.data
        print("ROWS", ray.data.range(10).map_batches(lambda b: b).count())
        ray.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                         env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"}, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines()
             if line.split(" ", 1)[0] in ("BEFORE", "AFTER", "ROWS")}
    assert lines["BEFORE"] == "[]"
    assert lines["AFTER"] == "['ActorLocationTracker', 'AutoscalingCoordinator', 'datasets_stats_actor']"
    assert lines["ROWS"] == "10"
    assert "were not started ahead" not in out.stdout
