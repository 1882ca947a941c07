"""SimSiam: shared encoder and projector, predictor, symmetric negative cosine with stop-gradient."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ssl_bench.config import MethodConfig
from ssl_bench.losses import negative_cosine
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import PredictorKeys, ProjectorKeys
from ssl_bench.registry import register
from ssl_bench.views import Views


@register("method", "simsiam")
class SimSiam(Method):
    """``L = (D(h(z1), z2) + D(h(z2), z1)) / 2`` with ``z = g(f(a))``, ``h`` the predictor and ``D`` the negative
    cosine with stop-gradient on its second argument (Chen & He 2021, Eqs. 1-2). Pokle et al.'s Simplified-SimSiam
    has no projector and a linear predictor; Bao 2023 uses a linear, bias-free, symmetrically initialized one."""

    @dataclass
    class Config(ProjectorKeys, PredictorKeys, MethodConfig):
        predictor: str = "linear"
        needs_predictor = True

        def validate(self, prefix: str) -> None:
            self.validate_projector(prefix)
            self.validate_predictor(prefix)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        projector = config.make_projector(width)
        super().__init__(config, make_encoder, projector=projector,
                         predictor=config.make_predictor(config.embedding_dim(width)))

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        z1, z2 = self.projector(f1), self.projector(f2)
        loss = 0.5 * (negative_cosine(self.predictor(z1), z2) + negative_cosine(self.predictor(z2), z1))
        return loss, f1
