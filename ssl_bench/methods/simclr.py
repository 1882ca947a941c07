"""SimCLR: shared encoder, projector, NT-Xent over the 2B views (Chen et al. 2020; seed 000, Eq. 9)."""

from __future__ import annotations

from torch import Tensor

from ssl_bench.losses import nt_xent
from ssl_bench.methods.base import SSLMethod


class SimCLR(SSLMethod):
    """``L = nt_xent(g(f(a1)), g(f(a2)), tau)`` with ``g`` the projector (identity for seed 000's CL-* rows, linear
    for Simplified-SimCLR, an MLP for SimCLR)."""

    def __init__(self, *args, temperature: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def training_loss(self, index: int, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(view1), self.encoder(view2)
        return nt_xent(self.projector(f1), self.projector(f2), self.temperature), f1
