"""The run directory's JSON-lines histories: one JSON record per line, each with the ``step`` it was written at."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

HISTORIES = ("metrics.jsonl", "spectra.jsonl", "r2.jsonl", "alignment.jsonl", "predictor.jsonl")
"""The histories a run directory may hold."""


def as_number(value: Any) -> float | None:
    """A logged value as a float ("nan", "inf" and "-inf" included), None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def json_value(value: float) -> float | str:
    """``value``, or its name ("nan", "inf", "-inf") where JSON has no number for it."""
    return value if math.isfinite(value) else str(value)


def append_records(run_dir: str | Path, name: str, records: list[dict[str, Any]]) -> None:
    """Append ``records``, one JSON line each, to the history ``name`` (one of :data:`HISTORIES`) in ``run_dir``."""
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)


ENDED = ("finished", "diverged")
"""How a run that is kept when the sweep runs again ended."""


STATUS_ORDER = ("finished", "diverged", "failed", "interrupted", "missing")
"""The order of the statuses in messages and in the table's ``runs`` cells."""


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``, or None when it has none (not started, still running, or killed) or a broken one."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run_status(run_dir: Path) -> str:
    """How the run in ``run_dir`` ended: its summary's status, or ``missing`` without a summary."""
    summary = read_summary(run_dir)
    return "missing" if summary is None else str(summary.get("status", "failed"))


def prepare_run_dir(run_dir: Path, fresh: bool = False, restarted: bool = False) -> bool:
    """Make ``run_dir`` ready for its run and say whether the run resumes from its ``last.ckpt``: it does when it
    was interrupted with a checkpoint to continue from, or, for a job that the scheduler ``restarted`` (requeued
    after a node failure, say), when it left a checkpoint and no summary. Otherwise (or when ``fresh``) a failed or
    broken run starts again from scratch in an emptied directory."""
    summary = None if fresh else read_summary(run_dir)
    resume = summary is not None and summary.get("status") == "interrupted" and bool(summary.get("resume"))
    resume = resume or (not fresh and restarted and summary is None
                        and (run_dir / "checkpoints" / "last.ckpt").is_file())
    if not resume and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return resume


def truncate_histories(run_dir: Path, last_step: int | None) -> None:
    """Keep the records of every history in ``run_dir`` up to ``last_step`` (all of them go when it is None): a run
    resumed from a checkpoint of step S writes again everything after S, so no line is doubled or lost."""
    for name in HISTORIES:
        path = run_dir / name
        if not path.is_file():
            continue
        kept = [] if last_step is None else [
            line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
        path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
