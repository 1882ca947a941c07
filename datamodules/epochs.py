"""The epoch contract of every datamodule: the order (and augmentation) of epoch k is a function of (seed, k), so a
resumed run repeats it; under DDP each process takes its share of every batch that one process would draw."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from ssl_bench.batch import Views


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of ``epoch``: ``seed * 1_000_003 + epoch``."""
    return seed * 1_000_003 + epoch


def shard(x: Tensor, rank: int, world_size: int) -> Tensor:
    """Positions ``rank, rank + world_size, ...`` of the first ``len(x) - len(x) % world_size`` rows of ``x``.

    Split into batches of B, process ``rank``'s b-th batch is its share of the b-th batch of ``B * world_size`` rows
    of ``x``; with one process this is ``x`` itself.
    """
    return x[: len(x) - len(x) % world_size][rank::world_size]


def mini_batches(view1: Tensor, view2: Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> list[Views]:
    """Process ``rank``'s :func:`shard` of an epoch's two views, split into mini-batches of ``batch_size`` (the last
    one possibly smaller): the epoch's training batch."""
    view1, view2 = shard(view1, rank, world_size), shard(view2, rank, world_size)
    return [Views(a, b) for a, b in zip(view1.split(batch_size), view2.split(batch_size))]


class WholeEpochs:
    """The train loader of a synthetic datamodule: one batch per epoch, the whole epoch's mini-batches as one
    ``list[Views]``, so Lightning's per-batch machinery runs once per epoch. It asks ``data.epoch_batches(epoch,
    rank, world_size)`` for the current epoch and this process's share."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Any]:
        trainer = self.data.trainer
        yield self.data.epoch_batches(trainer.current_epoch if trainer is not None else 0, *self.data.world())
