"""The run directory's own record: every logged scalar to ``metrics.jsonl``, final values to ``summary.json``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class RunRecorder(Logger):
    """A Lightning logger that needs no network: history and final values live in the run directory."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.final: dict[str, float] = {}
        self._history = None
        self._started = time.time()

    @property
    def name(self) -> str:
        return "run_dir"

    @property
    def version(self) -> str:
        return self.run_dir.name

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is written by the runner as ``config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self.final.update(values)
        if self._history is None:
            self._history = open(self.run_dir / "metrics.jsonl", "w", encoding="utf-8")
        self._history.write(json.dumps({"step": step, **values}) + "\n")

    @rank_zero_only
    def write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """Write ``summary.json``: ``status`` (finished, failed or interrupted), final scalars, wall time."""
        if self._history is not None:
            self._history.close()
            self._history = None
        metrics = {k: (v if math.isfinite(v) else str(v)) for k, v in sorted(self.final.items())}
        summary = {"status": status, "metrics": metrics, "wall_seconds": round(time.time() - self._started, 2),
                   **extra}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
