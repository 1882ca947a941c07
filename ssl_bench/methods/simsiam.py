"""SimSiam: shared encoder and projector, predictor, symmetric negative cosine (or Wen & Li's batch-normalised squared
distance) with stop-gradient."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn
from torch.nn import functional as F

from ssl_bench.batch import Views
from ssl_bench.config import MethodConfig, check_choice, check_positive
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import PredictorKeys, ProjectorKeys
from ssl_bench.ops.losses import half_squared_distance, negative_cosine
from ssl_bench.registry import register

BN_EPS = 1e-12
"""The ``eps`` of :func:`batch_norm`: BN's usual 1e-5 would let weights that shrink until ``var << eps`` drive both
branches, and so the loss, to 0 (a collapse that the ideal BN of the paper does not have)."""


def batch_norm(z: Tensor) -> Tensor:
    """Every coordinate standardised over the batch (training-mode BN without affine): ``(z - mean) / sqrt(var + eps)``
    with the biased variance and ``eps =`` :data:`BN_EPS`, so that the result is invariant to the scale of ``z``."""
    return F.batch_norm(z, None, None, training=True, eps=BN_EPS)


def bn_squared_distance(p: Tensor, z: Tensor) -> Tensor:
    """``mean_i ||BN(p)_i - SG[BN(z)]_i||^2`` (Wen & Li 2022)."""
    return (batch_norm(p) - batch_norm(z.detach())).pow(2).sum(dim=1).mean()


DISTANCES = {"cosine": negative_cosine, "mse_bn": bn_squared_distance, "l2": half_squared_distance}
"""``D`` of each ``loss``: SimSiam's negative cosine, Wen & Li's batch-normalised squared distance, Bao's L2."""


@register("method", "simsiam")
class SimSiam(Method):
    """``L = (D(h(z1), z2) + D(h(z2), z1)) / 2`` with ``z = g(f(a))``, ``h`` the predictor and ``D`` the negative
    cosine with stop-gradient on its second argument (Chen & He 2021, Eqs. 1-2). Pokle et al.'s Simplified-SimSiam
    has no projector and a linear predictor; Bao 2023 uses a linear, bias-free, symmetrically initialized one.

    ``loss=mse_bn`` makes ``D(p, z) = mean_i ||BN(p_i) - SG[BN(z_i)]||^2`` (Wen & Li 2022: online ``F = E f``, target
    ``G = f``, each output batch-normalised without affine); it allows ``predictor=none``, the fixed head ``E = I``.
    ``loss=l2`` makes ``D(p, z) = 1/2 mean_i ||p_i - SG[z_i]||^2`` (Bao 2023, Eq. 1: no feature normalisation).
    ``predictor_lr`` gives the predictor its own learning rate (not scaled by ``optim.scale_lr``; null: the run's).
    """

    @dataclass
    class Config(ProjectorKeys, PredictorKeys, MethodConfig):
        predictor: str = "linear"
        loss: str = "cosine"
        predictor_lr: Optional[float] = None

        @property
        def needs_predictor(self) -> bool:  # type: ignore[override]
            """Without a predictor the cosine loss collapses completely; the batch-normalised one cannot."""
            return self.loss == "cosine"

        def validate(self, prefix: str) -> None:
            check_choice(f"{prefix}.loss", self.loss, tuple(DISTANCES))
            if self.predictor_lr is not None:
                check_positive(f"{prefix}.predictor_lr", self.predictor_lr)
            self.validate_projector(prefix)
            self.validate_predictor(prefix)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        projector = config.make_projector(width)
        super().__init__(config, make_encoder, projector=projector,
                         predictor=config.make_predictor(config.embedding_dim(width)))
        self.distance = DISTANCES[config.loss]

    def parameter_groups(self) -> list[list[dict[str, Any]]]:
        """One optimizer; with ``predictor_lr`` the predictor is a group of its own at that learning rate."""
        if self.config.predictor_lr is None:
            return super().parameter_groups()
        head = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if id(p) not in head]
        return [[dict(params=rest), dict(params=list(self.predictor.parameters()), base_lr=self.config.predictor_lr)]]

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        z1, z2 = self.projector(f1), self.projector(f2)
        loss = 0.5 * (self.distance(self.predictor(z1), z2) + self.distance(self.predictor(z2), z1))
        return loss, f1
