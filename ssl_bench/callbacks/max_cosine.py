"""Max-cosine between first-layer neurons and the ground-truth dictionary (seed 000, Eq. 12)."""

from __future__ import annotations

import lightning as L

from ssl_bench.metrics import max_cosine


class MaxCosine(L.Callback):
    """Logs ``maxcos/max``, ``maxcos/median`` and ``maxcos/min`` every ``every_n_epochs`` epochs and at the end.

    Reads ``trainer.datamodule.dictionary`` (p x d) and ``pl_module.first_layer_weight`` (m x p); nothing else.
    """

    def __init__(self, every_n_epochs: int = 100, absolute: bool = True) -> None:
        self.every_n_epochs, self.absolute = every_n_epochs, absolute

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(trainer.datamodule, "dictionary", None) is None or not hasattr(pl_module, "first_layer_weight"):
            raise TypeError("MaxCosine needs a datamodule with a ground-truth `dictionary` and a method with "
                            "`first_layer_weight`; remove the callback for this data")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        values = max_cosine(pl_module.first_layer_weight, trainer.datamodule.dictionary, self.absolute)
        for key, value in values.items():
            pl_module.log(f"maxcos/{key}", value)
