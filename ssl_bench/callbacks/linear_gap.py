"""How far a non-linear two-layer network is from its linear twin (Esser et al. 2023, Theorem 1 and Conjecture 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssl_bench.batch import StepInfo
from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.config import ConfigError
from ssl_bench.ops.losses import trace_loss
from ssl_bench.ops.trace_dynamics import check_gradient_descent, gradient_step
from ssl_bench.registry import register


def output_gap(nonlinear: Tensor, linear: Tensor) -> tuple[float, float]:
    """``(rms, relative)`` for the outputs ``F_sigma`` and ``F_lin`` (n x k, one row per data point):

        rms      = ||F_sigma - F_lin||_F / sqrt(n)   (the root-mean-square of |f_sigma(x_i) - f_lin(x_i)|)
        relative = ||F_sigma - F_lin||_F / ||F_lin||_F

    ``rms`` is Fig. 2's quantity: Theorem 1 bounds the absolute difference ``|f_sigma(x) - f_lin(x)|`` of
    ``f_sigma(x) = V sigma(W x)`` and ``f_lin(x) = V W x`` at a uniformly random semi-orthogonal initialisation by a
    universal constant times a term in the input dimension d and the width L that vanishes as L grows, for
    ``sigma(0) = 0``, ``sigma'(0) = 1`` and ``sigma''`` continuous at 0 (tanh). ``relative`` divides by the outputs,
    which shrink with the width too (``||V W x||`` is about ``sqrt(k / L) ||x||``), and for ReLU,
    ``ReLU(u) - u = -ReLU(-u)`` is as large as ``u`` itself (``||ReLU(-u)|| ~ ||u|| / sqrt(2)`` for symmetric ``u``),
    so ReLU's relative gap stays of order one at any width while its absolute gap falls."""
    difference = (nonlinear - linear).double().norm()
    return (difference / len(linear) ** 0.5).item(), (difference / linear.double().norm()).item()


@register("callback", "linear_gap")
class LinearGap(Callback):
    """Trains the linear twin ``f_lin(x) = V W x`` of the encoder ``f_sigma(x) = V sigma(W x)``
    (:meth:`~ssl_bench.nets.two_layer.TwoLayer.linear_twin`: the same initial weights and constraint) beside it, by
    the same gradient descent on the same loss ``tr(F C F^T)`` of the whole set (Eq. 8, the data's
    ``trace_matrix``), one step after each of the run's optimizer steps with its learning rate.

    Logs ``linear_gap/init_rms`` and ``linear_gap/init_relative`` once (Theorem 1: at a random semi-orthogonal
    initialisation the absolute gap ``init_rms`` vanishes as the width grows for an activation with ``sigma(0) = 0``
    and ``sigma'(0) = 1``, e.g. tanh), then every ``every_n_epochs`` epochs (null: ``trainer.metrics_every_n_epochs``)
    and at the last ``linear_gap/rms`` (Fig. 2's quantity) and ``linear_gap/relative`` (:func:`output_gap` on the
    whole set) and the twin's ``linear_gap/linear_loss`` (Conjecture 1: the gap stays small during training).
    """

    @dataclass
    class Config(CadenceConfig):
        needs = ("pairs",)

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.twin_state: dict[str, Tensor] | None = None

    def check(self, data: Any, method: Any, optim: Any) -> None:
        check_gradient_descent(data, method, optim, "callbacks.linear_gap")
        if not hasattr(method.encoder, "linear_twin"):
            raise ConfigError("callbacks.linear_gap compares V sigma(W x) with V W x: it needs encoder.name=two_layer")

    def on_train_start(self, trainer: Any, module: Any) -> None:
        data = trainer.datamodule
        self.c, self.inputs = data.trace_matrix(module.method.config.loss), data.inputs
        self.twin = module.method.encoder.linear_twin()
        if self.twin_state is None:
            rms, relative = output_gap(self.nonlinear_outputs(module), self.linear_outputs())
            module.log("linear_gap/init_rms", rms, rank_zero_only=True)
            module.log("linear_gap/init_relative", relative, rank_zero_only=True)
        else:
            self.twin.load_state_dict(self.twin_state)

    @torch.no_grad()
    def nonlinear_outputs(self, module: Any) -> Tensor:
        return module.method.encoder(self.inputs)

    @torch.no_grad()
    def linear_outputs(self) -> Tensor:
        return self.twin(self.inputs)

    def on_optimizer_step(self, trainer: Any, module: Any, step: StepInfo) -> None:
        """One gradient step of the twin on ``tr(F C F^T)`` with the step's learning rate, then its projection."""
        gradient_step(self.twin, self.inputs, self.c, step.lr)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        linear = self.linear_outputs()
        rms, relative = output_gap(self.nonlinear_outputs(module), linear)
        module.log("linear_gap/rms", rms, rank_zero_only=True)
        module.log("linear_gap/relative", relative, rank_zero_only=True)
        module.log("linear_gap/linear_loss", trace_loss(linear.T, self.c).item(), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"twin": {key: value.cpu() for key, value in self.twin.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.twin_state = state.get("twin")
