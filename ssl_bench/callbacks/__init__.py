"""Metric callbacks; importing this package registers them (one file each). Each reads the datamodule's ground
truth and a small model interface, never a method's class."""

from ssl_bench.callbacks import (  # noqa: F401  (each registers its callback)
    collapse,
    feature_alignment,
    gradient_spectrum,
    linear_gap,
    max_cosine,
    ntk,
    output_dynamics,
    population,
    predictor_dynamics,
    r2_probe,
    readout,
    spectrum,
    weight_alignment,
    weight_geometry,
)
from ssl_bench.callbacks.base import Callback

__all__ = ["Callback"]
