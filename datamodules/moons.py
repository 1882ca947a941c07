"""Two interleaving half moons in R^2, the toy data of Esser, Nath & Ghoshdastidar 2023 (Example 1, Fig. 1).

n anchors from scikit-learn's ``make_moons`` (noise ``moon_noise``, shuffled, so the moons are mixed in a random
order), labelled by their moon (0 or 1), with fixed Gaussian positives ``x + eps``; the data matrix of anchors and
positives is whitened without centring (``X X^T = I``, the condition of the paper's Theorem 2), see
:mod:`datamodules.pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.pairs import PairsDataModule
from ssl_bench.config import ConfigError, check_non_negative
from ssl_bench.registry import register


@register("data", "moons")
class MoonsDataModule(PairsDataModule):
    """Half moons as fixed anchors with fixed positives; ``labels`` is the moon of each anchor."""

    @dataclass
    class Config(PairsDataModule.Config):
        """``n`` anchors, half moons with Gaussian noise of std ``moon_noise``; ``batch_size`` defaults to n (gradient
        descent on the whole set)."""

        batch_size: int = 200
        n: int = 200
        moon_noise: float = 0.1

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            if self.n < 2:
                raise ConfigError(f"{prefix}.n={self.n} must be >= 2 (the negative of an anchor is another anchor)")
            check_non_negative(f"{prefix}.moon_noise", self.moon_noise)

    def draw_anchors(self, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """``make_moons(n, noise=moon_noise, random_state=rng)``: points (n x 2) and moons (n), shuffled."""
        from sklearn.datasets import make_moons

        return make_moons(n_samples=self.config.n, noise=self.config.moon_noise, random_state=rng)
