"""VICReg: variance-invariance-covariance regularisation of a shared encoder and expander (Bardes et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import ConfigError, MethodConfig, check_positive, check_range
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import ExpanderKeys
from ssl_bench.ops.losses import vicreg_loss
from ssl_bench.registry import register

COEFFICIENTS = ("sim_coeff", "std_coeff", "cov_coeff")
"""The loss's weights, each held in a buffer so that members of a vmapped ensemble may differ in them."""


@register("method", "vicreg")
class VICReg(Method):
    """``L = vicreg_loss(g(f(a1)), g(f(a2)))`` with ``g`` the expander (Bardes et al. 2022, Eq. 6; averaging as the
    official code, see :func:`~ssl_bench.ops.losses.vicreg_loss`). The config's defaults are the paper's: an
    8192-8192-8192 expander (Linear-BN-ReLU twice, then Linear) and lambda / mu / nu = 25 / 25 / 1.
    ``configs/method/vicreg.yaml`` shrinks the expander for the small synthetic encoders; ``cifar10/vicreg`` has
    solo-learn's 2048-2048-2048."""

    @dataclass
    class Config(ExpanderKeys, MethodConfig):
        sim_coeff: float = 25.0
        std_coeff: float = 25.0
        cov_coeff: float = 1.0
        eps: float = 1.0e-4

        def validate(self, prefix: str) -> None:
            for key in COEFFICIENTS:
                check_range(f"{prefix}.{key}", getattr(self, key), 0, math.inf, "[)")
            if not any(getattr(self, key) for key in COEFFICIENTS):
                raise ConfigError(f"{prefix}.sim_coeff, std_coeff and cov_coeff are all 0; the loss would be 0")
            check_positive(f"{prefix}.eps", self.eps)
            self.validate_projector(prefix)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder, projector=config.make_projector(width))
        for key in COEFFICIENTS:
            self.register_buffer(key, torch.tensor(getattr(config, key)), persistent=False)

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        loss = vicreg_loss(self.projector(f1), self.projector(f2), self.sim_coeff, self.std_coeff, self.cov_coeff,
                           self.config.eps)
        return loss, f1
