"""Collapse diagnostics for any Lightning model: ``L.Trainer(callbacks=[CollapseDiagnostics(loader)])``.

Needs nothing of ssl-bench's training side: a ``LightningModule``, a ``DataLoader`` of ``x`` or ``(x, y)`` batches,
and, optionally, how to embed a batch and how to augment one. See docs/diagnostics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from ssl_bench.metrics import knn_accuracy, label_free_diagnostics
from ssl_bench.ops.frozen import frozen

Embedding = Tensor | dict[str, Tensor]


def default_embed(module: L.LightningModule, x: Tensor) -> Embedding:
    """``module(x)``."""
    return module(x)


class CollapseDiagnostics(L.Callback):
    """Logs label-free collapse diagnostics (:func:`ssl_bench.metrics.label_free_diagnostics`: RankMe, alpha-ReQ,
    stable rank, NESum, effective rank, std, uniformity, Wasserstein uniformity; with ``augment``, LiDAR and
    alignment) and, for labelled batches, kNN accuracy, every ``every_n_epochs`` training epochs and at the end of
    training, through ``pl_module.log`` (every logger of the trainer: W&B, CSV, TensorBoard).

    ``loader`` yields ``x`` or ``(x, y, ...)`` batches (at most ``max_samples`` samples are used); ``embed(module,
    x)`` returns the embedding (N x d, flattened if it has more dimensions) or a dict of named embeddings (e.g.
    ``{"backbone": h, "projector": z}``), default ``module(x)``. Keys: ``{prefix}/NAME`` for a tensor,
    ``{prefix}/NAME_KEY`` for each entry of a dict. ``augment(x)`` draws one random view of a batch; with it, each
    of the first ``view_samples`` samples gets ``views`` views for ``{prefix}/lidar`` and ``{prefix}/alignment``.
    With labels, ``{knn_prefix}/knn_acc``: the weighted kNN vote of Wu et al. 2018 (``k``, ``temperature``) of the
    odd-indexed samples against the even-indexed ones, or of every sample against ``knn_bank`` (a loader of
    ``(x, y)``) when given. Embedding runs in eval mode without gradients; the module's modes are restored. For
    W&B loggers, also a line plot of the log singular values of each embedding.
    """

    def __init__(self, loader: Iterable[Any], embed: Callable[[L.LightningModule, Tensor], Embedding] = default_embed,
                 every_n_epochs: int = 1, augment: Callable[[Tensor], Tensor] | None = None, views: int = 4,
                 view_samples: int = 1024, knn_bank: Iterable[Any] | None = None, k: int = 200,
                 temperature: float = 0.1, max_samples: int = 4096, prefix: str = "collapse",
                 knn_prefix: str = "readout") -> None:
        if every_n_epochs < 1 or views < 2 or view_samples < 2 or max_samples < 2 or k < 1 or temperature <= 0:
            raise ValueError("CollapseDiagnostics needs every_n_epochs >= 1, views >= 2, view_samples >= 2, "
                             f"max_samples >= 2, k >= 1 and temperature > 0; got every_n_epochs={every_n_epochs}, "
                             f"views={views}, view_samples={view_samples}, max_samples={max_samples}, k={k}, "
                             f"temperature={temperature}")
        self.loader, self.embed, self.every_n_epochs = loader, embed, every_n_epochs
        self.augment, self.views, self.view_samples = augment, views, view_samples
        self.knn_bank, self.k, self.temperature = knn_bank, k, temperature
        self.max_samples, self.prefix, self.knn_prefix = max_samples, prefix, knn_prefix

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        for name, value in self.evaluate(pl_module, trainer).items():
            pl_module.log(name, value, on_step=False, on_epoch=True, rank_zero_only=True)

    def evaluate(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> dict[str, float]:
        """The diagnostics of ``pl_module`` now, by their logged names (W&B plots go to ``trainer``'s loggers)."""
        x, y = _take(self.loader, self.max_samples)
        embeddings = self._embed(pl_module, x)
        views = None
        if self.augment is not None:
            anchors = x[: self.view_samples]
            drawn = [self._embed(pl_module, self.augment(anchors)) for _ in range(self.views)]
            views = {key: torch.stack([view[key] for view in drawn], dim=1) for key in embeddings}
        metrics: dict[str, float] = {}
        for key, z in embeddings.items():
            suffix = f"_{key}" if key else ""
            for name, value in label_free_diagnostics(z, None if views is None else views[key]).items():
                metrics[f"{self.prefix}/{name}{suffix}"] = value
            if y is not None:
                metrics[f"{self.knn_prefix}/knn_acc{suffix}"] = self._knn(pl_module, key, z, y)
        if trainer is not None:
            self._plot(trainer, embeddings)
        return metrics

    def _embed(self, pl_module: L.LightningModule, x: Tensor) -> dict[str, Tensor]:
        """The named embeddings of ``x`` (key "" for a plain tensor), flattened to N x d, on the module's device."""
        with frozen(pl_module):
            outputs = [self.embed(pl_module, batch.to(pl_module.device)) for batch in x.split(512)]
        keys = list(outputs[0]) if isinstance(outputs[0], dict) else [""]
        return {key: torch.cat([(out[key] if key else out).flatten(1) for out in outputs]) for key in keys}

    def _knn(self, pl_module: L.LightningModule, key: str, z: Tensor, y: Tensor) -> float:
        if not bool(torch.isfinite(z).all()):
            return math.nan
        if self.knn_bank is None:
            return knn_accuracy(z[0::2], y[0::2], z[1::2], y[1::2], self.k, self.temperature)
        bank_x, bank_y = _take(self.knn_bank, None)
        if bank_y is None:
            raise ValueError("CollapseDiagnostics: knn_bank must yield (x, y) batches")
        return knn_accuracy(self._embed(pl_module, bank_x)[key], bank_y, z, y, self.k, self.temperature)

    @staticmethod
    def _plot(trainer: L.Trainer, embeddings: dict[str, Tensor]) -> None:
        """Log singular values against their rank, one line per embedding, on every W&B logger."""
        runs = [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not runs or not all(bool(torch.isfinite(z).all()) for z in embeddings.values()):
            return
        import wandb

        spectra = {key or "embedding": torch.linalg.svdvals(z.double()) for key, z in embeddings.items()}
        spectra = {key: s[s > 0].log().tolist() for key, s in spectra.items()}
        plot = wandb.plot.line_series(xs=[list(range(1, len(s) + 1)) for s in spectra.values()],
                                      ys=list(spectra.values()), keys=list(spectra), xname="rank",
                                      title=f"Log singular values, epoch {trainer.current_epoch + 1}")
        for run in runs:
            run.log({"collapse/log_singular_values": plot, "trainer/global_step": trainer.global_step})


def _take(loader: Iterable[Any], limit: int | None) -> tuple[Tensor, Tensor | None]:
    """The inputs and labels (None for unlabelled batches: ``x`` or ``[x]``) of ``loader``'s first ``limit`` samples,
    concatenated."""
    xs, ys, taken = [], [], 0
    for batch in loader:
        items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        x, y = items[0], items[1] if len(items) > 1 else None
        keep = len(x) if limit is None else min(len(x), limit - taken)
        xs.append(x[:keep])
        if y is not None:
            ys.append(torch.as_tensor(y)[:keep])
        taken += keep
        if limit is not None and taken >= limit:
            break
    if not xs:
        raise ValueError("CollapseDiagnostics: the evaluation loader yielded no batches")
    return torch.cat(xs), torch.cat(ys) if len(ys) == len(xs) else None
