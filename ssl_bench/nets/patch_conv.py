"""A one-layer convolution over patches (Wen & Li 2022): ``f_j(X) = sum_p act(w_j . X_p)``, batch-normalised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ssl_bench.config import ConfigError, EncoderConfig, check_positive
from ssl_bench.nets.activations import ELEMENTWISE, check_activation
from ssl_bench.registry import register


@register("encoder", "patch_conv")
class PatchConv(nn.Module):
    """``f_j(X) = sum_{p=1}^P act(<w_j, X_p>)`` for ``m`` neurons ``w_j in R^d`` (act cubic, as the paper, or ReLU),
    each output coordinate batch-normalised without affine (``batch_norm``). Inputs are flattened patches
    ``(B, P d)``; ``first_layer_weight`` is ``W`` (m x d)."""

    @dataclass
    class Config(EncoderConfig):
        """``width`` neurons (m); ``activation`` cubic or relu; ``batch_norm`` the affine-free output BN; initial
        ``w_j ~ N(0, init_std^2 I_d)`` (null: ``1 / sqrt(d)``, unit-norm neurons on average). It reads data with
        patches (``patch_dim``, as ``data=strong_weak``), which building it checks: it lists no ``vectors`` need, so
        the encoders offered for plain vectors stay those that read any vector."""

        width: int = 2
        activation: str = "cubic"
        batch_norm: bool = True
        init_std: Optional[float] = None

        @property
        def output_dim(self) -> int:
            return self.width

        def provides(self) -> set[str]:
            return {"first_layer_weight"}

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.width", self.width)
            check_activation(f"{prefix}.activation", "patch_conv", self.activation)
            if self.init_std is not None:
                check_positive(f"{prefix}.init_std", self.init_std)

    def __init__(self, patch_dim: int, width: int, activation: str = "cubic", batch_norm: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width, patch_dim))
        self.activation = ELEMENTWISE[activation]
        self.norm = nn.BatchNorm1d(width, affine=False) if batch_norm else nn.Identity()
        self.output_dim, self.patch_dim = width, patch_dim

    @classmethod
    def from_config(cls, config: Config, data: Any, generator: torch.Generator) -> PatchConv:
        """An encoder for ``data``'s patches of ``data.patch_dim``, its weights drawn from ``generator``."""
        patch_dim = getattr(data, "patch_dim", None)
        if patch_dim is None:
            raise ConfigError(f"encoder.name=patch_conv needs patch inputs (data.name=strong_weak), which "
                              f"{type(data).__name__} does not provide")
        encoder = cls(patch_dim, config.width, config.activation, config.batch_norm)
        std = patch_dim ** -0.5 if config.init_std is None else config.init_std
        with torch.no_grad():
            encoder.weight.copy_(std * torch.randn(encoder.weight.shape, generator=generator))
        return encoder

    @property
    def first_layer_weight(self) -> Tensor:
        return self.weight

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        return [self(x)]

    def forward(self, x: Tensor) -> Tensor:
        patches = x.unflatten(1, (-1, self.patch_dim))
        return self.norm(self.activation(patches @ self.weight.T).sum(dim=1))
