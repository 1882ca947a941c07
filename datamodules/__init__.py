"""LightningDataModules of ssl-bench; synthetic ones expose their ground truth to metric callbacks."""

from datamodules.sparse_coding import SparseCodingDataModule

__all__ = ["SparseCodingDataModule"]
