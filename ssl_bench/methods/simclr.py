"""SimCLR: one shared encoder, optional linear projector, NT-Xent over the 2B views (seed 000, Eq. 9)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ssl_bench.config import OptimConfig
from ssl_bench.losses import nt_xent
from ssl_bench.methods.base import SSLMethod


class SimCLR(SSLMethod):
    """``L = nt_xent(g(f(a1)), g(f(a2)), tau)`` with ``g`` the identity or a linear projector (Simplified-SimCLR)."""

    def __init__(self, make_encoder: Callable[[], nn.Module], optim: OptimConfig, temperature: float,
                 projector: str = "none", **kwargs) -> None:
        super().__init__(make_encoder, optim, **kwargs)
        self.temperature = temperature
        width = self.encoder.output_dim
        self.projector = nn.Linear(width, width) if projector == "linear" else nn.Identity()

    def update(self, index: int, view1: Tensor, view2: Tensor) -> Tensor:
        z1 = self.projector(self.encoder(view1))
        z2 = self.projector(self.encoder(view2))
        return self.step(self.block_optimizers[0], nt_xent(z1, z2, self.temperature))
