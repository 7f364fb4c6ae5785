"""Elastic training's rule, without Ray: micro-batch plans, the loss weights, and that accumulating over
fewer DDP workers gives the update MAX workers would (real torch.distributed processes, gloo)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayseg.engine.elastic import loss_weight, micro_batch_sizes
from rayseg.engine.precision import PrecisionSettings
from rayseg.engine.step import TrainStep
from rayseg.errors import ConfigError
from rayseg.spec.resolve import _scaling


@pytest.mark.parametrize("spg,max_workers", [(4, 2), (4, 4), (2, 3), (1, 3), (1, 5), (3, 4), (2, 5)])
def test_micro_batches_hold_the_global_batch_at_every_size(spg, max_workers):
    for world in range(1, max_workers + 1):
        consumed = [0] * world
        for it in range(60):
            plan = [micro_batch_sizes(spg, max_workers, world, rank, it) for rank in range(world)]
            assert sum(map(sum, plan)) == spg * max_workers  # the global batch, whatever the size
            assert len({len(sizes) for sizes in plan}) == 1  # same count everywhere: collectives match
            assert min(min(sizes) for sizes in plan) >= 1
            assert max(max(sizes) for sizes in plan) <= max(spg, 2)
            for rank in range(world):
                consumed[rank] += sum(plan[rank])
        # the workers' shares of the stream stay within one micro-batch of each other
        assert max(consumed) - min(consumed) <= spg
    assert micro_batch_sizes(spg, max_workers, max_workers, 0, 7) == [spg]  # full size: an ordinary batch


def test_micro_batches_refuse_a_size_outside_the_range():
    with pytest.raises(ValueError, match="outside 1..2"):
        micro_batch_sizes(2, 2, 3, 0, 0)


def test_loss_weights_make_ddp_average_the_global_mean():
    # W workers, each summing weight × mean over its micro-batches, then DDP's mean over W: weights of all
    # micro-batches in one iteration add up to W (so the result is a mean over the global batch)
    for spg, max_workers in [(4, 2), (2, 3), (3, 4)]:
        for world in range(1, max_workers + 1):
            total = sum(loss_weight(size, spg, max_workers, world)
                        for rank in range(world) for size in micro_batch_sizes(spg, max_workers, world, rank, 3))
            assert total == pytest.approx(world)
    assert loss_weight(4, 4, 2, 2) == 1.0


@pytest.mark.parametrize("value,expected", [(2, (None, 2)), ([1, 2], (1, 2)), ([3, 3], (None, 3))])
def test_num_workers_takes_an_int_or_a_range(value, expected):
    spec = _scaling({"scaling": {"num_workers": value}})
    assert (spec.min_workers, spec.num_workers) == expected
    assert spec.elastic == (expected[0] is not None)
    assert spec.max_failures == (-1 if spec.elastic else 0)  # elastic retries by default


@pytest.mark.parametrize("cfg,match", [
    ({"scaling": {"num_workers": [2, 1]}}, r"MIN <= MAX, got \[2, 1\]"),
    ({"scaling": {"num_workers": [0, 2]}}, "integers >= 1"),
    ({"scaling": {"num_workers": [1, 2, 3]}}, r"one int or \[MIN, MAX\]"),
    ({"scaling": {"num_workers": [1, 2]}, "failure": {"max_failures": 0}}, "failure.max_failures: 0 forbids"),
    ({"scaling": {"num_workers": [1, 2], "elastic_resize_monitor_interval_s": -1}}, "must be a number >= 0"),
])
def test_bad_worker_ranges_are_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        _scaling(cfg)


class _TinyBNSeg(torch.nn.Module):
    """Conv + BatchNorm + classifier: BatchNorm makes the per-micro-batch normalisation part of the check."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                        torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))

    def forward(self, img, seg):
        return {"decode.loss_ce": torch.nn.functional.cross_entropy(self.body(img), seg)}


def _data(global_batch: int):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(global_batch, 3, 6, 6, generator=gen), torch.randint(0, 3, (global_batch, 6, 6), generator=gen)


def _fresh_model():
    torch.manual_seed(0)
    return _TinyBNSeg()


def _reference_update(spg: int, max_workers: int) -> dict:
    """What MAX DDP workers of ``spg`` samples each compute: the mean of their per-batch gradients."""
    model = _fresh_model()
    img, seg = _data(spg * max_workers)
    loss = sum(model(img[r * spg:(r + 1) * spg], seg[r * spg:(r + 1) * spg])["decode.loss_ce"]
               for r in range(max_workers)) / max_workers
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _elastic_worker(rank: int, world: int, spg: int, max_workers: int, store_path: str, out_path: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_fresh_model())
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.5), PrecisionSettings())
        img, seg = _data(spg * max_workers)
        # worker w runs virtual ranks w, w+W, ... (the stream hands out rows in any order; here they are fixed)
        ranks = list(range(rank, max_workers, world))
        sizes = micro_batch_sizes(spg, max_workers, world, rank, 0)
        assert sizes == [spg] * len(ranks)
        micro = [(img[r * spg:(r + 1) * spg], seg[r * spg:(r + 1) * spg], loss_weight(spg, spg, max_workers, world))
                 for r in ranks]
        assert step.accumulate(micro, 1) is not None
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.module.named_parameters()}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2])
def test_fewer_workers_accumulating_update_like_max_workers(tmp_path, world):
    spg, max_workers = 2, 4
    out = tmp_path / "weights.pt"
    mp.start_processes(_elastic_worker, args=(world, spg, max_workers, str(tmp_path / "store"), str(out)),
                       nprocs=world, start_method="spawn")
    got, want = torch.load(out), _reference_update(spg, max_workers)
    for name, value in want.items():
        assert torch.allclose(got[name], value, atol=1e-6), name
    # and it is not trivially equal: one worker's batch alone gives another update
    single = _fresh_model()
    img, seg = _data(spg)
    single(img, seg)["decode.loss_ce"].backward()
    torch.optim.SGD(single.parameters(), lr=0.5).step()
    assert not torch.allclose(dict(single.named_parameters())["body.0.weight"], want["body.0.weight"], atol=1e-4)


def test_accumulate_reports_the_size_weighted_mean_loss():
    model = _fresh_model()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), PrecisionSettings())
    img, seg = _data(4)
    losses = [float(model(img[i:i + 2], seg[i:i + 2])["decode.loss_ce"].detach()) for i in (0, 2)]
    out = step.accumulate([(img[0:2], seg[0:2], 0.5), (img[2:4], seg[2:4], 0.5)], 1)
    assert out["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_environment_is_untouched():
    # the spawned workers set up their own process groups; this process has none
    assert not dist.is_initialized()
    assert "RANK" not in os.environ
