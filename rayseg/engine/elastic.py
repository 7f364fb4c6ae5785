"""Elastic training (``scaling.num_workers: [MIN, MAX]``): the same optimisation at any worker count.

Ray Train starts the run with as many workers as fit (at least MIN, at most MAX), restarts it from the last
checkpoint with fewer after a node is lost, and with more when capacity returns. What rayseg keeps fixed
whatever the size ``W``:

- **The global batch** is ``B = samples_per_gpu × MAX``. Each iteration every worker runs
  ``k = ceil(MAX / W)`` micro-batches (the same ``k`` on every worker, so DDP's and SyncBN's collectives
  match), the ``W × k`` micro-batches together holding exactly ``B`` samples (sizes differ by at most one,
  the larger ones rotating between workers from iteration to iteration). A micro-batch of ``m`` samples has
  its mean loss scaled by ``m × W / B`` before backward, and DDP averages over the ``W`` workers, so the
  gradient is the mean over the ``B`` samples: with ``W`` dividing ``MAX`` it is exactly the gradient ``MAX``
  workers of ``samples_per_gpu`` would compute. Gradients are synchronised once per iteration (``no_sync``
  on the other micro-batches).
- **Iterations, the lr schedule and the data stream position** count global batches, so they do not depend
  on ``W``; a restart resumes at the checkpoint's iteration and stream position ``iteration × B``.

The cost: fewer workers take proportionally longer per iteration; the iterations since the last checkpoint
are recomputed after every resize (at most ``checkpoint_config.interval``); with ``W < MAX`` BatchNorm and
SyncBN see the samples of one micro-step (``W × samples_per_gpu``), not all ``B`` of the iteration.
"""
from __future__ import annotations

import math
from typing import List


def micro_batch_sizes(samples_per_gpu: int, max_workers: int, world: int, rank: int, iteration: int) -> List[int]:
    """Sample counts of worker ``rank``'s micro-batches in ``iteration`` when ``world`` workers run.

    Every worker gets the same number of micro-batches, each of at most ``samples_per_gpu`` samples (at
    ``samples_per_gpu: 1`` with ``world`` not dividing ``max_workers``, some hold two), and the
    ``world`` workers' micro-batches add up to the global batch ``samples_per_gpu × max_workers``. At
    ``world == max_workers`` this is ``[samples_per_gpu]``: one ordinary batch.
    """
    if not 1 <= world <= max_workers:
        raise ValueError(f"world size {world} is outside 1..{max_workers}")
    global_batch = samples_per_gpu * max_workers
    per_worker = math.ceil(max_workers / world)
    if global_batch < world * per_worker:  # samples_per_gpu 1: no empty micro-batch, two samples in some instead
        per_worker -= 1
    chunks = world * per_worker
    base, extra = divmod(global_batch, chunks)
    first = rank * per_worker
    # The chunks holding one sample more move along by ``extra`` each iteration, so over a few iterations
    # every worker consumes the same number of rows from its (equal) share of the stream.
    shift = (iteration * extra) % chunks
    return [base + (1 if (c - shift) % chunks < extra else 0) for c in range(first, first + per_worker)]


def loss_weight(size: int, samples_per_gpu: int, max_workers: int, world: int) -> float:
    """The factor a micro-batch of ``size`` samples scales its mean loss by: ``size × world / global batch``,
    which DDP's average over ``world`` workers turns into the mean over the global batch."""
    return size * world / (samples_per_gpu * max_workers)


def stream_rows_per_iteration(samples_per_gpu: int, max_workers: int) -> int:
    """Rows of the training stream one iteration consumes, at any worker count: the global batch."""
    return samples_per_gpu * max_workers
