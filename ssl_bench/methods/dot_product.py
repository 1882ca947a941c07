"""The dot-product SSL losses of Esser, Nath & Ghoshdastidar 2023: contrastive with one positive and one negative
(Eq. 1) and non-contrastive (Eq. 2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import MethodConfig, check_choice
from ssl_bench.methods.base import Method
from ssl_bench.ops.losses import (
    DOT_PRODUCT_LOSSES,
    contrastive_dot,
    non_contrastive_dot,
)
from ssl_bench.registry import register


@register("method", "dot_product")
class DotProduct(Method):
    """``loss=contrastive``: ``L_C = sum_i f(x_i)^T (f(x_i^-) - f(x_i^+))`` (Eq. 1); ``loss=non_contrastive``:
    ``L_NC = -sum_i f(x_i)^T f(x_i^+)`` (Eq. 2); sums over the mini-batch, on the encoder's outputs (no heads).

    ``view1`` holds the anchors and ``view2`` their positives; the negative of anchor i is the next anchor of the
    mini-batch (``view1.roll(-1)``), an independent sample when the anchors are in a random order (the contract of
    :class:`datamodules.pairs.PairsDataModule`, whose ``trace_matrix`` is ``C`` of ``tr(F C F^T)`` for these pairs).
    Nothing bounds these losses from below: only the encoder's constraint keeps them finite.
    """

    @dataclass
    class Config(MethodConfig):
        loss: str = "contrastive"

        def validate(self, prefix: str) -> None:
            check_choice(f"{prefix}.loss", self.loss, DOT_PRODUCT_LOSSES)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder)

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        anchor, positive = self.encoder(views.view1), self.encoder(views.view2)
        if self.config.loss == "contrastive":
            return contrastive_dot(anchor, positive, anchor.roll(-1, dims=0)), anchor
        return non_contrastive_dot(anchor, positive), anchor
