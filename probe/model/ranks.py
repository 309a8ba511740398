"""torchrun's ranks: which process this is (world), its device, the job's process group and the block of
items each rank takes; shared by distributed capture (probe.capture.distributed) and training
(probe.train.distributed)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def rank_device(device: str) -> str:
    """Under torchrun, plain "cuda" is the GPU of this process's local rank ("cuda:LOCAL_RANK"); any other name
    stays as it is."""
    rank, size, local = world()
    return f"cuda:{local}" if size > 1 and device == "cuda" else device


@contextmanager
def process_group(device: str, timeout_s: int | None = None) -> Iterator[bool]:
    """The torchrun job's default process group for the block: opened (nccl for a GPU device, gloo for the CPU)
    and torn down at its end, unless one is open already (then it is left as it is). Yields whether it opened
    it. After a block that ends well every rank waits at a barrier first, so that none tears the group down
    while another still has collectives in flight; a group left open at exit has aborted a rank (gloo's C++
    threads: "terminate called without an active exception")."""
    opened = not dist.is_initialized()
    if opened:
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo",
                                **({"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}))
    try:
        yield opened
        if opened:
            dist.barrier()
    finally:
        if opened:
            dist.destroy_process_group()


def rank_slice(n: int, rank: int, size: int) -> range:
    """The contiguous block of n items that a rank takes; the ranks in order cover 0..n-1 once."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is out of range for a world of {size}")
    per, extra = divmod(n, size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))
