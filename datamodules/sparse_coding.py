"""Synthetic sparse-coding data of Pokle et al. 2022, generated and augmented on the device.

Data (Eq. 1): ``x = M z + e`` with a column-orthonormal dictionary ``M`` (p x d), a sparse latent ``z`` and Gaussian
noise ``e ~ N(0, sigma^2 I_p)``. Views come from random masks: independent (Eq. 3) ``a1 = D1 x, a2 = D2 x`` or dependent
(Eq. 2) ``a1 = 2 D x, a2 = 2 (I - D) x``, with diagonal ``D`` whose entries are 1 with probability ``1 - mask_prob``.

The whole dataset is a tensor; each epoch is one shuffle and one batched masking, handed to the method as one
training batch of all its mini-batches (a ``list[Views]``), so no per-sample Python code runs during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from datamodules.base import EVALUATION_VIEWS_STREAM, DataModule, stacked_views
from datamodules.epochs import WholeEpochs, epoch_seed, mini_batches
from ssl_bench.batch import Views
from ssl_bench.config import (
    ConfigError,
    DataConfig,
    check_choice,
    check_positive,
    check_range,
)
from ssl_bench.registry import register


def make_dictionary(p: int, d: int, kind: str, generator: torch.Generator) -> Tensor:
    """Ground-truth dictionary ``M`` (p x d): Q of the QR decomposition of a standard Gaussian matrix, or identity."""
    if kind == "identity":
        return torch.eye(p, d)
    q, r = torch.linalg.qr(torch.randn(p, d, generator=generator))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def fixed_count_sizes(d: int, sparsity: float) -> tuple[int, int]:
    """Numbers of -1 and +1 entries per sample in the official code's sampler.

    ``n_neg = ceil(d s / 2)`` and ``n_pos = max(ceil(d s), n_neg + 1) - n_neg``, so every sample has at least one +1.
    """
    n_neg = math.ceil(d * sparsity / 2)
    return n_neg, max(math.ceil(d * sparsity), n_neg + 1) - n_neg


def sample_latents(n: int, d: int, sparsity: float, latent: str, sampler: str, generator: torch.Generator) -> Tensor:
    """Sparse latents ``z`` (n x d).

    - ``one_hot``: a single coordinate equal to 1.
    - ``bernoulli`` (paper, Sec. 4.2): each ``z_i`` is non-zero with probability ``sparsity`` (+-1 with
      ``sparsity / 2`` each when symmetric, 1 when binary); all-zero rows are drawn again.
    - ``fixed_count`` (official code): a random set of ``n_neg`` coordinates is -1 and ``n_pos`` is +1
      (:func:`fixed_count_sizes`); binary latents set all ``n_neg + n_pos`` of them to 1.
    """
    if latent == "one_hot":
        return torch.nn.functional.one_hot(torch.randint(d, (n,), generator=generator), d).float()
    if sampler == "fixed_count":
        n_neg, n_pos = fixed_count_sizes(d, sparsity)
        if n_neg + n_pos > d:
            raise ValueError(f"fixed_count latents need {n_neg + n_pos} non-zero coordinates but d={d}; "
                             "lower the sparsity or raise d")
        ranks = torch.rand(n, d, generator=generator).argsort(dim=1).argsort(dim=1)
        z = (ranks < n_neg + n_pos).float()
        if latent == "symmetric":
            z = z - 2.0 * (ranks < n_neg).float()
        return z
    z = torch.zeros(n, d)
    todo = torch.arange(n)
    while todo.numel():
        u = torch.rand(todo.numel(), d, generator=generator)
        draw = (u < sparsity).float()
        if latent == "symmetric":
            draw = draw * torch.where(u < sparsity / 2, -1.0, 1.0)
        z[todo] = draw
        todo = todo[draw.abs().sum(dim=1) == 0]
    return z


def mask_views(x: Tensor, augmentation: str, mask_prob: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two masked views of every row of ``x`` (Eq. 3 independent, Eq. 2 dependent); masks keep ``1 - mask_prob``."""
    keep = 1.0 - mask_prob
    d1 = (torch.rand(x.shape, generator=generator, device=x.device) < keep).to(x.dtype)
    if augmentation == "dependent":
        return 2.0 * d1 * x, 2.0 * (1.0 - d1) * x
    d2 = (torch.rand(x.shape, generator=generator, device=x.device) < keep).to(x.dtype)
    return d1 * x, d2 * x


@register("data", "sparse_coding")
class SparseCodingDataModule(DataModule):
    """Sparse-coding data (Eq. 1) with masking augmentation, held as device tensors.

    Ground truth for metric callbacks: ``dictionary`` (M, p x d), ``latents`` (z, n x d) and ``inputs`` (x, n x p);
    the evaluation interface: ``evaluation_inputs``, ``num_classes``, ``readout_dataloaders``, ``latent_groups`` and
    ``latent_probe_data``.
    """

    @dataclass
    class Config(DataConfig):
        """``n`` samples of dimension ``p`` from ``d`` latents with ``sparsity``; ``latent`` symmetric {0, +-1},
        binary {0, 1} or one_hot; ``sampler`` fixed_count (official code) or bernoulli (the text);
        ``dictionary`` orthonormal or identity; ``noise_std`` null for ``sqrt(ln d) / d`` (official code);
        ``augmentation`` dependent (Eq. 2) or independent (Eq. 3) masks zeroing each coordinate with
        ``mask_prob``; ``drop_last`` drops a partial last mini-batch."""

        n: int = 3000
        p: int = 50
        d: int = 10
        sparsity: float = 0.1
        latent: str = "symmetric"
        sampler: str = "fixed_count"
        dictionary: str = "orthonormal"
        noise_std: Optional[float] = None
        augmentation: str = "dependent"
        mask_prob: float = 0.5
        drop_last: bool = False

        def provides(self) -> set[str]:
            return {"vectors", "dictionary", "latents", *(("labels",) if self.latent == "one_hot" else ())}

        def validate(self, prefix: str) -> None:
            for key in ("n", "p", "d", "batch_size"):
                check_positive(f"{prefix}.{key}", getattr(self, key))
            check_range(f"{prefix}.sparsity", self.sparsity, 0, 1, "(]")
            check_range(f"{prefix}.mask_prob", self.mask_prob, 0, 1, "[)")
            check_choice(f"{prefix}.latent", self.latent, ("symmetric", "binary", "one_hot"))
            check_choice(f"{prefix}.sampler", self.sampler, ("fixed_count", "bernoulli"))
            check_choice(f"{prefix}.dictionary", self.dictionary, ("orthonormal", "identity"))
            check_choice(f"{prefix}.augmentation", self.augmentation, ("dependent", "independent"))
            if self.dictionary == "identity" and self.p != self.d:
                raise ConfigError(f"{prefix}.dictionary=identity needs p == d (got p={self.p}, d={self.d})")
            if self.dictionary == "orthonormal" and self.p < self.d:
                raise ConfigError(f"{prefix}.p={self.p} must be >= {prefix}.d={self.d} for an orthonormal dictionary")
            if self.drop_last and self.batch_size > self.n:
                raise ConfigError(f"{prefix}.batch_size={self.batch_size} is larger than {prefix}.n={self.n} with "
                                  f"{prefix}.drop_last=true, so no full batch exists; set {prefix}.batch_size to at "
                                  f"most {self.n} or {prefix}.drop_last=false")
            if self.noise_std is not None and self.noise_std < 0:
                raise ConfigError(f"{prefix}.noise_std={self.noise_std} must be >= 0")
            non_zero = sum(fixed_count_sizes(self.d, self.sparsity))
            if self.sampler == "fixed_count" and self.latent != "one_hot" and non_zero > self.d:
                raise ConfigError(f"{prefix}.sparsity={self.sparsity} needs {non_zero} non-zero latents per sample "
                                  f"with the fixed_count sampler but {prefix}.d={self.d}; raise d or use "
                                  "sampler=bernoulli")

        @property
        def resolved_noise_std(self) -> float:
            """The noise level; the official code's default is ``sqrt(ln d) / d``."""
            return math.sqrt(math.log(self.d)) / self.d if self.noise_std is None else self.noise_std

    def __init__(self, n: int = 3000, p: int = 50, d: int = 10, sparsity: float = 0.1, latent: str = "symmetric",
                 sampler: str = "fixed_count", dictionary: str = "orthonormal", noise_std: float = 0.0,
                 augmentation: str = "dependent", mask_prob: float = 0.5, batch_size: int = 512,
                 drop_last: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.drop_last = batch_size, drop_last
        self.augmentation, self.mask_prob, self.seed = augmentation, mask_prob, seed
        self.sparsity, self.latent, self.sampler, self.noise_std = sparsity, latent, sampler, noise_std
        generator = torch.Generator().manual_seed(seed)
        self.dictionary = make_dictionary(p, d, dictionary, generator)
        self.latents = sample_latents(n, d, sparsity, latent, sampler, generator)
        self.noise = noise_std * torch.randn(n, p, generator=generator)
        self.inputs = self.latents @ self.dictionary.T + self.noise
        self._generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, config: Config, seed: int) -> SparseCodingDataModule:
        return cls(n=config.n, p=config.p, d=config.d, sparsity=config.sparsity, latent=config.latent,
                   sampler=config.sampler, dictionary=config.dictionary, noise_std=config.resolved_noise_std,
                   augmentation=config.augmentation, mask_prob=config.mask_prob, batch_size=config.batch_size,
                   drop_last=config.drop_last, seed=seed)

    @property
    def input_dim(self) -> int:
        return self.inputs.shape[1]

    @property
    def latent_dim(self) -> int:
        return self.latents.shape[1]

    @property
    def num_classes(self) -> int | None:
        """d for one-hot latents (the class is the active atom), None otherwise."""
        return self.latents.shape[1] if self.latent == "one_hot" else None

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """The first ``num_samples`` unaugmented inputs ``x`` (all n if fewer)."""
        return self.inputs[:num_samples]

    def evaluation_views(self, num_samples: int, views: int) -> Tensor:
        """``views`` masked views of each of the first ``num_samples`` inputs (``data.augmentation`` at
        ``data.mask_prob``, pairs as in training), ``(n, views, p)``."""
        x = self.evaluation_inputs(num_samples)
        generator = torch.Generator(device=x.device).manual_seed(self.seed + EVALUATION_VIEWS_STREAM)
        return stacked_views(lambda: mask_views(x, self.augmentation, self.mask_prob, generator), views)

    def readout_dataloaders(self, batch_size: int) -> tuple[DataLoader, DataLoader] | None:
        """Train and test loaders of ``(x, index of the active atom)`` for one-hot latents, None otherwise.

        Train is the datamodule's own data; test is the held-out sample of :meth:`held_out`. Each batch is one slice
        of the device tensors.
        """
        if self.latent != "one_hot":
            return None
        splits = ((self.inputs, self.latents), self.held_out())
        datasets = [TensorDataset(x, z.argmax(dim=1)) for x, z in splits]
        return tuple(DataLoader(data, batch_size=None, sampler=BatchSampler(SequentialSampler(data), batch_size, False))
                     for data in datasets)

    def held_out(self) -> tuple[Tensor, Tensor]:
        """A held-out sample ``(x, z)`` of the same size, dictionary and noise level as the data, on its device,
        drawn from a generator seeded with ``seed + 2**32``, a stream no data seed starts (seeds lie below 2**32 in
        Lightning)."""
        generator = torch.Generator().manual_seed(self.seed + 2**32)
        n, (p, d) = len(self.inputs), self.dictionary.shape
        latents = sample_latents(n, d, self.sparsity, self.latent, self.sampler, generator)
        inputs = latents @ self.dictionary.cpu().T + self.noise_std * torch.randn(n, p, generator=generator)
        return inputs.to(self.inputs.device), latents.to(self.inputs.device)

    @property
    def latent_groups(self) -> dict[str, list[int]]:
        """The latents by kind, for the R^2 probe: every coordinate of ``z`` is one ``latent``."""
        return {"latent": list(range(self.latent_dim))}

    def latent_probe_data(self, num_samples: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``((x, z), (x_test, z_test))``: the first ``num_samples`` inputs and latents of the data (all n if fewer)
        and as many of the held-out sample of :meth:`held_out` (the test split of :meth:`readout_dataloaders`)."""
        x_test, z_test = self.held_out()
        return (self.inputs[:num_samples], self.latents[:num_samples]), (x_test[:num_samples], z_test[:num_samples])

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for name in ("dictionary", "latents", "noise", "inputs"):
            setattr(self, name, getattr(self, name).to(device))
        self._generator = torch.Generator(device=device)

    def epoch_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Views]:
        """Shuffle, mask and split the whole dataset for ``epoch``; seeded by (seed, epoch), so resumes are exact.

        With ``world_size`` processes (DDP) every process draws the same epoch and takes its :func:`shard`, so its
        b-th mini-batch of ``batch_size`` is its share of the b-th mini-batch of ``batch_size * world_size`` that one
        process would use.
        """
        if self._generator is None:
            self.setup("fit")
        generator = self._generator
        generator.manual_seed(epoch_seed(self.seed, epoch))
        x = self.inputs[torch.randperm(len(self.inputs), generator=generator, device=self.inputs.device)]
        view1, view2 = mask_views(x, self.augmentation, self.mask_prob, generator)
        batches = mini_batches(view1, view2, self.batch_size, rank, world_size)
        partial = len(batches[-1].view1) < self.batch_size
        return batches[:-1] if self.drop_last and partial and len(batches) > 1 else batches

    def train_dataloader(self) -> WholeEpochs:
        return WholeEpochs(self)
