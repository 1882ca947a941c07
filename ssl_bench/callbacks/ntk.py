"""The empirical NTK of the encoder's outputs: Lemma 1's "no interaction across output dimensions" measured
(Esser et al. 2023, Lemma 1, Remark 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.config import ConfigError, check_positive
from ssl_bench.ops.ntk import cross_output_ratio, diagonal_spread, kernel_drift, output_ntk
from ssl_bench.registry import register

JACOBIAN_LIMIT = 50_000_000  # entries of the n x k x P Jacobian the callback builds (400 MB in float64)


@register("callback", "ntk")
class OutputNTK(Callback):
    """Computes the empirical NTK ``Theta`` (k x k x n x n, :func:`~ssl_bench.ops.ntk.output_ntk`) of
    ``method.encoder`` on the data's first ``samples`` evaluation inputs, and logs

    - at the start, ``ntk/init_cross_ratio`` and ``ntk/init_diagonal_spread``: Lemma 1 says the blocks coupling two
      outputs vanish against each output's own block (:func:`~ssl_bench.ops.ntk.cross_output_ratio`) and the
      outputs' own kernels coincide (:func:`~ssl_bench.ops.ntk.diagonal_spread`): exactly for a linear model, in the
      infinite-width limit for a network (for ``V sigma(W x)`` with orthonormal rows of ``V``, the W-part of the
      cross block is ``(x . x') sum_l V_il V_jl sigma'(w_l x) sigma'(w_l x')``, a sum of L random terms of size 1/L,
      so the ratio falls like ``L^(-1/2)``);
    - every ``every_n_epochs`` epochs (null: ``trainer.metrics_every_n_epochs``) and at the last, the same two as
      ``ntk/cross_ratio`` and ``ntk/diagonal_spread``, and ``ntk/drift``, the kernel's relative distance from its
      initialisation (:func:`~ssl_bench.ops.ntk.kernel_drift`).

    The Jacobian has ``samples x k x P`` entries for P trainable parameters: meant for the small networks of the
    theory studies (a two-layer network of width 1000 on 200 points: 1.6 M); larger ones are refused."""

    @dataclass
    class Config(CadenceConfig):
        samples: int = 200

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_positive(f"{prefix}.samples", self.samples)

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.initial: Tensor | None = None

    def check(self, data: Any, method: Any, optim: Any) -> None:
        parameters = sum(p.numel() for p in method.encoder.parameters() if p.requires_grad)
        outputs = method.encoder.output_dim
        if self.config.samples * outputs * parameters > JACOBIAN_LIMIT:
            raise ConfigError(
                f"callbacks.ntk needs a {self.config.samples} x {outputs} x {parameters} Jacobian (samples x outputs "
                f"x trainable parameters), more than {JACOBIAN_LIMIT:,} entries: lower callbacks.ntk.samples or use it "
                "with a smaller encoder")

    def kernel(self, trainer: Any, module: Any) -> Tensor:
        inputs = trainer.datamodule.evaluation_inputs(self.config.samples).to(module.device)
        return output_ntk(module.method.encoder, inputs)

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if self.initial is not None:
            self.initial = self.initial.to(module.device)
            return
        self.initial = self.kernel(trainer, module)
        module.log("ntk/init_cross_ratio", cross_output_ratio(self.initial), rank_zero_only=True)
        module.log("ntk/init_diagonal_spread", diagonal_spread(self.initial), rank_zero_only=True)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer) or self.initial is None:
            return
        ntk = self.kernel(trainer, module)
        module.log("ntk/cross_ratio", cross_output_ratio(ntk), rank_zero_only=True)
        module.log("ntk/diagonal_spread", diagonal_spread(ntk), rank_zero_only=True)
        module.log("ntk/drift", kernel_drift(ntk, self.initial), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.initial is None else {"initial": self.initial.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = state.get("initial")
