"""Images of two digit classes, the real-data setting of Esser, Nath & Ghoshdastidar 2023 (Fig. 4: two MNIST classes
of 200 points each).

``per_class`` images of each of the two ``classes``, a random subset per class, as fixed anchors in a random order
(classes mixed) with fixed Gaussian positives ``x + eps``; the data matrix of anchors and positives is whitened without
centring (``X X^T = I``, the condition of the paper's Theorem 2), see :mod:`datamodules.pairs`. ``source=mnist`` reads
the real MNIST training split (pixels / 255, 784 dims) through torchvision from ``root``; ``source=sklearn`` (the
default) uses scikit-learn's bundled 8x8 digits (pixels / 16, 64 dims), an offline stand-in with about 178 images per
class. Fig. 4 is ``source=mnist per_class=200 batch_size=400``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamodules.pairs import PairsDataModule
from ssl_bench.config import ConfigError, check_choice, check_positive, check_range
from ssl_bench.errors import DataError
from ssl_bench.registry import register

SOURCES = ("sklearn", "mnist")


def digit_images(source: str, root: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Every image of ``source`` as a row of raw pixel values, its digit, and the largest pixel value: sklearn's
    1797 8x8 digits (N x 64, 0..16) or MNIST's 60000 training images under ``root`` (N x 784, 0..255)."""
    if source == "sklearn":
        from sklearn.datasets import load_digits

        images, digits = load_digits(return_X_y=True)
        return images, digits, 16.0
    from torchvision.datasets import MNIST

    try:
        mnist = MNIST(root, train=True, download=False)
    except RuntimeError:
        raise DataError(f"MNIST not found: torchvision looked in {(root / 'MNIST' / 'raw').absolute()} "
                        f"(data.root={root}); set data.source=sklearn for the bundled 8x8 digits, or put MNIST there "
                        f"(torchvision.datasets.MNIST(root, download=True) downloads it on a machine with internet)"
                        ) from None
    return mnist.data.flatten(1).numpy(), mnist.targets.numpy(), 255.0


@register("data", "digits")
class DigitsDataModule(PairsDataModule):
    """Two digit classes as fixed anchors with fixed positives; ``labels`` is 0 for ``classes[0]``, 1 for
    ``classes[1]``. The images load when the datamodule is built (``input_dim``, the rank after whitening, depends
    on them), so missing MNIST files are a :class:`~ssl_bench.errors.DataError` before a run writes anything."""

    @dataclass
    class Config(PairsDataModule.Config):
        """``per_class`` images of each of the two digits ``classes`` from ``source`` (sklearn 8x8 digits, or MNIST
        under ``root``); ``batch_size`` defaults to ``2 per_class`` (gradient descent on the whole set)."""

        batch_size: int = 300
        classes: list[int] = field(default_factory=lambda: [0, 1])
        per_class: int = 150
        source: str = "sklearn"
        root: str = "data"

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
                raise ConfigError(f"{prefix}.classes={self.classes} must be two distinct digits, e.g. [0, 1]")
            for index, digit in enumerate(self.classes):
                check_range(f"{prefix}.classes[{index}]", digit, 0, 9)
            check_positive(f"{prefix}.per_class", self.per_class)
            check_choice(f"{prefix}.source", self.source, SOURCES)

    def draw_anchors(self, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """A random ``per_class`` images of each class (pixels scaled to [0, 1]), in a random order drawn from
        ``rng``, and their class index (0 or 1)."""
        c = self.config
        images, digits, top = digit_images(c.source, Path(c.root).expanduser())
        chosen = []
        for digit in c.classes:
            index = np.flatnonzero(digits == digit)
            if c.per_class > len(index):
                raise ConfigError(f"data.per_class={c.per_class} is more than the {len(index)} images of digit {digit} "
                                  f"in data.source={c.source}; set data.per_class to at most {len(index)}")
            chosen.append(rng.choice(index, c.per_class, replace=False))
        order = rng.permutation(2 * c.per_class)
        return images[np.concatenate(chosen)[order]] / top, np.repeat([0, 1], c.per_class)[order]
