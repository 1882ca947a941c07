"""SimCLR: shared encoder, projector, NT-Xent over the 2B views (Chen et al. 2020; Pokle et al. 2022, Eq. 9)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import MethodConfig, check_positive
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import ProjectorKeys
from ssl_bench.ops.losses import nt_xent
from ssl_bench.registry import register


@register("method", "simclr")
class SimCLR(Method):
    """``L = nt_xent(g(f(a1)), g(f(a2)), tau)`` with ``g`` the projector (identity for Pokle et al.'s CL-* rows,
    linear for Simplified-SimCLR, an MLP for SimCLR)."""

    @dataclass
    class Config(ProjectorKeys, MethodConfig):
        temperature: float = 0.05

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.temperature", self.temperature)
            self.validate_projector(prefix)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder, projector=config.make_projector(width))
        # a buffer, so that members of an ensemble batched with vmap each keep their own temperature
        self.register_buffer("temperature", torch.tensor(config.temperature), persistent=False)

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        return nt_xent(self.projector(f1), self.projector(f2), self.temperature), f1
