"""Datamodules of ssl-bench; importing this package registers them (one file each). Synthetic ones expose their
ground truth to metric callbacks."""

from datamodules import (  # noqa: F401 (registration)
    cifar10,
    digits,
    gaussian,
    invertible_mlp,
    moons,
    sparse_coding,
    strong_weak,
)
from datamodules.base import DataModule

__all__ = ["DataModule"]
