"""MLflow's UI as a person uses it to compare two rayseg runs, driven in headless Chromium.

Two tiny real training runs (different ``optimizer.lr``) record into a real MLflow server, the team server
``cluster/mlflow-server.sh`` starts; the browser opens
the experiment the way rayseg prints its links (the model-training view, not MLflow 3.17's GenAI view),
finds both runs with their validation mIoU in the runs table, and opens the compare view, where the lr
values differ. Screenshots go to the test's tmp folder and, when ``RAYSEG_SCREENSHOT_DIR`` is set, there.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the ``playwright``
package (the ``dev`` extras); it skips, saying which is missing, only where they are absent.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TeamMlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
CHROMIUM = "/usr/bin/chromium"
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
LRS = ("0.01", "0.02")
EXPERIMENT = "ui-compare"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 180_000  # a shared 2-core machine can take a minute to render MLflow's bundle


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium package (apt-get install chromium) to run "
                    "the MLflow UI test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (rayseg's dev extras) is "
                                                                 "not installed")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The team server, started by cluster/mlflow-server.sh as its docs say (docs/mlflow.md#a-team-server)."""
    server = TeamMlflowServer(tmp_path_factory.mktemp("mlflow_ui"))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def two_runs(ray_head, demo_data, mlflow_server, tmp_path_factory):
    """Two 2-iteration training runs that differ only in lr, each validated once, logged to the server."""
    from mlflow.tracking import MlflowClient

    printed = []
    for lr in LRS:
        work = tmp_path_factory.mktemp("ui_train") / f"lr{lr}"
        cmd = [sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work),
               "--address", ray_head.address, "--cfg-options",
               *(f"data.{split}.data_root={demo_data}" for split in ("train", "val", "test")),
               f"optimizer.lr={lr}", "runner.max_iters=2", "evaluation.interval=2", "checkpoint_config.interval=2",
               "log_config.interval=2", f"mlflow.tracking_uri={mlflow_server}",
               f"mlflow.experiment_name={EXPERIMENT}", "mlflow.system_metrics=false"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        printed.append(proc.stdout)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.params["LR"] for r in runs] == list(LRS)
    return experiment.experiment_id, runs, printed


def _js_number(value: float) -> str:
    """How the UI's table prints a metric (JavaScript's Number#toString)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _save(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("RAYSEG_SCREENSHOT_DIR")
    if extra:
        os.makedirs(extra, exist_ok=True)
        shutil.copy(path, os.path.join(extra, name))
    return path


def test_compare_two_runs_in_the_mlflow_ui(two_runs, mlflow_server, browser, tmp_path):
    experiment_id, runs, printed = two_runs
    names = [r.info.run_name for r in runs]
    assert "optimizer.lr=0.02" in names[1] and names[0] != names[1]  # named after the overrides that differ
    # What train.py prints leads to the model-training view.
    for run, stdout in zip(runs, printed):
        link = re.search(r"then visit (\S+)", stdout).group(1)
        assert link == f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run.info.run_id}" \
                       "?workflowType=machine_learning", stdout
        assert f"MLflow store: {mlflow_server}" in stdout

    drive_ui(browser, mlflow_server, experiment_id, runs, tmp_path)


def drive_ui(browser, server: str, experiment_id: str, runs, shots: Path) -> None:
    """Open the experiment and the compare view of ``runs`` as rayseg links them; assert what a person sees."""
    from rayseg.tracking import compare_url, experiment_url

    names = [r.info.run_name for r in runs]
    context = browser.new_context(viewport={"width": 2000, "height": 1000})
    # MLflow's assistant panel opens on a first visit and covers a third of the page; a person closes it.
    context.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(experiment_url(server, experiment_id), wait_until="domcontentloaded")
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for()
    body = page.inner_text("body")
    assert "Detect Issues" not in body and "Evaluations" not in body  # not the GenAI view
    # Show the validation mIoU and lr columns, as a person would: Columns → val/mIoU, LR.
    page.get_by_role("button", name="Columns").click()
    page.get_by_text("val/mIoU", exact=True).last.click()
    page.get_by_text("LR", exact=True).last.click()
    page.keyboard.press("Escape")
    grid = page.get_by_role("grid").first
    for run in runs:
        grid.get_by_text(_js_number(run.data.metrics["val/mIoU"]), exact=True).first.wait_for()
    table = grid.inner_text()
    assert "val/mIoU" in table and all(name in table for name in names)
    assert all(run.data.params["LR"] in table for run in runs)
    _save(page, "runs_table.png", shots)

    page.goto(compare_url(server, experiment_id, [r.info.run_id for r in runs]), wait_until="domcontentloaded")
    page.get_by_text("Show diff only").first.wait_for()
    page.get_by_text("LR", exact=True).first.wait_for()
    text = page.inner_text("body")
    params = text[text.index("Parameters\nShow diff only"):]
    lr_row = re.search(r"^LR\s+(\S+)\s+(\S+)$", params, re.MULTILINE)
    assert lr_row and set(lr_row.groups()) == set(LRS), params[:2000]
    # The headline params come before the full config's keys.
    assert params.index("\nBackbone") < params.index("\nWorkers") < params.index("\noptimizer.lr")
    assert all(name in text for name in names)
    # "Show diff only" on the params: what tells the two runs apart.
    page.get_by_text("Show diff only").first.click()
    page.get_by_text("Parameters", exact=True).last.scroll_into_view_if_needed()
    _save(page, "compare_runs.png", shots)
    context.close()
