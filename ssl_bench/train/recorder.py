"""The run directory's own record: every logged scalar to ``metrics.jsonl``, final values to ``summary.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from ssl_bench.rundir import json_value


class RunRecorder(Logger):
    """A Lightning logger that needs no network: history and final values live in the run directory. It appends to
    ``metrics.jsonl``; :func:`truncate_histories` prepares the file for a fresh or resumed run."""

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
            self._history = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._history.write(json.dumps({"step": step, **{k: json_value(v) for k, v in values.items()}}) + "\n")
        self._history.flush()

    @rank_zero_only
    def write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """Write ``summary.json``: ``status`` (finished, failed, interrupted or diverged), final scalars, wall time
        and ``extra``."""
        if self._history is not None:
            self._history.close()
            self._history = None
        metrics = {k: json_value(v) for k, v in sorted(self.final.items())}
        summary = {"status": status, "metrics": metrics, "wall_seconds": round(time.time() - self._started, 2),
                   **extra}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
