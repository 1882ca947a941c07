"""The run directory's own record: every logged scalar to ``metrics.jsonl``, final values to ``summary.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from ssl_bench import rundir


class RunRecorder(Logger):
    """A Lightning logger that needs no network: history and final values live in the run directory
    (:mod:`ssl_bench.rundir`). Each call of :meth:`log_metrics` appends one record to ``metrics.jsonl`` at its
    ``step``, the optimizer steps taken."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.final: dict[str, float] = {}
        self._history = rundir.HistoryWriter(run_dir, "metrics.jsonl")
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
        record = {"step": step, **{k: rundir.json_value(v) for k, v in values.items()}}
        self._history.append([record])

    @rank_zero_only
    def write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """Write ``summary.json``: ``status`` (finished, failed, interrupted or diverged), final scalars, wall time
        and ``extra``."""
        self._history.close()
        metrics = {k: rundir.json_value(v) for k, v in sorted(self.final.items())}
        summary = {"status": status, "metrics": metrics, "wall_seconds": round(time.time() - self._started, 2),
                   **extra}
        rundir.write_summary(self.run_dir, summary)
        return summary
