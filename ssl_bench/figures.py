"""Matplotlib primitives that training callbacks and the study's report share: figures, colours, saving, and the
eigenvalue-regime panels of Bao (2023). Headless (Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ssl_bench.rundir import as_number

DPI = 100
CURVE_SIZE = (10.0, 5.0)
"""Inches of a curve figure: 1000 x 500 pixels."""


def new_figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def save_figure(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = (None, "o", "s", "^", "v", "D")


def line_styles(count: int) -> list[dict[str, Any]]:
    """A look per line that tells many lines apart by more than shades of one colour: tab10's colours, then for each
    further ten lines another dash pattern, then for each further forty another marker (``color``, ``ls``,
    ``marker``)."""
    from matplotlib import colormaps

    return [{"color": colormaps["tab10"](i % 10), "ls": LINE_STYLES[i // 10 % len(LINE_STYLES)],
             "marker": MARKERS[i // 40 % len(MARKERS)]} for i in range(count)]


REGIME_COLOURS = {"diverge": "#f4b6b6", "collapse": "#d9d9d9", "converge": "#bfe5bf"}
"""Background of :func:`draw_eigenvalue_regimes`: where an eigenvalue diverges, collapses to 0 or converges."""


REGIME_COLUMNS = 5


def regime_readings(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The readings of ``regimes.jsonl`` that carry eigenvalues and intervals (``predictor_dynamics.regimes``)."""
    return [r for r in records if r.get("eigenvalues_signed") and r.get("intervals") is not None]


def plot_regimes(ax: Any, readings: Sequence[dict[str, Any]], eigenvalues: int) -> None:
    """``|p_j|`` of the largest ``eigenvalues`` over the readings, each reading's column coloured by its intervals of
    ``p >= 0`` (:data:`REGIME_COLOURS`)."""
    epochs = [float(r["epoch"]) for r in readings]
    moduli = [[abs(as_number(v) or 0.0) for v in r["eigenvalues_signed"][:eigenvalues]] for r in readings]
    top = 1.5 * max(max(row) for row in moduli) or 1.0
    edges = [epochs[0] - 0.5 * (epochs[1] - epochs[0]) if len(epochs) > 1 else epochs[0] - 0.5]
    edges += [(a + b) / 2 for a, b in zip(epochs, epochs[1:])]
    edges.append(epochs[-1] + (epochs[-1] - edges[-1]) if len(epochs) > 1 else epochs[0] + 0.5)
    for left, right, reading in zip(edges, edges[1:], readings):
        for low, high, kind in reading["intervals"]:
            high_value = as_number(high)
            low, high = max(0.0, as_number(low) or 0.0), min(top, top if high_value is None else high_value)
            if high > low:
                ax.fill_between([left, right], low, high, color=REGIME_COLOURS[kind], lw=0)
    for j, column in enumerate(zip(*moduli)):
        ax.plot(epochs, column, color="black", lw=1.2, alpha=1.0 if j == 0 else 0.55)
    ax.set_ylim(0, top)
    ax.set_xlim(edges[0], edges[-1])


def regime_legend(target: Any, loc: str = "upper right") -> None:
    from matplotlib.patches import Patch

    target.legend(handles=[Patch(color=c, label=k) for k, c in REGIME_COLOURS.items()], loc=loc, fontsize=9,
                  frameon=True, facecolor="white")


def draw_eigenvalue_regimes(records: Sequence[dict[str, Any]], out: Path | BinaryIO, title: str = "",
                            eigenvalues: int = 8) -> str | None:
    """Bao 2023, Fig. 6 right: the moduli ``|p_j|`` of the largest ``eigenvalues`` predictor eigenvalues over the
    readings of one run's ``regimes.jsonl`` (``epoch``, ``eigenvalues_signed``, ``intervals``), each reading's column
    coloured by the intervals of ``p >= 0`` that diverge, collapse or converge (:data:`REGIME_COLOURS`); into ``out``
    (a path or a binary file); the caption, or None when no record has eigenvalues."""
    readings = regime_readings(records)
    if not readings:
        return None
    figure = new_figure(CURVE_SIZE)
    ax = figure.add_subplot()
    plot_regimes(ax, readings, eigenvalues)
    regime_legend(ax)
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("|p_j|, eigenvalues of the predictor")
    ax.set_title(title or "predictor eigenvalues and their regimes", fontsize=12)
    if isinstance(out, Path):
        save_figure(figure, out)
    else:
        figure.savefig(out, dpi=DPI, format="png")
    return f"{title}: |p_j| over epochs on the intervals where an eigenvalue diverges, collapses or converges."
