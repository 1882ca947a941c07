"""Projection and prediction heads: the keys a method with heads has, and one registered builder per head kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from ssl_bench import registry
from ssl_bench.config import ConfigError, check_choice, check_positive


def mlp(in_dim: int, hidden_dim: int, out_dim: int, hidden_layers: int = 1, output_bn: bool = False) -> nn.Sequential:
    """``hidden_layers`` blocks of Linear-BN-ReLU, then Linear (+ affine-free BN when ``output_bn``, as SimSiam)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=not output_bn))
    if output_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


@dataclass
class ProjectorKeys:
    """A projector ``g`` on the backbone features: ``projector`` names a registered head (none | linear | mlp);
    ``mlp`` has ``projector_layers`` Linear layers (Linear-BN-ReLU blocks of ``projector_hidden_dim``, then a Linear
    to ``projector_dim``; null = the backbone's width), ``projector_output_bn`` adds SimSiam's final BN."""

    projector: str = "none"
    projector_hidden_dim: int = 2048
    projector_dim: Optional[int] = None
    projector_layers: int = 2
    projector_output_bn: bool = False

    def validate_projector(self, prefix: str) -> None:
        check_choice(f"{prefix}.projector", self.projector, tuple(registry.names("projector")))
        for key in ("projector_hidden_dim", "projector_layers"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        if self.projector_dim is not None:
            check_positive(f"{prefix}.projector_dim", self.projector_dim)

    def embedding_dim(self, width: int) -> int:
        """The width of the embedding the loss sees, for a backbone of ``width``."""
        return width if self.projector == "none" else (self.projector_dim or width)

    def make_projector(self, width: int) -> nn.Module:
        return registry.lookup("projector", self.projector)(self, width)


@dataclass
class ExpanderKeys(ProjectorKeys):
    """Projector keys defaulting to the 8192-8192-8192 MLP (Linear-BN-ReLU twice, then Linear) of VICReg (Bardes et
    al. 2022, Sec. 4.2, the "expander") and Barlow Twins (Zbontar et al. 2021, Sec. 3)."""

    projector: str = "mlp"
    projector_hidden_dim: int = 8192
    projector_dim: Optional[int] = 8192
    projector_layers: int = 3


@dataclass
class PredictorKeys:
    """A predictor ``h`` on the embedding: ``predictor`` names a registered head (linear | linear_nobias | identity |
    identity_frozen_diagonal | mlp | none, where the method allows it); ``mlp`` is Linear-BN-ReLU-Linear through
    ``predictor_hidden_dim``; ``predictor_init=symmetric`` draws a linear head ``N(0, 1/h)`` and symmetrises it
    (Bao 2023, Assump. 4); ``predictor_symmetric`` keeps a linear head symmetric, ``W <- (W + W^T) / 2`` after every
    optimizer step (Bao 2023, Assump. 1). Methods that cannot work without one set ``needs_predictor``."""

    predictor: str = "none"
    predictor_hidden_dim: int = 512
    predictor_init: str = "default"
    predictor_symmetric: bool = False
    needs_predictor: ClassVar[bool] = False

    def validate_predictor(self, prefix: str) -> None:
        check_choice(f"{prefix}.predictor", self.predictor, tuple(registry.names("predictor")))
        check_positive(f"{prefix}.predictor_hidden_dim", self.predictor_hidden_dim)
        check_choice(f"{prefix}.predictor_init", self.predictor_init, ("default", "symmetric"))
        if self.needs_predictor and self.predictor == "none":
            raise ConfigError(f"{prefix}.predictor=none is not allowed for {prefix}={getattr(self, 'name', '')}; "
                              f"use {prefix}.predictor=linear")
        if self.predictor_init == "symmetric" and self.predictor not in ("linear", "linear_nobias"):
            raise ConfigError(f"{prefix}.predictor_init=symmetric needs {prefix}.predictor=linear or linear_nobias")
        if self.predictor_symmetric and self.predictor not in ("linear", "linear_nobias"):
            raise ConfigError(f"{prefix}.predictor_symmetric=true needs {prefix}.predictor=linear or linear_nobias")

    def make_predictor(self, dim: int) -> nn.Module:
        return registry.lookup("predictor", self.predictor)(self, dim)


class LinearPredictor(nn.Module):
    """Linear prediction head ``p(z) = W_p z (+ b)``.

    ``init``: ``default`` (PyTorch's), ``identity`` (``W_p = I``; Wen & Li 2022) or ``symmetric``
    (``W_p = (A + A^T) / 2`` with ``A_ij ~ N(0, 1/h)``; Bao 2023, Assump. 4). With ``frozen_diagonal`` only the
    off-diagonal entries are trained and the diagonal stays at its initial value (Wen & Li 2022). With
    ``keep_symmetric`` :meth:`after_optimizer_step` replaces ``W_p`` by ``(W_p + W_p^T) / 2`` (Bao 2023, Assump. 1).
    """

    def __init__(self, dim: int, bias: bool = True, init: str = "default", frozen_diagonal: bool = False,
                 generator: torch.Generator | None = None, keep_symmetric: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=bias)
        with torch.no_grad():
            if init == "identity":
                self.linear.weight.copy_(torch.eye(dim))
            elif init == "symmetric":
                a = torch.randn(dim, dim, generator=generator) / dim ** 0.5
                self.linear.weight.copy_((a + a.T) / 2)
        self.frozen_diagonal, self.keep_symmetric = frozen_diagonal, keep_symmetric
        if frozen_diagonal:
            self.register_buffer("diagonal", self.linear.weight.diagonal().clone())
            self.register_buffer("off_diagonal_mask", 1.0 - torch.eye(dim))

    @property
    def weight(self) -> Tensor:
        """The effective ``W_p`` (h x h)."""
        if not self.frozen_diagonal:
            return self.linear.weight
        return self.linear.weight * self.off_diagonal_mask + torch.diag(self.diagonal)

    def forward(self, z: Tensor) -> Tensor:
        return nn.functional.linear(z, self.weight, self.linear.bias)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.keep_symmetric:
            weight = self.linear.weight
            weight.copy_((weight + weight.T) / 2)


@registry.register("projector", "none")
@registry.register("predictor", "none")
def identity_head(keys: object, dim: int) -> nn.Module:
    return nn.Identity()


@registry.register("projector", "linear")
def linear_projector(keys: ProjectorKeys, width: int) -> nn.Module:
    return nn.Linear(width, keys.embedding_dim(width))


@registry.register("projector", "mlp")
def mlp_projector(keys: ProjectorKeys, width: int) -> nn.Module:
    return mlp(width, keys.projector_hidden_dim, keys.embedding_dim(width), hidden_layers=keys.projector_layers - 1,
               output_bn=keys.projector_output_bn)


@registry.register("predictor", "linear")
def linear_predictor(keys: PredictorKeys, dim: int) -> nn.Module:
    if keys.predictor_init == "default" and not keys.predictor_symmetric:
        return nn.Linear(dim, dim)
    return LinearPredictor(dim, init=keys.predictor_init, keep_symmetric=keys.predictor_symmetric)


@registry.register("predictor", "linear_nobias")
def linear_nobias_predictor(keys: PredictorKeys, dim: int) -> nn.Module:
    return LinearPredictor(dim, bias=False, init=keys.predictor_init, keep_symmetric=keys.predictor_symmetric)


@registry.register("predictor", "identity")
def identity_predictor(keys: PredictorKeys, dim: int) -> nn.Module:
    return LinearPredictor(dim, bias=False, init="identity")


@registry.register("predictor", "identity_frozen_diagonal")
def identity_frozen_diagonal_predictor(keys: PredictorKeys, dim: int) -> nn.Module:
    return LinearPredictor(dim, bias=False, init="identity", frozen_diagonal=True)


@registry.register("predictor", "mlp")
def mlp_predictor(keys: PredictorKeys, dim: int) -> nn.Module:
    return mlp(dim, keys.predictor_hidden_dim, dim)
