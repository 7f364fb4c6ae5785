"""Benchmark: rayseg's Ray Train loop against a plain single-process PyTorch loop, and 1 vs 2 workers.

    python bench/train_step.py [--rounds 3] [--iters 200] [--warmup 50] [--batch 4] [--size 128] [--threads 2]

Same model (the demo's slim ResNetV1c-18 D8 + FCN), same data (synthetic shapes written to a temp folder,
decoded and augmented by the same pipeline), same total threads. Throughput is samples/s in steady state:
the first ``--warmup`` iterations (Ray start-up, actor pools, allocator warm-up) are left out of both.

    plain loop : one process, torch threads = --threads, decode + augment inline, SGD step
    plain in Ray: the same loop as one Ray task with --threads CPUs, on a local Ray started as jobs/train.py
                 starts it (dashboard on): what running beside Ray's processes alone costs, without Ray
                 Train, Ray Data or rayseg's loop (--no-in-ray leaves it out)
    rayseg x1  : jobs/train.py, 1 worker with --threads CPUs (decode + augment in Ray Data actors)
    rayseg x2  : jobs/train.py, 2 DDP workers with --threads/2 CPUs each, the same per-worker batch

With a CUDA device it also reports step time, img/s and peak memory of PSPNet-R50-D8 and DeepLabV3+-R50-D8
at 512x1024, batch 2, in fp32, bf16 autocast, bf16 + channels_last and bf16 + channels_last + torch.compile,
beside MMSeg's published fp32 memory (--gpu-only to run just that part).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "demo", "fcn_r18-tiny_shapes.yaml")
PSP_CONFIG = os.path.join(REPO, "configs", "pspnet", "pspnet_r50-d8_512x1024_40k_cityscapes.yaml")
DLV3P_CONFIG = os.path.join(REPO, "configs", "deeplabv3plus", "deeplabv3plus_r50-d8_512x1024_40k_cityscapes.yaml")


def _options(data_root: str, iters: int, batch: int, size: int) -> list:
    return [f"data.{s}.data_root={data_root}" for s in ("train", "val", "test")] + [
        f"runner.max_iters={iters}", f"data.samples_per_gpu={batch}", "evaluation.interval=0",
        f"checkpoint_config.interval={iters}", "log_config.interval=5", "mlflow.system_metrics=false",
        f"data.train.pipeline.2.img_scale=[{size}, {size}]", f"data.train.pipeline.3.crop_size=[{size}, {size}]",
        f"data.train.pipeline.7.size=[{size}, {size}]"]


def plain_loop(data_root: str, iters: int, warmup: int, batch: int, size: int, threads: int) -> float:
    """Samples/s of a hand-written single-process loop: pipeline → batch → normalise → forward/backward/step."""
    from rayseg.config import load_config
    from rayseg.datasets import build_dataset
    from rayseg.datasets.ray_data import DeviceNormalizer, _strip_normalize
    from rayseg.models import build_segmentor

    torch.set_num_threads(threads)
    cfg = load_config(CONFIG, _options(data_root, iters, batch, size))
    dataset = build_dataset(cfg["data"]["train"])
    normalizer = DeviceNormalizer.from_pipeline(cfg["data"]["train"]["pipeline"], device="cpu")
    dataset = _strip_normalize(dataset)
    model = build_segmentor(cfg["model"]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    start = None
    for it in range(iters):
        if it == warmup:
            start = time.perf_counter()
        imgs, segs = [], []
        for _ in range(batch):
            np.random.seed(int(rng.integers(2**31)))
            out = dataset.prepare_train(dict(dataset.samples[int(rng.integers(len(dataset.samples)))]))
            imgs.append(torch.from_numpy(np.ascontiguousarray(out["img"])))
            segs.append(torch.from_numpy(np.ascontiguousarray(out["gt_semantic_seg"])))
        img = normalizer(torch.stack(imgs))
        losses = model(img, torch.stack(segs).long())
        loss = sum(v for k, v in losses.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (iters - warmup) * batch / (time.perf_counter() - start)


def _wait_until_idle(busy_below: float = 15.0, longest_s: float = 60.0) -> None:
    """Return once the machine's CPU use over one second is below ``busy_below`` percent (or after
    ``longest_s``)."""
    import psutil

    deadline = time.time() + longest_s
    while time.time() < deadline and psutil.cpu_percent(interval=1.0) >= busy_below:
        pass


def plain_loop_in_ray(data_root: str, iters: int, warmup: int, batch: int, size: int, threads: int) -> float:
    """Samples/s of :func:`plain_loop` run as a Ray task on a local Ray like jobs/train.py's (workers at Ray's
    niceness, Ray's daemons and dashboard beside it): the share of the gap that is Ray's presence alone."""
    import ray

    from rayseg.utils.ray_session import connect_ray

    connect_ray("local", num_cpus_needed=threads, dashboard=True)
    try:
        _wait_until_idle()  # Ray's own start-up (dashboard, prestarted workers) is not part of the comparison
        task = ray.remote(num_cpus=threads)(plain_loop)
        return float(ray.get(task.remote(data_root, iters, warmup, batch, size, threads)))
    finally:
        ray.shutdown()


def _logged_iter(work: str) -> int:
    try:
        with open(os.path.join(work, "log.jsonl")) as f:
            return max([json.loads(line).get("iter", 0) for line in f if line.strip()] or [0])
    except (OSError, ValueError):
        return 0


def _cpu_seconds(root) -> dict:
    """CPU seconds (user + system) so far of ``root`` and every process below it, by process title."""
    import psutil

    totals = {}
    for proc in [root] + root.children(recursive=True):
        try:
            title = " ".join(proc.cmdline()[:1]) or proc.name()
            times = proc.cpu_times()
        except psutil.Error:
            continue
        key = (proc.pid, _process_group(title))
        totals[key] = times.user + times.system
    return totals


def _process_group(title: str) -> str:
    """A readable group for a process title (Ray sets its workers' titles to ``ray::Class.method``)."""
    if title.startswith("ray::"):
        name = title[5:].split(".")[0].split(":")[0].split()[0]
        return "Ray worker/actor " + ("(idle)" if name in ("IDLE", "") else name)
    for part in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env", "agent"):
        if part in title:
            return "Ray daemon " + part
    return "driver (jobs/train.py)" if "jobs/train.py" in title or "python" in title else title[:40]


def cpu_breakdown(start: dict, end: dict, wall: float) -> list:
    """(group, CPU seconds, share of both cores) between two _cpu_seconds snapshots, largest first."""
    groups = {}
    for key, seconds in end.items():
        groups[key[1]] = groups.get(key[1], 0.0) + seconds - start.get(key, 0.0)
    cores = os.cpu_count() or 1
    return sorted(((g, s, s / (wall * cores)) for g, s in groups.items()), key=lambda r: -r[1])


def rayseg_run(data_root: str, iters: int, warmup: int, batch: int, size: int, workers: int, cpus: int,
               work: str, cpu_report: list | None = None) -> float:
    """Samples/s of jobs/train.py in steady state, from the s/it the loop logs every 5 iterations.

    ``cpu_report``: a list that receives the CPU seconds of every process of the run (driver, Ray daemons,
    the training worker, the data actors) between the end of the warm-up and the last logged iterations."""
    import psutil

    options = _options(data_root, iters, batch, size) + [
        f"scaling.num_workers={workers}", f"scaling.resources_per_worker={{CPU: {cpus}}}"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "jobs/train.py", CONFIG, "--work-dir", work, "--cfg-options", *options],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if cpu_report is not None:
        root = psutil.Process(proc.pid)
        snapshots = []
        for mark in (warmup + 5, iters - 15):  # log.jsonl lags the loop by up to ~2 s; stay clear of the end
            while proc.poll() is None and _logged_iter(work) < mark:
                time.sleep(0.05)
            snapshots.append((time.perf_counter(), _cpu_seconds(root)))
        if proc.poll() is None:
            (t0, a), (t1, b) = snapshots
            cpu_report.extend(cpu_breakdown(a, b, t1 - t0))
    if proc.wait() != 0:
        raise RuntimeError(f"jobs/train.py failed (rc {proc.returncode}); run it by hand to see why")
    with open(os.path.join(work, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steady = [r for r in records if r["iter"] > warmup]
    sec_per_iter = float(np.mean([r["time"] for r in steady]))
    data_per_iter = float(np.mean([r["data_time"] for r in steady]))
    return workers * batch / sec_per_iter, sec_per_iter, data_per_iter


# MMSeg's published per-GPU training memory at batch 2, fp32 (its model zoo's "Mem (GB)" column).
GPU_MODELS = {
    "PSPNet-R50-D8": (PSP_CONFIG, 6.1),
    "DeepLabV3+-R50-D8": (DLV3P_CONFIG, 7.5),
}
GPU_VARIANTS = ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")


def gpu_step_time(config: str, variant: str, steps: int, batch: int = 2) -> dict:
    """Median training-step time of ``config``'s model at 512x1024 on the GPU in one ``variant``."""
    from rayseg.config import load_config
    from rayseg.models import build_segmentor

    cfg = load_config(config, ["model.pretrained=null"])  # random weights: speed doesn't need ImageNet
    torch.manual_seed(0)
    model = build_segmentor(cfg["model"]).cuda().train()
    dtype = torch.bfloat16 if "bf16" in variant else None
    fmt = torch.channels_last if "channels_last" in variant else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    num_classes = cfg["model"]["decode_head"]["num_classes"]
    img = torch.randn(batch, 3, 512, 1024, device="cuda").contiguous(memory_format=fmt)
    seg = torch.randint(0, num_classes, (batch, 512, 1024), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            losses = model(img, seg)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = torch.compile(step) if "compile" in variant else step
    tic = time.perf_counter()
    run()  # first step: cudnn autotuning, and for torch.compile the compilation
    torch.cuda.synchronize()
    first = time.perf_counter() - tic
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 3):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(stop) / 1000)
    step_s = float(np.median(times))
    # The same steps back to back with one synchronisation at the end, as a training loop runs them: the CPU
    # queues step i+1 while the GPU still works on step i.
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize()
    stream_s = (time.perf_counter() - tic) / steps
    result = {"step_s": step_s, "img_s": batch / step_s, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
              "first_step_s": first, "stream_step_s": stream_s, "stream_img_s": batch / stream_s}
    return result  # the model and its memory go with this frame; callers empty the CUDA cache


def gpu_benchmark(steps: int = 20, variants=GPU_VARIANTS, out_json: str | None = None) -> None:
    """PSPNet-R50-D8 and DeepLabV3+-R50-D8 at 512x1024, batch 2: step time, img/s and peak memory per variant."""
    if not torch.cuda.is_available():
        print("GPU benchmark: skipped (no CUDA device)")
        return
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}")
    rows = []
    # variant-major, so the slow torch.compile variants come last
    for variant in variants:
        for model_name, (config, mmseg_gb) in GPU_MODELS.items():
            try:
                r = gpu_step_time(config, variant, steps)
                torch.cuda.empty_cache()
            except Exception as exc:  # one variant failing (e.g. torch.compile) must not hide the others
                print(f"{model_name} {variant}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                continue
            rows.append({"model": model_name, "variant": variant, **r, "mmseg_fp32_gb": mmseg_gb})
            # MMSeg's "GB" column is torch.cuda.max_memory_allocated() / 2**30 too (mmcv's logger)
            print(f"{model_name} 512x1024 batch 2 {variant:27s}: step {r['step_s'] * 1000:7.1f} ms, "
                  f"{r['img_s']:6.2f} img/s, peak memory {r['peak_gib']:5.2f} GiB (MMSeg fp32: {mmseg_gb} GB), "
                  f"first step {r['first_step_s']:.1f} s; back to back {r['stream_img_s']:.2f} img/s", flush=True)
            if out_json:  # after every row: a run stopped at its time limit keeps what it measured
                with open(out_json, "w") as f:
                    json.dump({"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda, "rows": rows},
                              f, indent=1)


def cpu_benchmark(args) -> None:
    """The CPU comparison: ``args.rounds`` interleaved rounds of plain / plain in Ray / rayseg 1 and 2 workers."""
    from rayseg.datasets.demo import make_demo_dataset

    rows = []
    cpu: list = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        make_demo_dataset(data, num_train=64, num_val=4, size=(args.size, args.size), seed=0)
        shape = (data, args.iters, args.warmup, args.batch, args.size)
        for r in range(args.rounds):
            plain = plain_loop(*shape, args.threads)
            in_ray = plain_loop_in_ray(*shape, args.threads) if args.in_ray else None
            last = r == args.rounds - 1
            one, one_it, one_data = rayseg_run(*shape, 1, args.threads, os.path.join(tmp, f"w1_{r}"),
                                               cpu_report=cpu if last else None)
            two, two_it, two_data = rayseg_run(*shape, 2, max(1, args.threads // 2), os.path.join(tmp, f"w2_{r}"))
            rows.append(dict(plain=plain, in_ray=in_ray, one=one, one_it=one_it, one_data=one_data, two=two,
                             two_it=two_it, two_data=two_data))
            print(f"round {r + 1}/{args.rounds}: plain {plain:.2f}, " + (f"plain in Ray {in_ray:.2f}, " if in_ray else "")
                  + f"rayseg 1 worker {one:.2f}, 2 workers {two:.2f} samples/s; rayseg_1w/plain {one / plain:.3f}",
                  flush=True)
    med = lambda key: float(np.median([row[key] for row in rows]))  # noqa: E731
    ratio = lambda a, b: float(np.median([row[a] / row[b] for row in rows]))  # noqa: E731
    plain, one, two = med("plain"), med("one"), med("two")
    print(f"cores: {os.cpu_count()}, threads: {args.threads}, batch/worker: {args.batch}, crop {args.size}px, "
          f"{args.iters} iterations ({args.warmup} warm-up left out); medians of {args.rounds} interleaved round(s)")
    print(f"plain single-process loop : {plain:7.2f} samples/s; {args.batch / plain * 1000:.1f} ms/it "
          f"(decode + augment inline)")
    if args.in_ray:
        print(f"plain loop as a Ray task  : {med('in_ray'):7.2f} samples/s  ({ratio('in_ray', 'plain'):.3f}x plain: "
              f"Ray's processes beside it, no Ray Train/Data)")
    print(f"rayseg, 1 worker          : {one:7.2f} samples/s  ({ratio('one', 'plain'):.3f}x plain; overhead "
          f"{(1 - ratio('one', 'plain')) * 100:+.1f}%); {med('one_it') * 1000:.1f} ms/it, waiting for data "
          f"{med('one_data') * 1000:.1f}")
    print(f"rayseg, 2 workers (DDP)   : {two:7.2f} samples/s  ({ratio('two', 'one'):.3f}x 1 worker); "
          f"{med('two_it') * 1000:.1f} ms/it, waiting for data {med('two_data') * 1000:.1f}")
    if cpu:
        print("where the CPU went during the last round's rayseg 1-worker steady state (CPU seconds, share of all "
              "cores):")
        for group, seconds, share in cpu:
            if seconds >= 0.05:
                print(f"  {group:45s} {seconds:7.2f} s  {share * 100:5.1f} %")
        others = sum(share for group, _, share in cpu if group != "Ray worker/actor RayTrainWorker")
        # On 2 cores the training worker's two torch threads need both; every wake-up of another process
        # stalls a parallel region, so this share costs more than itself (docs/benchmarks.md)
        print(f"  {'every process but the training worker':45s} {'':9s}  {others * 100:5.1f} %")
    tail = (f" in_ray/plain={ratio('in_ray', 'plain'):.3f} rayseg_1w/in_ray={ratio('one', 'in_ray'):.3f}"
            if args.in_ray else "")
    print(f"train_step: rayseg_1w/plain={ratio('one', 'plain'):.3f} 2w/1w={ratio('two', 'one'):.3f}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4, help="samples per worker per iteration")
    parser.add_argument("--size", type=int, default=128, help="crop size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of plain / plain-in-Ray / rayseg runs, interleaved; the ratios reported are "
                             "the medians of the rounds' ratios (a single run on a shared VM varies by +-10 %%)")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--no-in-ray", dest="in_ray", action="store_false",
                        help="leave out the plain loop run as a Ray task")
    parser.add_argument("--gpu-steps", type=int, default=20, help="timed steps per GPU variant (median reported)")
    parser.add_argument("--gpu-variants", nargs="+", default=list(GPU_VARIANTS), choices=GPU_VARIANTS)
    parser.add_argument("--gpu-json", help="also write the GPU figures as JSON here")
    args = parser.parse_args()
    if not args.gpu_only:
        cpu_benchmark(args)
    gpu_benchmark(args.gpu_steps, args.gpu_variants, args.gpu_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
