"""Self-supervised losses as pure functions: tensors in, scalar tensor out.

Stop-gradients are part of each loss's definition and applied here, so a method only chooses which outputs to pass.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent over the 2B views (SimCLR; seed 000, Eq. 9 with normalised representations).

    With ``u = [n(z1); n(z2)]`` (2B x m, ``n`` the l2 normalisation) and ``s_ij = u_i . u_j / tau``, anchor ``i`` with
    positive partner ``i+`` contributes ``-log( exp(s_{i,i+}) / sum_{j != i} exp(s_ij) )``; the loss is the mean over
    the 2B anchors. Self-similarity is excluded from every denominator by dropping the diagonal of the 2B x 2B
    similarity matrix (a strided view, no masking), which shifts the partner's column index by one after the diagonal.
    """
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    n, batch = u.shape[0], z1.shape[0]
    logits = (u / temperature) @ u.T
    off_diagonal = logits.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(n, n - 1)
    anchors = torch.arange(n, device=u.device)
    partner = anchors.roll(batch)
    return F.cross_entropy(off_diagonal, partner - (partner > anchors).long())


def normalized_mse(online: Tensor, target: Tensor) -> Tensor:
    """BYOL / non-contrastive loss (seed 000, Eq. 4): ``mean_i || n(a_i) - n(sg(b_i)) ||^2 = 2 - 2 mean_i cos(a_i, b_i)``."""
    cos = F.cosine_similarity(online, target.detach(), dim=1)
    return 2.0 - 2.0 * cos.mean()


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's distance ``D(p, z) = -mean_i cos(p_i, sg(z_i))`` (Chen & He 2021, Eq. 1-2)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()
