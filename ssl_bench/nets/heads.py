"""Projection and prediction heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


def projector(kind: str, in_dim: int, hidden_dim: int, out_dim: int | None, layers: int = 2,
              output_bn: bool = False) -> nn.Module:
    """``none`` (identity), ``linear`` or ``mlp`` with ``layers`` Linear layers; ``out_dim=None`` keeps ``in_dim``."""
    out_dim = out_dim or in_dim
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return mlp(in_dim, hidden_dim, out_dim, hidden_layers=layers - 1, output_bn=output_bn)


class LinearPredictor(nn.Module):
    """Linear prediction head ``p(z) = W_p z (+ b)``.

    ``init``: ``default`` (PyTorch's), ``identity`` (``W_p = I``; Wen & Li 2022, seed 001) or ``symmetric``
    (``W_p = (A + A^T) / 2`` with ``A_ij ~ N(0, 1/h)``; Bao 2023, seed 003, Assump. 4). With ``frozen_diagonal`` only
    the off-diagonal entries are trained and the diagonal stays at its initial value (seed 001).
    """

    def __init__(self, dim: int, bias: bool = True, init: str = "default", frozen_diagonal: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=bias)
        with torch.no_grad():
            if init == "identity":
                self.linear.weight.copy_(torch.eye(dim))
            elif init == "symmetric":
                a = torch.randn(dim, dim, generator=generator) / dim ** 0.5
                self.linear.weight.copy_((a + a.T) / 2)
        self.frozen_diagonal = frozen_diagonal
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


def predictor(kind: str, dim: int, hidden_dim: int, init: str = "default") -> nn.Module | None:
    """The prediction head named by ``method.predictor`` (see :class:`ssl_bench.config.MethodConfig`), or None."""
    if kind == "none":
        return None
    if kind == "mlp":
        return mlp(dim, hidden_dim, dim)
    if kind in ("identity", "identity_frozen_diagonal"):
        return LinearPredictor(dim, bias=False, init="identity", frozen_diagonal=kind == "identity_frozen_diagonal")
    if kind == "linear" and init == "default":
        return nn.Linear(dim, dim)
    return LinearPredictor(dim, bias=kind == "linear", init=init)
