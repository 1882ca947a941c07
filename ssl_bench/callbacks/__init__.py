"""Metric and progress callbacks; metric callbacks read the datamodule's ground truth and a small model interface."""

from ssl_bench.callbacks.max_cosine import MaxCosine
from ssl_bench.callbacks.progress import EpochProgressBar

__all__ = ["MaxCosine", "EpochProgressBar"]
