"""Self-supervised losses as pure functions: tensors in, scalar tensor out.

Stop-gradients are part of each loss's definition and applied here, so a method only chooses which outputs to pass.
Under DDP the contrastive losses take their negatives from every process (:func:`~ssl_bench.ops.distributed.gather`,
gradients flow back to the process that computed them); each process averages over its own anchors, so the mean of
the per-process losses, and the DDP-averaged gradients, equal one process's over the global batch. The regularised
non-contrastive losses (:func:`vicreg_loss`, :func:`barlow_twins_loss`) follow the same convention: their batch
statistics are those of the gathered global batch, the same value in every process, and per-sample means run over
the process's own samples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from ssl_bench.ops.distributed import gather, world


def scale_embedding(z: Tensor, temperature: float | Tensor, normalize: bool = True) -> Tensor:
    """``u = n(z) / sqrt(tau)`` so that ``u_i . u_j = sum_k n(z_i)_k n(z_j)_k / tau_k``.

    ``temperature`` is a scalar or one value per dimension (adaptive temperature, Rusak et al. 2022, Sec. 3 and 4.2);
    ``n`` is the l2 normalization, or the identity when ``normalize`` is false.
    """
    u = F.normalize(z, dim=1) if normalize else z
    return u * torch.as_tensor(temperature, dtype=u.dtype, device=u.device).rsqrt()


class InfoNCETerms(NamedTuple):
    """An InfoNCE loss and its two summands, ``loss = alignment + uniformity`` (Wang & Isola 2020; the columns
    ``L_align``, ``L_uniform`` and ``L_CL`` of Rusak et al. 2022, Table 1): ``alignment = mean_i -s(a_i, a_i+)``
    and ``uniformity = mean_i log sum_{j in D_i} exp s(a_i, c_j)``, where the denominator ``D_i`` holds the positive
    and the negatives. Each term is a differentiable scalar."""

    loss: Tensor
    alignment: Tensor
    uniformity: Tensor


def _nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float | Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """The NT-Xent logits of every local anchor against its candidates (self-similarity left out or -inf) and the
    column of its positive."""
    u1, u2 = scale_embedding(z1, temperature, normalize), scale_embedding(z2, temperature, normalize)
    rank, world_size = world()
    batch = z1.shape[0]
    if world_size == 1:
        u = torch.cat([u1, u2])
        n = u.shape[0]
        logits = u @ u.T
        off_diagonal = logits.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)
        anchors = torch.arange(n, device=u.device)
        partner = anchors.roll(batch)
        return off_diagonal, partner - (partner > anchors).long()
    candidates = torch.cat([gather(u1), gather(u2)])
    total = candidates.shape[0] // 2
    local = torch.arange(batch, device=u1.device) + rank * batch
    own = torch.cat([local, local + total])
    partner = torch.cat([local + total, local])
    logits = torch.cat([u1, u2]) @ candidates.T
    logits = logits.masked_fill(F.one_hot(own, 2 * total).bool(), float("-inf"))
    return logits, partner


def nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor, normalize: bool = True) -> Tensor:
    """NT-Xent over the 2B views (SimCLR, Chen et al. 2020, Eq. 1; Pokle et al. 2022, Eq. 9).

    With ``u = [n(z1); n(z2)]`` and ``s_ij = u_i . u_j / tau``, anchor ``i`` with positive partner ``i+`` contributes
    ``-log( exp(s_{i,i+}) / sum_{j != i} exp(s_ij) )``; the loss is the mean over the 2B anchors. A per-dimension
    ``temperature`` (shape m) gives ``s_ij = sum_k u_ik u_jk / tau_k`` (Rusak et al. 2022). Self-similarity is excluded
    from every denominator. Under DDP the candidates ``j`` run over the views of all processes.
    """
    logits, positive = _nt_xent_logits(z1, z2, temperature, normalize)
    return F.cross_entropy(logits, positive)


def nt_xent_terms(z1: Tensor, z2: Tensor, temperature: float | Tensor, normalize: bool = True) -> InfoNCETerms:
    """:func:`nt_xent` split into ``alignment = mean_i -s_{i,i+}`` and ``uniformity = mean_i log sum_{j != i}
    exp(s_ij)`` over the 2B anchors; ``loss`` is exactly :func:`nt_xent`'s value (the terms add up to it to
    rounding)."""
    logits, positive = _nt_xent_logits(z1, z2, temperature, normalize)
    alignment = -logits.gather(1, positive[:, None]).mean()
    return InfoNCETerms(F.cross_entropy(logits, positive), alignment, torch.logsumexp(logits, dim=1).mean())


def lp_distances(a: Tensor, b: Tensor, temperature: float | Tensor, p: float) -> Tensor:
    """``D_ij = sum_k |a_ik - b_jk|^p / tau_k`` for every pair of rows of ``a`` (n x m) and ``b`` (n' x m).

    ``temperature`` is a scalar or one value per dimension. For ``p >= 1``, ``D = cdist(a', b', p)^p`` with
    ``a' = a / tau^(1/p)`` (likewise ``b'``), in memory n x n' (cl-ica's batch of 6144 with m = 10 would need 1.5 GB
    a step for the n x n' x m differences, and their allocation per step costs more than the arithmetic on a CPU).
    For ``p < 1`` the differences are formed, with magnitudes floored at the smallest normal float so that ``|x|^p``
    has a finite (zero) gradient at ``x = 0``.
    """
    if p < 1:
        return _lp(a[:, None, :] - b[None, :, :], temperature, p)
    scale = torch.as_tensor(temperature, dtype=a.dtype, device=a.device).pow(-1.0 / p)
    return torch.cdist(a * scale, b * scale, p=p, compute_mode="donot_use_mm_for_euclid_dist").pow(p)


def _lp(difference: Tensor, temperature: float | Tensor, p: float) -> Tensor:
    """``sum_k |x_k|^p / tau_k`` over the last dimension of ``difference``."""
    magnitude = difference.abs()
    if p < 1:
        magnitude = magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny)
    tau = torch.as_tensor(temperature, dtype=magnitude.dtype, device=magnitude.device)
    return (magnitude.pow(p) / tau).sum(dim=-1)


def _anchor_info_nce(positive: Tensor, negatives: Tensor, include_self: bool) -> InfoNCETerms:
    """InfoNCE terms from the positive logits (b) and the logits against every process's anchors (b x N); the
    anchor's own column is dropped unless ``include_self``."""
    if not include_self:
        rank, _ = world()
        own = torch.arange(positive.shape[0], device=positive.device) + rank * positive.shape[0]
        negatives = negatives.masked_fill(F.one_hot(own, negatives.shape[1]).bool(), float("-inf"))
    alignment = -positive.mean()
    uniformity = torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1).mean()
    return InfoNCETerms(alignment + uniformity, alignment, uniformity)


def lp_info_nce(z1: Tensor, z2: Tensor, temperature: float | Tensor, p: float = 2.0,
                include_self: bool = False) -> InfoNCETerms:
    """The l_p InfoNCE for unnormalized embeddings (Zimmermann et al. 2021; Rusak et al. 2022, Eqs. 1 and 4).

    Similarity ``s(a, b) = -sum_k |a_k - b_k|^p / tau_k`` (``-||a - b||_p^p / tau`` for a scalar ``tau``; Eq. 4 is
    ``p = 2``, ``tau = 2``). Anchors are the rows of ``z1``, the positive of anchor ``i`` is ``z2_i`` and its
    negatives are the other anchors ``z1_j`` (``j != i``, drawn from the marginal as in Eq. 4 and cl-ica, which pairs
    every ``h(z1_i)`` with every row of the rolled batch ``h(z1)``); the denominator holds the positive as well:

        l_i = -log( exp s(z1_i, z2_i) / (exp s(z1_i, z2_i) + sum_{j != i} exp s(z1_i, z1_j)) )
            = ||z1_i - z2_i||_p^p / tau + log( exp s(z1_i, z2_i) + sum_{j != i} exp s(z1_i, z1_j) ).

    ``alignment`` is the mean of the first summand (>= 0), ``uniformity`` the mean of the second (a log-sum-exp, no
    ``- log M``), and ``loss = alignment + uniformity`` is their mean over the anchors: the box columns of Table 1.
    ``include_self`` keeps ``j = i`` (``s = 0``) among the negatives, as cl-ica's full matrix against the rolled batch
    does. Under DDP the negatives run over the anchors of all processes
    (:func:`~ssl_bench.ops.distributed.gather`).
    """
    positive = -_lp(z1 - z2, temperature, p)
    return _anchor_info_nce(positive, -lp_distances(z1, gather(z1), temperature, p), include_self)


def cosine_info_nce(z1: Tensor, z2: Tensor, temperature: float | Tensor, normalize: bool = True,
                    include_self: bool = False) -> InfoNCETerms:
    """The InfoNCE of :func:`lp_info_nce` with the cosine similarity ``s(a, b) = sum_k n(a)_k n(b)_k / tau_k`` (the
    sphere columns of Rusak et al. 2022, Table 1; cl-ica's ``SimCLRLoss``): anchors ``z1``, positives ``z2``,
    negatives the other anchors; ``alignment = mean_i -s(z1_i, z2_i)`` can be negative."""
    u1, u2 = scale_embedding(z1, temperature, normalize), scale_embedding(z2, temperature, normalize)
    return _anchor_info_nce((u1 * u2).sum(dim=1), u1 @ gather(u1).T, include_self)


def info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """B-way cross-view InfoNCE, mean of both directions (van den Oord et al. 2018; DirectCLR, Jing et al. 2022).

    ``l(a, b) = -mean_i log( exp(n(a_i) . n(b_i) / tau) / sum_j exp(n(a_i) . n(b_j) / tau) )`` and the loss is
    ``(l(z1, z2) + l(z2, z1)) / 2``; under DDP ``j`` runs over the other view of every process.
    """
    u1, u2 = scale_embedding(z1, temperature), scale_embedding(z2, temperature)
    rank, _ = world()
    targets = torch.arange(z1.shape[0], device=z1.device) + rank * z1.shape[0]
    return 0.5 * (F.cross_entropy(u1 @ gather(u2).T, targets) + F.cross_entropy(u2 @ gather(u1).T, targets))


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean and unit variance per dimension over the global batch, divided by ``sqrt(m)`` so that rows have
    unit mean square norm like l2-normalized ones (the standardized outputs of Rusak et al. 2022, Sec. 4.2)."""
    everything = gather(z)
    mean, var = everything.mean(dim=0), everything.var(dim=0, unbiased=False)
    return (z - mean) * (var + eps).rsqrt() / z.shape[1] ** 0.5


def normalized_mse(online: Tensor, target: Tensor) -> Tensor:
    """BYOL / non-contrastive loss (Pokle et al. 2022, Eq. 4):
    ``mean_i || n(a_i) - n(sg(b_i)) ||^2 = 2 - 2 mean_i cos(a_i, b_i)``."""
    cos = F.cosine_similarity(online, target.detach(), dim=1)
    return 2.0 - 2.0 * cos.mean()


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's distance ``D(p, z) = -mean_i cos(p_i, sg(z_i))`` (Chen & He 2021, Eq. 1-2)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def half_squared_distance(p: Tensor, z: Tensor) -> Tensor:
    """Bao 2023, Eq. (1): ``D(p, z) = 1/2 mean_i ||p_i - sg(z_i)||^2``, the L2 loss without feature normalisation."""
    return 0.5 * (p - z.detach()).pow(2).sum(dim=1).mean()


DOT_PRODUCT_LOSSES = ("contrastive", "non_contrastive")
"""Esser et al. 2023's losses: Eq. (1), :func:`contrastive_dot`, and Eq. (2), :func:`non_contrastive_dot`."""


def contrastive_dot(anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Esser et al. 2023, Eq. (1): ``L_C = sum_i f(x_i)^T (f(x_i^-) - f(x_i^+))``, rows of the (B x k) arguments the
    outputs of the anchors, their positives and their negatives; a sum over the batch, as the paper."""
    return (anchor * (negative - positive)).sum()


def non_contrastive_dot(anchor: Tensor, positive: Tensor) -> Tensor:
    """Esser et al. 2023, Eq. (2): ``L_NC = - sum_i f(x_i)^T f(x_i^+)`` (SimSiam's cosine replaced by the dot
    product); a sum over the batch."""
    return -(anchor * positive).sum()


def trace_loss(outputs: Tensor, c: Tensor) -> Tensor:
    """Esser et al. 2023, Eq. (8): ``L = tr(F C F^T)`` for outputs ``F`` (k x n, one column per data point) and a
    symmetric data-dependent ``C`` (n x n); Eqs. (1)-(2) are this loss for the ``C`` of their pairs (Eq. 7)."""
    return torch.einsum("ki,ij,kj->", outputs, c.to(outputs.dtype), outputs)


def _full_precision(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``loss(z1, z2, ...)`` computed outside autocast, with 16-bit embeddings upcast to float32: batch variances and
    a correlation near 1 lose most of their digits in 16 bits (bfloat16 resolves 1 - C_ii only to 2^-8). Other
    dtypes (float32, float64) are kept."""

    @functools.wraps(loss)
    def in_full_precision(z1: Tensor, z2: Tensor, *args: object, **kwargs: object) -> Tensor:
        with torch.autocast(z1.device.type, enabled=False):
            return loss(*(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z for z in (z1, z2)), *args,
                        **kwargs)

    return in_full_precision


def off_diagonal(matrix: Tensor) -> Tensor:
    """The d(d - 1) off-diagonal entries of a square d x d ``matrix``, flattened."""
    d = matrix.shape[0]
    return matrix.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _variance_hinge(z: Tensor, eps: float) -> Tensor:
    """VICReg's ``v(Z) = mean_j relu(1 - sqrt(Var(z^j) + eps))`` with the unbiased variance over the rows of ``z``
    (Bardes et al. 2022, Eqs. 1-2)."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance_penalty(z: Tensor) -> Tensor:
    """VICReg's ``c(Z) = sum_{i != j} C(Z)_ij^2 / d`` with ``C(Z) = (Z - mean)^T (Z - mean) / (N - 1)`` over the rows
    of ``z`` (Bardes et al. 2022, Eqs. 3-4)."""
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / (z.shape[0] - 1)
    return off_diagonal(covariance).pow(2).sum() / z.shape[1]


@_full_precision
def vicreg_loss(z1: Tensor, z2: Tensor, sim_coeff: float | Tensor = 25.0, std_coeff: float | Tensor = 25.0,
                cov_coeff: float | Tensor = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg (Bardes et al. 2022, ICLR, Eqs. 1-6) of the embeddings ``z1``, ``z2`` (N x d) of two views:

        L = sim_coeff s(Z1, Z2) + std_coeff (v(Z1) + v(Z2)) / 2 + cov_coeff (c(Z1) + c(Z2))

    - invariance ``s(Z1, Z2) = mean_{i, j} (z1_ij - z2_ij)^2`` (Eq. 5 divided by d: the mean over samples and dims);
    - variance ``v(Z) = mean_j relu(1 - sqrt(Var(z^j) + eps))`` (Eqs. 1-2; unbiased variance over the batch);
    - covariance ``c(Z) = sum_{i != j} C(Z)_ij^2 / d``, ``C(Z)`` the unbiased covariance matrix (Eqs. 3-4).

    The averaging is that of the official code (facebookresearch/vicreg, ``main_vicreg.py``), whose coefficients
    25 / 25 / 1 the paper reports as lambda / mu / nu, and of lightly's ``VICRegLoss``: the two branches' variance
    terms are averaged (Eq. 6 writes ``mu (v(Z1) + v(Z2))``), their covariance terms summed. A collapsed batch (all
    rows equal) has ``v = 1 - sqrt(eps)`` per branch, so a variance term of ``std_coeff (1 - sqrt(eps))``, and
    ``c = 0``.

    Under DDP the variance and covariance are those of the global batch (every process's ``z`` gathered with
    :func:`~ssl_bench.ops.distributed.gather`, as the official code), the same value in every process, and ``s`` is
    the mean over the process's own samples; the mean of the per-process losses is one process's over the global
    batch, and so are the DDP-averaged gradients. Under mixed precision the loss is computed in float32.
    """
    invariance = F.mse_loss(z1, z2)
    a, b = gather(z1), gather(z2)
    variance = (_variance_hinge(a, eps) + _variance_hinge(b, eps)) / 2
    covariance = _covariance_penalty(a) + _covariance_penalty(b)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


@_full_precision
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float | Tensor = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, ICML, Eqs. 1-2) of the embeddings ``z1``, ``z2`` (N x d) of two views:

        L = sum_i (1 - C_ii)^2 + lambda_offdiag sum_{i != j} C_ij^2,    C = Z1n^T Z2n / N,

    where ``Zn = (Z - mean) / sqrt(Var(Z) + eps)`` standardises each dimension over the batch with the biased
    variance: training-mode batch norm without affine, as the official code's ``nn.BatchNorm1d(affine=False)`` and
    lightly's ``BarlowTwinsLoss`` (``F.batch_norm``, eps 1e-5), so ``C`` is Eq. (2)'s cross-correlation up to eps.
    A collapsed batch (all rows equal) gives ``C = 0`` and ``L = d``.

    Under DDP the means, variances and ``C`` are those of the global batch (every process's ``z`` gathered with
    :func:`~ssl_bench.ops.distributed.gather`), the same loss in every process, so that the mean of the per-process
    losses and the DDP-averaged gradients are one process's over the global batch. (The official code sums
    per-process ``C`` with a non-differentiable all-reduce after synchronised batch norm, which leaves DDP's average
    a 1/N_processes multiple of the one-process gradient; lightly's ``gather_distributed`` standardises per process.)
    Under mixed precision the loss is computed in float32.
    """
    a, b = gather(z1), gather(z2)
    a_n, b_n = ((z - z.mean(dim=0)) * torch.rsqrt(z.var(dim=0, unbiased=False) + eps) for z in (a, b))
    c = a_n.T @ b_n / a.shape[0]
    return (1.0 - c.diagonal()).pow(2).sum() + lambda_offdiag * off_diagonal(c).pow(2).sum()
