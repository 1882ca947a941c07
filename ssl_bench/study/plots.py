"""The report's figures, drawn from run directories: metric curves over epochs with the min-max band across seeds (as
in Pokle et al. 2022's figures), eigen-spectra at the last record, and R^2 heatmaps (layers x latents).

The series a figure shows come from plain functions (:func:`band`, :func:`spectrum_bands`, :func:`r2_mean`), so
they can be checked and reused without drawing. Drawing uses matplotlib's object API on an Agg canvas
(``Figure.savefig``, no pyplot and no global backend), imported only when a figure is drawn. Every figure has a fixed
size in pixels: its size in inches (``*_SIZE``) times :data:`DPI`.
"""

from __future__ import annotations

import math
import re
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ssl_bench.figures import (
    CURVE_SIZE,
    REGIME_COLUMNS,
    line_styles,
    new_figure,
    plot_regimes,
    regime_legend,
    regime_readings,
    save_figure,
)
from ssl_bench.rundir import as_number, read_records
from ssl_bench.study.table import plural, runs_cell

if TYPE_CHECKING:
    from ssl_bench.study.table import GridPoint, Study

SPECTRA_SIZE = (14.0, 5.0)
"""Inches of a spectra figure (one panel per kind of spectrum): 1400 x 500 pixels."""
PANEL = (4.0, 3.0)
"""Inches of one grid point's panel in a figure of panels (R^2 heatmaps, eigenvalue regimes); the figure adds
:data:`PANEL_MARGIN` for its title, legend or colour bar."""
PANEL_MARGIN = (1.5, 0.8)
R2_COLUMNS = 3
"""Heatmaps per row of an R^2 figure."""

SPECTRUM_KINDS = {
    "backbone": "backbone embedding (before the projector)",
    "projector": "projector output (after the projector)",
    "weight": "first-layer weight",
}
"""The spectra that ``spectra.jsonl`` records, in panel order, with their panel titles."""

DESCRIPTIONS = {
    "maxcos/max": "max-cosine to the dictionary, best-recovered atom",
    "maxcos/median": "max-cosine to the dictionary, median atom",
    "maxcos/min": "max-cosine to the dictionary, worst-recovered atom",
    "train/loss": "training loss",
    "train/lr": "learning rate",
    "spectrum/effective_rank": "effective rank of the embedding after the projector",
    "spectrum/effective_rank_backbone": "effective rank of the backbone embedding",
    "spectrum/rank": "numerical rank of the embedding after the projector",
    "spectrum/rank_backbone": "numerical rank of the backbone embedding",
    "collapse/std_l2": "std of the l2-normalised embedding x sqrt(dim): 1 no collapse, 0 complete",
    "collapse/std_l2_backbone": "std of the l2-normalised backbone embedding x sqrt(dim)",
    "collapse/rankme": "RankMe (Garrido et al. 2023): smooth rank of the raw embedding",
    "collapse/alpha_req": "alpha-ReQ (Agrawal et al. 2022): power-law decay of the eigenspectrum",
    "collapse/alpha_req_r2": "R² of alpha-ReQ's log-log fit",
    "collapse/lidar": "LiDAR (Thilak et al. 2024): rank of the LDA matrix of augmented views",
    "collapse/stable_rank": "stable rank ||Z||_F² / sigma_1²",
    "collapse/nesum": "NESum (He & Ozay 2022): eigenvalues summed over the largest",
    "collapse/effective_rank": "entropy rank of the l2-normalised covariance (Jing et al.'s spectrum)",
    "collapse/std": "std of the l2-normalised embedding (solo-learn's z_std): 1/sqrt(dim) no collapse, 0 complete",
    "collapse/uniformity": "uniformity (Wang & Isola 2020): lower is more uniform",
    "collapse/wasserstein_uniformity": "W2 to N(0, I/d) (Fang et al. 2024): lower is more uniform",
    "collapse/alignment": "alignment of two views (Wang & Isola 2020): lower is more aligned",
    "readout/knn_acc": "weighted kNN accuracy (Wu et al. 2018) after the projector",
    "readout/knn_acc_backbone": "weighted kNN accuracy (Wu et al. 2018) of the backbone",
}


def metric_description(metric: str) -> str:
    """What a metric measures, in words, for a figure's title ("" for a metric we know nothing of)."""
    if metric in DESCRIPTIONS:
        return DESCRIPTIONS[metric]
    layer = re.fullmatch(r"r2/layer(\d+)/(\w+)", metric)
    if layer:
        return f"adjusted R² of the {layer[2]} latents from layer {layer[1]}"
    output = re.fullmatch(r"r2/(\w+)", metric)
    if output:
        return f"adjusted R² of the {output[1]} latents from the encoder's output"
    if metric.endswith("_backbone") and metric.removesuffix("_backbone") in DESCRIPTIONS:
        return f"{DESCRIPTIONS[metric.removesuffix('_backbone')]}, backbone"
    if metric.startswith("readout/"):
        return "linear readout accuracy"
    return ""


# --------------------------------------------------------------------------------------------------- the series


def history(run_dir: Path, metric: str) -> dict[int, float]:
    """``metric`` in the run's ``metrics.jsonl`` by epochs trained: the record's ``epoch`` (Lightning's 0-based
    epoch index) + 1, as ``spectra.jsonl``, ``r2.jsonl`` and ``summary.json`` count them; the last value logged in an
    epoch wins. Non-finite values stay (as float NaN or inf)."""
    series: dict[int, float] = {}
    for record in read_records(run_dir, "metrics.jsonl"):
        epoch, value = as_number(record.get("epoch")), as_number(record.get(metric))
        if epoch is not None and math.isfinite(epoch) and value is not None:
            series[int(epoch) + 1] = value
    return series


@dataclass(frozen=True)
class Band:
    """A series across runs: at each ``x``, the ``mean``, ``low`` (min) and ``high`` (max) of the runs with a finite
    value there, and ``runs``, how many runs contributed to some ``x``."""

    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    runs: int


def _band(series: list[dict[Any, float]]) -> Band | None:
    """The band of several runs' series (x -> value), aligned on x; non-finite values are left out."""
    finite = [{x: v for x, v in s.items() if math.isfinite(v)} for s in series]
    xs = sorted({x for s in finite for x in s})
    if not xs:
        return None
    columns = [[s[x] for s in finite if x in s] for x in xs]
    return Band(list(xs), [statistics.fmean(c) for c in columns], [min(c) for c in columns],
                [max(c) for c in columns], sum(1 for s in finite if s))


def numeric_axis(study: Study) -> str | None:
    """The last of the study's axes whose values are all numbers, at least three distinct ones (e.g. a width); None
    when there is none."""
    for axis in reversed(study.axes):
        values = [as_number(point.axes.get(axis)) for point in study.points]
        if None not in values and len(set(values)) >= 3:
            return axis
    return None


def axis_bands(study: Study, points: Sequence[GridPoint], axis: str, metric: str) -> dict[str, Band]:
    """The final ``metric`` of the finished runs (their ``summary.json``) against the numeric ``axis``: a band per
    combination of the other axes' values (its label, e.g. ``tanh``; the study's name when there is no other axis)
    with the mean, min and max over the runs of each grid point; combinations without a finite value are left out."""
    runs: dict[str, list[dict[float, float]]] = {}
    for point in points:
        label = ", ".join(point.axes.get(a, "") for a in study.axes if a != axis) or study.name
        x = as_number(point.axes[axis])
        runs.setdefault(label, []).extend(
            {x: v} for summary, status in zip(point.summaries, point.statuses)
            if status == "finished" and summary is not None and isinstance(summary.get("metrics"), dict)
            and (v := as_number(summary["metrics"].get(metric))) is not None)
    return {label: b for label, series in runs.items() if (b := _band(series)) is not None}


def band(run_dirs: Sequence[Path], metric: str) -> Band | None:
    """``metric`` over epochs trained (``x``) across the runs: mean, min and max at each epoch over the runs that
    logged a finite value there (runs of different lengths or logging epochs align on the epoch). None when no run
    logged a finite value."""
    return _band([history(run_dir, metric) for run_dir in run_dirs])


def last_record(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The last record of a history file of the run (``spectra.jsonl``, ``r2.jsonl``), or None."""
    records = read_records(run_dir, name)
    return records[-1] if records else None


def spectrum_bands(run_dirs: Sequence[Path]) -> tuple[dict[str, Band], list[int]]:
    """Per kind of spectrum (backbone, projector, weight), the singular values at each rank (``x``, from 1) of the
    runs' last ``spectra.jsonl`` records: the geometric mean (the mean of the logs: the figures have a log axis),
    min and max over the runs with a positive finite value at that rank. Also the epochs of those records."""
    records = [r for run_dir in run_dirs if (r := last_record(run_dir, "spectra.jsonl")) is not None]
    bands = {}
    for kind in SPECTRUM_KINDS:
        logs = []
        for record in records:
            values = [as_number(v) for v in record.get(kind, [])] if isinstance(record.get(kind), list) else []
            logs.append({k: math.log10(v) for k, v in enumerate(values, 1) if v is not None and 0 < v < math.inf})
        kind_band = _band(logs)
        if kind_band is not None:
            bands[kind] = Band(kind_band.x, *([10 ** v for v in vs] for vs in
                                              (kind_band.mean, kind_band.low, kind_band.high)), kind_band.runs)
    epochs = sorted({int(e) for r in records if (e := as_number(r.get("epoch"))) is not None and math.isfinite(e)})
    return bands, epochs


@dataclass(frozen=True)
class R2Matrix:
    """The adjusted R^2 of each layer (rows) for each latent (columns), averaged over ``runs`` runs, with the
    latent groups (name -> latent indices) and the epochs of the records."""

    values: list[list[float]]
    groups: dict[str, list[int]]
    runs: int
    epochs: list[int]


def _adjusted_r2(record: dict[str, Any] | None) -> list[list[float]] | None:
    """The adjusted R^2 matrix (layers x latents) of an ``r2.jsonl`` record as floats, NaN for what is not a number;
    None when the record has no such matrix."""
    matrix = record.get("adjusted_r2") if record else None
    if not (isinstance(matrix, list) and matrix and all(isinstance(row, list) for row in matrix)):
        return None
    return [[v if (v := as_number(x)) is not None else math.nan for x in row] for row in matrix]


def r2_mean(run_dirs: Sequence[Path]) -> R2Matrix | None:
    """The mean adjusted R^2 matrix of the runs' last ``r2.jsonl`` records (entries without a finite value in any
    run are NaN; a run whose matrix has another shape than the first run's is left out). None without records."""
    matrices, groups, epochs = [], {}, []
    for run_dir in run_dirs:
        record = last_record(run_dir, "r2.jsonl")
        rows = _adjusted_r2(record)
        if rows is None:
            continue
        if matrices and [len(r) for r in rows] != [len(r) for r in matrices[0]]:
            continue
        matrices.append(rows)
        groups = groups or (record.get("groups") if isinstance(record.get("groups"), dict) else {})
        if (epoch := as_number(record.get("epoch"))) is not None and math.isfinite(epoch):
            epochs.append(int(epoch))
    if not matrices:
        return None
    mean = [[statistics.fmean(finite) if (finite := [m[i][j] for m in matrices if math.isfinite(m[i][j])])
             else math.nan for j in range(len(matrices[0][i]))] for i in range(len(matrices[0]))]
    return R2Matrix(mean, {str(k): list(v) for k, v in groups.items()}, len(matrices), sorted(set(epochs)))


def r2_layer_bands(run_dirs: Sequence[Path]) -> dict[str, Band]:
    """Per latent group (e.g. content, style), the adjusted R^2 at each encoder layer (``x``, 0 = the first, the
    last = the output) averaged over the group's latents, from the runs' last ``r2.jsonl`` records: mean, min and max
    across the runs (Rusak et al. 2022, Fig. 1 middle and right). A latent without a finite value is left out of its
    group's mean; a group without a finite latent at a layer has no value there."""
    series: dict[str, list[dict[Any, float]]] = {}
    for run_dir in run_dirs:
        record = last_record(run_dir, "r2.jsonl")
        rows, groups = _adjusted_r2(record), (record or {}).get("groups")
        if rows is None or not isinstance(groups, dict):
            continue
        for name, latents in groups.items():
            by_layer = {}
            for layer, row in enumerate(rows):
                values = [row[j] for j in latents if isinstance(j, int) and 0 <= j < len(row) and math.isfinite(row[j])]
                if values:
                    by_layer[layer] = statistics.fmean(values)
            series.setdefault(str(name), []).append(by_layer)
    return {name: b for name, runs in series.items() if (b := _band(runs)) is not None}


# -------------------------------------------------------------------------------------------------------- drawing


def _name(study: Study, point: GridPoint, several: bool) -> str:
    """A grid point in a legend: its axis values (the legend's title names the axes), the study's name first when
    the figure shows several studies."""
    values = ", ".join(point.axes.get(axis, "") for axis in study.axes) or study.name
    return f"{study.name}: {values}" if several and values != study.name else values


def _legend_title(studies: Sequence[Study]) -> str:
    axes = list(dict.fromkeys(", ".join(study.axes) for study in studies if study.axes))
    return " | ".join(axes)


def _legend(figure: Any, title: str, entries: int) -> None:
    """The figure's legend, right of the axes; two columns and a smaller font for many grid points."""
    many = entries > 16
    figure.legend(loc="outside right upper", title=title or None, fontsize=8 if many else 9, title_fontsize=9,
                  ncols=2 if many else 1, frameon=False)


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _style_of(selection: Sequence[tuple[Study, Sequence[GridPoint]]]) -> dict[tuple[int, str], dict[str, Any]]:
    """A look (colour, dashes, marker: :func:`ssl_bench.figures.line_styles`) for each grid point of the studies
    that has a finished run, by its place among those, so that a grid point keeps its look whichever of them a figure
    shows and a partial sweep's few points get distinct colours."""
    keys = [(i, point.label) for i, (study, _) in enumerate(selection) for point in study.points if point.finished]
    return dict(zip(keys, line_styles(len(keys))))


def _footnote(figure: Any, left_out: Sequence[tuple[str, GridPoint]], what: str) -> None:
    """Below the figure (as its x label, which the layout makes room for): the grid points it leaves out that have
    runs, by name, and those without any run in one count."""
    ran = [f"{name} (runs {runs_cell(point.statuses)})" for name, point in left_out
           if any(status != "missing" for status in point.statuses)]
    unrun = len(left_out) - len(ran)
    parts = ([f"Not drawn, {what}: " + "; ".join(ran)] if ran else []) + (
        [f"{plural(unrun, 'grid point')} without runs not drawn."] if unrun else [])
    if parts:
        text = textwrap.fill(" ".join(parts), width=int(figure.get_figwidth() * 15))
        figure.supxlabel(text, x=0.01, ha="left", fontsize=8, color="#666")


def draw_curves(selection: Sequence[tuple[Study, Sequence[GridPoint]]], metric: str, path: Path) -> str | None:
    """``metric`` over epochs, a line per grid point (the mean over its finished runs) with the min-max band across
    them, into ``path``; returns the caption, or None (nothing written) when no finished run logged the metric."""
    from matplotlib.ticker import MaxNLocator

    several = len(selection) > 1
    drawn = [(study, point, b) for study, points in selection for point in points
             if (b := band(point.finished, metric)) is not None]
    if not drawn:
        return None
    style = _style_of(selection)
    index = {id(study): i for i, (study, _) in enumerate(selection)}
    figure = new_figure(CURVE_SIZE)
    ax = figure.add_subplot()
    for study, point, b in drawn:
        look = style[index[id(study)], point.label]
        ax.plot(b.x, b.mean, color=look["color"], ls=look["ls"], lw=1.8,
                marker="o" if len(b.x) == 1 else look["marker"], markevery=max(1, len(b.x) // 8),
                label=f"{_name(study, point, several)} ({_runs(b.runs)})")
        ax.fill_between(b.x, b.low, b.high, color=look["color"], alpha=0.18, lw=0)
    lows, highs = [v for *_, b in drawn for v in b.low], [v for *_, b in drawn for v in b.high]
    if metric.endswith("loss") and min(lows) > 0 and max(highs) / min(lows) >= 10:
        ax.set_yscale("log")
    if metric.startswith("maxcos/") and min(lows) >= 0 and max(highs) <= 1:
        ax.set_ylim(0, 1.02)
    names = ", ".join(dict.fromkeys(study.name for study, _ in selection))
    description = metric_description(metric)
    ax.set_title(f"{names}: {metric}" + (f"\n{description}" if description else ""), fontsize=12)
    ax.set_xlabel("epochs trained")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, alpha=0.3)
    _legend(figure, _legend_title([s for s, _ in selection]), len(drawn))
    shown = {(id(study), point.label) for study, point, _ in drawn}
    _footnote(figure, [(_name(study, point, several), point)
                       for study, points in selection for point in points if (id(study), point.label) not in shown],
              f"no finished run logged {metric}")
    save_figure(figure, path)
    return f"{names}: {metric}" + (f", {description}," if description else "") + " over epochs trained."


def draw_against_axis(study: Study, points: Sequence[GridPoint], axis: str, metric: str, path: Path) -> str | None:
    """The final ``metric`` against the numeric grid ``axis`` (:func:`axis_bands`): a line per combination of the
    other axes (the mean over its finished runs) with the min-max band, log-scaled where the values span two decades
    (x) or three (y, when positive), into ``path``; the caption, or None when no finished run logged the metric."""
    bands = axis_bands(study, points, axis, metric)
    if not bands:
        return None
    figure = new_figure(CURVE_SIZE)
    ax = figure.add_subplot()
    for look, (label, b) in zip(line_styles(len(bands)), bands.items()):
        ax.plot(b.x, b.mean, color=look["color"], ls=look["ls"], lw=1.8, marker=look["marker"] or "o",
                label=f"{label} ({_runs(b.runs)})")
        ax.fill_between(b.x, b.low, b.high, color=look["color"], alpha=0.18, lw=0)
    xs = [x for b in bands.values() for x in b.x]
    lows, highs = [v for b in bands.values() for v in b.low], [v for b in bands.values() for v in b.high]
    if min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    if min(lows) > 0 and max(highs) / min(lows) >= 1000:
        ax.set_yscale("log")
    description = metric_description(metric)
    ax.set_title(f"{study.name}: final {metric} against {axis}" + (f"\n{description}" if description else ""),
                 fontsize=12)
    ax.set_xlabel(axis + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"final {metric}" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, alpha=0.3)
    _legend(figure, ", ".join(a for a in study.axes if a != axis), len(bands))
    save_figure(figure, path)
    return f"{study.name}: final {metric}" + (f", {description}," if description else "") + f" against {axis}."


def draw_spectra(study: Study, points: Sequence[GridPoint], path: Path) -> str | None:
    """The singular values against their rank at the runs' last spectra record, a panel per kind (backbone,
    projector, first-layer weight), a line per grid point (geometric mean over its finished runs) with the min-max
    band; returns the caption, or None (nothing written) when no finished run recorded a spectrum."""
    from matplotlib.ticker import MaxNLocator

    drawn = [(point, bands, epochs) for point in points
             for bands, epochs in [spectrum_bands(point.finished)] if bands]
    if not drawn:
        return None
    kinds = [kind for kind in SPECTRUM_KINDS if any(kind in bands for _, bands, _ in drawn)]
    style = _style_of([(study, points)])
    figure = new_figure(SPECTRA_SIZE)
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        for point, bands, _ in drawn:
            if kind in bands:
                b, look = bands[kind], style[0, point.label]
                c = look["color"]
                ax.plot(b.x, b.mean, color=c, ls=look["ls"], lw=1.8, marker="o", ms=3,
                        label=f"{_name(study, point, False)} ({_runs(b.runs)})" if kind == kinds[0] else None)
                ax.fill_between(b.x, b.low, b.high, color=c, alpha=0.18, lw=0)
        ax.set_yscale("log")
        ax.set_title(SPECTRUM_KINDS[kind], fontsize=11)
        ax.set_xlabel("rank k (1 = largest)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("singular value s_k (log scale)")
    epochs = sorted({e for _, _, es in drawn for e in es})
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}" if epochs else "last record"
    figure.suptitle(f"{study.name}: eigen-spectra at {at} (geometric mean over finished runs, band min-max)",
                    fontsize=12)
    _legend(figure, _legend_title([study]), len(drawn))
    _footnote(figure, [(_name(study, p, False), p) for p in points if all(p is not d for d, _, _ in drawn)],
              "no finished run recorded a spectrum")
    save_figure(figure, path)
    weight = " and of the first-layer weight (divided by the largest)" if "weight" in kinds else ""
    return (f"{study.name}: singular values against their rank (log scale) of the covariance of the l2-normalised "
            f"embeddings before and after the projector{weight}, at {at}; per grid point the geometric mean over its "
            "finished runs (line) and the min-max range (band). A spectrum that falls by orders of magnitude "
            "after rank r: the embedding spans about r dimensions (dimensional collapse).")


def _panels(count: int, columns: int) -> tuple[Any, list[Any]]:
    """A figure of ``count`` panels of :data:`PANEL` inches, at most ``columns`` per row, and its ``count`` axes in
    reading order (the grid's other cells hidden)."""
    columns = min(count, columns)
    rows = math.ceil(count / columns)
    figure = new_figure((PANEL[0] * columns + PANEL_MARGIN[0], PANEL[1] * rows + PANEL_MARGIN[1]))
    axes = [ax for row in figure.subplots(rows, columns, squeeze=False) for ax in row]
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes[:count]


def _latent_label(groups: dict[str, list[int]]) -> str:
    def indices(ids: list[int]) -> str:
        ids = sorted(ids)
        return f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 1 else \
            ",".join(map(str, ids))

    parts = [f"{name} {indices(ids)}" for name, ids in groups.items() if ids]
    return "latent" + (f" ({'; '.join(parts)})" if len(parts) > 1 else "")


def draw_r2(study: Study, points: Sequence[GridPoint], path: Path) -> str | None:
    """A heatmap per grid point of the adjusted R^2 of each layer (rows) for each latent (columns), the mean over its
    finished runs' last ``r2.jsonl`` records; returns the caption, or None (nothing written) without records."""
    drawn = [(point, matrix) for point in points if (matrix := r2_mean(point.finished)) is not None]
    if not drawn:
        return None
    figure, axes = _panels(len(drawn), R2_COLUMNS)
    image = None
    for ax, (point, matrix) in zip(axes, drawn):
        layers, latents = len(matrix.values), len(matrix.values[0])
        image = ax.imshow(matrix.values, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        if layers * latents <= 120:
            for i, row in enumerate(matrix.values):
                for j, value in enumerate(row):
                    ax.text(j, i, "nan" if math.isnan(value) else f"{value:.2f}", ha="center", va="center",
                            fontsize=7, color="white" if math.isnan(value) or value < 0.6 else "black")
        ax.set_xticks(range(latents))
        ax.set_yticks(range(layers), [f"{k}" + (" out" if k == layers - 1 and layers > 1 else "")
                                      for k in range(layers)])
        ax.tick_params(labelsize=8)
        ax.set_xlabel(_latent_label(matrix.groups), fontsize=9)
        ax.set_ylabel("encoder layer", fontsize=9)
        epochs = ",".join(map(str, matrix.epochs))
        ax.set_title(f"{point.label or study.name}\n{_runs(matrix.runs)}, epoch {epochs}", fontsize=9)
    figure.colorbar(image, ax=axes, label="adjusted R² (colours clipped to 0-1)", shrink=0.9)
    figure.suptitle(f"{study.name}: adjusted R² of a linear probe, encoder layers x ground-truth latents",
                    fontsize=12)
    _footnote(figure, [(_name(study, p, False), p) for p in points if all(p is not d for d, _ in drawn)],
              "no finished run recorded R²")
    save_figure(figure, path)
    return (f"{study.name}: adjusted R² of a linear map from each encoder layer (rows, the last one the output) to "
            "each ground-truth latent (columns), held out, at the last record; the mean over each grid point's "
            "finished runs. Bright: the latent can be read linearly from that layer.")


R2_GROUP_STYLES = ("--", "-", ":", "-.")
"""Line styles of the latent groups in an R^2-per-layer figure, in the order the groups are recorded (content
dashed and style solid, as in Rusak et al. 2022, Fig. 1)."""


def draw_r2_layers(study: Study, points: Sequence[GridPoint], path: Path) -> str | None:
    """The adjusted R^2 of each latent group against the encoder layer, a colour per grid point and a line style per
    group, the mean over each grid point's finished runs with the min-max band (Rusak et al. 2022, Fig. 1 middle and
    right); returns the caption, or None (nothing written) without ``r2.jsonl`` records."""
    from matplotlib.ticker import MaxNLocator

    drawn = [(point, bands) for point in points if (bands := r2_layer_bands(point.finished))]
    if not drawn:
        return None
    style_of = _style_of([(study, points)])
    groups = list(dict.fromkeys(name for _, bands in drawn for name in bands))
    figure = new_figure(CURVE_SIZE)
    ax = figure.add_subplot()
    for point, bands in drawn:
        c = style_of[0, point.label]["color"]
        for name, b in bands.items():
            style = R2_GROUP_STYLES[groups.index(name) % len(R2_GROUP_STYLES)]
            ax.plot(b.x, b.mean, color=c, ls=style, lw=1.8, marker="o", ms=3,
                    label=f"{_name(study, point, False)}: {name} ({_runs(b.runs)})")
            ax.fill_between(b.x, b.low, b.high, color=c, alpha=0.12, lw=0)
    last = max(x for _, bands in drawn for b in bands.values() for x in b.x)
    ax.set_xticks(range(last + 1), [f"{k}" + (" out" if k == last and last > 0 else "") for k in range(last + 1)])
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("adjusted R² (mean over the group's latents)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{study.name}: adjusted R² per encoder layer", fontsize=12)
    _legend(figure, _legend_title([study]), sum(len(bands) for _, bands in drawn))
    _footnote(figure, [(_name(study, p, False), p) for p in points if all(p is not d for d, _ in drawn)],
              "no finished run recorded R²")
    save_figure(figure, path)
    return (f"{study.name}: adjusted R² of a held-out linear probe from each encoder layer (the last is the output) "
            f"to the latents, averaged over each group ({', '.join(groups)}), at the last record; per grid point the "
            "mean over its finished runs (line) and the min-max range (band). A group whose R² drops at a layer is "
            "lost there (collapse).")


def draw_regimes(study: Study, points: Sequence[GridPoint], path: Path, eigenvalues: int = 8) -> str | None:
    """A panel per grid point (:func:`draw_eigenvalue_regimes` of its first finished run with ``regimes.jsonl``:
    the intervals belong to one run's norms, so runs are not averaged); the caption, or None without records."""
    drawn = [(point, readings) for point in points
             if (readings := next((r for run in point.finished
                                   if (r := regime_readings(read_records(run, "regimes.jsonl")))), None))]
    if not drawn:
        return None
    figure, axes = _panels(len(drawn), REGIME_COLUMNS)
    for ax, (point, readings) in zip(axes, drawn):
        plot_regimes(ax, readings, eigenvalues)
        ax.set_title(point.label or study.name, fontsize=9)
        ax.tick_params(labelsize=8)
    regime_legend(figure, "outside right upper")
    figure.supxlabel("epochs trained", fontsize=10)
    figure.supylabel("|p_j|, eigenvalues of the predictor", fontsize=10)
    figure.suptitle(f"{study.name}: predictor eigenvalues on their regimes (first finished run of each grid point)",
                    fontsize=12)
    save_figure(figure, path)
    return (f"{study.name}: the moduli of the predictor's {eigenvalues} largest eigenvalues over epochs, on the "
            "intervals of Bao 2023's eigenvalue dynamics (Eq. 7 or 8, at each reading's norms) where an eigenvalue "
            "diverges (red), collapses to 0 (grey) or converges to a non-zero root (green); the first finished run "
            "of each grid point.")
