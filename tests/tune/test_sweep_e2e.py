"""Sweeps on a real Ray head: ASHA stops a trial early, PBT exploits, an interrupted sweep resumes; MLflow
parent and child runs on a real tracking server; best_config.yaml reproduces the best trial."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, REPO_ROOT, MlflowServer

pytestmark = pytest.mark.slow
TINY = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
# Half a CPU per training worker: two trials (worker, decode actors, read task) fit the 4-CPU test head at once.
RESOURCES = {"num_workers": 1, "cpus_per_worker": 0.5}


def write_sweep(folder: Path, search_space, tune) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base_config": str(TINY), "search_space": search_space, "tune": tune},
                                   sort_keys=False))
    return path


def data_options(root: Path, tracking_uri: str) -> list[str]:
    return [f"data.{split}.data_root={root}" for split in ("train", "val", "test")] + [
        f"mlflow.tracking_uri={tracking_uri}", "mlflow.system_metrics=false"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_tune"))
    yield server.url
    server.stop()


def biased_weights(path: Path, favoured_class: int) -> str:
    """Weights of the tiny model that predict ``favoured_class`` everywhere (a large bias in the classifier):
    a few small steps cannot change that, so the two ASHA trials' mIoU at the rung differ by a known sign
    (background covers most pixels: about 20 mIoU; a shape class: a few)."""
    from rayseg.config import load_config
    from rayseg.models import build_segmentor

    model = build_segmentor(load_config(str(TINY))["model"])
    state = model.state_dict()
    bias = state["decode_head.conv_seg.bias"]
    bias.zero_()
    bias[favoured_class] = 50.0
    torch.save({"state_dict": state}, path)
    return str(path)


@pytest.fixture(scope="module")
def asha_sweep(ray_head, demo_data, mlflow_server, tmp_path_factory):
    """Two trials one after the other, from weights predicting background and from weights predicting circles;
    ASHA's rung at iteration 3 stops the second."""
    from rayseg.tune import load_sweep, run_sweep

    folder = tmp_path_factory.mktemp("asha")
    weights = [biased_weights(folder / "background.pth", 0), biased_weights(folder / "circle.pth", 1)]
    path = write_sweep(folder, {"load_from": {"grid_search": weights},
                                "optimizer.lr": {"choice": [0.001]}},
                       {"num_samples": 1, "max_concurrent_trials": 1, "resources_per_trial": RESOURCES,
                        "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
                        "register_model": "shapes-best"})
    sweep = load_sweep(str(path), work_dir=str(folder / "work"),
                       cfg_options=data_options(demo_data, mlflow_server) + ["mlflow.experiment_name=sweeps",
                                                                              "mlflow.register_model=not-per-trial"])
    return sweep, run_sweep(sweep)


def test_asha_stops_the_worse_trial_at_its_first_rung(asha_sweep):
    sweep, summary = asha_sweep
    rows = {Path(r["_values"]["load_from"]).stem: r for r in summary["rows"]}
    assert rows["background"]["end"] == "completed" and rows["background"]["iter"] == 6
    assert rows["circle"]["end"] == "stopped_early" and rows["circle"]["iter"] == 3
    assert rows["background"]["best_mIoU"] > rows["circle"]["best_mIoU"]
    assert summary["rows"][0] is rows["background"]  # sorted best first
    lines = Path(summary["table_path"]).read_text().splitlines()
    assert lines[0].startswith("trial,end,iter,best_mIoU") and len(lines) == 3
    # the stopped trial never got past the rung
    log = Path(rows["circle"]["work_dir"]) / "log.jsonl"
    assert max(json.loads(line)["iter"] for line in log.read_text().splitlines()) == 3


def test_mlflow_parent_and_child_runs(asha_sweep, mlflow_server):
    from mlflow.tracking import MlflowClient

    sweep, summary = asha_sweep
    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["space.optimizer.lr"]) == {"choice": [0.001]}
    assert json.loads(parent.data.params["scheduler"])["type"] == "asha"
    assert parent.data.params["search_alg"] == '{"type": "random"}'
    best = summary["rows"][0]
    assert parent.data.tags["best_trial"] == best["trial"] and parent.data.tags["best_run_id"] == best["mlflow_run"]
    assert parent.data.metrics["best/mIoU"] == pytest.approx(best["best_mIoU"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_config.yaml"} <= artifacts

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_init = {Path(c.data.tags["sampled.load_from"]).stem: c for c in children}
    assert set(by_init) == {"background", "circle"}
    done, stopped = by_init["background"], by_init["circle"]
    assert (done.info.status, done.data.tags["rayseg.end_reason"]) == ("FINISHED", "completed")
    assert (stopped.info.status, stopped.data.tags["rayseg.end_reason"]) == ("KILLED", "stopped_early")
    # the whole resolved config as params, the sampled values among them
    assert done.data.params["optimizer.lr"] == "0.001" and done.data.params["runner.max_iters"] == "6"
    assert done.data.tags["sampled.optimizer.lr"] == "0.001"
    steps = [m.step for m in client.get_metric_history(done.info.run_id, "val/mIoU")]
    assert steps == [3, 6]
    # tune.register_model: the best trial's best weights, once; the trials' own mlflow.register_model is off
    assert summary["registered"]["uri"] == "models:/shapes-best/1" == parent.data.tags["registered_model"]
    version = client.get_model_version("shapes-best", "1")
    assert version.run_id == best["mlflow_run"] and version.tags["rayseg.trial"] == best["trial"]
    assert len(client.search_model_versions("name='shapes-best'")) == 1
    assert client.search_registered_models("name='not-per-trial'") == []


def test_best_config_reproduces_the_best_trial(asha_sweep):
    from rayseg.config import flatten_config, load_config
    from rayseg.spec.resolve import resolve_run

    sweep, summary = asha_sweep
    best = summary["rows"][0]
    text = Path(summary["best_config"]).read_text()
    assert f"best trial of the sweep {sweep.path}: {best['trial']}" in text
    assert summary["best_checkpoint"] and Path(summary["best_checkpoint"]).exists()
    assert summary["best_checkpoint"] in text
    trial_cfg = flatten_config(load_config(str(Path(best["work_dir"]) / "config.yaml")))
    again = flatten_config(resolve_run(load_config(summary["best_config"]), work_dir=str(Path(best["work_dir"]))).config)
    trial_only = ("work_dir", "mlflow.")
    differing = {k for k in set(trial_cfg) | set(again)
                 if not k.startswith(trial_only) and trial_cfg.get(k) != again.get(k)}
    assert differing == set()
    assert again["optimizer.lr"] == "0.001" and again["load_from"].endswith("background.pth")


@pytest.fixture(scope="module")
def pbt_sweep(ray_head, demo_data, tmp_path_factory):
    from rayseg.tune import load_sweep, run_sweep

    folder = tmp_path_factory.mktemp("pbt")
    path = write_sweep(folder, {"optimizer.lr": {"loguniform": [0.001, 0.1]}},
                       {"num_samples": 2, "max_concurrent_trials": 2, "resources_per_trial": RESOURCES,
                        "scheduler": {"type": "pbt", "perturbation_interval": 3, "quantile_fraction": 0.5,
                                      "resample_probability": 1.0, "synch": True}})
    sweep = load_sweep(str(path), work_dir=str(folder / "work"),
                       cfg_options=data_options(demo_data, f"sqlite:///{folder}/mlflow.db"))
    return sweep, run_sweep(sweep)


def test_pbt_exploit_copies_the_weights_and_mutates_the_lr(pbt_sweep):
    sweep, summary = pbt_sweep
    trials = Path(sweep.work_dir) / "trials"
    exploits = sorted(p for p in trials.iterdir() if "-from-" in p.name)
    assert len(exploits) == 1, sorted(p.name for p in trials.iterdir())
    exploited = exploits[0]
    own, donor = exploited.name.split("-from-")
    donor = donor.rsplit("-iter", 1)[0]
    assert exploited.name.endswith("-iter3") and donor != own
    # the weights the exploiting trial continued from are the donor's at iteration 3
    copied = torch.load(trials / "restored" / exploited.name / "checkpoint.pt", weights_only=False)
    original = torch.load(trials / donor / "ray_results" / donor / "iter_00000003" / "checkpoint.pt",
                          weights_only=False)
    assert copied["meta"]["iter"] == 3
    assert copied["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(copied["state_dict"][k], original["state_dict"][k]) for k in original["state_dict"])
    # ... with a new learning rate, which the schedule then uses from iteration 4 on
    old_lr = yaml.safe_load((trials / own / "config.yaml").read_text())["optimizer"]["lr"]
    new_lr = yaml.safe_load((exploited / "config.yaml").read_text())["optimizer"]["lr"]
    assert new_lr != old_lr
    records = [json.loads(line) for line in (exploited / "log.jsonl").read_text().splitlines()]
    assert min(r["iter"] for r in records) > 3 and max(r["iter"] for r in records) == 6
    # The tiny config's schedule: poly (power 0.9, min_lr 1e-4) over 6 iterations, linear warmup over 20
    # from 0.1; the record of iteration 4 holds the lr of 0-based step 3.
    first = min(records, key=lambda r: r["iter"])
    step = first["iter"] - 1
    regular = (new_lr - 1e-4) * (1 - step / 6) ** 0.9 + 1e-4
    assert first["lr"] == pytest.approx(regular * (1 - (1 - step / 20) * (1 - 0.1)), rel=1e-6)


def test_pbt_marks_the_exploited_run(pbt_sweep):
    from mlflow.tracking import MlflowClient

    sweep, summary = pbt_sweep
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    reasons = sorted(c.data.tags.get("rayseg.end_reason", "") for c in children)
    assert reasons == ["completed", "completed", "exploited"]
    new = next(c for c in children if "rayseg.exploited_from" in c.data.tags)
    assert new.data.tags["rayseg.exploited_from"].endswith("at iteration 3")


def test_an_interrupted_job_sweep_resumes_without_rerunning_finished_trials(ray_head, demo_data, tmp_path):
    """Under ``ray job submit``: two trials side by side, a short one and a long one; the job is stopped once the
    short one has finished and the long one has started; a second job with --resume finishes the long one and
    leaves the short one alone."""
    path = write_sweep(tmp_path, {"runner.max_iters": {"grid_search": [2, 20]}},
                       {"num_samples": 1, "max_concurrent_trials": 2, "resources_per_trial": RESOURCES})
    work = tmp_path / "work"
    entry = [sys.executable, "jobs/tune.py", str(path), "--work-dir", str(work), "--cfg-options",
             *data_options(demo_data, f"sqlite:///{tmp_path}/mlflow.db"), "evaluation.interval=10"]
    ray_job = [str(BIN / "ray"), "job"]
    where = ["--address", ray_head.dashboard_url]
    job_id = f"sweep-{os.getpid()}-{int(time.time())}"
    submit = subprocess.run([*ray_job, "submit", *where, "--working-dir", str(REPO_ROOT), "--submission-id", job_id,
                             "--no-wait", "--", *entry], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]

    def trial_dirs(max_iters: int) -> list:
        found = []
        for config in (work / "trials").glob("*/config.yaml"):
            if yaml.safe_load(config.read_text())["runner"]["max_iters"] == max_iters:
                found.append(config.parent)
        return found

    deadline = time.time() + 600
    finished = unfinished = None
    while time.time() < deadline and unfinished is None:
        short = [d for d in trial_dirs(2) if (d / "latest.pth").exists()]
        long = [d for d in trial_dirs(20) if (d / "log.jsonl").exists() and (d / "log.jsonl").stat().st_size]
        if short and long:
            finished, unfinished = short[0], long[0]
        time.sleep(0.5)
    logs = subprocess.run([*ray_job, "logs", *where, job_id], capture_output=True, text=True, timeout=120).stdout
    assert unfinished is not None and not (unfinished / "latest.pth").exists(), logs[-3000:]
    stop = subprocess.run([*ray_job, "stop", *where, job_id], capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    finished_log = (finished / "log.jsonl").read_text()
    finished_mtime = (finished / "latest.pth").stat().st_mtime

    again = subprocess.run([*ray_job, "submit", *where, "--working-dir", str(REPO_ROOT), "--", *entry, "--resume"],
                           capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "best config:" in again.stdout  # the sweep's summary reaches the submitter's console
    assert (finished / "log.jsonl").read_text() == finished_log  # not trained again
    assert (finished / "latest.pth").stat().st_mtime == finished_mtime
    rows = list(csv.DictReader(open(work / "trials.csv")))
    assert sorted((r["end"], int(r["iter"])) for r in rows) == [("completed", 2), ("completed", 20)]
    iters = [json.loads(line)["iter"] for line in (unfinished / "log.jsonl").read_text().splitlines()]
    assert iters == sorted(set(iters)) and iters[-1] == 20  # continued, no iteration logged twice
    assert (work / "best_config.yaml").is_file()
