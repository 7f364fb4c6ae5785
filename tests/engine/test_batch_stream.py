"""The training loop's view of its stream shard (rayseg.engine.loop._BatchStream)."""
import threading

import pytest
import torch

from rayseg.engine.loop import _BatchStream
from rayseg.errors import DataError


class _Shard:
    """Stands in for a Ray Data shard."""

    def __init__(self, batches, fail=None, gate=None):
        self.batches, self.fail, self.gate = batches, fail, gate

    def iter_torch_batches(self, **kwargs):
        def gen():
            if self.gate is not None:
                self.gate.wait()
            if self.fail is not None:
                raise self.fail
            for i in range(self.batches):
                yield {"img": torch.full((2, 3, 4, 4), i, dtype=torch.uint8),
                       "gt_semantic_seg": torch.zeros((2, 4, 4), dtype=torch.uint8)}
        return gen()


def test_batches_come_in_order_and_a_dry_stream_is_a_clear_error():
    stream = _BatchStream(_Shard(batches=3), 2, torch.device("cpu"), first_batch_timeout_s=30)
    assert [int(stream.next(i)["img"][0, 0, 0, 0]) for i in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="ended before iteration 3"):
        stream.next(3)


def test_a_first_batch_error_reaches_the_training_thread():
    stream = _BatchStream(_Shard(batches=1, fail=DataError("bad.png: cannot decode")), 2, torch.device("cpu"),
                          first_batch_timeout_s=30)
    with pytest.raises(DataError, match="bad.png"):
        stream.next(0)


def test_the_first_batch_wait_is_bounded():
    gate = threading.Event()
    stream = _BatchStream(_Shard(batches=1, gate=gate), 2, torch.device("cpu"), first_batch_timeout_s=0.3)
    with pytest.raises(DataError, match=r"within 0.3 s \(data.first_batch_timeout_s\)"):
        stream.next(0)
    gate.set()
