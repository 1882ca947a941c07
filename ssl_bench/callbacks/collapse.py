"""Label-free collapse diagnostics (RankMe, alpha-ReQ, LiDAR, stable rank, NESum, uniformity, alignment) and kNN
accuracy of the backbone and projector embeddings, on a fixed evaluation set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.callbacks.spectrum import KINDS, frozen_representations, labelled_representations
from ssl_bench.config import check_non_negative, check_positive
from ssl_bench.errors import ConfigError
from ssl_bench.metrics import knn_accuracy, label_free_diagnostics
from ssl_bench.registry import register


@register("callback", "collapse")
class LabelFreeDiagnostics(Callback):
    """Logs :func:`ssl_bench.metrics.label_free_diagnostics` of the projector embeddings as ``collapse/NAME`` and
    of the backbone as ``collapse/NAME_backbone`` (``rankme``, ``alpha_req``, ``alpha_req_r2``, ``stable_rank``,
    ``nesum``, ``effective_rank``, ``std``, ``uniformity``, ``wasserstein_uniformity``), on the first ``samples`` of
    ``trainer.datamodule.evaluation_inputs``, every ``every_n_epochs`` epochs and at the end.

    With ``views`` > 0 and a datamodule that draws views (``evaluation_views``: its own augmentation, batched on
    the device; the same views at every evaluation), also ``collapse/lidar`` (q = ``views`` views of each of the
    first ``view_samples`` inputs) and ``collapse/alignment`` (views 0 and 1). On data with labels
    (``readout_dataloaders``), ``readout/knn_acc`` and ``readout/knn_acc_backbone``: the weighted kNN vote
    (:func:`ssl_bench.metrics.knn_accuracy`, ``knn_k`` neighbours, ``knn_temperature``) of the test split against at
    most ``knn_samples`` train samples. Reads ``module.method.representations`` and the datamodule; nothing else.
    """

    @dataclass
    class Config(CadenceConfig):
        samples: int = 2048
        views: int = 4
        view_samples: int = 1024
        batch_size: int = 512
        knn_k: int = 200
        knn_temperature: float = 0.1
        knn_samples: int = 10000

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            for key in ("samples", "view_samples", "batch_size", "knn_k", "knn_temperature", "knn_samples"):
                check_positive(f"{prefix}.{key}", getattr(self, key))
            check_non_negative(f"{prefix}.views", self.views)
            if self.views == 1:
                raise ConfigError(f"{prefix}.views=1: LiDAR needs at least 2 views of each sample; set {prefix}.views "
                                  "to 0 (no LiDAR) or at least 2")

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self._inputs: Tensor | None = None
        self._views: Tensor | None = None

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        data, c = trainer.datamodule, self.config
        if self._inputs is None:
            self._inputs = data.evaluation_inputs(c.samples)
            self._views = data.evaluation_views(c.view_samples, c.views) if c.views else None
        embeddings = self._embed(module, self._inputs)
        views = None
        if self._views is not None:
            n, q = self._views.shape[:2]
            views = {kind: z.view(n, q, -1) for kind, z in self._embed(module, self._views.flatten(0, 1)).items()}
        for kind in KINDS:
            suffix = "" if kind == "projector" else f"_{kind}"
            metrics = label_free_diagnostics(embeddings[kind], None if views is None else views[kind])
            for name, value in metrics.items():
                module.log(f"collapse/{name}{suffix}", value, rank_zero_only=True)
        loaders = data.readout_dataloaders(c.batch_size)
        if loaders is not None:
            for kind, accuracy in self._knn(module, loaders).items():
                module.log(f"readout/knn_acc{'' if kind == 'projector' else '_' + kind}", accuracy,
                           rank_zero_only=True)

    def _embed(self, module: Any, inputs: Tensor) -> dict[str, Tensor]:
        return frozen_representations(module.method, inputs.split(self.config.batch_size), module.device)

    def _knn(self, module: Any, loaders: tuple[Any, Any]) -> dict[str, float]:
        """kNN accuracy of the test split against the first ``knn_samples`` train samples, per kind."""
        c = self.config
        (train, train_labels), (test, test_labels) = (
            labelled_representations(module.method, loader, module.device, limit)
            for loader, limit in zip(loaders, (c.knn_samples, None)))
        return {kind: knn_accuracy(train[kind], train_labels, test[kind], test_labels, c.knn_k, c.knn_temperature)
                if bool(torch.isfinite(train[kind]).all() and torch.isfinite(test[kind]).all()) else float("nan")
                for kind in KINDS}
