"""Strong and weak features in patches (Wen & Li 2022), generated and augmented on the device.

A sample is ``P`` patches ``X = (X_1, ..., X_P)``, ``X_p in R^d``: ``X_p = z_p v_l + xi_p 1{z_p = 0}`` with
``z_p in {0, s alpha_l}``. The sample's feature is ``v_1`` (strong, norm ``alpha_1``) with probability ``q`` and ``v_2``
(weak, ``alpha_2 << alpha_1``) otherwise; a random set of ``feature_patches`` patches carries it with one random sign
``s = +-1`` per sample, the other patches are noise ``xi_p ~ N(0, sigma^2 I_d)``. ``v_1, v_2`` are orthonormal, fixed by
the seed. Augmentation is a random partition of the patches: view 1 keeps a random ``floor(P / 2)`` of them, view 2
the rest, and each view's other patches are zero. Inputs are the flattened patches, ``(B, P d)``.

Every epoch is one batched draw (fresh samples, as the paper's SGD, or a fixed set shuffled) and one batched
partition, handed to the method as one training batch of all its mini-batches (a ``list[Views]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from datamodules.base import EVALUATION_VIEWS_STREAM, DataModule, stacked_views
from datamodules.epochs import WholeEpochs, epoch_seed, mini_batches
from datamodules.sparse_coding import make_dictionary
from ssl_bench.batch import Views
from ssl_bench.config import (
    ConfigError,
    DataConfig,
    check_non_negative,
    check_positive,
    check_range,
)
from ssl_bench.registry import register


def sample_patches(n: int, features: Tensor, strengths: tuple[float, float], strong_prob: float,
                   feature_patches: int, num_patches: int, noise_std: float, generator: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
    """``n`` samples ``X`` (n x P x d) and their feature index ``l - 1`` (n; 0 strong, 1 weak), on the features'
    device: ``X_p = s alpha_l v_l`` on a random set of ``feature_patches`` patches, ``N(0, noise_std^2 I)``
    elsewhere."""
    device = features.device
    weak = (torch.rand(n, generator=generator, device=device) >= strong_prob).long()
    sign = torch.randint(2, (n,), generator=generator, device=device).float() * 2 - 1
    alpha = torch.tensor(strengths, device=device)[weak]
    signal = (sign * alpha).unsqueeze(1) * features[weak]
    ranks = torch.rand(n, num_patches, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    carries = (ranks < feature_patches).unsqueeze(2)
    noise = noise_std * torch.randn(n, num_patches, features.shape[1], generator=generator, device=device)
    return torch.where(carries, signal.unsqueeze(1), noise), weak


def partition_views(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two views of every sample ``x`` (n x P x d): view 1 keeps a random ``floor(P / 2)`` patches, view 2 the others;
    the patches a view does not keep are zero."""
    n, num_patches, _ = x.shape
    ranks = torch.rand(n, num_patches, generator=generator, device=x.device).argsort(dim=1).argsort(dim=1)
    keep = (ranks < num_patches // 2).unsqueeze(2).to(x.dtype)
    return x * keep, x * (1.0 - keep)


@register("data", "strong_weak")
class StrongWeakDataModule(DataModule):
    """Strong/weak-feature patch data with partition views, held as device tensors.

    Ground truth for metric callbacks: ``features`` (2 x d, rows ``v_1`` strong and ``v_2`` weak, unit vectors) and
    ``feature_strengths`` ``(alpha_1, alpha_2)``; the encoder reads ``num_patches`` and ``patch_dim``;
    ``evaluation_inputs`` are unaugmented held-out samples.
    """

    @dataclass
    class Config(DataConfig):
        """``n`` samples per epoch of ``num_patches`` patches in R^``patch_dim``; ``feature_patches`` of them carry
        the sample's feature, ``v_1`` with norm ``strong_norm`` (alpha_1) with probability ``strong_prob`` (q), else
        ``v_2`` with norm ``weak_norm`` (alpha_2); noise patches ``N(0, noise_std^2 I)``; ``fresh`` draws new samples
        every epoch (the paper's SGD on fresh samples), else one fixed set is reshuffled."""

        n: int = 1024
        num_patches: int = 8
        patch_dim: int = 32
        feature_patches: int = 4
        strong_norm: float = 1.0
        weak_norm: float = 0.5
        strong_prob: float = 0.5
        noise_std: float = 0.2
        fresh: bool = True
        batch_size: int = 128

        def provides(self) -> set[str]:
            return {"vectors", "features"}

        def validate(self, prefix: str) -> None:
            for key in ("n", "num_patches", "patch_dim", "feature_patches", "batch_size", "strong_norm", "weak_norm"):
                check_positive(f"{prefix}.{key}", getattr(self, key))
            check_non_negative(f"{prefix}.noise_std", self.noise_std)
            check_range(f"{prefix}.strong_prob", self.strong_prob, 0, 1)
            if self.num_patches < 2:
                raise ConfigError(f"{prefix}.num_patches={self.num_patches} must be >= 2 (the views split the patches)")
            if self.patch_dim < 2:
                raise ConfigError(f"{prefix}.patch_dim={self.patch_dim} must be >= 2 (v_1 and v_2 are orthonormal)")
            if self.feature_patches > self.num_patches:
                raise ConfigError(f"{prefix}.feature_patches={self.feature_patches} must be <= "
                                  f"{prefix}.num_patches={self.num_patches}")
            if self.weak_norm > self.strong_norm:
                raise ConfigError(f"{prefix}.weak_norm={self.weak_norm} must be <= "
                                  f"{prefix}.strong_norm={self.strong_norm} (v_2 is the weak feature)")

    def __init__(self, config: Config, seed: int) -> None:
        self.config, self.seed = config, seed
        generator = torch.Generator().manual_seed(seed)
        self.features = make_dictionary(config.patch_dim, 2, "orthonormal", generator).T.contiguous()
        self.feature_strengths = (config.strong_norm, config.weak_norm)
        self.num_patches, self.patch_dim = config.num_patches, config.patch_dim
        self.input_dim, self.latent_dim = config.num_patches * config.patch_dim, 2
        self.samples = None if config.fresh else self.draw(config.n, generator)[0]
        self._generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, config: Config, seed: int) -> StrongWeakDataModule:
        return cls(config, seed)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` new samples (n x P x d) and their feature index (0 strong, 1 weak), from ``generator``."""
        c = self.config
        return sample_patches(n, self.features, self.feature_strengths, c.strong_prob, c.feature_patches,
                              c.num_patches, c.noise_std, generator)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.features = self.features.to(device)
        if self.samples is not None:
            self.samples = self.samples.to(device)
        self._generator = torch.Generator(device=device)

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """``num_samples`` unaugmented samples (flattened), drawn from a generator seeded with ``seed + 2**32`` (a
        stream no epoch starts), on the features' device."""
        return self.evaluation_samples(num_samples).flatten(1)

    def evaluation_samples(self, num_samples: int) -> Tensor:
        """The samples behind :meth:`evaluation_inputs`, unflattened (n x P x d)."""
        return self.draw(num_samples, torch.Generator(device=self.features.device).manual_seed(self.seed + 2**32))[0]

    def evaluation_views(self, num_samples: int, views: int) -> Tensor:
        """``views`` patch partitions (:func:`partition_views`, flattened) of each of the ``num_samples``
        evaluation samples, ``(n, views, P d)``."""
        x = self.evaluation_samples(num_samples)
        generator = torch.Generator(device=x.device).manual_seed(self.seed + EVALUATION_VIEWS_STREAM)
        return stacked_views(lambda: tuple(view.flatten(1) for view in partition_views(x, generator)), views)

    def epoch_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Views]:
        """Epoch ``epoch``'s samples (fresh, or the fixed set shuffled) partitioned into two views and split into
        mini-batches; seeded by (seed, epoch), so resumes are exact; process ``rank`` takes its :func:`shard`."""
        if self._generator is None:
            self.setup("fit")
        generator = self._generator.manual_seed(epoch_seed(self.seed, epoch))
        if self.samples is None:
            x = self.draw(self.config.n, generator)[0]
        else:
            x = self.samples[torch.randperm(len(self.samples), generator=generator, device=self.samples.device)]
        view1, view2 = partition_views(x, generator)
        return mini_batches(view1.flatten(1), view2.flatten(1), self.config.batch_size, rank, world_size)

    def train_dataloader(self) -> WholeEpochs:
        return WholeEpochs(self)
