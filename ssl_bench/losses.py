"""Self-supervised losses as pure functions: tensors in, scalar tensor out.

Stop-gradients are part of each loss's definition and applied here, so a method only chooses which outputs to pass.
Under DDP the contrastive losses take their negatives from every process (:func:`gather`, gradients flow back to the
process that computed them); each process averages over its own anchors, so the mean of the per-process losses,
and the DDP-averaged gradients, equal one process's over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather
from torch.nn import functional as F


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(z: Tensor) -> Tensor:
    """Concatenate ``z`` (b x m) over all processes in rank order (R b x m), differentiably."""
    if world()[1] == 1:
        return z
    return torch.cat(all_gather(z.contiguous()))


def scale_embedding(z: Tensor, temperature: float | Tensor, normalize: bool = True) -> Tensor:
    """``u = n(z) / sqrt(tau)`` so that ``u_i . u_j = sum_k n(z_i)_k n(z_j)_k / tau_k``.

    ``temperature`` is a scalar or one value per dimension (adaptive temperature, Rusak et al. 2022, Sec. 3 and 4.2);
    ``n`` is the l2 normalization, or the identity when ``normalize`` is false.
    """
    u = F.normalize(z, dim=1) if normalize else z
    return u * torch.as_tensor(temperature, dtype=u.dtype, device=u.device).rsqrt()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor, normalize: bool = True) -> Tensor:
    """NT-Xent over the 2B views (SimCLR, Chen et al. 2020, Eq. 1; Pokle et al. 2022, Eq. 9).

    With ``u = [n(z1); n(z2)]`` and ``s_ij = u_i . u_j / tau``, anchor ``i`` with positive partner ``i+`` contributes
    ``-log( exp(s_{i,i+}) / sum_{j != i} exp(s_ij) )``; the loss is the mean over the 2B anchors. A per-dimension
    ``temperature`` (shape m) gives ``s_ij = sum_k u_ik u_jk / tau_k`` (Rusak et al. 2022). Self-similarity is excluded from
    every denominator. Under DDP the candidates ``j`` run over the views of all processes.
    """
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
        return F.cross_entropy(off_diagonal, partner - (partner > anchors).long())
    candidates = torch.cat([gather(u1), gather(u2)])
    total = candidates.shape[0] // 2
    local = torch.arange(batch, device=u1.device) + rank * batch
    own = torch.cat([local, local + total])
    partner = torch.cat([local + total, local])
    logits = torch.cat([u1, u2]) @ candidates.T
    logits = logits.masked_fill(F.one_hot(own, 2 * total).bool(), float("-inf"))
    return F.cross_entropy(logits, partner)


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
