"""VICReg and Barlow Twins of a linear encoder on Gaussian views, in closed form: the population (infinite-batch)
loss of any weight matrix, and the optimum over all of them for isotropic augmentation noise.

The setting is Bao 2023's (Sec. 5.2): inputs ``x ~ N(0, I_d)``, two views ``x + e1`` and ``x + e2`` with independent
noise ``e ~ N(0, N)``, and a linear encoder ``z = A x`` (A: k x d, no bias, no projector). The views' embeddings
have means 0, the same covariance ``H = A (I + N) A^T`` each, and cross-covariance ``G = A A^T``; the difference
of the two has covariance ``2 A N A^T``. The batch statistics of both losses converge to these as the batch grows,
so the losses converge to the functions below (their finite-batch expectations differ by O(1 / batch)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_bench.ops.losses import off_diagonal
from ssl_bench.ops.metrics import cosine_matrix


def view_moments(weight: Tensor, noise_covariance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(H, G, D)`` of ``z = A x``: each view's covariance ``A (I + N) A^T``, the two views' cross-covariance
    ``A A^T``, and the covariance ``2 A N A^T`` of their difference, in float64, with ``weight``'s gradients."""
    a, noise = weight.double(), noise_covariance.double()
    gram = a @ a.T
    return gram + a @ noise @ a.T, gram, 2 * a @ noise @ a.T


def vicreg_population_loss(weight: Tensor, noise_covariance: Tensor, sim_coeff: float = 25.0,
                           std_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4) -> Tensor:
    """The infinite-batch limit of :func:`~ssl_bench.ops.losses.vicreg_loss` for ``z = A x`` (a float64 scalar with
    ``weight``'s gradients):

        sim_coeff tr(D) / k + std_coeff mean_j relu(1 - sqrt(H_jj + eps)) + cov_coeff 2 sum_{i != j} H_ij^2 / k

    (the invariance is the mean squared difference of the views, the variance hinge the same for both views, the
    covariance penalty summed over the two)."""
    h, _, d = view_moments(weight, noise_covariance)
    k = len(h)
    invariance = d.trace() / k
    variance = torch.relu(1 - (h.diagonal() + eps).sqrt()).mean()
    covariance = 2 * off_diagonal(h).square().sum() / k
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


def barlow_twins_population_loss(weight: Tensor, noise_covariance: Tensor, lambda_offdiag: float = 5e-3,
                                 eps: float = 1e-5) -> Tensor:
    """The infinite-batch limit of :func:`~ssl_bench.ops.losses.barlow_twins_loss` for ``z = A x`` (a float64 scalar
    with ``weight``'s gradients): the cross-correlation is ``C = S^(-1/2) G S^(-1/2)`` with ``S = diag(H) + eps``, and

        sum_i (1 - C_ii)^2 + lambda_offdiag sum_{i != j} C_ij^2."""
    h, g, _ = view_moments(weight, noise_covariance)
    scale = (h.diagonal() + eps).rsqrt()
    c = scale[:, None] * g * scale[None, :]
    return (1 - c.diagonal()).square().sum() + lambda_offdiag * off_diagonal(c).square().sum()


def vicreg_optimal_std(noise_std: float, sim_coeff: float = 25.0, std_coeff: float = 25.0) -> float:
    """The standard deviation of every embedding dimension at VICReg's optimum under isotropic noise ``N = s^2 I``:
    ``min(1, std_coeff (1 + s^2) / (4 sim_coeff s^2))``. Each of the k orthogonal rows (zero covariance) of
    variance ``v`` costs ``(sim_coeff 2 s^2 v / (1 + s^2) + std_coeff relu(1 - sqrt(v + eps))) / k``, minimal where
    the two slopes meet, or at the hinge's corner ``sqrt(v + eps) = 1`` when they do not meet below it."""
    if noise_std == 0:
        return 1.0
    return min(1.0, std_coeff * (1 + noise_std ** 2) / (4 * sim_coeff * noise_std ** 2))


def vicreg_optimum(noise_std: float, sim_coeff: float = 25.0, std_coeff: float = 25.0, eps: float = 1e-4) -> float:
    """VICReg's smallest population loss over every k x d weight (k <= d) under isotropic noise ``N = s^2 I``:

        c1 (s*^2 - eps) + std_coeff (1 - s*),    c1 = sim_coeff 2 s^2 / (1 + s^2),  s* = vicreg_optimal_std

    reached by any A with orthogonal rows, each of norm ``sqrt((s*^2 - eps) / (1 + s^2))``: the covariance term is 0
    exactly there and the other two depend on the rows' norms only. It does not depend on k."""
    optimal = vicreg_optimal_std(noise_std, sim_coeff, std_coeff)
    slope = sim_coeff * 2 * noise_std ** 2 / (1 + noise_std ** 2)
    return slope * (optimal ** 2 - eps) + std_coeff * (1 - optimal)


def barlow_twins_optimum(noise_std: float, width: int) -> float:
    """Barlow Twins' infimum population loss over every k x d weight (k = ``width`` <= d) under isotropic noise
    ``N = s^2 I``: ``k (s^2 / (1 + s^2))^2``. Every ``C_ii = |a_i|^2 / ((1 + s^2) |a_i|^2 + eps)`` is below
    ``1 / (1 + s^2)``, and the off-diagonal is 0 for orthogonal rows, so orthogonal rows of growing norm approach
    it (``eps`` keeps it from being reached)."""
    return width * (noise_std ** 2 / (1 + noise_std ** 2)) ** 2


def row_cosines(weight: Tensor) -> tuple[float, float]:
    """``(rms, max)`` of ``|cos(a_i, a_j)|`` over the pairs ``i != j`` of rows of ``weight``: both 0 at both losses'
    optima (orthogonal rows); max 1 when two rows are parallel (two collapsed dimensions); rms about ``d^(-1/2)`` for
    random rows in d dimensions."""
    if len(weight) < 2:
        return 0.0, 0.0
    cosines = off_diagonal(cosine_matrix(weight, weight.T)).abs()
    return cosines.square().mean().sqrt().item(), cosines.max().item()


def isotropic_noise_std(noise_covariance: Tensor) -> float | None:
    """The ``s`` of ``N = s^2 I``, or None when the noise covariance is not a multiple of the identity."""
    diagonal = noise_covariance.diagonal()
    isotropic = torch.equal(noise_covariance, torch.diag(diagonal)) and bool((diagonal == diagonal[0]).all())
    return math.sqrt(diagonal[0].item()) if isotropic else None
