"""The dynamics of a linear prediction head W (m x m): off-diagonal, distance to the identity, eigenvalues and
asymmetry (Wen & Li 2022; Bao 2023), and Bao's norms, commutator, eigenvalue regimes and invariant parabola."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ssl_bench.batch import StepInfo
from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.callbacks.spectrum import frozen_representations
from ssl_bench.config import ConfigError, check_positive
from ssl_bench.ops import eigen_dynamics
from ssl_bench.registry import register
from ssl_bench.rundir import append_records, json_value

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


REGIME_CODES = {"collapse": 0.0, "acute": 1.0, "stable": 2.0}
"""``predictor/regime``: the regime of the eigenvalue dynamics as a number."""


def representation_norms(psi: Tensor, covariance: Tensor) -> dict[str, float]:
    """Bao 2023's norms of a head ``Psi`` (h x h) given ``Sigma = E[z z^T]`` (h x h) of its inputs, which is
    ``Phi Phi^T`` for a linear ``Phi`` and ``x ~ N(0, I)``: ``n_phi = sqrt(tr Sigma)`` (``N_Phi = ||Phi||_F``),
    ``n_psi = sqrt(tr(Psi Sigma Psi^T))`` (``N_Psi = ||Psi Phi||_F``), ``n_t = tr(Psi Sigma)`` (``N_T``) and
    ``commutator = ||Psi Sigma - Sigma Psi||_F / (||Psi||_F ||Sigma||_F)`` (0 when they commute, Assump. 5)."""
    psi, sigma = psi.detach().double().cpu(), covariance.detach().double().cpu()
    commutator = torch.linalg.matrix_norm(psi @ sigma - sigma @ psi) / (
        torch.linalg.matrix_norm(psi) * torch.linalg.matrix_norm(sigma))
    return {"n_phi": torch.trace(sigma).sqrt().item(), "n_psi": torch.trace(psi @ sigma @ psi.T).sqrt().item(),
            "n_t": torch.trace(psi @ sigma).item(), "commutator": commutator.item()}


def signed_eigenvalues(psi: Tensor) -> Tensor:
    """The eigenvalues ``p_j`` of the symmetric part ``(Psi + Psi^T) / 2`` (float64), largest modulus first."""
    psi = psi.detach().double().cpu()
    values = torch.linalg.eigvalsh((psi + psi.T) / 2)
    return values[values.abs().argsort(descending=True)]


def parabola_gaps(psi: Tensor, gram: Tensor) -> Tensor:
    """Bao 2023's distances to the invariant parabola (Eq. 6), ``u_j^T (Phi Phi^T - Psi^T Psi) u_j`` for the
    eigenvectors ``u_j`` of ``(Psi + Psi^T) / 2`` (largest eigenvalue modulus first), given ``gram = Phi Phi^T``
    (float64). For a symmetric ``Psi`` commuting with ``Phi Phi^T`` they are ``s_j - p_j^2``. Under gradient flow on
    any loss of the product ``Psi Phi`` with weight decay ``rho``, ``d(Phi Phi^T - Psi^T Psi)/dt =
    -2 rho (Phi Phi^T - Psi^T Psi)``, so each decays as ``exp(-2 rho t)``; projecting ``Psi`` onto the symmetric
    matrices after each step leaves the diagonal in its eigenbasis decaying at the same rate."""
    psi, gram = psi.detach().double().cpu(), gram.detach().double().cpu()
    values, vectors = torch.linalg.eigh((psi + psi.T) / 2)
    vectors = vectors[:, values.abs().argsort(descending=True)]
    return torch.einsum("ij,ik,kj->j", vectors, gram - psi.T @ psi, vectors)


def converging_fraction(p: Tensor, spans: list[tuple[float, float, str]]) -> float:
    """The fraction of the eigenvalues' moduli ``|p_j|`` (Bao 2023's convention, App. D.1) inside an interval that
    converges to a non-zero root: above the unstable ``p_3`` of Eq. (7) in Acute (Fig. 5: the eigenvalues lie far
    above ``p_3``, so they do not collapse), above ``p_-`` of Eq. (8); 0 when there is none (Collapse)."""
    moduli, mask = p.abs(), torch.zeros_like(p, dtype=torch.bool)
    for low, high, kind in spans:
        if kind == "converge":
            mask |= (moduli > low) & (moduli < high)
    return mask.double().mean().item()


def eigenvalue_regime(loss: str, rho: float, c: float, norms: dict[str, float]
                      ) -> tuple[str, list[tuple[float, float, str]]]:
    """The regime and the intervals of ``p`` that diverge, collapse or converge (:mod:`ssl_bench.ops.eigen_dynamics`)
    of Eq. (7) (``loss=cosine``, with the current norms) or Eq. (8) (``loss=l2``)."""
    if loss == "l2":
        return eigen_dynamics.l2_regime(rho, c), eigen_dynamics.l2_intervals(rho, c)
    args = (rho, c, norms["n_phi"], norms["n_psi"], norms["n_t"])
    return eigen_dynamics.regime(*args), eigen_dynamics.intervals(*args)


def predicted_eigenvalues(loss: str, p: Tensor, rho: float, c: float, norms: dict[str, float], time: float,
                          steps: int = 200) -> Tensor:
    """The eigenvalues ``p`` advanced by ``time`` along Eq. (7) (norms held at ``norms``) or Eq. (8), by RK4."""
    if loss == "l2":
        def rate(y):
            return eigen_dynamics.l2_rate(y, rho, c)
    else:
        def rate(y):
            return eigen_dynamics.cosine_rate(y, rho, c, norms["n_phi"], norms["n_psi"], norms["n_t"])
    return torch.from_numpy(eigen_dynamics.integrate(rate, p.numpy(), time, steps)[-1])


def isotropic_view_c(data: Any) -> float | None:
    """Bao 2023's ``c = 1 + sigma^2`` for data whose views add isotropic Gaussian noise (its
    ``augmentation_covariance`` is ``sigma^2 I``, e.g. ``data=gaussian`` with noise on every coordinate); None for
    other data or noise on part of the coordinates."""
    covariance = getattr(data, "augmentation_covariance", None)
    if covariance is None:
        return None
    diagonal = torch.diagonal(covariance)
    if not torch.equal(covariance, torch.diag(diagonal)) or not bool((diagonal == diagonal[0]).all()):
        return None
    return 1.0 + float(diagonal[0])


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

    With ``norms`` (Bao 2023), each epoch-end reading also logs, from the covariance ``Sigma`` of the predictor's
    inputs on the first ``samples`` evaluation inputs (:func:`representation_norms`), ``predictor/n_phi``,
    ``predictor/n_psi``, ``predictor/n_t`` and ``predictor/commutator``. With ``regimes`` as well, the eigenvalue
    dynamics of ``method.loss`` (cosine: Eq. 7 with these norms; l2: Eq. 8), ``rho = optim.weight_decay`` and
    ``c = 1 + sigma^2`` (``augmentation_c``, null: :func:`isotropic_view_c` of the data) give ``predictor/regime``
    (0 collapse, 1 acute, 2 stable) and the intervals of ``p`` that diverge, collapse or converge; and the signed
    eigenvalues of the last reading, advanced along that ODE (its norms held) over the time elapsed since (the sum
    of the steps' ``lr / (1 - momentum)``, gradient flow's time), are compared with the trained ones:
    ``predictor/ode_error = ||p_ode - p|| / ||p||``; ``predictor/converging`` is the fraction of the eigenvalues that
    lie in an interval converging to a non-zero root (:func:`converging_fraction`, Fig. 5). These readings go to
    ``regimes.jsonl``, and to every W&B logger as the image ``predictor/regimes``: the eigenvalues' moduli over the
    readings on the intervals as background.

    With ``parabola`` (Bao 2023, Eq. 6; a linear, bias-free encoder ``Phi`` on ``x ~ N(0, I)``), each epoch-end
    reading also logs ``predictor/parabola_gap``, the norm of :func:`parabola_gaps` (``||s - p^2||`` in the common
    eigenbasis) with ``Phi Phi^T = Z^T Z`` exactly, ``Z`` the representations of the standard basis; and, from the
    second reading on, ``predictor/parabola_rate = ln(gap_1 / gap) / (t - t_1)``, its mean decay rate since the
    first reading over gradient-flow time, ``2 rho`` under Eq. 6.
    """

    @dataclass
    class Config(CadenceConfig):
        every_n_steps: Optional[int] = None
        norms: bool = False
        regimes: bool = False
        samples: int = 4096
        augmentation_c: Optional[float] = None
        parabola: bool = False

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            for key in ("every_n_steps", "augmentation_c"):
                if getattr(self, key) is not None:
                    check_positive(f"{prefix}.{key}", getattr(self, key))
            check_positive(f"{prefix}.samples", self.samples)
            if self.regimes and not self.norms:
                raise ConfigError(f"{prefix}.regimes=true needs {prefix}.norms=true (Eq. 7 reads the norms)")
            if self.parabola and not self.norms:
                raise ConfigError(f"{prefix}.parabola=true needs {prefix}.norms=true (Eq. 6 is read at their readings)")

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.pending: list[tuple[int, int, Tensor]] = []
        self.linear = False
        self.elapsed = self.clock = 0.0
        self.last: dict[str, Any] | None = None
        self.parabola_start: tuple[float, float] | None = None
        self.regime_history: list[dict[str, Any]] = []

    def view_c(self, data: Any) -> float | None:
        """``c = 1 + sigma^2`` of the regimes: ``augmentation_c``, else :func:`isotropic_view_c` of ``data``."""
        return self.config.augmentation_c or isotropic_view_c(data)

    def check(self, data: Any, method: Any, optim: Any) -> None:
        if not self.config.regimes:
            return
        loss = getattr(method.config, "loss", None)
        if loss not in ("cosine", "l2"):
            raise ConfigError(f"callbacks.predictor_dynamics.regimes=true follows Bao 2023's cosine or L2 "
                              f"dynamics: it needs method.loss=cosine or l2 (method.loss={loss})")
        if self.view_c(data) is None:
            raise ConfigError("callbacks.predictor_dynamics.regimes=true needs c = 1 + sigma^2 of isotropic "
                              "Gaussian views, which this data does not define: set "
                              "callbacks.predictor_dynamics.augmentation_c")

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self.linear = linear_head(module.method) is not None
        if not self.linear:
            warnings.warn(f"callbacks.predictor_dynamics: method.name={module.method.config.name} has no linear "
                          "predictor (module.method.predictor.weight, m x m); it logs nothing", stacklevel=2)
        if self.config.regimes or self.config.parabola:
            self.momentum = getattr(module.optim, "momentum", 0.0)
        if self.config.regimes:
            self.loss, self.c = module.method.config.loss, self.view_c(trainer.datamodule)
            self.rho = module.optim.weight_decay

    def on_optimizer_step(self, trainer: Any, module: Any, step: StepInfo) -> None:
        if self.config.regimes or self.config.parabola:
            self.elapsed += step.lr / (1.0 - self.momentum)
            self.clock += step.lr / (1.0 - self.momentum)
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
            if self.config.norms:
                self._norms(trainer, module, weight)
        if readings and trainer.is_global_zero:
            self._record(trainer, readings, len(steps))

    def _norms(self, trainer: Any, module: Any, weight: Tensor) -> None:
        """Bao 2023's norms, commutator, regime and ODE check at an epoch-end reading (see the class)."""
        inputs = trainer.datamodule.evaluation_inputs(self.config.samples)
        z = frozen_representations(module.method, inputs.split(1024), module.device)["projector"].double()
        norms = representation_norms(weight, z.T @ z / len(z))
        parabola = self._parabola(trainer, module, weight) if self.config.parabola else {}
        scalars_ = {f"predictor/{key}": value for key, value in {**norms, **parabola}.items()}
        record: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step, **norms, **parabola}
        if self.config.regimes:
            p = signed_eigenvalues(weight)
            regime, spans = eigenvalue_regime(self.loss, self.rho, self.c, norms)
            scalars_["predictor/regime"] = REGIME_CODES[regime]
            scalars_["predictor/converging"] = converging_fraction(p, spans)
            record.update(regime=regime, converging=scalars_["predictor/converging"],
                          intervals=[[json_value(a), json_value(b), kind] for a, b, kind in spans],
                          eigenvalues_signed=[json_value(v) for v in p.tolist()])
            if self.last is not None and self.elapsed > 0:
                predicted = predicted_eigenvalues(self.loss, self.last["p"], self.rho, self.c, self.last["norms"],
                                                  self.elapsed)
                predicted = predicted[predicted.abs().argsort(descending=True)]
                scalars_["predictor/ode_error"] = ((predicted - p).norm() / p.norm()).item()
                record.update(ode_time=self.elapsed, ode_eigenvalues=[json_value(v) for v in predicted.tolist()],
                              ode_error=json_value(scalars_["predictor/ode_error"]))
            self.last, self.elapsed = {"p": p, "norms": norms}, 0.0
        for key, value in scalars_.items():
            module.log(key, value, rank_zero_only=True)
        self.regime_history.append(record)
        if trainer.is_global_zero:
            append_records(trainer.default_root_dir, "regimes.jsonl", [record])
            if self.config.regimes:
                self._draw(trainer)

    def _parabola(self, trainer: Any, module: Any, weight: Tensor) -> dict[str, float]:
        """``parabola_gap`` and (after the first reading) ``parabola_rate`` of Eq. 6 (see the class)."""
        dim = trainer.datamodule.evaluation_inputs(1).shape[-1]
        z = frozen_representations(module.method, [torch.eye(dim)], module.device)["projector"].double()
        gap = parabola_gaps(weight, z.T @ z).norm().item()
        if self.parabola_start is None:
            self.parabola_start = (gap, self.clock)
            return {"parabola_gap": gap}
        start_gap, start_time = self.parabola_start
        if gap <= 0 or self.clock <= start_time:
            return {"parabola_gap": gap}
        return {"parabola_gap": gap, "parabola_rate": math.log(start_gap / gap) / (self.clock - start_time)}

    def _draw(self, trainer: Any) -> None:
        """The eigenvalues over the readings on their regime intervals, to every W&B logger."""
        wandb_runs = self.wandb_runs(trainer)
        if not wandb_runs:
            return
        import io

        import wandb
        from PIL import Image

        from ssl_bench.figures import draw_eigenvalue_regimes

        buffer = io.BytesIO()
        draw_eigenvalue_regimes(self.regime_history, buffer, title=f"Bao 2023, {self.loss} loss")
        image = wandb.Image(Image.open(buffer), caption="|p_j| of the predictor over training; background: where an "
                                                         "eigenvalue diverges, collapses or converges")
        for run in wandb_runs:
            run.log({"predictor/regimes": image, "trainer/global_step": trainer.global_step})

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

    def state_dict(self) -> dict[str, Any]:
        last = None if self.last is None else {"p": self.last["p"].tolist(), "norms": self.last["norms"]}
        return {"elapsed": self.elapsed, "clock": self.clock, "parabola_start": self.parabola_start, "last": last,
                "regime_history": self.regime_history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed, self.regime_history = state.get("elapsed", 0.0), list(state.get("regime_history", []))
        self.clock = state.get("clock", 0.0)
        start = state.get("parabola_start")
        self.parabola_start = None if start is None else (float(start[0]), float(start[1]))
        last = state.get("last")
        self.last = None if last is None else {"p": torch.tensor(last["p"], dtype=torch.float64),
                                               "norms": last["norms"]}
