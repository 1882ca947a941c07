"""The two-layer network of Esser et al. 2023, ``f(x) = V sigma(W x)``, with the weight constraints they compare."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.config import TRAINABLE, EncoderConfig, check_choice, check_positive
from ssl_bench.nets.activations import ELEMENTWISE, IDENTITY, check_activation
from ssl_bench.registry import register

CONSTRAINTS = ("none", "frobenius", "orthogonal", "scaled")


def semi_orthogonal(rows: int, columns: int, generator: torch.Generator) -> Tensor:
    """A uniformly random (Haar) semi-orthogonal ``rows x columns`` matrix: orthonormal columns when
    ``rows >= columns``, orthonormal rows otherwise (the QR factor of a Gaussian matrix, signs fixed by ``R``'s
    diagonal)."""
    tall = rows >= columns
    gaussian = torch.randn((rows, columns) if tall else (columns, rows), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))
    return (q if tall else q.T).float()


def nearest_semi_orthogonal(matrix: Tensor) -> Tensor:
    """The semi-orthogonal matrix nearest to ``matrix`` in Frobenius norm, ``U Vh`` of its thin SVD (the polar
    factor): the projection of Eq. (11) back onto the constraint set after a gradient step."""
    u, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u @ vh).to(matrix.dtype)


def horizontal(matrix: Tensor) -> Tensor:
    """``matrix`` with the same value, whose gradient is projected onto the horizontal space of the Grassmannian at
    ``matrix`` (Edelman, Arias & Smith 1998): ``(I - M M^T) G`` for orthonormal columns (tall ``M``), ``G (I - M^T M)``
    for orthonormal rows. Gradient descent on the returned matrix is the constrained gradient flow whose outputs
    follow Theorem 2."""
    fixed = matrix.detach()
    delta = matrix - fixed  # zero, with the identity as its Jacobian
    if matrix.shape[0] >= matrix.shape[1]:
        return fixed + delta - fixed @ (fixed.T @ delta)
    return fixed + delta - (delta @ fixed.T) @ fixed


@register("encoder", "two_layer")
class TwoLayer(nn.Module):
    """``f(x) = V sigma(W x)`` with ``W`` (L x d), ``V`` (k x L), no biases; ``sigma`` linear, tanh, ReLU or sigmoid.

    ``constraint`` (Esser et al. 2023, Props. 2-3, Eq. 11):

    - ``none``: plain gradient descent (Prop. 1: every output coordinate has the same dynamics, dimension collapse);
    - ``frobenius``: after every step ``W`` and ``V`` are scaled back into the Frobenius ball of their initial norms
      (Prop. 2: collapses all the same);
    - ``orthogonal``: ``W`` and ``V`` stay semi-orthogonal (``W^T W = I`` for ``L >= d``, ``V V^T = I`` for ``k <= L``;
      along the shorter side otherwise): gradients are projected onto the Grassmannian's horizontal space
      (:func:`horizontal`) and after every step each matrix is projected back onto the manifold
      (:func:`nearest_semi_orthogonal`); initial weights are projected too;
    - ``scaled``: the loss sees the operator-normalised weights ``V / ||V||_2`` and ``W / ||W||_2`` (the loss of
      Prop. 3 under ``||V||_2, ||W||_2 <= 1``, which for a linear network is equivalent to orthogonality).

    ``init``: ``orthogonal`` draws uniformly random semi-orthogonal ``W`` and ``V`` (the setting of Theorem 1),
    ``gaussian`` draws ``N(0, 1 / fan_in)`` entries.

    ``trainable``: ``all``, or ``first_layer``, which keeps ``V`` at its initial draw, the fixed projector ``P`` of
    Remark 3 (``f(x) = P W x``, which does not prevent collapse).
    """

    @dataclass
    class Config(EncoderConfig):
        """``width`` hidden units (L), ``output_dim`` embedding dimensions (k), ``activation``, ``constraint`` and
        ``init`` and ``trainable`` as the class says."""

        width: int = 64
        output_dim: int = 2
        activation: str = "linear"
        constraint: str = "orthogonal"
        init: str = "orthogonal"
        trainable: str = "all"
        needs = ("vectors",)

        def provides(self) -> set[str]:
            return {"first_layer_weight"}

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.width", self.width)
            check_positive(f"{prefix}.output_dim", self.output_dim)
            check_activation(f"{prefix}.activation", "two_layer", self.activation)
            check_choice(f"{prefix}.constraint", self.constraint, CONSTRAINTS)
            check_choice(f"{prefix}.init", self.init, ("orthogonal", "gaussian"))
            check_choice(f"{prefix}.trainable", self.trainable, TRAINABLE)

    def __init__(self, input_dim: int, width: int, output_dim: int, activation: str = "linear",
                 constraint: str = "orthogonal") -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(width, input_dim))
        self.V = nn.Parameter(torch.empty(output_dim, width))
        self.activation_name, self.activation, self.constraint = activation, ELEMENTWISE[activation], constraint
        self.input_dim, self.width, self.output_dim = input_dim, width, output_dim
        self.register_buffer("radii", torch.ones(2))  # the Frobenius radii of W and V (constraint=frobenius)

    @classmethod
    def from_config(cls, config: Config, data: Any, generator: torch.Generator) -> TwoLayer:
        """A network for ``data.input_dim``-dimensional inputs, its weights drawn from ``generator``."""
        encoder = cls(data.input_dim, config.width, config.output_dim, config.activation, config.constraint)
        encoder.initialize(config.init, generator)
        encoder.V.requires_grad_(config.trainable == "all")
        return encoder

    @torch.no_grad()
    def initialize(self, init: str, generator: torch.Generator) -> None:
        """Draw ``W`` and ``V`` (``init`` orthogonal or gaussian), project them onto the constraint set and keep
        their Frobenius norms as the radii of ``constraint=frobenius``."""
        for weight in (self.W, self.V):
            rows, columns = weight.shape
            weight.copy_(semi_orthogonal(rows, columns, generator) if init == "orthogonal"
                         else torch.randn(rows, columns, generator=generator) * columns ** -0.5)
        if self.constraint == "orthogonal":
            self.after_optimizer_step()
        self.radii.copy_(torch.stack([self.W.norm(), self.V.norm()]))

    @property
    def first_layer_weight(self) -> Tensor:
        return self.W

    def weights(self) -> tuple[Tensor, Tensor]:
        """``(W, V)`` as the forward pass uses them (horizontal for ``orthogonal``, normalised for ``scaled``)."""
        if self.constraint == "orthogonal":
            return horizontal(self.W), horizontal(self.V)
        if self.constraint == "scaled":
            return (self.W / torch.linalg.matrix_norm(self.W, ord=2),
                    self.V / torch.linalg.matrix_norm(self.V, ord=2))
        return self.W, self.V

    def forward(self, x: Tensor) -> Tensor:
        w, v = self.weights()
        return self.activation(x @ w.T) @ v.T

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        w, v = self.weights()
        hidden = self.activation(x @ w.T)
        return [hidden, hidden @ v.T]

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Project the weights back onto the constraint set after a gradient step (Eq. 11)."""
        if self.constraint == "orthogonal":
            for weight in (self.W, self.V):
                weight.copy_(nearest_semi_orthogonal(weight))
        elif self.constraint == "frobenius":
            for weight, radius in zip((self.W, self.V), self.radii):
                weight.mul_((radius / weight.norm()).clamp(max=1.0))

    def linear_twin(self) -> TwoLayer:
        """A copy of this network with the same weights and constraint and the identity activation: the linear
        network ``f_lin(x) = V W x`` of Theorem 1."""
        twin = copy.deepcopy(self)
        twin.activation_name, twin.activation = IDENTITY, ELEMENTWISE[IDENTITY]
        return twin
