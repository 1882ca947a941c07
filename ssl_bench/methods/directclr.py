"""DirectCLR: InfoNCE on the first ``d0`` coordinates of the backbone representation, no trainable projector
(Jing et al. 2022, Sec. 6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import ConfigError, MethodConfig, check_positive
from ssl_bench.methods.base import Method
from ssl_bench.ops.losses import info_nce
from ssl_bench.registry import register


@register("method", "directclr")
class DirectCLR(Method):
    """``L = info_nce(r1[:, :d0], r2[:, :d0], tau)`` with ``r = f(a)`` the backbone output; the embedding the
    loss sees (``representations()["projector"]``) is ``r[:, :d0]``, with ``d0 = directclr_dim``."""

    @dataclass
    class Config(MethodConfig):
        temperature: float = 0.1
        directclr_dim: int = 360

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.temperature", self.temperature)
            check_positive(f"{prefix}.directclr_dim", self.directclr_dim)

        def validate_embedding(self, prefix: str, width: int) -> None:
            if self.directclr_dim > width:
                raise ConfigError(f"{prefix}.directclr_dim={self.directclr_dim} must be in [1, {width}] (the "
                                  "backbone's output width)")

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder)
        self.d0 = config.directclr_dim

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        features = self.encoder(x)
        return {"backbone": features, "projector": features[:, :self.d0]}

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        r1, r2 = self.encoder(views.view1), self.encoder(views.view2)
        return info_nce(r1[:, :self.d0], r2[:, :self.d0], self.config.temperature), r1
