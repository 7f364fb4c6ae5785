"""Data, manifest and checkpoints where teams keep them: an S3 API on loopback (moto's server), a Ray head whose
processes have the endpoint and credentials in their environment (as cluster nodes have an instance profile),
datasets listed from ``s3://``, a manifest written to the bucket, and a training run whose data, manifest and
``storage_path`` are all in the bucket, killed and resumed from its checkpoint there."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, RayHead, free_port, logged_iters

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
BUCKET = "rayseg-team"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A moto S3 server on 127.0.0.1; this process's environment points boto3 and pyarrow at it."""
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.client("s3")
    deadline = time.time() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    yield client
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def upload(client, folder: Path, prefix: str) -> int:
    count = 0
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
            count += 1
    return count


def test_datasets_list_and_read_from_s3(s3, demo_data):
    from rayseg.datasets import CustomDataset
    from rayseg.datasets.ray_data import read_file_bytes
    from rayseg.errors import DataError

    upload(s3, demo_data, "demo")
    pipeline = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
    local = CustomDataset(pipeline, data_root=str(demo_data), img_dir="img_dir/train", ann_dir="ann_dir/train",
                          img_suffix=".png", classes=("background", "a", "b", "c"))
    remote = CustomDataset(pipeline, data_root=f"s3://{BUCKET}/demo", img_dir="img_dir/train",
                           ann_dir="ann_dir/train", img_suffix=".png", classes=("background", "a", "b", "c"))
    assert len(remote) == len(local) == 24
    assert remote.samples[0]["img_path"] == f"s3://{BUCKET}/demo/img_dir/train/" + os.path.basename(
        local.samples[0]["img_path"])
    sample = dict(remote.samples[0], img_bytes=read_file_bytes(remote.samples[0]["img_path"]))
    assert remote.prepare_train(sample)["img"].shape == (64, 64, 3)

    s3.delete_object(Bucket=BUCKET, Key="demo/ann_dir/train/" + os.path.basename(local.samples[3]["seg_path"]))
    with pytest.raises(DataError, match=r"1 image\(s\) have no mask: s3://rayseg-team/demo/img_dir/train/"):
        CustomDataset(pipeline, data_root=f"s3://{BUCKET}/demo", img_dir="img_dir/train", ann_dir="ann_dir/train",
                      img_suffix=".png", classes=("background", "a", "b", "c"))
    with pytest.raises(DataError, match=r"image directory s3://rayseg-team/nowhere/img_dir does not exist"):
        CustomDataset(pipeline, data_root=f"s3://{BUCKET}/nowhere", img_dir="img_dir", img_suffix=".png",
                      classes=("a", "b"))


def _run(cmd, env, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.cluster
def test_training_from_a_bucket_is_killed_and_resumes_from_the_bucket(s3, demo_data, tmp_path):
    import pyarrow.parquet as pq

    upload(s3, demo_data, "demo")
    head = RayHead(tmp_path / "ray", num_cpus=4)  # started with the S3 endpoint in its processes' environment
    try:
        env = dict(os.environ, RAY_ADDRESS=head.address)
        manifest = f"s3://{BUCKET}/manifests/train.parquet"
        data = [f"data.{s}.data_root=s3://{BUCKET}/demo" for s in ("train", "val", "test")]
        built = _run([sys.executable, "jobs/build_manifest.py", str(TINY_CONFIG), "--split", "train", "--out",
                      manifest, "--no-progress", "--cfg-options", *data], env)
        assert built.returncode == 0, built.stdout + built.stderr
        assert "(24 samples)" in built.stdout and f"data.train.manifest={manifest}" in built.stdout
        table = pq.read_table(manifest)
        assert table.num_rows == 24 and set(table.column("height").to_pylist()) == {64}

        work = tmp_path / "run"
        options = [*data, f"data.train.manifest={manifest}", f"storage_path=s3://{BUCKET}/runs",
                   f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "runner.max_iters=40",
                   "checkpoint_config.interval=2", "log_config.interval=1", "evaluation.interval=0"]
        cmd = [sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work), "--cfg-options", *options]
        out = tmp_path / "first.txt"
        with open(out, "w") as f:
            first = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                     start_new_session=True)
        deadline = time.time() + 600
        while max(logged_iters(work / "log.jsonl"), default=0) < 5:
            assert first.poll() is None, out.read_text()[-3000:]
            assert time.time() < deadline, out.read_text()[-3000:]
            time.sleep(0.3)
        os.killpg(first.pid, signal.SIGKILL)  # the driver is lost: no clean shutdown, no final outputs
        first.wait(timeout=60)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/").get("Contents", [])]
        assert any(k.endswith("checkpoint.pt") for k in keys), keys

        resumed = _run([*cmd, "runner.max_iters=8", "--resume"], env)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        iters = logged_iters(work / "log.jsonl")
        assert iters[-1] == 8
        resumed_from = re.search(r"resuming from (\S+) \(iteration (\d+) of 8\)", resumed.stdout)
        assert resumed_from and resumed_from.group(1).startswith(f"s3://{BUCKET}/runs/"), resumed.stdout[-3000:]
        assert int(resumed_from.group(2)) >= 4 and iters[:iters.index(int(resumed_from.group(2))) + 1] == list(
            range(1, int(resumed_from.group(2)) + 1))
        assert (work / "latest.pth").is_file()
    finally:
        head.stop()
