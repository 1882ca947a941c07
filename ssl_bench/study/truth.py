"""``ssl-bench diagnostics``: which label-free collapse diagnostic tells the truth?

Across the finished runs of one or more sweeps, the Spearman rank correlation between each diagnostic's final value
(``collapse/NAME``, logged by ``callbacks.collapse``) and a ground-truth quantity of the same run (the minimum
max-cosine, a readout accuracy, the R^2 or MCC of content or style latents, the number of predictor eigenvalues that
survive), with a percentile bootstrap interval over runs. Written as ``diagnostics.md`` (one table) and
``diagnostics.png`` (the correlations as a heatmap).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ssl_bench.errors import ConfigError
from ssl_bench.figures import new_figure, save_figure
from ssl_bench.rundir import as_number
from ssl_bench.study.report import load_study
from ssl_bench.study.table import Study

DIAGNOSTICS = ("rankme", "lidar", "alpha_req", "effective_rank", "stable_rank", "nesum", "uniformity",
               "wasserstein_uniformity", "std")
"""The label-free diagnostics compared, as ``collapse/NAME`` (``_backbone`` suffixed with ``--backbone``)."""

SURVIVING_THRESHOLD = 0.01
"""An eigenvalue modulus above which a predictor eigenvalue counts as surviving (Bao 2023, App. D.1)."""


def surviving_eigenvalues(metrics: dict[str, float]) -> float | None:
    """``predictor/surviving``: how many ``predictor/eigenvalueK`` exceed :data:`SURVIVING_THRESHOLD` (None when
    the run logged none)."""
    values = [v for key, v in metrics.items() if re.fullmatch(r"predictor/eigenvalue\d+", key)]
    return float(sum(v > SURVIVING_THRESHOLD for v in values)) if values else None


DERIVED: dict[str, Callable[[dict[str, float]], float | None]] = {"predictor/surviving": surviving_eigenvalues}
"""Ground truths counted from a run's final metrics rather than logged."""


def final_metrics(study: Study) -> list[dict[str, float]]:
    """The final metrics (``summary.json``) of every finished run of ``study``, numbers only, with :data:`DERIVED`."""
    runs = []
    for point in study.points:
        for summary, status in zip(point.summaries, point.statuses):
            if status != "finished" or summary is None:
                continue
            numbers = {str(key): as_number(value) for key, value in (summary.get("metrics") or {}).items()}
            metrics = {key: float(value) for key, value in numbers.items() if value is not None}
            for name, derive in DERIVED.items():
                if (value := derive(metrics)) is not None:
                    metrics[name] = value
            runs.append(metrics)
    return runs


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the ranks, ties sharing their mean rank (``scipy.stats.rankdata``);
    NaN when either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def bootstrap_interval(x: np.ndarray, y: np.ndarray, draws: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of :func:`spearman` at ``level``: ``draws`` resamples of the runs with
    replacement from a generator seeded with ``seed`` (resamples where a side is constant are left out)."""
    rng = np.random.default_rng(seed)
    rhos = [spearman(x[index], y[index]) for index in rng.integers(0, len(x), size=(draws, len(x)))]
    finite = np.array([rho for rho in rhos if math.isfinite(rho)])
    if not len(finite):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


@dataclass(frozen=True)
class Correlation:
    """Spearman's ``rho`` between ``diagnostic`` and ``truth`` over ``runs`` finished runs of ``study``, with its
    bootstrap interval ``[low, high]``."""

    study: str
    truth: str
    diagnostic: str
    rho: float
    low: float
    high: float
    runs: int


def correlations(studies: Sequence[Study], truths: Sequence[str], diagnostics: Sequence[str],
                 draws: int = 2000) -> list[Correlation]:
    """Every (study, truth, diagnostic) with at least 4 finished runs that logged both, in that order; a study's
    truths are those of ``truths`` that any of its runs has."""
    found = []
    for study in studies:
        runs = final_metrics(study)
        for truth in truths:
            if not any(truth in run for run in runs):
                continue
            for diagnostic in diagnostics:
                pairs = np.array([(run[diagnostic], run[truth]) for run in runs
                                  if math.isfinite(run.get(diagnostic, math.nan))
                                  and math.isfinite(run.get(truth, math.nan))]).reshape(-1, 2)
                if len(pairs) < 4:
                    continue
                x, y = pairs[:, 0], pairs[:, 1]
                found.append(Correlation(study.name, truth, diagnostic, spearman(x, y),
                                         *bootstrap_interval(x, y, draws), len(pairs)))
    return found


def _number(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:+.2f}"


def _rows(found: Sequence[Correlation]) -> tuple[list[tuple[str, str, int]], list[str]]:
    """The rows (study, truth, most runs of any diagnostic) and columns (diagnostics), in order of appearance."""
    keys = list(dict.fromkeys((c.study, c.truth) for c in found))
    rows = [(study, truth, max(c.runs for c in found if (c.study, c.truth) == (study, truth)))
            for study, truth in keys]
    return rows, list(dict.fromkeys(c.diagnostic for c in found))


def truth_markdown(found: Sequence[Correlation]) -> str:
    """One row per (study, truth), one column per diagnostic: ``rho [low, high]``."""
    rows, columns = _rows(found)
    cells = {(c.study, c.truth, c.diagnostic): c for c in found}
    lines = ["| study | ground truth | runs | " + " | ".join(f"`{c}`" for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for study, truth, runs in rows:
        values = []
        for column in columns:
            c = cells.get((study, truth, column))
            values.append("" if c is None else f"{_number(c.rho)} [{_number(c.low)}, {_number(c.high)}]")
        lines.append(f"| {study} | `{truth}` | {runs} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def draw_truth(found: Sequence[Correlation], out: Path) -> Path:
    """A heatmap of the correlations (rows: study and truth; columns: diagnostics; -1 blue, +1 red), each cell
    annotated with rho and its interval."""
    rows, columns = _rows(found)
    grid = np.full((len(rows), len(columns)), np.nan)
    notes = [[""] * len(columns) for _ in rows]
    index = {(study, truth): i for i, (study, truth, _) in enumerate(rows)}
    for c in found:
        i, j = index[(c.study, c.truth)], columns.index(c.diagnostic)
        grid[i, j] = c.rho
        notes[i][j] = f"{_number(c.rho)}\n[{_number(c.low)}, {_number(c.high)}]"
    figure = new_figure((1.4 * len(columns) + 4, 0.7 * len(rows) + 2))
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    for i, row in enumerate(notes):
        for j, note in enumerate(row):
            ax.text(j, i, note, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), [c.removeprefix("collapse/") for c in columns], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{study.removeprefix('diagnostics/')}: {truth} (n={runs})"
                                     for study, truth, runs in rows])
    ax.set_title("Spearman correlation of each diagnostic with the ground truth, 95% bootstrap interval")
    figure.colorbar(image, ax=ax, label="Spearman rho")
    save_figure(figure, out)
    return out


def truth_command(dirs: Sequence[Path], truths: Sequence[str], out: Path, backbone: bool = False,
                  draws: int = 2000) -> int:
    """``ssl-bench diagnostics``: the table on stdout; OUT/diagnostics.md and OUT/diagnostics.png written."""
    studies = [load_study(d) for d in dirs]
    suffix = "_backbone" if backbone else ""
    found = correlations(studies, truths, [f"collapse/{name}{suffix}" for name in DIAGNOSTICS], draws)
    if not found:
        raise ConfigError(f"no study in {', '.join(map(str, dirs))} has 4 finished runs that logged one of "
                          f"{', '.join(truths)} and a collapse/ diagnostic (run them with callbacks.collapse)")
    table = truth_markdown(found)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.md").write_text(table + "\n")
    draw_truth(found, out / "diagnostics.png")
    print(f"diagnostics: {out / 'diagnostics.md'} and {out / 'diagnostics.png'}", file=sys.stderr)
    return 0
