"""Work split over the workers of a data-parallel run, without padding: each rank takes one
contiguous block of the rows (``shard_bounds``), and ``gather_rows`` puts the blocks back together
in rank order, so every rank ends with exactly the rows a single worker would have, in the same
order. Plain ``torch.distributed`` (gloo or NCCL); one worker needs none of it."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s block of ``n`` rows: blocks differ by at most one row,
    do not overlap, and cover ``range(n)`` (no row repeated to even them out)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return n * rank // world_size, n * (rank + 1) // world_size


def gather_rows(rows: Tensor, world_size: int) -> Tensor:
    """Every rank's ``rows`` (blocks of any length, same trailing shape), concatenated in rank
    order on every rank. NCCL needs the tensors on the GPU: they go to the current CUDA device and
    come back to ``rows``' device."""
    if world_size == 1:
        return rows
    device = rows.device
    on = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else device
    )
    local = rows.contiguous().to(on)
    count = torch.tensor([local.shape[0]], device=on)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    largest = max(counts)
    padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype, device=on)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(device)
