"""DirectCLR: InfoNCE on the first ``d0`` coordinates of the backbone representation, no trainable projector
(Jing et al. 2022, Sec. 6)."""

from __future__ import annotations

from torch import Tensor

from ssl_bench.config import ConfigError
from ssl_bench.losses import info_nce
from ssl_bench.methods.base import SSLMethod


class DirectCLR(SSLMethod):
    """``L = info_nce(r1[:, :d0], r2[:, :d0], tau)`` with ``r = f(a)`` the backbone output; the embedding the
    loss sees (``representations()["projector"]``) is ``r[:, :d0]``."""

    def __init__(self, *args, temperature: float, d0: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 < d0 <= self.encoder.output_dim:
            raise ConfigError(f"method.directclr_dim={d0} must be in [1, {self.encoder.output_dim}] (the backbone's "
                             "output width)")
        self.temperature, self.d0 = temperature, d0

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        features = self.encoder(x)
        return {"backbone": features, "projector": features[:, :self.d0]}

    def training_loss(self, index: int, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        r1, r2 = self.encoder(view1), self.encoder(view2)
        return info_nce(r1[:, :self.d0], r2[:, :self.d0], self.temperature), r1
