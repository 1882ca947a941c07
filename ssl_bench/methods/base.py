"""The shared base of every method: backbone, projector, optimizers and schedule, online probe, update loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from ssl_bench.config import OptimConfig
from ssl_bench.optim import build_optimizer, probe_group, warmup_cosine

Block = Sequence[Sequence[Tensor]]


class SSLMethod(L.LightningModule):
    """Manual optimization over mini-batches of two views.

    A training batch is either one mini-batch ``[view1, view2, labels]`` (images) or a block of mini-batches
    ``[(view1, view2), ...]`` (synthetic data: one whole epoch, so Lightning's per-step overhead is paid once per
    block). :meth:`update` runs one optimizer step per mini-batch on ``training_loss(index, view1, view2)``, plus the
    online linear probe's cross-entropy on the detached backbone features when labels come with the batch. The
    learning rate is set from ``optim.schedule`` before every step. Subclasses implement :meth:`training_loss` and, for
    several optimizers, :meth:`parameter_groups` and :meth:`optimizer_index`.

    Callbacks read the model through :meth:`representations` (``backbone`` and ``projector`` outputs) and
    ``first_layer_weight``; the validation loop scores the online probe as ``readout/online_acc``.
    """

    find_unused_parameters = False
    """Whether some optimizer steps leave trained parameters without gradients (DDP must then look for them)."""

    def __init__(self, make_encoder: Callable[[], nn.Module], optim: OptimConfig, projector: nn.Module | None = None,
                 num_classes: int | None = None, batch_size: int = 256, weight_norm: str = "none",
                 log_every_n_epochs: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optim, self.weight_norm, self.batch_size = optim, weight_norm, batch_size
        self.log_every_n_epochs = log_every_n_epochs
        self.encoder = make_encoder()
        self.projector = projector if projector is not None else nn.Identity()
        self.probe = nn.Linear(self.encoder.output_dim, num_classes) if num_classes else None
        self.online_accuracy = MulticlassAccuracy(num_classes, average="micro") if num_classes else None
        self._epoch_losses: list[Tensor] = []
        self.block_optimizers: list[torch.optim.Optimizer] = []
        self._batch_idx, self._block_size = 0, 1

    @property
    def first_layer_weight(self) -> Tensor:
        """The online encoder's first-layer weight (m x p)."""
        return self.encoder.first_layer_weight

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        """``backbone``: the encoder's output; ``projector``: the embedding the loss sees."""
        features = self.encoder(x)
        return {"backbone": features, "projector": self.projector(features)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.representations(x)

    def training_loss(self, index: int, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        """The loss of mini-batch ``index`` of the block and the backbone features of ``view1`` (for the probe)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[list[dict[str, Any]]]:
        """Parameter groups per optimizer; by default one optimizer over everything but the probe."""
        return [[dict(params=[p for name, p in self.named_parameters() if not name.startswith("probe.")])]]

    def optimizer_index(self, index: int) -> int:
        """The optimizer that steps on mini-batch ``index`` of a block."""
        return 0

    def peak_lr(self) -> float:
        """``optim.lr``, times ``global_batch / 256`` when ``optim.scale_lr``."""
        if not self.optim.scale_lr:
            return self.optim.lr
        return self.optim.lr * self.batch_size * self.trainer.world_size / 256

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        groups = self.parameter_groups()
        if self.probe is not None:
            groups[0].append(probe_group(self.probe, self.optim))
        return [build_optimizer(self.optim, g, self.peak_lr()) for g in groups]

    def progress(self, index: int = 0) -> float:
        """Fraction of training done before mini-batch ``index`` of the current batch, from the epoch and batch
        index (so a resumed run continues every schedule where it stopped)."""
        batches = max(1, int(self.trainer.num_training_batches))
        return (self.current_epoch + (self._batch_idx + index / self._block_size) / batches) / self.trainer.max_epochs

    def schedule_lr(self, optimizer: torch.optim.Optimizer, index: int) -> None:
        """Set every group's learning rate to ``base_lr * warmup_cosine(progress)`` before mini-batch ``index``."""
        if self.optim.schedule == "constant":
            return
        progress, warmup = self.progress(index), self.optim.warmup_epochs / self.trainer.max_epochs
        for group in optimizer.param_groups:
            factor = warmup_cosine(progress, warmup, self.optim.min_lr / group["base_lr"])
            group["lr"] = group["base_lr"] * factor

    def update(self, index: int, view1: Tensor, view2: Tensor, labels: Tensor | None = None) -> Tensor:
        """One optimizer step on mini-batch ``index`` of the block; returns the detached SSL loss."""
        optimizer_index = self.optimizer_index(index)
        optimizer = self.block_optimizers[optimizer_index]
        self.schedule_lr(optimizer, index)
        loss, features = self.training_loss(index, view1, view2)
        total = loss
        if labels is not None and self.probe is not None and optimizer_index == 0:
            total = loss + F.cross_entropy(self.probe(features.detach()), labels)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(total)
        optimizer.step()
        self.after_optimizer_step(index)
        return loss.detach()

    def after_optimizer_step(self, index: int) -> None:
        """Row / column weight normalisation of every encoder after each step (seed 000, Thm. 3)."""
        if self.weight_norm != "none":
            for module in self.modules():
                if hasattr(module, "normalise_weights"):
                    module.normalise_weights(self.weight_norm)

    def training_step(self, batch: Block, batch_idx: int) -> None:
        optimizers = self.optimizers()
        self.block_optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        block = [batch] if isinstance(batch[0], Tensor) else batch
        self._batch_idx, self._block_size = batch_idx, len(block)
        self._epoch_losses.extend(self.update(i, *views) for i, views in enumerate(block))

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        if self.probe is None:
            return
        images, labels = batch
        self.online_accuracy.update(self.probe(self.encoder(images)), labels)
        self.log("readout/online_acc", self.online_accuracy, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        if epoch % self.log_every_n_epochs == 0 or epoch == self.trainer.max_epochs:
            self.log("train/loss", torch.stack(self._epoch_losses).mean(), sync_dist=True)
            self.log("train/lr", self.block_optimizers[0].param_groups[0]["lr"])
            self._epoch_losses.clear()
