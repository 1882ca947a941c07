"""A fixed set of anchors with fixed positives, the setting of Esser, Nath & Ghoshdastidar 2023.

Each anchor ``x_i`` (i = 1..n) has one positive ``x_i^+ = x_i + eps_i``, ``eps_i ~ N(0, positive_std^2 I)`` drawn once,
and one negative ``x_i^-``, another anchor. The data matrix stacks them as rows, ``D = [anchors; positives]`` (2n x d),
and is optionally whitened without centring (:func:`whiten`), so that ``X = D^T`` satisfies ``X X^T = I``, the
condition of the paper's Theorem 2. The losses of the paper are trace losses of the outputs ``F`` of all rows of D
(:meth:`PairsDataModule.trace_matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from datamodules.base import DataModule
from datamodules.epochs import WholeEpochs, mini_batches
from ssl_bench.batch import Views
from ssl_bench.config import DataConfig, check_non_negative
from ssl_bench.ops.losses import DOT_PRODUCT_LOSSES

RANK_TOLERANCE = 1e-6
"""Singular values at most ``RANK_TOLERANCE * S[0]`` count as zero in :func:`whiten`."""


def whiten(data: Tensor) -> Tensor:
    """PCA-whitened coordinates of the rows of ``data`` without centring: with ``data = U S V^T`` (thin SVD) and r the
    number of singular values ``> RANK_TOLERANCE * S[0]`` (the numerical rank), ``U[:, :r]``, so that
    ``out^T out = I_r``."""
    u, s, _ = torch.linalg.svd(data, full_matrices=False)
    return u[:, s > RANK_TOLERANCE * s[0]]


def span(data: Tensor) -> Tensor:
    """An orthonormal basis (d x r) of the span of the rows of ``data``: the right singular vectors of its
    :data:`RANK_TOLERANCE`-numerical rank r."""
    _, s, vh = torch.linalg.svd(data, full_matrices=False)
    return vh[s > RANK_TOLERANCE * s[0]].T


class PairsDataModule(DataModule):
    """n fixed anchors (in a random order, classes mixed) with fixed positives, held as device tensors.

    ``inputs`` is the data matrix D (2n x ``input_dim``): rows ``0..n-1`` the anchors, rows ``n..2n-1`` their positives
    in the same order; ``anchors`` and ``positives`` are its halves, ``labels`` the anchors' classes (0 or 1). Every
    epoch is the same: the anchors and positives in their fixed order, split into mini-batches of ``batch_size``
    (``batch_size >= n``: one mini-batch, gradient descent). The method builds the negatives within each mini-batch:
    the negative of anchor i is the next anchor of the mini-batch (``view1.roll(-1, dims=0)``), so with the whole set
    as one batch it is anchor ``(i + 1) mod n``, an independent sample of the set since the anchors are in a random
    order.

    Subclasses implement :meth:`draw_anchors`.
    """

    @dataclass
    class Config(DataConfig):
        """Positives ``x + eps``, ``eps ~ N(0, positive_std^2 I)`` drawn once, in input space (in the anchors' span
        with ``whiten``); ``whiten`` replaces D by its whitened coordinates (D^T D = I)."""

        positive_std: float = 0.1
        whiten: bool = True

        def provides(self) -> set[str]:
            return {"vectors", "labels", "pairs"}

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_non_negative(f"{prefix}.positive_std", self.positive_std)

    num_classes = 2
    labelled_batches = False

    def __init__(self, config: Config, seed: int) -> None:
        """Anchors from :meth:`draw_anchors` with a ``numpy.random.RandomState(seed)``, ``eps`` from a
        ``torch.Generator`` seeded with ``seed``; D in float64, whitened, then stored as float32. With ``whiten`` the
        anchors are first written in an orthonormal basis of their own span (:func:`span`) and ``eps`` is drawn there:
        directions no anchor has (e.g. the always-blank border pixels of digits) would otherwise hold only noise,
        which whitening scales up to the size of the data's own directions."""
        self.config, self.seed = config, seed
        anchors, labels = self.draw_anchors(np.random.RandomState(seed))
        x = torch.as_tensor(anchors, dtype=torch.float64)
        if config.whiten:
            x = x @ span(x)
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        data = torch.cat([x, x + config.positive_std * eps])
        self.inputs = (whiten(data) if config.whiten else data).float()
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.n = len(x)

    @classmethod
    def from_config(cls, config: Config, seed: int) -> PairsDataModule:
        return cls(config, seed)

    def draw_anchors(self, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """The anchors (n x d, rows in a random order) and their classes (n; 0 or 1), drawn from ``rng``."""
        raise NotImplementedError

    @property
    def input_dim(self) -> int:
        """Columns of D: its numerical rank r when whitened, else the input dimension d."""
        return self.inputs.shape[1]

    @property
    def readout_train_size(self) -> int:
        """How many of the first anchors (in their random order) train a readout, ``floor(4 n / 5)``; the rest test
        it."""
        return 4 * self.n // 5

    @property
    def anchors(self) -> Tensor:
        """``inputs[:n]``."""
        return self.inputs[: self.n]

    @property
    def positives(self) -> Tensor:
        """``inputs[n:]``: row i is the positive of anchor i."""
        return self.inputs[self.n:]

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.inputs, self.labels = self.inputs.to(device), self.labels.to(device)

    def trace_matrix(self, loss: str) -> Tensor:
        """The symmetric C (2n x 2n, float64, on the inputs' device) with ``tr(F C F^T) = L`` for the outputs
        ``F = f(inputs)^T`` (k x 2n) when the batch is the whole set.

        The losses are sums over anchors (not means), as Eq. (1) and (2) of the paper, with ``j = (i + 1) mod n``:
        ``contrastive`` ``L_C = sum_i f(x_i)^T (f(x_j) - f(x_i^+))``: ``C[i, n+i] = C[n+i, i] = -1/2`` and
        ``C[i, j] += 1/2, C[j, i] += 1/2`` (entries accumulate, e.g. for n = 2 and n = 1);
        ``non_contrastive`` ``L_NC = -sum_i f(x_i)^T f(x_i^+)``: only the ``-1/2`` entries.
        """
        if loss not in DOT_PRODUCT_LOSSES:
            raise ValueError(f"loss={loss!r}; choose one of {DOT_PRODUCT_LOSSES}")
        n = self.n
        c = torch.zeros(2 * n, 2 * n, dtype=torch.float64, device=self.inputs.device)
        i = torch.arange(n, device=c.device)
        c[i, n + i] = c[n + i, i] = -0.5
        if loss == "contrastive":
            j = (i + 1) % n
            half = torch.full((n,), 0.5, dtype=c.dtype, device=c.device)
            c.index_put_((i, j), half, accumulate=True)
            c.index_put_((j, i), half, accumulate=True)
        return c

    def epoch_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Views]:
        """The same for every ``epoch``: ``Views(anchor_batch, positive_batch)`` for the anchors and positives in
        their fixed order, split into mini-batches of ``batch_size``; process ``rank`` takes its :func:`shard`."""
        return mini_batches(self.anchors, self.positives, self.config.batch_size, rank, world_size)

    def train_dataloader(self) -> WholeEpochs:
        return WholeEpochs(self)

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """The first ``num_samples`` anchors (all n if fewer)."""
        return self.anchors[:num_samples]

    def evaluation_views(self, num_samples: int, views: int) -> Tensor | None:
        """The fixed pairs ``(anchor, positive)`` of the first ``num_samples`` anchors, ``(n, 2, d)``, when
        ``views`` is 2 (the data has no other views); None otherwise."""
        return torch.stack((self.anchors, self.positives), dim=1)[:num_samples] if views == 2 else None

    def readout_dataloaders(self, batch_size: int) -> tuple[DataLoader, DataLoader]:
        """(train, test) loaders of ``(anchor, label)``: the first ``floor(4 n / 5)`` anchors of the (random) anchor
        order and the rest; each batch is one slice of the device tensors."""
        cut = self.readout_train_size
        splits = ((self.anchors[:cut], self.labels[:cut]), (self.anchors[cut:], self.labels[cut:]))
        datasets = [TensorDataset(x, y) for x, y in splits]
        train, test = (DataLoader(data, batch_size=None, sampler=BatchSampler(SequentialSampler(data), batch_size,
                                                                               False)) for data in datasets)
        return train, test
