"""Multi-layer perceptrons for vector inputs (Zimmermann et al. 2021; Rusak et al. 2022), and with no hidden layer
and no bias the linear encoder ``f(x) = W x`` of the linear study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ssl_bench.config import (
    EncoderConfig,
    check_choice,
    check_non_negative,
    check_positive,
)
from ssl_bench.nets.activations import ELEMENTWISE, OFFERED, check_activation
from ssl_bench.registry import register

OUTPUTS = ("none", "sphere", "box")


@register("encoder", "mlp")
class MLPEncoder(nn.Module):
    """``x -> phi(W_1 x + b_1) -> ... -> phi(W_L h + b_L) -> n(W_out h + b_out)``: hidden layers of the given
    widths with activation ``phi`` (LeakyReLU of ``negative_slope`` by default), a linear output layer without
    activation and an output map ``n``: ``none``, ``sphere`` (``u / ||u||``, the unit sphere) or ``box``
    (``sigmoid(u)``, inside ``[0, 1]^D``, cl-ica's fixed box).

    Hidden widths are ``widths`` as given, or ``widths[i] * input_dim`` with ``relative_widths`` (cl-ica's
    ``d -> 10d -> 50d x4 -> 10d -> d`` is ``widths: [10, 50, 50, 50, 50, 10]``, ``relative_widths: true``,
    ``output_dim: d``). Weights and biases are drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's default
    for ``nn.Linear``) with the run's generator.
    """

    @dataclass
    class Config(EncoderConfig):
        widths: list[int] = field(default_factory=list)
        relative_widths: bool = False
        output_dim: int = 10
        activation: str = "leaky_relu"
        negative_slope: float = 0.2
        output: str = "none"
        bias: bool = True
        needs = ("vectors",)

        def provides(self) -> set[str]:
            return {"first_layer_weight"}

        def validate(self, prefix: str) -> None:
            for index, width in enumerate(self.widths):
                check_positive(f"{prefix}.widths[{index}]", width)
            check_positive(f"{prefix}.output_dim", self.output_dim)
            check_activation(f"{prefix}.activation", "mlp", self.activation)
            check_non_negative(f"{prefix}.negative_slope", self.negative_slope)
            check_choice(f"{prefix}.output", self.output, OUTPUTS)

    def __init__(self, input_dim: int, widths: list[int], output_dim: int, activation: str = "leaky_relu",
                 negative_slope: float = 0.2, output: str = "none", bias: bool = True) -> None:
        super().__init__()
        if activation not in OFFERED["mlp"] or output not in OUTPUTS:
            raise ValueError(f"activation={activation!r}, output={output!r}; choose from {OFFERED['mlp']}, "
                             f"{OUTPUTS}")
        dims = [input_dim, *widths, output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(dims[:-1], dims[1:]))
        self.activation, self.negative_slope, self.output = activation, negative_slope, output
        self.output_dim = output_dim

    @classmethod
    def from_config(cls, config: Config, data: Any, generator: torch.Generator) -> MLPEncoder:
        """An encoder for ``data.input_dim``-dimensional inputs, its parameters drawn from ``generator``."""
        p = data.input_dim
        widths = [width * p for width in config.widths] if config.relative_widths else list(config.widths)
        encoder = cls(p, widths, config.output_dim, config.activation, config.negative_slope, config.output,
                      config.bias)
        encoder.initialize(generator)
        return encoder

    @torch.no_grad()
    def initialize(self, generator: torch.Generator) -> None:
        """Every weight and bias ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        for layer in self.layers:
            bound = layer.in_features ** -0.5
            for parameter in (layer.weight, layer.bias):
                if parameter is not None:
                    parameter.copy_((2 * torch.rand(parameter.shape, generator=generator) - 1) * bound)

    @property
    def first_layer_weight(self) -> Tensor:
        return self.layers[0].weight

    def _hidden(self, h: Tensor) -> Tensor:
        if self.activation == "leaky_relu":
            return F.leaky_relu(h, self.negative_slope)
        return ELEMENTWISE[self.activation](h)

    def _output(self, u: Tensor) -> Tensor:
        if self.output == "sphere":
            return F.normalize(u, dim=1)
        return torch.sigmoid(u) if self.output == "box" else u

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        """The activation after every layer, (B, width) each; the last is :meth:`forward`'s output."""
        outputs = []
        for layer in self.layers[:-1]:
            x = self._hidden(layer(x))
            outputs.append(x)
        outputs.append(self._output(self.layers[-1](x)))
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = self._hidden(layer(x))
        return self._output(self.layers[-1](x))
