"""The run directory's JSON-lines histories: one JSON record per line, each with the ``step`` it was written at."""

from __future__ import annotations

import math

HISTORIES = ("metrics.jsonl", "spectra.jsonl", "r2.jsonl", "alignment.jsonl", "predictor.jsonl")
"""The histories a run directory may hold."""


def json_value(value: float) -> float | str:
    """``value``, or its name ("nan", "inf", "-inf") where JSON has no number for it."""
    return value if math.isfinite(value) else str(value)
