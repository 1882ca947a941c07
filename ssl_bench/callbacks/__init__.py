"""Metric and progress callbacks; metric callbacks read the datamodule's ground truth and a small model interface."""

from ssl_bench.callbacks.max_cosine import MaxCosine
from ssl_bench.callbacks.progress import EpochProgressBar, StepProgressBar
from ssl_bench.callbacks.readout import LinearReadout
from ssl_bench.callbacks.spectrum import EigenSpectrum

__all__ = ["EigenSpectrum", "EpochProgressBar", "StepProgressBar", "LinearReadout", "MaxCosine"]
