"""The exact inverse of the data's mixing as a frozen encoder, ``f = g^-1`` (Rusak et al. 2022, Table 1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.config import ConfigError, EncoderConfig, check_positive
from ssl_bench.registry import register


@register("encoder", "inverse")
class InverseEncoder(nn.Module):
    """``f(x) = g^-1(x)``: the datamodule's own ``unmixing``, so that ``f(g(z)) = z`` up to rounding. It has no
    parameters and nothing to train; it is the intended solution whose InfoNCE a trained encoder is compared with.

    ``output_dim`` must equal the data's latent dimension ``d`` (a config cannot read ``d``, so it is a key, checked
    when the encoder is built). The data must expose ``unmixing`` (``data=invertible_mlp``).
    """

    @dataclass
    class Config(EncoderConfig):
        output_dim: int = 10
        needs = ("latents",)  # not "vectors": it is no general vector encoder to suggest for vector inputs

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.output_dim", self.output_dim)

    def __init__(self, unmixing: Callable[[Tensor], Tensor], output_dim: int) -> None:
        super().__init__()
        self.unmixing, self.output_dim = unmixing, output_dim

    @classmethod
    def from_config(cls, config: Config, data: Any, generator: torch.Generator) -> InverseEncoder:
        """The inverse of ``data``'s mixing; ``generator`` is unused (nothing is drawn)."""
        name = getattr(getattr(data, "config", None), "name", type(data).__name__)
        if not callable(getattr(data, "unmixing", None)):
            raise ConfigError(f"encoder.name=inverse needs data with an exact inverse of its mixing (unmixing), "
                              f"which data.name={name} does not have; use data.name=invertible_mlp")
        if config.output_dim != data.latent_dim:
            raise ConfigError(f"encoder.output_dim={config.output_dim} must equal the latent dimension of "
                              f"data.name={name} ({data.latent_dim}) for encoder.name=inverse; set "
                              f"encoder.output_dim={data.latent_dim}")
        return cls(data.unmixing, config.output_dim)

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        """One layer: the output ``g^-1(x)``."""
        return [self(x)]

    def forward(self, x: Tensor) -> Tensor:
        """``g^-1(x)``; refused in training mode with gradients on, since there is nothing to train."""
        if self.training and torch.is_grad_enabled():
            raise ConfigError("encoder.name=inverse (f = g^-1) has nothing to train; evaluate it with `ssl-bench "
                              "evaluate`, or fit a trainable encoder, e.g. encoder=mlp")
        return self.unmixing(x)
