"""A study as a table: its grid points, each with the run directories of its seeds, and how their statuses read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_bench.config import ClaimConfig, ReferenceRow
from ssl_bench.rundir import STATUS_ORDER, read_summary


@dataclass
class GridPoint:
    """One row of a study: its axis values and the run directories of its seeds (some may not exist yet)."""

    label: str
    axes: dict[str, str]
    runs: list[Path]
    summaries: list[dict[str, Any] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.summaries:
            self.summaries = [read_summary(run) for run in self.runs]

    @property
    def statuses(self) -> list[str]:
        """How each run ended; ``missing`` for a run without a readable summary (not started, running or killed)."""
        return ["missing" if s is None else str(s.get("status", "failed")) for s in self.summaries]

    @property
    def finished(self) -> list[Path]:
        """The run directories of the runs that finished: the ones the table and the figures average."""
        return [run for run, status in zip(self.runs, self.statuses) if status == "finished"]


@dataclass
class Study:
    """A sweep or a folder of runs: what the table shows (axes, metrics, the paper's values), its grid points, and
    the paper's claims it checks with the profile its runs were made at (None: no profile's settings)."""

    name: str
    dir: Path
    axes: list[str]
    metrics: list[str]
    reference: list[ReferenceRow]
    points: list[GridPoint]
    claims: list[ClaimConfig] = field(default_factory=list)
    profile: str | None = None


def matches(axes: dict[str, str], selector: dict[str, Any]) -> bool:
    """Whether a grid point's ``axes`` take every value of ``selector`` (compared as text, as labels show them)."""
    return all(str(axes.get(str(axis))) == str(value) for axis, value in selector.items())


def reference_value(rows: list[ReferenceRow], axes: dict[str, Any], metric: str) -> float | None:
    """The paper's ``metric`` at the grid point with these ``axes``: the value of the first reference row whose
    match it satisfies (a row for ``{model: A}`` serves ``{model: A, data.mask_prob: 0.5}``), if one gives it."""
    for row in rows:
        if matches(axes, row.match) and metric in row.values:
            return float(row.values[metric])
    return None


def runs_cell(statuses: list[str]) -> str:
    """``finished/all``, then the other runs by status: ``2/5 (1 diverged, 2 missing)``."""
    counts = Counter(statuses)
    order = [s for s in STATUS_ORDER if s != "finished"] + sorted(set(counts) - set(STATUS_ORDER))
    others = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    return f"{counts['finished']}/{len(statuses)}" + (f" ({others})" if others else "")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
