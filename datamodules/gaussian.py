"""Gaussian inputs with additive Gaussian augmentation (Bao et al. 2023; the toy cases of DirectCLR, Jing et al. 2022),
generated and augmented on the device.

A sample is ``x ~ N(0, I_d)``; its two views are ``x' = x + sigma m * eps'`` and ``x'' = x + sigma m * eps''`` with
independent ``eps', eps'' ~ N(0, I_d)`` and ``*`` elementwise. The mask ``m in {0, 1}^d`` picks the noisy coordinates
``noise_from, ..., d - 1``: all of them (``noise_from = 0``) is Bao's isotropic augmentation ``x' ~ N(x, sigma^2 I_d)``;
the last half (``noise_from = d / 2``) is DirectCLR's case 1, where the clean half is identical in both views. So
``Cov(x') = I_d + sigma^2 diag(m)`` and ``Cov(x' - x'') = 2 sigma^2 diag(m)``.

Every epoch is one batched draw (fresh samples, or a fixed set shuffled) with fresh noise, handed to the method as one
training batch of all its mini-batches (a ``list[Views]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from datamodules.base import EVALUATION_VIEWS_STREAM, DataModule, stacked_views
from datamodules.epochs import WholeEpochs, epoch_seed, mini_batches
from ssl_bench.batch import Views
from ssl_bench.config import ConfigError, DataConfig, check_non_negative, check_positive
from ssl_bench.registry import register


def noise_views(x: Tensor, noise_std: float, mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two views ``x + noise_std * mask * eps`` of every row of ``x`` (n x d), one ``eps ~ N(0, I_d)`` each."""
    noise = noise_std * mask * torch.randn((2, *x.shape), generator=generator, device=x.device)
    return x + noise[0], x + noise[1]


@register("data", "gaussian")
class GaussianDataModule(DataModule):
    """Gaussian inputs ``x ~ N(0, I_d)`` with partial additive Gaussian noise views, held as device tensors.

    Read by encoders and metric callbacks: ``input_dim`` and ``latent_dim`` (both d: the clean ``x`` is what the views
    share), ``noise_mask`` (m, d floats in {0, 1}), ``noise_std`` (sigma), ``augmentation_covariance``
    (``sigma^2 diag(m)``, d x d) and ``evaluation_inputs`` (clean held-out samples).
    """

    @dataclass
    class Config(DataConfig):
        """``n`` samples per epoch of ``x ~ N(0, I_dim)``; views add ``N(0, noise_std^2)`` noise on coordinates
        ``noise_from, ..., dim - 1`` (0: all, Bao 2023; dim / 2: the last half, DirectCLR case 1); ``fresh`` draws
        new samples every epoch, else one fixed set is reshuffled (the noise is new every epoch either way)."""

        dim: int = 64
        n: int = 4096
        noise_std: float = 1.0
        noise_from: int = 0
        fresh: bool = True
        batch_size: int = 512

        def provides(self) -> set[str]:
            return {"vectors"}

        def validate(self, prefix: str) -> None:
            for key in ("dim", "n", "batch_size"):
                check_positive(f"{prefix}.{key}", getattr(self, key))
            check_non_negative(f"{prefix}.noise_std", self.noise_std)
            if not 0 <= self.noise_from < self.dim:
                raise ConfigError(f"{prefix}.noise_from={self.noise_from} must be in [0, {prefix}.dim={self.dim}) "
                                  f"(noise on coordinates noise_from..dim-1)")

    def __init__(self, config: Config, seed: int) -> None:
        self.config, self.seed = config, seed
        self.input_dim = self.latent_dim = config.dim
        self.noise_std = config.noise_std
        self.noise_mask = (torch.arange(config.dim) >= config.noise_from).float()
        self.samples = None if config.fresh else torch.randn(config.n, config.dim,
                                                             generator=torch.Generator().manual_seed(seed))
        self._generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, config: Config, seed: int) -> GaussianDataModule:
        return cls(config, seed)

    @property
    def augmentation_covariance(self) -> Tensor:
        """The covariance of a view's noise, ``sigma^2 diag(m)`` (d x d), on the mask's device."""
        return torch.diag(self.noise_std ** 2 * self.noise_mask)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.noise_mask = self.noise_mask.to(device)
        if self.samples is not None:
            self.samples = self.samples.to(device)
        self._generator = torch.Generator(device=device)

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """``num_samples`` clean samples ``x ~ N(0, I_d)``, drawn from a generator seeded with ``seed + 2**32`` (a
        stream no epoch starts), on the mask's device."""
        device = self.noise_mask.device
        generator = torch.Generator(device=device).manual_seed(self.seed + 2**32)
        return torch.randn(num_samples, self.input_dim, generator=generator, device=device)

    def evaluation_views(self, num_samples: int, views: int) -> Tensor:
        """``views`` noisy views (:func:`noise_views`) of each of the ``num_samples`` evaluation inputs,
        ``(n, views, d)``."""
        x = self.evaluation_inputs(num_samples)
        generator = torch.Generator(device=x.device).manual_seed(self.seed + EVALUATION_VIEWS_STREAM)
        return stacked_views(lambda: noise_views(x, self.noise_std, self.noise_mask, generator), views)

    def epoch_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Views]:
        """Epoch ``epoch``'s samples (fresh, or the fixed set shuffled) with two noisy views, split into mini-batches;
        seeded by (seed, epoch), so resumes are exact; process ``rank`` takes its :func:`shard`."""
        if self._generator is None:
            self.setup("fit")
        generator = self._generator.manual_seed(epoch_seed(self.seed, epoch))
        device = self.noise_mask.device
        if self.samples is None:
            x = torch.randn(self.config.n, self.input_dim, generator=generator, device=device)
        else:
            x = self.samples[torch.randperm(len(self.samples), generator=generator, device=device)]
        view1, view2 = noise_views(x, self.noise_std, self.noise_mask, generator)
        return mini_batches(view1, view2, self.config.batch_size, rank, world_size)

    def train_dataloader(self) -> WholeEpochs:
        return WholeEpochs(self)
