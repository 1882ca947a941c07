"""The base of every datamodule: the interface the runner, the methods and the metric callbacks read.

A datamodule is a plain class (no Lightning import), registered by name with its ``Config``; the runner wraps it in a
LightningDataModule (:class:`ssl_bench.train.lightning_module.DataModuleAdapter`) that forwards Lightning's hooks to it
and sets :attr:`trainer`. Training batches are ``list[Views]`` (:class:`ssl_bench.batch.Views`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ssl_bench.batch import Views
from ssl_bench.config import DataConfig
from ssl_bench.ops.distributed import world


class DataModule:
    """Hooks with Lightning's names, plus what metric callbacks read: ``num_classes`` (None without labels),
    ``labelled_batches`` (training batches carry labels, for the online probe), :meth:`evaluation_inputs` and
    :meth:`readout_dataloaders`. Synthetic datamodules also expose their ground truth (e.g. ``dictionary``)."""

    Config = DataConfig
    labelled_batches = False
    num_classes: int | None = None
    trainer: Any = None
    """The Lightning trainer, set when the run starts (None outside a fit)."""

    @classmethod
    def from_config(cls, config: DataConfig, seed: int) -> DataModule:
        raise NotImplementedError

    def check(self) -> None:
        """Raise a one-line :class:`~ssl_bench.errors.DataError` for data that cannot load, before a run writes
        anything (what it loads is kept for :meth:`setup`)."""

    def prepare_data(self) -> None:
        """Download or check files, once per node."""

    def setup(self, stage: str) -> None:
        """Load or move the data, in every process."""

    def train_dataloader(self) -> Any:
        """An iterable of ``list[Views]`` batches."""
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        """A DataLoader (or other iterable) of labelled ``(inputs, labels)`` batches for the online probe; ``[]``
        when there is nothing to validate (a list is read as several dataloaders)."""
        return []

    def transfer_batch_to_device(self, batch: list[Any], device: torch.device) -> list[Any]:
        """A training batch (``list[Views]``) or a validation batch (``[inputs, labels]``) moved to ``device``."""
        return [item.to(device) for item in batch]

    def world(self) -> tuple[int, int]:
        """This process's (global rank, world size): the trainer's, else the default process group's."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else world()

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """A fixed set of at most ``num_samples`` unaugmented inputs, for spectra."""
        raise NotImplementedError

    def evaluation_views(self, num_samples: int, views: int) -> Tensor | None:
        """``views`` augmented views of each of the first ``num_samples`` evaluation inputs, drawn by the data's own
        augmentation from a fixed stream (the same views at every evaluation): ``(n, views, *input_shape)``, for
        LiDAR and alignment; None where the data has no augmentation to draw from."""
        return None

    def readout_dataloaders(self, batch_size: int) -> tuple[Any, Any] | None:
        """(train, test) loaders of ``(inputs, labels)`` for the linear readout, or None without labels."""
        return None


EVALUATION_VIEWS_STREAM = 2**33
"""The generator of :meth:`DataModule.evaluation_views` is seeded with ``seed + 2**33``, beside the held-out and
evaluation streams (``seed + 2**32``)."""


def stacked_views(draw_pair: Callable[[], tuple[Tensor, Tensor]], views: int) -> Tensor:
    """``views`` views of every sample from ``ceil(views / 2)`` calls of ``draw_pair`` (each two views of the same
    samples, as a training batch's view1 and view2), stacked on dim 1: ``(n, views, ...)``."""
    drawn = [view for _ in range(-(-views // 2)) for view in draw_pair()]
    return torch.stack(drawn[:views], dim=1)


def collate_views(items: list[tuple[Tensor, Tensor, Any]]) -> list[Views]:
    """A DataLoader's ``(view1, view2, label)`` items as one training batch: ``[Views(...)]``."""
    view1, view2, labels = zip(*items)
    return [Views(torch.stack(view1), torch.stack(view2), torch.as_tensor(labels))]
