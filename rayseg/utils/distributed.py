"""The torch.distributed state, asked in one place: training, validation, SyncBN and tracking all need it."""
from __future__ import annotations

from typing import Tuple

import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one member is running (DDP across Ray Train workers)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> Tuple[int, int]:
    """(this process's rank, the world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
