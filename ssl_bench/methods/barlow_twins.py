"""Barlow Twins: the cross-correlation of two views' embeddings pushed to the identity (Zbontar et al. 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import MethodConfig, check_positive, check_range
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import ExpanderKeys
from ssl_bench.ops.losses import barlow_twins_loss
from ssl_bench.registry import register


@register("method", "barlow_twins")
class BarlowTwins(Method):
    """``L = scale_loss * barlow_twins_loss(g(f(a1)), g(f(a2)), lambda_offdiag)`` with ``g`` the projector
    (Zbontar et al. 2021, Eqs. 1-2). The config's defaults are the paper's: an 8192-8192-8192 projector
    (Linear-BN-ReLU twice, then Linear), ``lambda_offdiag`` 5e-3 and no scaling. ``scale_loss`` multiplies the loss
    (solo-learn's ``scale_loss``: 0.1 in its CIFAR recipe). ``configs/method/barlow_twins.yaml`` shrinks the projector
    for the small synthetic encoders; ``cifar10/barlow_twins`` has solo-learn's 2048-2048-2048."""

    @dataclass
    class Config(ExpanderKeys, MethodConfig):
        lambda_offdiag: float = 5.0e-3
        scale_loss: float = 1.0
        eps: float = 1.0e-5

        def validate(self, prefix: str) -> None:
            check_range(f"{prefix}.lambda_offdiag", self.lambda_offdiag, 0, math.inf, "[)")
            check_range(f"{prefix}.scale_loss", self.scale_loss, 0, math.inf, "()")
            check_positive(f"{prefix}.eps", self.eps)
            self.validate_projector(prefix)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder, projector=config.make_projector(width))
        # buffers, so that members of an ensemble batched with vmap each keep their own values
        for key in ("lambda_offdiag", "scale_loss"):
            self.register_buffer(key, torch.tensor(getattr(config, key)), persistent=False)

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        loss = barlow_twins_loss(self.projector(f1), self.projector(f2), self.lambda_offdiag, self.config.eps)
        return self.scale_loss * loss, f1
