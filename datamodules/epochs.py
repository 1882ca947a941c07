"""The epoch contract of every datamodule: the order (and augmentation) of epoch k is a function of (seed, k), so a
resumed run repeats it; under DDP each process takes its share of every batch that one process would draw."""

from __future__ import annotations

from torch import Tensor


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of ``epoch``: ``seed * 1_000_003 + epoch``."""
    return seed * 1_000_003 + epoch


def shard(x: Tensor, rank: int, world_size: int) -> Tensor:
    """Positions ``rank, rank + world_size, ...`` of the first ``len(x) - len(x) % world_size`` rows of ``x``.

    Split into batches of B, process ``rank``'s b-th batch is its share of the b-th batch of ``B * world_size`` rows
    of ``x``; with one process this is ``x`` itself.
    """
    return x[: len(x) - len(x) % world_size][rank::world_size]
