"""Collapse metrics computed from weights, ground truth and embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cosine_matrix(rows: Tensor, columns: Tensor) -> Tensor:
    """``C_ij = <r_i, c_j> / (||r_i|| ||c_j||)`` for the rows of ``rows`` (m x p) and the columns of ``columns``
    (p x d), in float64 on ``rows``' device, without gradients (zero vectors give zero cosines)."""
    r = rows.detach().double()
    c = columns.detach().to(r)
    return (r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (c / c.norm(dim=0, keepdim=True).clamp_min(1e-12))


def best_matching(score: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one assignment of ``min(k, l)`` rows of ``score`` (k x l) to distinct columns that maximises the
    summed score (the Hungarian method, ``scipy.optimize.linear_sum_assignment``): the row and column indices."""
    from scipy.optimize import linear_sum_assignment  # imported here: half a second, and most runs never match

    rows, cols = linear_sum_assignment(score.detach().cpu().numpy(), maximize=True)
    return torch.as_tensor(rows), torch.as_tensor(cols)


def max_cosine(weight: Tensor, dictionary: Tensor, absolute: bool = True) -> dict[str, float]:
    """Max-cosine of Pokle et al. 2022 (Eq. 12).

    For every dictionary atom ``M_.j`` (column of the p x d ``dictionary``) take
    ``a_j = max_i |<W_i., M_.j>| / (||W_i.|| ||M_.j||)`` over the neurons (rows of the m x p ``weight``); return the
    max, median and min of ``a`` over the atoms. ``absolute=False`` drops the absolute value (symmetric latents make
    a neuron's sign arbitrary, hence the official code's absolute value). The median of an even count is the mean of
    the two middle values.
    """
    if weight.ndim != 2 or dictionary.ndim != 2 or weight.shape[1] != dictionary.shape[0]:
        raise ValueError(f"weight must be m x p and dictionary p x d; got {tuple(weight.shape)} and "
                         f"{tuple(dictionary.shape)}")
    cos = cosine_matrix(weight, dictionary)
    per_atom = (cos.abs() if absolute else cos).max(dim=0).values
    return {"max": per_atom.max().item(), "median": torch.quantile(per_atom, 0.5).item(),
            "min": per_atom.min().item()}


def embedding_spectrum(z: Tensor) -> Tensor:
    """Singular values (descending) of the covariance of the l2-normalized embeddings (Jing et al. 2022, Sec. 3).

    With ``u_i = z_i / ||z_i||`` for the N rows of ``z`` (N x D) and their mean ``u_bar``,
    ``C = 1/(N-1) sum_i (u_i - u_bar)(u_i - u_bar)^T`` (the unbiased ``np.cov`` of the official ``spectrum.py``;
    the paper writes 1/N, which only rescales the spectrum). C is symmetric, so its singular values are the absolute
    values of its eigenvalues. Computed in float64.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be N x D with N >= 2; got {tuple(z.shape)}")
    u = torch.nn.functional.normalize(z.detach().double(), dim=1)
    u = u - u.mean(dim=0)
    cov = u.T @ u / (u.shape[0] - 1)
    return torch.linalg.eigvalsh(cov).abs().sort(descending=True).values


NOISE_FLOOR = 1e-10
"""Singular values at or below this are rounding noise: the covariance of l2-normalized rows has trace <= 1, and
under complete collapse its values are ~1e-15 (ranks would otherwise count the noise)."""


def effective_rank(singular_values: Tensor) -> float:
    """Effective rank ``exp(H(p))`` with ``p_k = s_k / sum_j s_j`` and ``H(p) = -sum_k p_k log p_k`` over the
    ``s_k`` above :data:`NOISE_FLOOR` (Roy & Vetterli 2007); between 1 and their number, 0 when none is left."""
    s = singular_values.detach().double()
    s = s[s > NOISE_FLOOR]
    if not s.numel():
        return 0.0
    p = s / s.sum()
    return torch.exp(-(p * p.log()).sum()).item()


def numerical_rank(singular_values: Tensor, tolerance: float) -> int:
    """Number of singular values above ``tolerance * s_max`` (relative to the largest) and above
    :data:`NOISE_FLOOR`."""
    s = singular_values.detach()
    return int((s > max(tolerance * s.max().item(), NOISE_FLOOR)).sum().item()) if s.numel() else 0


def std_l2(z: Tensor) -> float:
    """Per-dimension standard deviation over samples of the l2-normalized rows of ``z`` (N x D), averaged over the
    D dimensions and scaled by ``sqrt(D)`` (Chen & He 2021, Sec. 4.1): about 1 for isotropic Gaussian embeddings, 0
    under complete collapse. Unbiased standard deviation, in float64."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be N x D with N >= 2; got {tuple(z.shape)}")
    u = torch.nn.functional.normalize(z.detach().double(), dim=1)
    return (u.std(dim=0).mean() * u.shape[1] ** 0.5).item()


def fit_linear_readout(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                       num_classes: int, epochs: int = 100, lr: float = 1e-3, batch_size: int = 512,
                       seed: int = 0) -> float:
    """Top-1 test accuracy of a linear classifier trained on frozen features.

    Features are standardized with the train split's per-dimension mean and standard deviation; an ``nn.Linear``
    starting from zero is trained with cross-entropy by Adam on shuffled mini-batches for ``epochs`` epochs, its
    learning rate decaying from ``lr`` to 0 on a cosine schedule. Everything runs on the features' device; the
    shuffles come from a generator seeded with ``seed``, so the result is reproducible and the global RNG untouched.
    """
    device = train_features.device
    x_train, x_test = train_features.detach().float(), test_features.detach().to(device).float()
    y_train, y_test = train_labels.to(device).long(), test_labels.to(device).long()
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-8)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classifier = torch.nn.Linear(x_train.shape[1], num_classes, device=device)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    n = len(x_train)
    steps = epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for index in torch.randperm(n, generator=generator, device=device).split(batch_size):
                loss = torch.nn.functional.cross_entropy(classifier(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    with torch.no_grad():
        return (classifier(x_test).argmax(dim=1) == y_test).float().mean().item()


def r2_scores(train_features: Tensor, train_latents: Tensor, test_features: Tensor,
              test_latents: Tensor) -> dict[str, Tensor]:
    """Held-out R^2 and adjusted R^2 of a linear map with intercept from features to every latent.

    The features ``X`` (n x k) are standardized with the train split's mean and standard deviation (constant
    features are dropped); ``z_j ~ b_j + X w_j`` is fit by least squares on the train split, in float64 on the
    features' device, as the minimum-norm solution through the eigendecomposition of ``X^T X``: eigenvalues below
    ``(max(n, k) eps)^2`` times the largest (``eps`` the machine epsilon of the features' dtype) are rank deficiency,
    e.g. a collapsed layer, and left out of the pseudo-inverse. On the m test samples, per latent j:

    - ``R^2_j = 1 - SS_res / SS_tot``, ``SS_res = sum_i (z_ij - zhat_ij)^2``, ``SS_tot = sum_i (z_ij - mean_i z_ij)^2``;
    - ``adjusted R^2_j = 1 - (1 - R^2_j) (m - 1) / (m - k - 1)`` with k the number of feature columns.

    ``R^2`` is 1 for a latent that is an exact affine function of the features, about 0 (or below) for one that is
    independent of them. A latent constant on the test split, adjusted R^2 with ``m <= k + 1`` and non-finite
    features give NaN. Returns ``{"r2": (d,), "adjusted_r2": (d,)}`` (float64, on the features' device).
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"features must be n x k with the same k; got {tuple(train_features.shape)} and "
                         f"{tuple(test_features.shape)}")
    if train_latents.ndim != 2 or test_latents.ndim != 2 or len(train_latents) != len(train_features) \
            or len(test_latents) != len(test_features) or train_latents.shape[1] != test_latents.shape[1]:
        raise ValueError(f"latents must be n x d matching the features; got {tuple(train_latents.shape)} and "
                         f"{tuple(test_latents.shape)}")
    device = train_features.device
    eps = torch.finfo(train_features.dtype).eps if train_features.is_floating_point() else 0.0
    x_train, x_test = train_features.detach().double(), test_features.detach().to(device).double()
    z_train, z_test = train_latents.detach().to(device).double(), test_latents.detach().to(device).double()
    (m, k), d = x_test.shape, z_test.shape[1]
    nan = torch.full((d,), math.nan, dtype=torch.float64, device=device)
    if not (torch.isfinite(x_train).all() and torch.isfinite(x_test).all()):
        return {"r2": nan, "adjusted_r2": nan.clone()}
    mean, std = x_train.mean(dim=0), x_train.std(dim=0) if len(x_train) > 1 else torch.zeros(k, device=device)
    scale = torch.where(std > 0, 1.0 / std.clamp_min(1e-300), torch.zeros_like(std))
    x_train, x_test = (x_train - mean) * scale, (x_test - mean) * scale
    z_mean = z_train.mean(dim=0)
    eigenvalues, vectors = torch.linalg.eigh(x_train.T @ x_train)
    cutoff = eigenvalues.max().clamp_min(0) * (max(len(x_train), k) * eps) ** 2
    inverse = torch.where(eigenvalues > cutoff, 1.0 / eigenvalues.clamp_min(1e-300), torch.zeros_like(eigenvalues))
    weight = vectors @ (inverse.unsqueeze(1) * (vectors.T @ (x_train.T @ (z_train - z_mean))))
    residual = z_test - (z_mean + x_test @ weight)
    ss_res = residual.pow(2).sum(dim=0)
    ss_tot = (z_test - z_test.mean(dim=0)).pow(2).sum(dim=0)
    r2 = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300), nan)
    adjusted = 1.0 - (1.0 - r2) * (m - 1) / (m - k - 1) if m - k - 1 > 0 else nan.clone()
    return {"r2": r2, "adjusted_r2": adjusted}
