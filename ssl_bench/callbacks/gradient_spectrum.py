"""The spectrum of the InfoNCE gradient: which latents it pushes and how many directions it has (Rusak et al. 2022,
App. C, Lemma 5-7, Prop. 2; App. D.3, Prop. 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.config import ConfigError, check_positive
from ssl_bench.ops.metrics import effective_rank, numerical_rank
from ssl_bench.registry import register
from ssl_bench.rundir import append_records

PAIRS_STREAM = 2**61
"""Offset of the generator seed of the callback's fixed pairs (``PAIRS_STREAM + seed``), a stream no epoch uses."""


def last_linear(encoder: nn.Module) -> nn.Linear | None:
    """The encoder's last ``nn.Linear`` (in module order): ``W`` of a linear ``f``, the output layer of an MLP."""
    layers = [module for module in encoder.modules() if isinstance(module, nn.Linear)]
    return layers[-1] if layers else None


def largest_gap(singular_values: Tensor) -> int:
    """``argmax_k s_k / s_(k+1)`` over ``k = 1 .. n-1`` for descending ``s``, each value floored at ``1e-12`` of the
    largest (so a rank-deficient spectrum's gap is after its last non-zero value): how many values stand above the
    spectrum's largest relative gap (Prop. 2: ``d_c`` for the gradient in latent coordinates); 0 when every value
    is 0 or there is only one."""
    s = singular_values.detach().double()
    if len(s) < 2 or not s.max() > 0:
        return 0
    s = s.clamp_min(s.max().item() * 1e-12)
    return int((s[:-1] / s[1:]).argmax().item()) + 1


def latent_gradient(grads: tuple[Tensor, Tensor], latents: tuple[Tensor, Tensor]) -> Tensor:
    """``Gamma = sum_i dL/du_i z_i^T + dL/du~_i z~_i^T`` (m x d): the gradient of ``L`` with respect to ``E`` in the
    embedding ``u + E z`` at ``E = 0``. For a linear ``f = W`` and ``g = A`` it is ``dL/dW A^-T``, the gradient of
    Lemma 5 (Eq. 5, ``dW/dt = W (M + 1) [Sigma_x - Sigma_x~]``) in the latent coordinates of Eq. 15, where column
    ``k`` moves with ``sigma_z^2 - sigma_c^2`` for a content latent and ``sigma_z^2 - sigma_s^2`` for a style one."""
    (g1, g2), (z1, z2) = grads, latents
    return g1.double().T @ z1.double() + g2.double().T @ z2.double()


def content_energy(gamma: Tensor, groups: dict[str, list[int]]) -> dict[str, float]:
    """``content_share = sum_(k in content) |Gamma_:k|^2 / |Gamma|_F^2`` and, with both groups, ``content_ratio``: the
    mean ``|Gamma_:k|^2`` of the content columns over the style columns' (Lemma 7: above 1)."""
    energy = (gamma ** 2).sum(dim=0)
    content, style = groups.get("content", []), groups.get("style", [])
    out = {"content_share": (energy[content].sum() / energy.sum()).item()}
    if content and style:
        out["content_ratio"] = (energy[content].mean() / energy[style].mean()).item()
    return out


@register("callback", "gradient_spectrum")
class GradientSpectrum(Callback):
    """The gradient of the method's loss on ``batch_size`` fixed pairs ``(g(z), g(z~))`` (null: the data's batch
    size), every ``every_n_epochs`` epochs (null: ``trainer.metrics_every_n_epochs``) and at the last one.

    Three gradients of ``L`` with embeddings ``u = f(x)`` (after any projector, as ``method.loss_terms`` sees them):

    - ``G = [dL/du_i; dL/du~_i]`` (2B x m), the gradient at the encoder's output. Prop. 5 (Eqs. 21-22): at the
      collapsed optimum ``D o f`` it passes through ``dz_D/dz = D`` of rank ``d_c``, so its rank is at most ``d_c``.
      Logs ``grad/output_rank`` (singular values above ``tolerance`` times the largest) and
      ``grad/output_effective_rank``.
    - ``dL/dW`` of the encoder's last linear layer (``W`` itself for a linear ``f``: Lemma 5, Eqs. 5-9), of rank at
      most that of ``G``. Lemma 6: a larger batch estimates ``Sigma_x`` and ``Sigma_x~`` better, so the gradient has
      a higher rank (at most ``2B - 1``: the 2B rows of ``G`` sum to 0 for a translation-invariant similarity).
      Logs ``grad/weight_rank`` and ``grad/weight_effective_rank``.
    - ``Gamma`` of :func:`latent_gradient` (m x d), the gradient in latent coordinates. Lemma 7: its content columns
      are larger; Prop. 2: its spectrum shows ``d_c`` large singular values. Logs ``grad/content_share`` and
      ``grad/content_ratio`` (:func:`content_energy`), ``grad/latent_gap_rank`` (:func:`largest_gap`) and
      ``grad/latent_effective_rank``.

    The singular values go to ``gradient_spectra.jsonl`` in the trainer's ``default_root_dir``. Reads
    ``trainer.datamodule`` (``sample_marginal``, ``sample_conditional``, ``mixing``, ``latent_groups``, ``seed``),
    ``module.method.representations`` and ``module.method.loss_terms`` (the loss of two batches of embeddings, without
    ``method.standardize``); the parameters' ``.grad`` are left untouched.
    """

    @dataclass
    class Config(CadenceConfig):
        batch_size: Optional[int] = None
        tolerance: float = 0.01
        needs = ("latents",)

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_positive(f"{prefix}.tolerance", self.tolerance)
            if self.batch_size is not None:
                check_positive(f"{prefix}.batch_size", self.batch_size)

    def check(self, data: Any, method: Any, optim: Any) -> None:
        if not hasattr(method, "loss_terms"):
            raise ConfigError("callbacks.gradient_spectrum needs a method with loss_terms(z1, z2), e.g. "
                              "method=adaptive_infonce")
        if last_linear(method.encoder) is None:
            raise ConfigError("callbacks.gradient_spectrum reads the gradient of the encoder's last linear layer; "
                              "choose an encoder with one, e.g. encoder=mlp or encoder=linear_nobias")
        if not all(hasattr(data, name) for name in ("sample_marginal", "sample_conditional", "mixing")):
            raise ConfigError("callbacks.gradient_spectrum draws pairs from the latents; it needs data=invertible_mlp")

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self._pairs: tuple[Tensor, Tensor] | None = None

    def pairs(self, data: Any) -> tuple[Tensor, Tensor]:
        """The fixed latent pairs ``(z, z~)``, drawn once from ``p(z)`` and ``p(z~ | z)``."""
        if self._pairs is None:
            size = self.config.batch_size or data.config.batch_size
            generator = torch.Generator(device=data.device).manual_seed(PAIRS_STREAM + data.seed)
            z = data.sample_marginal(size, generator)
            self._pairs = (z, data.sample_conditional(z, generator))
        return self._pairs

    def gradients(self, trainer: Any, module: Any) -> dict[str, Tensor]:
        """``G`` (2B x m), ``dL/dW`` of the last linear layer and ``Gamma`` (m x d) for the current encoder."""
        data, method = trainer.datamodule, module.method
        latents = self.pairs(data)
        weight = last_linear(method.encoder).weight
        with torch.enable_grad():
            u1, u2 = (method.representations(data.mixing(z).to(module.device))["projector"] for z in latents)
            loss = method.loss_terms(u1, u2).loss
            g1, g2, grad_w = torch.autograd.grad(loss, [u1, u2, weight])
        return {"output": torch.cat([g1, g2]).double(), "weight": grad_w.double(),
                "latent": latent_gradient((g1, g2), latents)}

    def scalars(self, spectra: dict[str, Tensor], gamma: Tensor, groups: dict[str, list[int]]) -> dict[str, float]:
        """The logged scalars of the singular values ``spectra`` of :meth:`gradients` and of ``Gamma``."""
        scalars: dict[str, float] = {}
        for kind in ("output", "weight"):
            scalars[f"grad/{kind}_rank"] = float(numerical_rank(spectra[kind], self.config.tolerance))
            scalars[f"grad/{kind}_effective_rank"] = effective_rank(spectra[kind])
        scalars["grad/latent_effective_rank"] = effective_rank(spectra["latent"])
        scalars["grad/latent_gap_rank"] = float(largest_gap(spectra["latent"]))
        if "content" in groups:
            scalars.update({f"grad/{k}": v for k, v in content_energy(gamma, groups).items()})
        return scalars

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        gradients = self.gradients(trainer, module)
        finite = all(bool(torch.isfinite(g).all()) for g in gradients.values())
        if not finite:  # a diverging model: every scalar NaN, no record
            gradients = {kind: torch.zeros_like(g) for kind, g in gradients.items()}
        spectra = {kind: torch.linalg.svdvals(g) for kind, g in gradients.items()}
        for name, value in self.scalars(spectra, gradients["latent"], trainer.datamodule.latent_groups).items():
            module.log(name, value if finite else float("nan"), rank_zero_only=True)
        if finite and trainer.is_global_zero:
            record = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                      **{kind: s.cpu().tolist() for kind, s in spectra.items()}}
            append_records(trainer.default_root_dir, "gradient_spectra.jsonl", [record])
