"""BYOL-style non-contrastive learning with an online and a target network (seed 000, Eqs. 4-5)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ssl_bench.config import OptimConfig
from ssl_bench.losses import normalized_mse
from ssl_bench.methods.base import SSLMethod


class BYOL(SSLMethod):
    """Online ``f_o``, target ``f_t``, optional linear predictor ``h``; loss ``2 - 2 cos`` (Eq. 4).

    ``target_update``:

    - ``alternate`` (seed 000): ``f_t`` is initialised independently and trained by its own SGD; mini-batches
      alternate, starting each epoch with the online step ``normalized_mse(h(f_o(a1)), sg(f_t(a2)))`` and then the
      target step ``normalized_mse(h(f_t(a2)), sg(f_o(a1)))``. The predictor, if any, acts on the branch being
      updated and is trained on both steps, as in the official code (the text's Eq. 5 puts it on the online branch).
    - ``ema`` (BYOL): ``f_t`` starts as a copy of ``f_o`` and follows ``f_t <- mu f_t + (1 - mu) f_o`` after every
      step; the loss is symmetrised over the two views.
    """

    def __init__(self, make_encoder: Callable[[], nn.Module], optim: OptimConfig, predictor: str = "none",
                 target_update: str = "alternate", ema_momentum: float = 0.99, **kwargs) -> None:
        super().__init__(make_encoder, optim, **kwargs)
        self.target_update, self.ema_momentum = target_update, ema_momentum
        self.target = make_encoder() if target_update == "alternate" else copy.deepcopy(self.encoder)
        if target_update == "ema":
            self.target.requires_grad_(False)
        width = self.encoder.output_dim
        self.predictor = nn.Linear(width, width) if predictor == "linear" else None

    def optimizer_parameters(self) -> list[Iterable[nn.Parameter]]:
        heads = [] if self.predictor is None else list(self.predictor.parameters())
        if self.target_update == "ema":
            return [list(self.encoder.parameters()) + heads]
        return [list(self.encoder.parameters()) + heads, list(self.target.parameters()) + heads]

    def _pair_loss(self, trained: nn.Module, other: nn.Module, trained_view: Tensor, other_view: Tensor) -> Tensor:
        with torch.no_grad():
            reference = other(other_view)
        output = trained(trained_view)
        return normalized_mse(output if self.predictor is None else self.predictor(output), reference)

    def update(self, index: int, view1: Tensor, view2: Tensor) -> Tensor:
        optimizers = self.block_optimizers
        if self.target_update == "alternate":
            if index % 2 == 0:
                return self.step(optimizers[0], self._pair_loss(self.encoder, self.target, view1, view2))
            return self.step(optimizers[1], self._pair_loss(self.target, self.encoder, view2, view1))
        loss = self._pair_loss(self.encoder, self.target, view1, view2) \
            + self._pair_loss(self.encoder, self.target, view2, view1)
        loss = self.step(optimizers[0], loss)
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.encoder.parameters()):
                target.lerp_(online, 1.0 - self.ema_momentum)
        return loss
