"""Label-free collapse diagnostics of embeddings (and two readouts that use labels or latents: kNN accuracy, MCC).

Every function accepts float32 or float64 input on any device, computes in float64 on the input's device without
gradients and returns Python floats. Inputs are checked first: the wrong shape, a non-floating dtype, too few rows
and NaN or inf entries raise a one-line ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_bench.ops.metrics import best_matching

__all__ = ["rankme", "alpha_req", "lidar", "stable_rank", "nesum", "alignment", "uniformity", "wasserstein_uniformity",
           "knn_accuracy", "mcc"]


def _embeddings(name: str, z: Tensor, ndim: int = 2, min_rows: int = 2) -> Tensor:
    """``z`` detached in float64 on its device, after checking that it is a floating-point tensor with ``ndim``
    dimensions, at least ``min_rows`` rows, a non-empty last dimension and only finite entries."""
    if z.ndim != ndim or not z.is_floating_point() or z.shape[0] < min_rows or z.shape[-1] < 1:
        layout = "N x d" if ndim == 2 else "n x q x d"
        raise ValueError(f"{name} must be a floating-point {layout} tensor with at least {min_rows} rows and d >= 1; "
                         f"got shape {tuple(z.shape)} and dtype {z.dtype}")
    finite = torch.isfinite(z)
    if not finite.all():
        bad = int((~finite).sum().item())
        raise ValueError(f"{name} contains NaN or inf values ({bad} of {z.numel()} entries): collapse metrics need "
                         f"finite embeddings")
    return z.detach().double()


def _centred(x: Tensor) -> Tensor:
    """The rows of ``x`` (N x d) less their mean, shifted by the first row first: this changes nothing in exact
    arithmetic but keeps large offsets from cancelling and makes a constant column exactly zero."""
    x = x - x[0]
    return x - x.mean(dim=0)


def _covariance(x: Tensor, ddof: int = 1) -> Tensor:
    """Covariance ``1/(N - ddof) sum_i (x_i - x_bar)(x_i - x_bar)^T`` of the rows of ``x`` (N x d); exactly zero
    when all rows are equal."""
    x = _centred(x)
    return x.T @ x / (x.shape[0] - ddof)


def _entropy_rank(values: Tensor, eps: float) -> float:
    """``exp(-sum_k p_k log p_k)`` with ``p_k = v_k / ||v||_1 + eps`` for non-negative ``values``; 0 when they sum
    to 0."""
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total + eps
    return torch.exp(-(p * p.log()).sum()).item()


def rankme(z: Tensor, eps: float = 1e-7) -> float:
    """RankMe of Garrido et al. 2023 (ICML), the smooth rank of the raw embeddings.

    With the singular values ``sigma_k`` of ``z`` (N x d, neither centred nor normalized),
    ``p_k = sigma_k / ||sigma||_1 + eps`` and ``RankMe = exp(-sum_k p_k log p_k)``: between about 1 (complete
    collapse onto one nonzero vector) and ``min(N, d)``. An all-zero ``z`` has no spectrum to spread and gives 0.
    """
    return _entropy_rank(torch.linalg.svdvals(_embeddings("z", z)), eps)


def alpha_req(z: Tensor) -> dict[str, float]:
    """Power-law decay coefficient alpha of the embedding eigenspectrum (alpha-ReQ, Agrawal et al. 2022, NeurIPS).

    ``lambda_1 >= lambda_2 >= ...`` are the eigenvalues of the covariance ``1/(N-1) sum_i (z_i - z_bar)
    (z_i - z_bar)^T`` of the rows of ``z`` (N x d). ``log lambda_k = c - alpha log k`` is fit by least squares over
    the ranks ``k = 1..m``: ``m`` counts the eigenvalues above a noise floor of ``1e-10 lambda_1`` (at most d and
    N - 1, the rank of a sample covariance), less its last 10% (``m // 10`` ranks) when ``m >= 10``, since the tail
    of a sample covariance's spectrum is biased downwards. This is a power law, as in the paper; the ``alpha_req``
    code of google-research fits an exponential ``log lambda_k = c - alpha k`` instead, which this is not.

    Returns ``{"alpha": alpha, "fit_r2": R^2}``, the coefficient of determination of the fit in log-log space (1 when
    the fitted log-eigenvalues are all equal). Fewer than 3 ranks, e.g. under complete collapse, give NaN for both.
    """
    eigenvalues = torch.linalg.eigvalsh(_covariance(_embeddings("z", z))).flip(0)
    largest = eigenvalues[0]
    m = min(int((eigenvalues > 1e-10 * largest).sum().item()), z.shape[0] - 1) if largest > 0 else 0
    if m >= 10:
        m -= m // 10
    if m < 3:
        return {"alpha": math.nan, "fit_r2": math.nan}
    x = torch.arange(1, m + 1, dtype=torch.float64, device=eigenvalues.device).log()
    y = eigenvalues[:m].log()
    x, y = x - x.mean(), y - y.mean()
    slope = (x * y).sum() / (x * x).sum()
    ss_res, ss_tot = (y - slope * x).pow(2).sum(), y.pow(2).sum()
    return {"alpha": -slope.item(), "fit_r2": (1.0 - ss_res / ss_tot).item() if ss_tot > 0 else 1.0}


def lidar(z: Tensor, delta: float = 1e-4, eps: float = 1e-8) -> float:
    """LiDAR of Thilak et al. 2024 (ICLR): the smooth rank of the linear discriminant analysis matrix.

    ``z`` (n x q x d) holds q augmented views of each of n samples, the samples acting as classes. With the class
    means ``mu_i = 1/q sum_j z_ij`` and their mean ``mu``:

    - ``S_b = 1/(n-1) sum_i (mu_i - mu)(mu_i - mu)^T`` (between classes);
    - ``S_w = 1/(n(q-1)) sum_i sum_j (z_ij - mu_i)(z_ij - mu_i)^T + delta I`` (within classes);
    - ``Sigma = S_w^{-1/2} S_b S_w^{-1/2}``, ``S_w^{-1/2}`` through the eigendecomposition of ``S_w`` (its
      eigenvalues clamped at their lower bound ``delta`` against rounding);
    - with the eigenvalues ``lambda_k`` of ``Sigma`` clamped at 0, ``p_k = lambda_k / ||lambda||_1 + eps`` and
      ``LiDAR = exp(-sum_k p_k log p_k)``.

    This is the paper's definition (its Sec. 3; implementations differ in the normalisations of ``S_b`` and
    ``S_w``). ``S_b = 0`` (all class means equal, e.g. complete collapse) gives 0. Needs n >= 2 and q >= 2.
    """
    x = _embeddings("z", z, ndim=3)
    n, q, d = x.shape
    if q < 2:
        raise ValueError(f"z must hold q >= 2 views per sample (n x q x d); got shape {tuple(z.shape)}")
    x = x - x[0, 0]
    means = x.mean(dim=1)
    between = _covariance(means)
    within_dev = (x - means.unsqueeze(1)).reshape(n * q, d)
    within = within_dev.T @ within_dev / (n * (q - 1)) + delta * torch.eye(d, dtype=x.dtype, device=x.device)
    values, vectors = torch.linalg.eigh(within)
    root_inv = (vectors * values.clamp_min(delta).rsqrt()) @ vectors.T
    return _entropy_rank(torch.linalg.eigvalsh(root_inv @ between @ root_inv).clamp_min(0), eps)


def stable_rank(z: Tensor) -> float:
    """Stable rank ``||Z||_F^2 / sigma_1^2`` of the raw embeddings ``z`` (N x d) (Rudelson & Vershynin 2007,
    J. ACM, their numerical rank): between 1 and ``rank(Z)``, 1 under complete collapse, 0 for an all-zero ``z``."""
    x = _embeddings("z", z)
    top = torch.linalg.svdvals(x)[0]
    return (x.pow(2).sum() / top.pow(2)).item() if top > 0 else 0.0


def nesum(z: Tensor) -> float:
    """NESum of He & Ozay 2022 (ICML, "Exploring the gap between collapsed and whitened features in self-supervised
    learning"): ``sum_k lambda_k / lambda_1`` over the eigenvalues ``lambda_1 >= lambda_2 >= ...`` (clamped at 0)
    of the covariance of the centred rows of ``z`` (N x d). Between 1 and d for a nonzero covariance (d for whitened
    features); 0 when the covariance is zero (complete collapse)."""
    eigenvalues = torch.linalg.eigvalsh(_covariance(_embeddings("z", z))).clamp_min(0)
    largest = eigenvalues.max()
    return (eigenvalues.sum() / largest).item() if largest > 0 else 0.0


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2) -> float:
    """Alignment loss of Wang & Isola 2020 (ICML, Sec. 4.1): ``1/N sum_i ||u1_i - u2_i||_2^alpha`` over the
    positive pairs, rows i of ``z1`` and ``z2`` (both N x d), with ``u = z / ||z||`` the l2-normalized rows (a zero row
    stays zero). 0 for perfectly aligned pairs, at most ``2^alpha``."""
    x1, x2 = _embeddings("z1", z1), _embeddings("z2", z2)
    if x1.shape != x2.shape:
        raise ValueError(f"z1 and z2 must have the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    u1, u2 = torch.nn.functional.normalize(x1, dim=1), torch.nn.functional.normalize(x2.to(x1.device), dim=1)
    return (u1 - u2).norm(dim=1).pow(alpha).mean().item()


def uniformity(z: Tensor, t: float = 2) -> float:
    """Uniformity loss of Wang & Isola 2020 (ICML, Sec. 4.1): ``log( 2/(N(N-1)) sum_{i<j} exp(-t ||u_i - u_j||^2) )``
    with ``u`` the l2-normalized rows of ``z`` (N x d; a zero row stays zero), as their
    ``torch.pdist(u, p=2).pow(2).mul(-t).exp().mean().log()``. Computed by a log-sum-exp over blocks of 1024 rows,
    in float64: between ``-4t`` and 0, 0 under complete collapse, lower is more uniform."""
    u = torch.nn.functional.normalize(_embeddings("z", z), dim=1)
    n = u.shape[0]
    squared = u.pow(2).sum(dim=1)
    columns = torch.arange(n, device=u.device)
    parts = []
    for start in range(0, n - 1, 1024):
        rows = columns[start:start + 1024]
        distance = (squared[rows, None] + squared[None, start:] - 2 * u[rows] @ u[start:].T).clamp_min(0)
        exponent = (-t * distance).masked_fill(columns[None, start:] <= rows[:, None], -math.inf)
        parts.append(torch.logsumexp(exponent.flatten(), dim=0))
    return (torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1) / 2)).item()


def wasserstein_uniformity(z: Tensor) -> float:
    """Wasserstein distance of Fang et al. 2024 (ICLR, "Rethinking the uniformity metric in self-supervised
    learning") between the l2-normalized embeddings and the uniform distribution on the sphere.

    ``N(mu, Sigma)`` is fit to the l2-normalized rows ``u_i`` of ``z`` (N x d) by maximum likelihood: the mean
    ``mu`` and the 1/N covariance ``Sigma = 1/N sum_i (u_i - mu)(u_i - mu)^T`` (so ``||mu||^2 + tr(Sigma) = 1`` for
    nonzero rows). Its 2-Wasserstein distance to ``N(0, I/d)``, the Gaussian approximation of the uniform
    distribution on the unit sphere, is ``W2 = sqrt(||mu||^2 + 1 + tr(Sigma) - (2/sqrt(d)) tr(Sigma^{1/2}))`` (the
    inside clamped at 0; ``tr(Sigma^{1/2})`` the sum of the square roots of its eigenvalues clamped at 0). Lower is
    more uniform: about 0 for uniform embeddings, ``sqrt(2)`` under complete collapse; Fang et al. report ``-W2``
    as their uniformity metric.
    """
    u = torch.nn.functional.normalize(_embeddings("z", z), dim=1)
    mean = u.mean(dim=0)
    covariance = _covariance(u, ddof=0)
    root_trace = torch.linalg.eigvalsh(covariance).clamp_min(0).sqrt().sum()
    inside = mean.pow(2).sum() + 1 + covariance.trace() - 2 / math.sqrt(u.shape[1]) * root_trace
    return inside.clamp_min(0).sqrt().item()


def _labels(name: str, y: Tensor, rows: int) -> Tensor:
    """``y`` as a long tensor after checking that it holds ``rows`` non-negative integer labels."""
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or len(y) != rows \
            or y.min() < 0:
        raise ValueError(f"{name} must be {rows} non-negative integer labels; got shape {tuple(y.shape)} and dtype "
                         f"{y.dtype}")
    return y.long()


def knn_accuracy(train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier of Wu et al. 2018 (CVPR, Sec. 3.4).

    Computed as lightly's ``knn_predict`` and solo-learn's ``WeightedKNNClassifier`` do: the cosine similarities
    ``s`` of each l2-normalized test row to the l2-normalized train rows, the k most similar train samples (k capped
    at their number), weights ``exp(s / temperature)``, the score of a class the sum of the weights of its
    neighbours, the prediction the class with the highest score. The defaults k = 200, temperature 0.1 are Wu et
    al.'s and lightly's; solo-learn's are k = 20, temperature 0.07. Labels are integers in ``0..C-1``; test samples
    are processed in chunks of 1024.
    """
    bank = torch.nn.functional.normalize(_embeddings("train_z", train_z, min_rows=1), dim=1)
    queries = torch.nn.functional.normalize(_embeddings("test_z", test_z, min_rows=1), dim=1).to(bank.device)
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"train_z and test_z must have the same d; got {tuple(train_z.shape)} and "
                         f"{tuple(test_z.shape)}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0; got k={k} and temperature={temperature}")
    bank_y = _labels("train_y", train_y, len(bank)).to(bank.device)
    query_y = _labels("test_y", test_y, len(queries)).to(bank.device)
    classes = int(max(bank_y.max().item(), query_y.max().item())) + 1
    k = min(k, len(bank))
    correct = 0
    for chunk, chunk_y in zip(queries.split(1024), query_y.split(1024)):
        similarity, index = (chunk @ bank.T).topk(k, dim=1)
        scores = torch.zeros(len(chunk), classes, dtype=bank.dtype, device=bank.device)
        scores.scatter_add_(1, bank_y[index], (similarity / temperature).exp())
        correct += int((scores.argmax(dim=1) == chunk_y).sum().item())
    return correct / len(queries)


def mcc(z: Tensor, latents: Tensor) -> float:
    """Mean correlation coefficient between embedding dimensions and ground-truth latents (Hyvarinen & Morioka 2016;
    as in cl-ica's ``disentanglement_utils``, Zimmermann et al. 2021, ICML).

    ``|rho_ab|`` is the absolute Pearson correlation over the N samples between column a of ``z`` (N x d_z) and
    column b of ``latents`` (N x d_l), 0 when either column is constant. A one-to-one matching of the columns that
    maximises the summed ``|rho|`` (the Hungarian method, :func:`ssl_bench.ops.metrics.best_matching`) pairs
    ``min(d_z, d_l)`` of them; MCC is the mean ``|rho|`` over those pairs: 1 when every latent is an affine function
    of its own embedding dimension, about 0 for independent ones.
    """
    x, s = _embeddings("z", z), _embeddings("latents", latents)
    if x.shape[0] != s.shape[0]:
        raise ValueError(f"z and latents must have the same number of rows; got {tuple(z.shape)} and "
                         f"{tuple(latents.shape)}")
    x, s = _centred(x), _centred(s.to(x.device))
    x_norm, s_norm = x.norm(dim=0), s.norm(dim=0)
    x = x / torch.where(x_norm > 0, x_norm, torch.ones_like(x_norm))
    s = s / torch.where(s_norm > 0, s_norm, torch.ones_like(s_norm))
    correlation = (x.T @ s).abs().clamp_max(1)
    rows, cols = best_matching(correlation)
    return correlation[rows, cols].mean().item()
