"""The training loop's view of its stream shard (rayseg.engine.loop._BatchStream)."""
import threading

import pytest
import torch

from rayseg.engine.loop import _BatchStream
from rayseg.errors import DataError


class _Shard:
    """Stands in for a Ray Data shard: records when the first batch is asked for."""

    def __init__(self, batches, fail=None, gate=None):
        self.asked = threading.Event()
        self.batches, self.fail, self.gate = batches, fail, gate

    def iter_torch_batches(self, **kwargs):
        def gen():
            self.asked.set()
            if self.gate is not None:
                self.gate.wait()
            if self.fail is not None:
                raise self.fail
            for i in range(self.batches):
                yield {"img": torch.full((2, 3, 4, 4), i, dtype=torch.uint8),
                       "gt_semantic_seg": torch.zeros((2, 4, 4), dtype=torch.uint8)}
        return gen()


def test_the_first_batch_is_asked_for_when_the_stream_is_made():
    """Ray Data starts its executor and actors on the first request; asking at once lets that start-up
    overlap the worker's own set-up (model code imports, restore) instead of following it."""
    shard = _Shard(batches=3)
    stream = _BatchStream(shard, 2, torch.device("cpu"), first_batch_timeout_s=30)
    assert shard.asked.wait(10)  # no next() yet
    assert [int(stream.next(i)["img"][0, 0, 0, 0]) for i in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="ended before iteration 3"):
        stream.next(3)


def test_a_first_batch_error_reaches_the_training_thread():
    stream = _BatchStream(_Shard(batches=1, fail=DataError("bad.png: cannot decode")), 2, torch.device("cpu"),
                          first_batch_timeout_s=30)
    with pytest.raises(DataError, match="bad.png"):
        stream.next(0)


def test_the_first_batch_timeout_counts_from_when_the_loop_waits():
    gate = threading.Event()
    stream = _BatchStream(_Shard(batches=1, gate=gate), 2, torch.device("cpu"), first_batch_timeout_s=0.3)
    with pytest.raises(DataError, match=r"within 0.3 s \(data.first_batch_timeout_s\)"):
        stream.next(0)
    gate.set()
