"""jobs/benchmark.py and rayseg.tools.benchmark on the tiny demo model (no timing assertions)."""
import json

import pytest
import torch

from rayseg.tools.benchmark import BenchmarkResult, benchmark
from tool_helpers import TINY, load_job, run_job, tiny_checkpoint


def test_result_statistics():
    result = BenchmarkResult(device="cpu (x)", threads=3, shape=(32, 48), batch_size=2, warmup=1,
                             latencies_ms=[10.0, 20.0, 30.0, 40.0, 100.0])
    assert result.img_per_s == pytest.approx(2 * 5 / 0.2)
    assert result.latency("mean") == pytest.approx(40.0)
    assert result.latency("p50") == pytest.approx(30.0)
    assert result.latency("p90") == pytest.approx(76.0)  # numpy's linear interpolation between 40 and 100
    text = result.format()
    assert "torch threads: 3" in text and "input: (2, 3, 32, 48), float32" in text
    assert "throughput: 50.00 img/s" in text and "p90 76.00 ms" in text


def test_benchmark_runs_inference_warmup_plus_iters_times():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def inference(self, x):
            calls.append(tuple(x.shape))
            assert not torch.is_grad_enabled()
            return self.conv(x)

    result = benchmark(Counting(), (16, 24), batch_size=3, warmup=2, iters=4)
    assert calls == [(3, 3, 16, 24)] * 6
    assert len(result.latencies_ms) == 4 and result.weights.startswith("random init")
    assert result.device.startswith("cpu (")


def test_job_random_init_and_checkpoint(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_job("benchmark.py", TINY, "--shape", 32, 48, "--batch-size", 2, "--warmup", 1, "--iters", 3,
                   "--threads", 1, "--out", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: cpu (") and "torch threads: 1" in lines
    assert "input: (2, 3, 32, 48), float32" in lines
    assert "weights: random init (no checkpoint given)" in lines
    assert "iterations: 1 warm-up (not timed), 3 timed" in lines
    result = json.loads(out.read_text())
    assert len(result["latencies_ms"]) == 3 and result["batch_size"] == 2
    assert result["img_per_s"] == pytest.approx(1000 * 2 * 3 / sum(result["latencies_ms"]))
    assert result["latency_ms"]["p50"] == pytest.approx(sorted(result["latencies_ms"])[1])

    ckpt = tmp_path / "w.pth"
    tiny_checkpoint(ckpt)
    proc = run_job("benchmark.py", TINY, ckpt, "--shape", 32, "--warmup", 0, "--iters", 1)
    assert proc.returncode == 0, proc.stderr
    assert f"weights: checkpoint {ckpt}" in proc.stdout and "input: (1, 3, 32, 32), float32" in proc.stdout


def test_job_errors_exit_2(tmp_path, capsys):
    job = load_job("benchmark.py")
    assert job.main([str(TINY), str(tmp_path / "missing.pth"), "--shape", "32", "--iters", "1"]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert job.main([str(TINY), "--shape", "32", "--iters", "0"]) == 2
    assert "iters=0" in capsys.readouterr().err
    assert job.main([str(TINY), "--threads", "0"]) == 2
    assert "--threads must be positive" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert job.main([str(TINY), "--use-gpu", "--shape", "32"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
