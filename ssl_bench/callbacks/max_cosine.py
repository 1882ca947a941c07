"""Max-cosine between first-layer neurons and the ground-truth dictionary (Pokle et al. 2022, Eq. 12)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssl_bench.callbacks.base import Callback
from ssl_bench.config import CallbackConfig
from ssl_bench.ops.metrics import max_cosine
from ssl_bench.registry import register


@register("callback", "max_cosine")
class MaxCosine(Callback):
    """Logs ``maxcos/max``, ``maxcos/median`` and ``maxcos/min`` every ``every_n_epochs`` epochs and at the end.

    Reads ``trainer.datamodule.dictionary`` (p x d) and the encoder's ``first_layer_weight`` (m x p); nothing else.
    ``signed`` drops the absolute value of the cosine.
    """

    @dataclass
    class Config(CallbackConfig):
        signed: bool = False
        needs = ("dictionary", "first_layer_weight")

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        weight = module.method.encoder.first_layer_weight
        values = max_cosine(weight, trainer.datamodule.dictionary, absolute=not self.config.signed)
        for key, value in values.items():
            module.log(f"maxcos/{key}", value)
