"""Linear readout accuracy of the frozen backbone and projector embeddings at the end of training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssl_bench.callbacks.base import Callback
from ssl_bench.callbacks.spectrum import KINDS, labelled_representations
from ssl_bench.config import CallbackConfig, check_positive
from ssl_bench.ops.metrics import fit_linear_readout
from ssl_bench.registry import register


@register("callback", "readout")
class LinearReadout(Callback):
    """Records ``readout/backbone_acc`` and ``readout/projector_acc``: top-1 test accuracy of a linear classifier
    (:func:`ssl_bench.ops.metrics.fit_linear_readout`, ``epochs`` epochs of Adam) on frozen features of the datamodule's
    labelled train split, at the end of training.

    Reads ``trainer.datamodule.readout_dataloaders`` and ``num_classes`` and ``module.method.representations``;
    skipped when the data has no labels (``readout_dataloaders`` returns None). Runs on global rank 0 only, while the
    model is still on its device; the values go straight to every logger, since ``module.log`` is closed after the
    last epoch.
    """

    @dataclass
    class Config(CallbackConfig):
        epochs: int = 100
        batch_size: int = 512

        def validate(self, prefix: str) -> None:
            for key in ("epochs", "batch_size"):
                check_positive(f"{prefix}.{key}", getattr(self, key))

    def on_train_end(self, trainer: Any, module: Any) -> None:
        if trainer.is_global_zero:
            self._readout(trainer, module)
        trainer.strategy.barrier("linear_readout")

    def _readout(self, trainer: Any, module: Any) -> None:
        loaders = trainer.datamodule.readout_dataloaders(self.config.batch_size)
        if loaders is None:
            return
        (train, train_labels), (test, test_labels) = (labelled_representations(module.method, loader, module.device)
                                                      for loader in loaders)
        metrics = {f"readout/{kind}_acc": fit_linear_readout(train[kind], train_labels, test[kind], test_labels,
                                                             trainer.datamodule.num_classes, self.config.epochs,
                                                             batch_size=self.config.batch_size)
                   for kind in KINDS}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        print(f"linear readout: backbone {metrics['readout/backbone_acc']:.4f}, "
              f"projector {metrics['readout/projector_acc']:.4f}")
