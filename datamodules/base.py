"""The base of every datamodule: the interface the runner, the methods and the metric callbacks read.

A datamodule is a plain class (no Lightning import), registered by name with its ``Config``; the runner wraps it in a
LightningDataModule (:class:`ssl_bench.train.lightning_module.DataModuleAdapter`) that forwards Lightning's hooks to it
and sets :attr:`trainer`. Training batches are ``list[Views]`` (:class:`ssl_bench.batch.Views`).
"""

from __future__ import annotations

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

    def readout_dataloaders(self, batch_size: int) -> tuple[Any, Any] | None:
        """(train, test) loaders of ``(inputs, labels)`` for the linear readout, or None without labels."""
        return None


def collate_views(items: list[tuple[Tensor, Tensor, Any]]) -> list[Views]:
    """A DataLoader's ``(view1, view2, label)`` items as one training batch: ``[Views(...)]``."""
    view1, view2, labels = zip(*items)
    return [Views(torch.stack(view1), torch.stack(view2), torch.as_tensor(labels))]
