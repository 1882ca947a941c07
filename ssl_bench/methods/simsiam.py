"""SimSiam: shared encoder and projector, predictor, symmetric negative cosine with stop-gradient."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_bench.losses import negative_cosine
from ssl_bench.methods.base import SSLMethod


class SimSiam(SSLMethod):
    """``L = (D(h(z1), z2) + D(h(z2), z1)) / 2`` with ``z = g(f(a))``, ``h`` the predictor and ``D`` the negative
    cosine with stop-gradient on its second argument (Chen & He 2021, Eqs. 1-2). Seed 000's Simplified-SimSiam has
    no projector and a linear predictor; seed 003 uses a linear, bias-free, symmetrically initialised one."""

    def __init__(self, *args, predictor: nn.Module, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.predictor = predictor

    def training_loss(self, index: int, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(view1), self.encoder(view2)
        z1, z2 = self.projector(f1), self.projector(f2)
        loss = 0.5 * (negative_cosine(self.predictor(z1), z2) + negative_cosine(self.predictor(z2), z1))
        return loss, f1
