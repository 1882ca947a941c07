"""Simplified SimSiam: one shared encoder, linear predictor, symmetric negative cosine with stop-gradient."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ssl_bench.config import OptimConfig
from ssl_bench.losses import negative_cosine
from ssl_bench.methods.base import SSLMethod


class SimSiam(SSLMethod):
    """``L = (D(h(z1), z2) + D(h(z2), z1)) / 2`` with ``z = f(a)``, ``h`` the predictor, ``D`` the negative cosine
    with stop-gradient on its second argument (Chen & He 2021, Eq. 2; Simplified-SimSiam of seed 000, Table 1)."""

    def __init__(self, make_encoder: Callable[[], nn.Module], optim: OptimConfig, **kwargs) -> None:
        super().__init__(make_encoder, optim, **kwargs)
        width = self.encoder.output_dim
        self.predictor = nn.Linear(width, width)

    def update(self, index: int, view1: Tensor, view2: Tensor) -> Tensor:
        z1, z2 = self.encoder(view1), self.encoder(view2)
        loss = 0.5 * (negative_cosine(self.predictor(z1), z2) + negative_cosine(self.predictor(z2), z1))
        return self.step(self.block_optimizers[0], loss)
