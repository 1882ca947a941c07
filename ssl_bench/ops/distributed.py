"""The process group as the losses and datamodules see it: this process's rank, the world size, and a differentiable
gather over the processes, all with torch's public collectives (``torch.distributed.nn.functional.all_gather`` is
deprecated)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Gather(torch.autograd.Function):
    """``cat(z_0, ..., z_{R-1})`` of every process's ``z_r`` (all of one shape). The gradient of ``z_r`` is the sum
    over the processes of their gradient's rows of ``z_r``, so each process's backward gives its ``z_r`` the
    gradient of the sum of all processes' losses."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(z: Tensor) -> Tensor:
    """Concatenate ``z`` (b x m, the same b in every process) over all processes in rank order (R b x m),
    differentiably (see :class:`_Gather`)."""
    if world()[1] == 1:
        return z
    return _Gather.apply(z.contiguous())
