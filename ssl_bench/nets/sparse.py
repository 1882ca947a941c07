"""Encoders for sparse-coding data (Pokle et al. 2022, Sec. 4): linear layer(s), optional batch norm, (symmetric)
ReLU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ssl_bench.config import (
    TRAINABLE,
    ConfigError,
    EncoderConfig,
    check_choice,
    check_non_negative,
    check_positive,
)
from ssl_bench.nets.activations import OFFERED, check_activation
from ssl_bench.registry import register


class SparseLayer(nn.Module):
    """``phi(BN(W a))`` with one of four activations, ``b`` a per-neuron bias:

    - ``symmetric_relu`` (Eq. 14): ``relu(h - b) - relu(-h - b)``, zero on ``[-b, b]``;
    - ``symmetric_relu_official`` (the official code): ``y = BN(W a + b)`` (or ``W a + b`` without BN) and
      ``relu(y) - relu(2 b - y)``; without BN this equals Eq. 14 with threshold ``-b``, with BN it is shifted by ``b``;
    - ``relu``: ``relu(h + b)``; ``linear``: ``h + b`` (linear encoder).
    """

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool, activation: str, bias: bool) -> None:
        super().__init__()
        if activation not in OFFERED["sparse"]:
            raise ValueError(f"activation={activation!r}; choose one of {OFFERED['sparse']}")
        self.activation = activation
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        self.norm = nn.BatchNorm1d(out_dim) if batch_norm else None

    def forward(self, a: Tensor) -> Tensor:
        w, b = self.linear.weight, self.linear.bias
        if self.activation == "symmetric_relu_official":
            y = F.linear(a, w, b)
            y = y if self.norm is None else self.norm(y)
            return y if b is None else F.relu(y) - F.relu(2 * b - y)
        h = F.linear(a, w)
        h = h if self.norm is None else self.norm(h)
        if self.activation == "symmetric_relu":
            return F.relu(h) - F.relu(-h) if b is None else F.relu(h - b) - F.relu(-h - b)
        h = h if b is None else h + b
        return F.relu(h) if self.activation == "relu" else h


@register("encoder", "sparse")
class SparseEncoder(nn.Module):
    """One- or two-layer encoder ``R^p -> R^m``; ``first_layer_weight`` (m x p) is what max-cosine reads. With
    ``weight_norm`` row or column, :meth:`after_optimizer_step` projects ``W`` back after every step (Thm. 3)."""

    @dataclass
    class Config(EncoderConfig):
        """Width ``m``, one or two layers, batch norm, activation (:class:`SparseLayer`); Gaussian init
        ``N(0, init_std^2)`` (null: ``1/(p d)``), biases PyTorch's default or ``zero`` (the text); a warm start from
        the dictionary's columns plus noise of std ``warm_start_noise`` or ``p^(-warm_start_c/2)``; row or column
        weight normalization after every optimizer step; ``fixed_bias`` sets every bias to one value that training
        leaves unchanged (Thm. 3). ``trainable=first_layer`` trains only the first layer's
        ``W`` and ``b``: a second layer and batch norm's scale and shift keep their initial values, as in Pokle et
        al.'s runs, whose optimizers held only ``Wo`` / ``Wt`` (official code before its last commit)."""

        width: int = 50
        layers: int = 1
        batch_norm: bool = True
        activation: str = "symmetric_relu"
        bias: bool = True
        bias_init: str = "default"
        init_std: Optional[float] = None
        warm_start: bool = False
        warm_start_noise: Optional[float] = None
        warm_start_c: Optional[float] = None
        weight_norm: str = "none"
        trainable: str = "all"
        fixed_bias: Optional[float] = None
        needs = ("vectors",)

        @property
        def output_dim(self) -> int:
            return self.width

        def provides(self) -> set[str]:
            return {"first_layer_weight"}

        def required(self) -> tuple[str, ...]:
            return (*self.needs, "dictionary") if self.warm_start else self.needs

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.width", self.width)
            check_choice(f"{prefix}.layers", self.layers, (1, 2))
            check_activation(f"{prefix}.activation", "sparse", self.activation)
            check_choice(f"{prefix}.bias_init", self.bias_init, ("default", "zero"))
            check_choice(f"{prefix}.weight_norm", self.weight_norm, ("none", "row", "column"))
            check_choice(f"{prefix}.trainable", self.trainable, TRAINABLE)
            if self.fixed_bias is not None:
                check_non_negative(f"{prefix}.fixed_bias", self.fixed_bias)
            if self.init_std is not None:
                check_positive(f"{prefix}.init_std", self.init_std)
            if self.warm_start_noise is not None and self.warm_start_c is not None:
                raise ConfigError(f"{prefix}.warm_start_noise and {prefix}.warm_start_c are exclusive; set one of them")
            if self.warm_start_noise is not None:
                check_non_negative(f"{prefix}.warm_start_noise", self.warm_start_noise)

    def __init__(self, input_dim: int, width: int, layers: int = 1, batch_norm: bool = True,
                 activation: str = "symmetric_relu", bias: bool = True, weight_norm: str = "none") -> None:
        super().__init__()
        dims = [input_dim] + [width] * layers
        self.layers = nn.Sequential(*(SparseLayer(i, o, batch_norm, activation, bias)
                                      for i, o in zip(dims[:-1], dims[1:])))
        self.output_dim, self.weight_norm = width, weight_norm

    @classmethod
    def from_config(cls, config: Config, data: Any, generator: torch.Generator) -> SparseEncoder:
        """An encoder for ``data`` (its ``input_dim``, ``latent_dim`` and, for a warm start, ``dictionary``),
        initialized from ``generator``."""
        encoder = cls(data.input_dim, config.width, config.layers, config.batch_norm, config.activation, config.bias,
                      config.weight_norm)
        encoder.initialize(generator, config.init_std, data.latent_dim, zero_bias=config.bias_init == "zero")
        if config.warm_start:
            noise = warm_start_noise(data.input_dim, config.warm_start_noise, config.warm_start_c)
            encoder.warm_start(data.dictionary, noise, generator)
        encoder.normalize_weights(config.weight_norm)
        if config.trainable == "first_layer":
            encoder.requires_grad_(False)
            encoder.layers[0].linear.requires_grad_(True)
        if config.fixed_bias is not None:
            encoder.fix_biases(config.fixed_bias)
        return encoder

    @property
    def first_layer_weight(self) -> Tensor:
        return self.layers[0].linear.weight

    def forward(self, a: Tensor) -> Tensor:
        for layer in self.layers:
            a = layer(a)
        return a

    def layer_outputs(self, a: Tensor) -> list[Tensor]:
        """The output of every :class:`SparseLayer`, (B, width) each; the last is :meth:`forward`'s output."""
        outputs = []
        for layer in self.layers:
            a = layer(a)
            outputs.append(a)
        return outputs

    @torch.no_grad()
    def initialize(self, generator: torch.Generator, init_std: float | None, dictionary_dim: int,
                   zero_bias: bool) -> None:
        """Gaussian init ``W_ij ~ N(0, std^2)``, default ``std = sqrt(1 / (p d))`` (Sec. 4.2, official code).

        Later layers use the same rule with their own input width; biases keep PyTorch's default
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (official code) unless ``zero_bias`` (paper text).
        """
        for layer in self.layers:
            weight = layer.linear.weight
            std = init_std if init_std is not None else math.sqrt(1.0 / (weight.shape[1] * dictionary_dim))
            weight.copy_(std * torch.randn(weight.shape, generator=generator))
            if zero_bias and layer.linear.bias is not None:
                layer.linear.bias.zero_()

    @torch.no_grad()
    def warm_start(self, dictionary: Tensor, noise_std: float, generator: torch.Generator) -> None:
        """Rows of ``W`` from columns of ``M`` plus ``N(0, noise_std^2)`` noise (Sec. B.1.4).

        With ``m > d`` the columns are drawn uniformly with replacement; with ``m <= d`` they are the first ``m``
        columns in order (official code).
        """
        weight = self.first_layer_weight
        m, d = weight.shape[0], dictionary.shape[1]
        columns = torch.randint(d, (m,), generator=generator) if m > d else torch.arange(m)
        atoms = dictionary.detach().cpu()[:, columns].T
        weight.copy_((atoms + noise_std * torch.randn(atoms.shape, generator=generator)).to(weight))

    @torch.no_grad()
    def fix_biases(self, value: float) -> None:
        """Every bias set to ``value`` and left untrained (Thm. 3, Assumption 4: ``b`` fixed during optimization)."""
        for layer in self.layers:
            if layer.linear.bias is not None:
                layer.linear.bias.fill_(value).requires_grad_(False)

    def after_optimizer_step(self) -> None:
        if self.weight_norm != "none":
            self.normalize_weights(self.weight_norm)

    @torch.no_grad()
    def normalize_weights(self, mode: str) -> None:
        """Project ``W`` after an optimizer step (Thm. 3): ``row``: ``||W_i.|| = 1``; ``column``: ``||W_.j|| = 1``."""
        if mode == "none":
            return
        weight = self.first_layer_weight
        weight.div_(weight.norm(dim=1 if mode == "row" else 0, keepdim=True).clamp_min(1e-12))


def warm_start_noise(p: int, noise: float | None, c: float | None) -> float:
    """Warm-start noise std: given directly, or ``p^(-c/2)`` from the exponent ``c`` (official code)."""
    if noise is not None:
        return noise
    return p ** (-c / 2) if c is not None and c > 0 else 0.0
