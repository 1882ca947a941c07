"""ssl-bench's metrics as pure functions on torch tensors (CPU or GPU, float32 or float64), for anyone's embeddings.

Label-free collapse diagnostics (:mod:`ssl_bench.ops.collapse`): :func:`rankme`, :func:`alpha_req`, :func:`lidar`,
:func:`stable_rank`, :func:`nesum`, :func:`alignment`, :func:`uniformity`, :func:`wasserstein_uniformity`; with
labels or ground truth: :func:`knn_accuracy`, :func:`mcc`; ssl-bench's own (:mod:`ssl_bench.ops.metrics`):
:func:`max_cosine`, :func:`embedding_spectrum` with :func:`effective_rank`, :func:`std_l2`, :func:`r2_scores`,
:func:`fit_linear_readout`. :func:`label_free_diagnostics` computes every label-free one at once, as the callbacks
log them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_bench.ops.collapse import (
    alignment,
    alpha_req,
    knn_accuracy,
    lidar,
    mcc,
    nesum,
    rankme,
    stable_rank,
    uniformity,
    wasserstein_uniformity,
)
from ssl_bench.ops.metrics import (
    effective_rank,
    embedding_spectrum,
    fit_linear_readout,
    max_cosine,
    r2_scores,
    std_l2,
)

__all__ = ["alignment", "alpha_req", "effective_rank", "embedding_spectrum", "fit_linear_readout", "knn_accuracy",
           "label_free_diagnostics", "lidar", "max_cosine", "mcc", "nesum", "r2_scores", "rankme", "stable_rank",
           "std_l2", "uniformity", "wasserstein_uniformity", "DIAGNOSTICS"]

DIAGNOSTICS = ("rankme", "alpha_req", "alpha_req_r2", "stable_rank", "nesum", "effective_rank", "std", "uniformity",
               "wasserstein_uniformity")
"""The names :func:`label_free_diagnostics` returns for embeddings alone; with views also ``lidar`` and
``alignment``."""


def label_free_diagnostics(z: Tensor, views: Tensor | None = None) -> dict[str, float]:
    """Every label-free diagnostic of the embeddings ``z`` (N x d) and, given ``views`` (n x q x d: q embedded views
    of each of n samples), of the views.

    ``rankme``, ``alpha_req`` (and its log-log fit's ``alpha_req_r2``), ``stable_rank``, ``nesum``, ``uniformity``
    and ``wasserstein_uniformity`` as their functions compute them; ``effective_rank``, the entropy rank of the
    covariance of the l2-normalized embeddings (Jing et al. 2022's spectrum, :func:`embedding_spectrum`), which is
    not RankMe; ``std``, the per-dimension std of the l2-normalized embeddings averaged over dimensions, unscaled
    (solo-learn's ``z_std``, lightly's ``std_of_l2_normalized``; ssl-bench's ``collapse/std_l2`` is this times
    sqrt(d)); with views ``lidar`` and ``alignment`` of views 0 and 1. Non-finite embeddings (a diverged model) give
    NaN for every name instead of an error.
    """
    names = DIAGNOSTICS + (("lidar", "alignment") if views is not None else ())
    if not bool(torch.isfinite(z).all()) or (views is not None and not bool(torch.isfinite(views).all())):
        return dict.fromkeys(names, math.nan)
    fit = alpha_req(z)
    metrics = {"rankme": rankme(z), "alpha_req": fit["alpha"], "alpha_req_r2": fit["fit_r2"],
               "stable_rank": stable_rank(z), "nesum": nesum(z),
               "effective_rank": effective_rank(embedding_spectrum(z)), "std": std_l2(z) / math.sqrt(z.shape[1]),
               "uniformity": uniformity(z),
               "wasserstein_uniformity": wasserstein_uniformity(z)}
    if views is not None:
        metrics.update(lidar=lidar(views), alignment=alignment(views[:, 0], views[:, 1]))
    return metrics
