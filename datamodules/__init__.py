"""LightningDataModules of ssl-bench; synthetic ones expose their ground truth to metric callbacks."""

from datamodules.cifar10 import CIFAR10DataModule, DatasetNotFoundError, write_cifar10_batches
from datamodules.sparse_coding import SparseCodingDataModule

__all__ = ["CIFAR10DataModule", "DatasetNotFoundError", "SparseCodingDataModule", "write_cifar10_batches"]
