"""The alignment of two stacked linear layers, ``|V2^T U1|`` (Jing et al. 2022, Sec. 5, toy case 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.config import ConfigError, check_positive
from ssl_bench.registry import register
from ssl_bench.rundir import append_records


def last_two_weights(encoder: nn.Module) -> list[Tensor]:
    """The encoder's last two matrix-shaped parameters in definition order, ``[W1, W2]`` of ``z = W2 W1 x`` (the
    official ``alignment()`` reads them so), or fewer where it has fewer."""
    return [p for p in encoder.parameters() if p.ndim == 2][-2:]


def alignment_matrix(w1: Tensor, w2: Tensor) -> Tensor:
    """``A = V2^T U1`` for ``W1 = U1 S1 V1^T`` and ``W2 = U2 S2 V2^T``, singular values in descending order:
    ``A_ij`` is the cosine between W2's i-th right and W1's j-th left singular vector, so ``|A| = I`` when W2 reads
    W1's output directions in W1's order (the "weight matrices align" of Jing et al. 2022, Sec. 5)."""
    u1 = torch.linalg.svd(w1.detach().double(), full_matrices=False)[0]
    v2_t = torch.linalg.svd(w2.detach().double(), full_matrices=False)[2]
    return v2_t @ u1


def block_alignment(matrix: Tensor, k: int) -> float:
    """``||A[:k, :k]||_F^2 / k``: the share of W2's top-k right singular subspace that lies in W1's top-k left one
    (1: the same subspace; ``k / n`` on average for a random orthogonal ``A`` of size n)."""
    return (matrix[:k, :k].square().sum() / k).item()


@register("callback", "weight_alignment")
class WeightAlignment(Callback):
    """Logs, every ``every_n_epochs`` epochs (null: ``trainer.metrics_every_n_epochs``) and at the last, the alignment
    of the encoder's last two weight matrices (:func:`alignment_matrix`, ``A = V2^T U1``, n x n), with ``k`` =
    ``block`` (the directions expected to stay uncollapsed):

    - ``weight_alignment/diagonal``: ``mean_i |A_ii|``, 1 when W2 reads each of W1's singular directions by its own
      of the same rank (about ``sqrt(2 / (pi n))`` = 0.2 for a random orthogonal A, n = 16);
    - ``weight_alignment/block``: :func:`block_alignment` at ``k``: 1 when W2's top-k input subspace is W1's top-k
      output subspace, whatever the order inside it (``k / n`` on average for a random A);
    - ``weight_alignment/tail_diagonal``: ``mean_{i > k} |A_ii|``, the diagonal of the other directions, whose
      singular values are distinct where the top k are nearly equal (and so their order inside the block arbitrary).

    ``|A|`` and the singular values of W1 and W2 go to ``weight_alignment.jsonl`` in the run directory.
    """

    @dataclass
    class Config(CadenceConfig):
        block: int = 12

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_positive(f"{prefix}.block", self.block)

    def check(self, data: Any, method: Any, optim: Any) -> None:
        weights = last_two_weights(method.encoder)
        if len(weights) < 2 or weights[1].shape[1] != weights[0].shape[0]:
            raise ConfigError("callbacks.weight_alignment compares two stacked weight matrices z = W2 W1 x, which this "
                              "encoder does not have (e.g. encoder.layers=2); remove it with ~callbacks.weight_alignment")
        if not 0 < self.config.block < min(weights[0].shape):
            raise ConfigError(f"callbacks.weight_alignment.block={self.config.block} must be in [1, "
                              f"{min(weights[0].shape) - 1}], fewer than W1's singular values")

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        w1, w2 = last_two_weights(module.method.encoder)
        matrix = alignment_matrix(w1, w2)
        diagonal = matrix.diagonal().abs()
        module.log("weight_alignment/diagonal", diagonal.mean().item(), rank_zero_only=True)
        module.log("weight_alignment/block", block_alignment(matrix, self.config.block), rank_zero_only=True)
        module.log("weight_alignment/tail_diagonal", diagonal[self.config.block:].mean().item(), rank_zero_only=True)
        if trainer.is_global_zero:
            record = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                      "abs_alignment": matrix.abs().tolist(),
                      "w1": torch.linalg.svdvals(w1.detach().double()).tolist(),
                      "w2": torch.linalg.svdvals(w2.detach().double()).tolist()}
            append_records(trainer.default_root_dir, "weight_alignment.jsonl", [record])
