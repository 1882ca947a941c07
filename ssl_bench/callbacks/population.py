"""VICReg and Barlow Twins of a linear encoder on Gaussian views, against their closed forms (population loss and
optimum, :mod:`ssl_bench.ops.population`)."""

from __future__ import annotations

from typing import Any

import torch

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.config import ConfigError
from ssl_bench.ops.frozen import frozen
from ssl_bench.ops.population import (
    barlow_twins_optimum,
    barlow_twins_population_loss,
    isotropic_noise_std,
    row_cosines,
    vicreg_optimal_std,
    vicreg_optimum,
    vicreg_population_loss,
    view_moments,
)
from ssl_bench.registry import register

METHODS = ("vicreg", "barlow_twins")


@register("callback", "population")
class PopulationLoss(Callback):
    """For ``method=vicreg`` or ``barlow_twins`` with no projector on a linear encoder ``z = A x`` (its first-layer
    weight is the whole map) and ``data=gaussian`` with noise on every coordinate (``N = s^2 I``, Bao 2023's
    setting), logs every ``every_n_epochs`` epochs (null: ``trainer.metrics_every_n_epochs``) and at the last:

    - ``population/loss``: the loss of the current ``A`` at an infinite batch, in closed form;
    - ``population/optimum``: the smallest population loss of any ``A``
      (:func:`~ssl_bench.ops.population.vicreg_optimum`, :func:`~ssl_bench.ops.population.barlow_twins_optimum`);
    - ``population/excess``: their difference (>= 0 up to ``eps``; 0 where training found the optimum);
    - ``population/rms_row_cos`` and ``population/max_row_cos``: the root-mean-square and the largest ``|cos|``
      between two rows of ``A`` (both 0 at the optimum; the largest 1 for two collapsed dimensions; the rms about
      ``d^(-1/2)`` for random rows);
    - ``population/std``: the mean standard deviation of an embedding dimension, ``sqrt(H_jj + eps)``, and for
      VICReg ``population/optimal_std``, its value at the optimum (below VICReg's target of 1 when the noise makes
      invariance cost more than the hinge).
    """

    Config = CadenceConfig

    def check(self, data: Any, method: Any, optim: Any) -> None:
        name = method.config.name
        if name not in METHODS:
            raise ConfigError(f"callbacks.population has closed forms for method={' or '.join(METHODS)}, not "
                              f"method={name}; remove it with ~callbacks.population")
        if getattr(method.config, "projector", "none") != "none":
            raise ConfigError("callbacks.population needs the loss on the encoder's output: set method.projector=none")
        if not hasattr(data, "augmentation_covariance") or isotropic_noise_std(data.augmentation_covariance) is None:
            raise ConfigError("callbacks.population needs data=gaussian with noise on every coordinate "
                              "(data.noise_from=0), whose optimum it knows in closed form")
        weight = getattr(method.encoder, "first_layer_weight", None)
        parameters = list(method.encoder.parameters())
        linear = weight is not None and len(parameters) == 1 and parameters[0] is weight
        if linear:
            probe = torch.randn(4, data.input_dim, generator=torch.Generator().manual_seed(0)).to(weight.device)
            with frozen(method.encoder):
                linear = torch.allclose(method.encoder(probe), probe @ weight.T, atol=1e-5)
        if not linear:
            raise ConfigError("callbacks.population needs a linear encoder without bias, z = A x "
                              "(e.g. encoder=linear encoder.bias=false)")
        if weight.shape[0] > weight.shape[1]:
            raise ConfigError(f"callbacks.population: the encoder's {weight.shape[0]} outputs exceed the data's "
                              f"{weight.shape[1]} dimensions; the closed-form optimum needs width <= data.dim")

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        config, noise = module.method.config, trainer.datamodule.augmentation_covariance
        weight, noise_std = module.method.encoder.first_layer_weight.detach(), isotropic_noise_std(noise)
        if config.name == "vicreg":
            loss = vicreg_population_loss(weight, noise, config.sim_coeff, config.std_coeff, config.cov_coeff,
                                          config.eps).item()
            optimum = vicreg_optimum(noise_std, config.sim_coeff, config.std_coeff, config.eps)
            module.log("population/optimal_std", vicreg_optimal_std(noise_std, config.sim_coeff, config.std_coeff),
                       rank_zero_only=True)
        else:
            loss = config.scale_loss * barlow_twins_population_loss(weight, noise, config.lambda_offdiag,
                                                                    config.eps).item()
            optimum = config.scale_loss * barlow_twins_optimum(noise_std, weight.shape[0])
        view_covariance = view_moments(weight, noise)[0]
        module.log("population/loss", loss, rank_zero_only=True)
        module.log("population/optimum", optimum, rank_zero_only=True)
        module.log("population/excess", loss - optimum, rank_zero_only=True)
        rms_cosine, max_cosine = row_cosines(weight)
        module.log("population/rms_row_cos", rms_cosine, rank_zero_only=True)
        module.log("population/max_row_cos", max_cosine, rank_zero_only=True)
        module.log("population/std", (view_covariance.diagonal() + config.eps).sqrt().mean().item(),
                   rank_zero_only=True)
