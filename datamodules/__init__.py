"""Datamodules of ssl-bench; importing this package registers them (one file each). Synthetic ones expose their
ground truth to metric callbacks."""

from datamodules import cifar10, digits, invertible_mlp, moons, sparse_coding, strong_weak  # noqa: F401 (registration)
from datamodules.base import DataModule

__all__ = ["DataModule"]
