"""Linear readout accuracy of the frozen backbone and projector embeddings at the end of training."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ssl_bench.callbacks.spectrum import KINDS, frozen_representations
from ssl_bench.metrics import fit_linear_readout


def _features(pl_module: L.LightningModule, loader: DataLoader) -> tuple[dict[str, Tensor], Tensor]:
    """Frozen representations of every ``(x, y)`` item of ``loader`` and the labels, on the module's device."""
    labels: list[Tensor] = []

    def inputs():
        for x, y in loader:
            labels.append(y)
            yield x

    features = frozen_representations(pl_module, inputs())
    return features, torch.cat(labels).to(pl_module.device)


class LinearReadout(L.Callback):
    """Records ``readout/backbone_acc`` and ``readout/projector_acc``: top-1 test accuracy of a linear classifier
    (:func:`ssl_bench.metrics.fit_linear_readout`, ``epochs`` epochs) on frozen features of the datamodule's labelled
    train split, at the end of training.

    Reads ``trainer.datamodule.readout_dataloaders`` and ``num_classes`` and ``pl_module.representations``; skipped
    when the data has no labels. Runs on global rank 0 only, while the model is still on its device; the values go
    straight to every logger, since ``pl_module.log`` is closed after the last epoch.
    """

    def __init__(self, epochs: int = 100, batch_size: int = 512) -> None:
        self.epochs, self.batch_size = epochs, batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(trainer.datamodule, "readout_dataloaders") or not hasattr(pl_module, "representations"):
            raise TypeError("LinearReadout needs a datamodule with `readout_dataloaders` and a method with "
                            "`representations`; remove the callback for this data or method")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._readout(trainer, pl_module)
        trainer.strategy.barrier("linear_readout")

    def _readout(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.datamodule.readout_dataloaders(self.batch_size)
        if loaders is None:
            return
        (train, train_labels), (test, test_labels) = (_features(pl_module, loader) for loader in loaders)
        metrics = {f"readout/{kind}_acc": fit_linear_readout(train[kind], train_labels, test[kind], test_labels,
                                                             trainer.datamodule.num_classes, self.epochs,
                                                             batch_size=self.batch_size)
                   for kind in KINDS}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        print(f"linear readout: backbone {metrics['readout/backbone_acc']:.4f}, "
              f"projector {metrics['readout/projector_acc']:.4f}")
