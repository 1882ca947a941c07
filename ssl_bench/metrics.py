"""Collapse metrics computed from weights and ground truth."""

from __future__ import annotations

import torch
from torch import Tensor


def max_cosine(weight: Tensor, dictionary: Tensor, absolute: bool = True) -> dict[str, float]:
    """Max-cosine of seed 000 (Eq. 12).

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
