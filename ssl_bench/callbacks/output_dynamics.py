"""The network's outputs on the whole data set beside the closed-form dynamics of Esser et al. 2023 (Eqs. 9, 12)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssl_bench.batch import StepInfo
from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.ops.losses import trace_loss
from ssl_bench.ops.metrics import effective_rank
from ssl_bench.ops.trace_dynamics import (
    bottom_eigenspace_share,
    check_gradient_descent,
    euler_step,
    projected_trace_matrix,
)
from ssl_bench.registry import register
from ssl_bench.rundir import append_records, json_value


def svm_accuracy(embeddings: Tensor, labels: Tensor, train: int) -> float:
    """Test accuracy of a linear SVM (scikit-learn's ``LinearSVC``, standardised inputs) fitted on the first
    ``train`` rows of ``embeddings`` (n x k) and scored on the rest."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x, y = embeddings.detach().double().cpu().numpy(), labels.cpu().numpy()
    classifier = make_pipeline(StandardScaler(), LinearSVC(dual="auto", max_iter=10_000))
    return float(classifier.fit(x[:train], y[:train]).score(x[train:], y[train:]))


@register("callback", "output_dynamics")
class OutputDynamics(Callback):
    """Follows the outputs ``F`` (k x 2n) of the data module's whole set of anchors and positives.

    Every ``every_n_epochs`` epochs (null: the run's ``trainer.metrics_every_n_epochs``) and at the last it logs
    ``dynamics/loss`` (``tr(F C F^T)``, Eq. 8, with the data's ``trace_matrix`` C), ``dynamics/output_norm``
    (``||F||_F``), ``dynamics/effective_rank`` (of F's singular values: 1 is dimension collapse, Prop. 1) and
    ``dynamics/bottom_share`` (the share of ``||F||_F^2`` in the eigenvectors of the k smallest eigenvalues of
    ``C~ = P C P``: Theorem 3 and Prop. 3's optimum).

    With ``ode`` (the default) the dynamics of Eq. (9) run beside training from the network's initial outputs: one
    Euler step (Eq. 12) with the optimizer's learning rate after every optimizer step, so that gradient descent
    (Eq. 11) and the dynamics advance together. It then also logs ``dynamics/ode_loss``, ``dynamics/ode_gap``
    (``||F - F_ode||_F / ||F||_F``), ``dynamics/ode_effective_rank`` and ``dynamics/ode_ms_per_step``. At the end of
    training it logs the linear-SVM test accuracy of the anchors' embeddings (the data's readout split),
    ``dynamics/svm_acc``, and with ``ode`` that of the dynamics' outputs, ``dynamics/ode_svm_acc``. The comparison
    needs gradient descent on the whole set
    (:func:`~ssl_bench.ops.trace_dynamics.check_gradient_descent`); Theorem 2 holds for ``encoder.activation=linear``
    with ``encoder.constraint=orthogonal`` and whitened data. Every evaluation is also a line of ``dynamics.jsonl``.
    """

    @dataclass
    class Config(CadenceConfig):
        ode: bool = True
        needs = ("pairs",)

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.ode_outputs: Tensor | None = None
        self.ode_seconds, self.ode_steps = 0.0, 0

    def check(self, data: Any, method: Any, optim: Any) -> None:
        if self.config.ode:
            check_gradient_descent(data, method, optim, "callbacks.output_dynamics.ode=true")

    def on_train_start(self, trainer: Any, module: Any) -> None:
        data = trainer.datamodule
        self.c = data.trace_matrix(module.method.config.loss)
        self.projected = projected_trace_matrix(self.c, data.inputs)
        self.eigenvectors = torch.linalg.eigh(self.projected).eigenvectors
        if self.config.ode and self.ode_outputs is None:
            self.ode_outputs = self.outputs(trainer, module)
        if self.ode_outputs is not None:
            self.ode_outputs = self.ode_outputs.to(self.c.device)

    @staticmethod
    @torch.no_grad()
    def outputs(trainer: Any, module: Any) -> Tensor:
        """``F = f(inputs)^T`` (k x 2n, float64) of the data's whole matrix of anchors and positives."""
        return module.method.encoder(trainer.datamodule.inputs).double().T

    def on_optimizer_step(self, trainer: Any, module: Any, step: StepInfo) -> None:
        if self.ode_outputs is None:
            return
        start = time.perf_counter()
        self.ode_outputs = euler_step(self.ode_outputs, self.projected, step.lr)
        self.ode_seconds += time.perf_counter() - start
        self.ode_steps += 1

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        f = self.outputs(trainer, module)
        scalars = {"dynamics/loss": trace_loss(f, self.c).item(), "dynamics/output_norm": f.norm().item(),
                   "dynamics/effective_rank": effective_rank(torch.linalg.svdvals(f)),
                   "dynamics/bottom_share": bottom_eigenspace_share(f, self.eigenvectors)}
        if self.ode_outputs is not None:
            ode = self.ode_outputs
            scalars.update({"dynamics/ode_loss": trace_loss(ode, self.c).item(),
                            "dynamics/ode_gap": ((f - ode).norm() / f.norm()).item(),
                            "dynamics/ode_effective_rank": effective_rank(torch.linalg.svdvals(ode)),
                            "dynamics/ode_ms_per_step": 1e3 * self.ode_seconds / max(1, self.ode_steps)})
        for key, value in scalars.items():
            module.log(key, value, rank_zero_only=True)
        if trainer.is_global_zero:
            record = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                      **{key.removeprefix("dynamics/"): json_value(value) for key, value in scalars.items()}}
            append_records(trainer.default_root_dir, "dynamics.jsonl", [record])

    def on_train_end(self, trainer: Any, module: Any) -> None:
        """The linear-SVM readout of the anchors' embeddings under gradient descent and under the dynamics, straight
        to the loggers (``module.log`` is closed after the last epoch)."""
        if not trainer.is_global_zero:
            return
        data = trainer.datamodule
        train = data.readout_train_size
        metrics = {"dynamics/svm_acc": svm_accuracy(self.outputs(trainer, module)[:, :data.n].T, data.labels, train)}
        if self.ode_outputs is not None:
            metrics["dynamics/ode_svm_acc"] = svm_accuracy(self.ode_outputs[:, :data.n].T, data.labels, train)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"ode_outputs": None if self.ode_outputs is None else self.ode_outputs.cpu(),
                "ode_seconds": self.ode_seconds, "ode_steps": self.ode_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ode_outputs = state.get("ode_outputs")
        self.ode_seconds, self.ode_steps = state.get("ode_seconds", 0.0), state.get("ode_steps", 0)
