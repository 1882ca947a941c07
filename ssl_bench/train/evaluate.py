"""InfoNCE, alignment and uniformity of an encoder on fresh positive pairs (Rusak et al. 2022, Table 1).

``ssl-bench evaluate --config X [overrides]`` builds the config's data and method, with the encoder's weights from the
checkpoint ``trainer.resume`` when given (a trained ``f``) and else as the config builds it (``encoder=inverse``: the
exact ``f = g^-1``), draws ``N`` positive pairs ``(g(z), g(z~))``, ``z ~ p(z)``, ``z~ ~ p(z~ | z)``, and computes on the
embeddings ``a_i = h(f(g(z_i)))``, ``a_i+ = h(f(g(z~_i)))`` (``h``: the method's projector) the loss of
``method=adaptive_infonce`` with its similarity, ``p``, temperatures, normalization and standardization, over all
``N`` anchors at once (M = N - 1 negatives each, the other anchors):

    L_align   = mean_i -s(a_i, a_i+)
    L_uniform = mean_i log( exp s(a_i, a_i+) + sum_{j != i} exp s(a_i, a_j) )
    L_CL      = L_align + L_uniform

with ``s(a, b) = -sum_k |a_k - b_k|^p / tau_k`` (``similarity=lp``, :func:`ssl_bench.ops.losses.lp_info_nce`) or
``s(a, b) = sum_k n(a)_k n(b)_k / tau_k`` (``cosine``, :func:`ssl_bench.ops.losses.cosine_info_nce`). Large ``N`` is
computed in blocks of anchors, with the same value as the single call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssl_bench.config import ConfigError, RunConfig
from ssl_bench.ops.losses import (
    InfoNCETerms,
    cosine_info_nce,
    lp_distances,
    lp_info_nce,
    scale_embedding,
    standardize,
)
from ssl_bench.train.build import build_data, build_method, resume_checkpoint
from ssl_bench.train.checkpoint import read_checkpoint

EVALUATION_STREAM = 2**61
"""Pairs are drawn by a generator seeded ``2**61 + seed``, a stream no training epoch or probe uses."""


def info_nce_terms(z1: Tensor, z2: Tensor, similarity: str, temperatures: Tensor | float, p: float = 2.0,
                   normalize: bool = False, block: int = 1024) -> InfoNCETerms:
    """The anchor InfoNCE of ``z1`` (anchors, negatives) and ``z2`` (positives): :func:`lp_info_nce` or
    :func:`cosine_info_nce` with ``normalize``; above ``block`` anchors the same sums are taken ``block`` anchors at a
    time, so that memory is ``block x N x m`` instead of ``N x N x m``."""
    if similarity not in ("lp", "cosine"):
        raise ValueError(f"similarity={similarity!r}; choose lp or cosine")
    if similarity == "lp" and normalize:
        z1, z2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    n = z1.shape[0]
    if n <= block:
        if similarity == "lp":
            return lp_info_nce(z1, z2, temperatures, p=p)
        return cosine_info_nce(z1, z2, temperatures, normalize=normalize)
    if similarity == "cosine":
        z1, z2 = scale_embedding(z1, temperatures, normalize), scale_embedding(z2, temperatures, normalize)
    positives, logsumexps = [], []
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        if similarity == "lp":
            positive = -lp_distances(z1[rows], z2[rows], temperatures, p).diagonal()
            negatives = -lp_distances(z1[rows], z1, temperatures, p)
        else:
            positive = (z1[rows] * z2[rows]).sum(dim=1)
            negatives = z1[rows] @ z1.T
        own = torch.arange(rows.start, rows.stop, device=z1.device)
        negatives[torch.arange(len(own), device=z1.device), own] = float("-inf")
        positives.append(positive)
        logsumexps.append(torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1))
    alignment, uniformity = -torch.cat(positives).mean(), torch.cat(logsumexps).mean()
    return InfoNCETerms(alignment + uniformity, alignment, uniformity)


def load_trained(method: torch.nn.Module, path: Path) -> None:
    """Load the ``method.*`` weights of the Lightning checkpoint ``path`` that ``ssl-bench fit`` wrote into ``method``;
    a one-line :class:`ConfigError` when it is not one or holds another model."""
    checkpoint = read_checkpoint(path, method.state_dict(), "evaluate with the config and overrides of the run that "
                                 "wrote it", prefix="method.")
    method.load_state_dict({k.removeprefix("method."): v for k, v in checkpoint["state_dict"].items()
                            if k.startswith("method.")})


def evaluate(cfg: RunConfig, samples: int = 10_000, block: int = 512) -> dict[str, Any]:
    """Alignment, uniformity and InfoNCE (``loss``) of the config's encoder on ``samples`` fresh positive pairs of
    the config's data, with the loss settings of ``method=adaptive_infonce``; the result also names what was
    evaluated (encoder, checkpoint, data space, seed, samples, similarity, temperatures)."""
    if cfg.method.name != "adaptive_infonce":
        raise ConfigError(f"evaluate computes the InfoNCE of method.name=adaptive_infonce (its similarity, p and "
                          f"temperatures), not of method.name={cfg.method.name}; use method=adaptive_infonce")
    if samples < 2:
        raise ConfigError(f"--samples={samples} must be >= 2 (each anchor needs a negative)")
    data = build_data(cfg)
    for needed in ("sample_marginal", "sample_conditional", "mixing"):
        if not callable(getattr(data, needed, None)):
            raise ConfigError(f"evaluate draws latent pairs through the data's mixing, which data.name={cfg.data.name} "
                              "does not expose; use data.name=invertible_mlp")
    method = build_method(cfg, data)
    checkpoint = resume_checkpoint(cfg)
    if checkpoint is None and cfg.trainer.resume == "auto":
        raise ConfigError(f"trainer.resume=auto finds no checkpoints/last.ckpt in run_dir={cfg.run_dir}; point "
                          "trainer.resume to a checkpoint, or leave it out to evaluate the encoder as built")
    if checkpoint is not None:
        load_trained(method, checkpoint)
    method.eval()
    draw = torch.Generator().manual_seed(EVALUATION_STREAM + cfg.seed)
    with torch.no_grad():
        z = data.sample_marginal(samples, draw)
        z_tilde = data.sample_conditional(z, draw)
        embeddings = [method.representations(data.mixing(latents))["projector"] for latents in (z, z_tilde)]
        if method.standardize:
            embeddings = [standardize(e) for e in embeddings]
        terms = info_nce_terms(*embeddings, method.similarity, method.temperatures, method.p, method.normalize,
                               block)
    return {"alignment": terms.alignment.item(), "uniformity": terms.uniformity.item(), "loss": terms.loss.item(),
            "encoder": cfg.encoder.name, "checkpoint": None if checkpoint is None else str(checkpoint),
            "space": getattr(cfg.data, "space", None), "n_content": getattr(cfg.data, "n_content", None),
            "seed": cfg.seed, "samples": samples,
            "similarity": method.similarity, "p": method.p, "temperatures": method.temperatures.tolist()}


def table_line(result: dict[str, Any]) -> str:
    """One line: what was evaluated and its three terms."""
    what = "trained f" if result["checkpoint"] else f"encoder={result['encoder']}"
    return (f"{what} on {result['space']} (seed {result['seed']}, {result['samples']} pairs, {result['similarity']}):"
            f" alignment {result['alignment']:.4g} | uniformity {result['uniformity']:.4g} | "
            f"InfoNCE {result['loss']:.4g}")
