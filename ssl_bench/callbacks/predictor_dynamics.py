"""The dynamics of a linear prediction head W (m x m): off-diagonal, distance to the identity, eigenvalues and
asymmetry (Wen & Li 2022; Bao 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ssl_bench.callbacks.base import Callback
from ssl_bench.config import CallbackConfig, check_positive
from ssl_bench.jsonl import append_records, json_value
from ssl_bench.registry import register
from ssl_bench.views import Step

ENTRIES_UP_TO = 4
"""Heads of at most this width log (and record) every entry of W."""


def predictor_metrics(weights: Tensor) -> dict[str, Tensor]:
    """For a stack of heads ``W`` (T x m x m), in float64 on the CPU, each entry of the result (T) or (T x m):

    ``norm`` ``||W||_F``; ``offdiag_norm`` ``||W - diag(W)||_F``; ``identity_distance`` ``||W - I||_F``;
    ``asymmetry`` ``||W - W^T||_F / ||W||_F`` (NaN for W = 0); ``eigenvalues`` the moduli ``|lambda_k|`` of the
    (possibly complex) eigenvalues of W, sorted in decreasing order (Bao 2023's "absolute values, sorted"; for a
    symmetric W the absolute eigenvalues). Non-finite heads give NaN eigenvalues.
    """
    w = weights.detach().double().cpu()
    eye = torch.eye(w.shape[-1], dtype=w.dtype)
    norm = torch.linalg.matrix_norm(w)
    eigenvalues = torch.full(w.shape[:-1], math.nan, dtype=w.dtype)
    finite = torch.isfinite(w).flatten(start_dim=1).all(dim=1)
    if finite.any():
        eigenvalues[finite] = torch.linalg.eigvals(w[finite]).abs().sort(dim=-1, descending=True).values
    return {"norm": norm, "offdiag_norm": torch.linalg.matrix_norm(w * (1 - eye)),
            "identity_distance": torch.linalg.matrix_norm(w - eye),
            "asymmetry": torch.linalg.matrix_norm(w - w.transpose(-1, -2)) / norm, "eigenvalues": eigenvalues}


def scalars(weight: Tensor, metrics: dict[str, Tensor]) -> dict[str, float]:
    """The logged scalars of one head ``weight`` (m x m) with its :func:`predictor_metrics` (one row of each):
    ``predictor/{norm,offdiag_norm,identity_distance,asymmetry}``, ``predictor/eigenvalue{k}`` (k from 1, largest
    first) and, for m <= :data:`ENTRIES_UP_TO`, ``predictor/offdiag_{i}{j}`` (``W_ij``, i != j, from 1)."""
    values = {f"predictor/{key}": float(metrics[key]) for key in ("norm", "offdiag_norm", "identity_distance",
                                                                  "asymmetry")}
    values.update({f"predictor/eigenvalue{k}": value
                   for k, value in enumerate(metrics["eigenvalues"].tolist(), start=1)})
    m = len(weight)
    if m <= ENTRIES_UP_TO:
        values.update({f"predictor/offdiag_{i + 1}{j + 1}": float(weight[i, j])
                       for i in range(m) for j in range(m) if i != j})
    return values


def linear_head(method: Any) -> Tensor | None:
    """``method.predictor.weight`` when it is a square matrix (a linear head; its bias, if any, is not part of the
    dynamics), else None (no predictor, ``nn.Identity``, an MLP)."""
    weight = getattr(getattr(method, "predictor", None), "weight", None)
    if isinstance(weight, Tensor) and weight.ndim == 2 and weight.shape[0] == weight.shape[1]:
        return weight
    return None


@register("callback", "predictor_dynamics")
class PredictorDynamics(Callback):
    """Logs the linear prediction head ``W = module.method.predictor.weight`` (m x m, the effective matrix, e.g. with
    a frozen diagonal) every ``every_n_epochs`` epochs (null: the run's ``trainer.metrics_every_n_epochs``) and at
    the last one: the scalars of :func:`scalars` (:func:`predictor_metrics`: off-diagonal entries for m <= 4 and the
    off-diagonal norm, ``||W||_F``, ``||W - I||_F``, the eigenvalues' moduli, ``||W - W^T||_F / ||W||_F``).

    With ``every_n_steps``, W is also read after every ``every_n_steps``-th optimizer step (the off-diagonal of
    Wen & Li's head rises and falls within training) and these steps' scalars go to every W&B logger at the
    training step they belong to. Every reading, per step or per epoch, is appended as
    ``{"epoch", "step", "norm", "offdiag_norm", "identity_distance", "asymmetry", "eigenvalues"}`` (plus ``weight``,
    the whole W, for m <= 4) to ``predictor.jsonl`` in the trainer's ``default_root_dir``; ``epoch`` counts from 1
    and ``step`` is the number of optimizer steps taken. A method without a linear head (``predictor=none``, an MLP,
    no predictor) gets one warning and nothing is logged.
    """

    @dataclass
    class Config(CallbackConfig):
        every_n_steps: Optional[int] = None
        every_n_epochs: Optional[int] = None

        def validate(self, prefix: str) -> None:
            for key in ("every_n_steps", "every_n_epochs"):
                if getattr(self, key) is not None:
                    check_positive(f"{prefix}.{key}", getattr(self, key))

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.pending: list[tuple[int, int, Tensor]] = []
        self.linear = False

    @classmethod
    def from_config(cls, config: Config, every_n_epochs: int) -> PredictorDynamics:
        return cls(config, config.every_n_epochs or every_n_epochs)

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self.linear = linear_head(module.method) is not None
        if not self.linear:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"callbacks.predictor_dynamics: method.name={module.method.config.name} has no linear "
                           "predictor (module.method.predictor.weight, m x m); it logs nothing")

    def on_optimizer_step(self, trainer: Any, module: Any, step: Step) -> None:
        every = self.config.every_n_steps
        if self.linear and every and (step.index + 1) % every == 0 and trainer.is_global_zero:
            self.pending.append((step.epoch + 1, step.index + 1, linear_head(module.method).detach().clone()))

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.linear:
            return
        steps, self.pending = self.pending, []
        readings = list(steps)
        if self.due(trainer):
            weight = linear_head(module.method).detach()
            for key, value in scalars(weight.cpu(), {k: v[0] for k, v in predictor_metrics(weight[None]).items()}
                                      ).items():
                module.log(key, value, rank_zero_only=True)
            if not steps or steps[-1][1] != trainer.global_step:
                readings.append((trainer.current_epoch + 1, trainer.global_step, weight.clone()))
        if readings and trainer.is_global_zero:
            self._record(trainer, readings, len(steps))

    def _record(self, trainer: Any, readings: list[tuple[int, int, Tensor]], logged_steps: int) -> None:
        """Every reading to ``predictor.jsonl``; the first ``logged_steps`` (the per-step ones) to W&B."""
        weights = torch.stack([weight for _, _, weight in readings]).double().cpu()
        metrics = predictor_metrics(weights)
        wandb_runs = self.wandb_runs(trainer)
        records = []
        for t, (epoch, step, _) in enumerate(readings):
            row = {key: value[t] for key, value in metrics.items()}
            if t < logged_steps:
                for run in wandb_runs:
                    run.log({**scalars(weights[t], row), "trainer/global_step": step})
            record: dict[str, Any] = {"epoch": epoch, "step": step}
            record.update({key: json_value(float(value)) for key, value in row.items() if key != "eigenvalues"})
            record["eigenvalues"] = [json_value(value) for value in row["eigenvalues"].tolist()]
            if len(weights[t]) <= ENTRIES_UP_TO:
                record["weight"] = [[json_value(value) for value in line] for line in weights[t].tolist()]
            records.append(record)
        append_records(trainer.default_root_dir, "predictor.jsonl", records)
