"""Collapse metrics computed from weights, ground truth and embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
    w = weight.detach().double()
    m = dictionary.detach().to(w)
    cos = (w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (m / m.norm(dim=0, keepdim=True).clamp_min(1e-12))
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
