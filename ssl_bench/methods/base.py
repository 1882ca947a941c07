"""The shared base of every method: encoder factory, optimizers, the per-mini-batch update loop and logging."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from ssl_bench.config import OptimConfig

Block = Sequence[tuple[Tensor, Tensor]]


class SSLMethod(L.LightningModule):
    """Manual optimization over a block of mini-batches of view pairs.

    A training step receives a block (for synthetic data, one whole epoch) and calls :meth:`update` once per
    mini-batch; keeping the mini-batch loop here makes Lightning's per-step overhead once per block. Subclasses
    implement :meth:`update` and, for several optimizers, :meth:`optimizer_parameters`. Metric callbacks read the
    model through ``first_layer_weight``.
    """

    def __init__(self, make_encoder: Callable[[], nn.Module], optim: OptimConfig, weight_norm: str = "none",
                 log_every_n_epochs: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optim, self.weight_norm = optim, weight_norm
        self.log_every_n_epochs = log_every_n_epochs
        self.encoder = make_encoder()
        self._epoch_losses: list[Tensor] = []
        self.block_optimizers: list = []

    @property
    def first_layer_weight(self) -> Tensor:
        """The online encoder's first-layer weight (m x p)."""
        return self.encoder.first_layer_weight

    def optimizer_parameters(self) -> list[Iterable[nn.Parameter]]:
        return [self.parameters()]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(params, lr=self.optim.lr, momentum=self.optim.momentum,
                                weight_decay=self.optim.weight_decay) for params in self.optimizer_parameters()]

    def update(self, index: int, view1: Tensor, view2: Tensor) -> Tensor:
        """One optimization step on mini-batch ``index`` of the block, with ``self.block_optimizers``; returns the
        detached loss."""
        raise NotImplementedError

    def step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.after_optimizer_step()
        return loss.detach()

    def after_optimizer_step(self) -> None:
        """Row / column weight normalisation of every encoder after each step (seed 000, Thm. 3)."""
        if self.weight_norm != "none":
            for module in self.modules():
                if hasattr(module, "normalise_weights"):
                    module.normalise_weights(self.weight_norm)

    def training_step(self, block: Block, block_idx: int) -> None:
        optimizers = self.optimizers()
        self.block_optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self._epoch_losses.extend(self.update(i, view1, view2) for i, (view1, view2) in enumerate(block))

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        if epoch % self.log_every_n_epochs == 0 or epoch == self.trainer.max_epochs:
            self.log("train/loss", torch.stack(self._epoch_losses).mean())
            self._epoch_losses.clear()
