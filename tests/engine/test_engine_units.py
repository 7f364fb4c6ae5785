"""Engine pieces that need no Ray: lr schedule, paramwise lr/decay, CPU SyncBN, device normalisation, streams."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from rayseg.datasets.ray_data import DeviceNormalizer, stream_indices
from rayseg.errors import ConfigError
from rayseg.optim import PolyLrSchedule, build_lr_schedule, build_optimizer


def test_poly_lr_matches_formula():
    s = PolyLrSchedule(base_lr=0.01, max_iters=100, power=0.9, min_lr=1e-4)
    for t in (0, 1, 50, 99):
        assert s.lr_at(t) == pytest.approx((0.01 - 1e-4) * (1 - t / 100) ** 0.9 + 1e-4)


def test_linear_warmup_ramps_to_regular_lr():
    s = PolyLrSchedule(base_lr=0.01, max_iters=100, power=1.0, min_lr=0.0, warmup="linear",
                       warmup_iters=10, warmup_ratio=0.1)
    assert s.lr_at(0) == pytest.approx(0.01 * 0.1)
    assert s.lr_at(5) == pytest.approx(s.regular_lr(5, 0.01) * (1 - 0.5 * 0.9))
    assert s.lr_at(10) == pytest.approx(s.regular_lr(10, 0.01))


def test_lr_config_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="powr"):
        build_lr_schedule({"policy": "poly", "powr": 0.9}, 0.01, 10)
    with pytest.raises(ConfigError, match="step"):
        build_lr_schedule({"policy": "step"}, 0.01, 10)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)
        self.decode_head = torch.nn.Linear(2, 2)
        self.decode_head_norm = torch.nn.BatchNorm1d(2)


def test_paramwise_custom_keys_longest_match_wins():
    net = _Net()
    opt = build_optimizer(net, {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
                                "paramwise_cfg": {"custom_keys": {"head": {"lr_mult": 10.0},
                                                                  "head_norm": {"lr_mult": 2.0, "decay_mult": 0.0}}}})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["backbone.weight"]["lr"] == pytest.approx(0.01)
    assert by_name["decode_head.weight"]["lr"] == pytest.approx(0.1)
    assert by_name["decode_head_norm.weight"]["lr"] == pytest.approx(0.02)
    assert by_name["decode_head_norm.weight"]["weight_decay"] == 0.0
    assert by_name["decode_head.weight"]["weight_decay"] == pytest.approx(1e-4)
    s = PolyLrSchedule(base_lr=0.01, max_iters=10, power=1.0)
    s.apply(opt, 5)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decode_head.weight"]["lr"] == pytest.approx(0.05)


def test_unknown_optimizer_and_argument_are_errors():
    with pytest.raises(ConfigError, match="SGDD"):
        build_optimizer(_Net(), {"type": "SGDD", "lr": 0.1})
    with pytest.raises(ConfigError, match="momentun"):
        build_optimizer(_Net(), {"type": "SGD", "lr": 0.1, "momentun": 0.9})


def test_device_normalizer_flips_bgr_and_normalises():
    img = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    img[..., 0] = 10  # B
    img[..., 2] = 200  # R
    norm = DeviceNormalizer([100.0, 0.0, 50.0], [2.0, 1.0, 5.0], to_rgb=True)
    out = norm(img)
    assert out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, 0], torch.full((2, 2), (200 - 100) / 2.0))  # R first after to_rgb
    assert torch.allclose(out[0, 2], torch.full((2, 2), (10 - 50) / 5.0))


def test_stream_visits_every_sample_once_per_epoch_and_is_seeded():
    positions = np.arange(30)
    a = stream_indices(positions, 10, seed=3)
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    assert not np.array_equal(a[:10], a[10:20])  # each epoch has its own order
    assert np.array_equal(a, stream_indices(positions, 10, seed=3))
    assert not np.array_equal(a, stream_indices(positions, 10, seed=4))
    # Resuming mid-stream gives the same samples as the uninterrupted stream.
    assert np.array_equal(stream_indices(positions[17:], 10, seed=3), a[17:])


def _sync_bn_worker(rank, world, port, x_full, results):
    import torch.distributed as dist

    from rayseg.engine.sync_bn import convert_sync_batchnorm

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), "cpu")
    x = x_full.chunk(world)[rank].clone().requires_grad_(True)
    out = bn(x)
    weights = torch.arange(x_full.numel()).view_as(x_full).float().chunk(world)[rank]
    (out * weights).sum().backward()  # the global loss is the sum of the workers' losses
    results[rank] = (out.detach(), x.grad, bn[0].running_mean.clone(), bn[0].running_var.clone(),
                     bn[0].weight.grad.clone())
    dist.destroy_process_group()


def test_cpu_sync_bn_equals_batchnorm_on_the_global_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.manual_seed(1)
    x_full = torch.randn(4, 3, 5, 5) * 3 + 1
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_sync_bn_worker, args=(2, port, x_full, results), nprocs=2, join=True)

    ref = torch.nn.BatchNorm2d(3)
    xr = x_full.clone().requires_grad_(True)
    out = ref(xr)
    (out * torch.arange(out.numel()).view_as(out).float()).sum().backward()
    got_out = torch.cat([results[0][0], results[1][0]])
    got_grad = torch.cat([results[0][1], results[1][1]])
    assert torch.allclose(got_out, out.detach(), atol=1e-5)
    assert torch.allclose(got_grad, xr.grad, atol=1e-4)
    assert torch.allclose(results[0][2], ref.running_mean, atol=1e-6)
    assert torch.allclose(results[0][3], ref.running_var, atol=1e-5)
    # weight.grad: each worker holds its local part; DDP would sum them.
    assert torch.allclose(results[0][4] + results[1][4], ref.weight.grad, atol=1e-3)
