"""The run directory's JSON-lines histories: one JSON record per line, each with the ``step`` it was written at."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

HISTORIES = ("metrics.jsonl", "spectra.jsonl", "r2.jsonl", "alignment.jsonl", "predictor.jsonl")
"""The histories a run directory may hold."""


def json_value(value: float) -> float | str:
    """``value``, or its name ("nan", "inf", "-inf") where JSON has no number for it."""
    return value if math.isfinite(value) else str(value)


def append_records(run_dir: str | Path, name: str, records: list[dict[str, Any]]) -> None:
    """Append ``records``, one JSON line each, to the history ``name`` (one of :data:`HISTORIES`) in ``run_dir``."""
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
