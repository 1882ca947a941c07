"""``ssl-bench report``: a study's results as the paper shows them, read from its run directories alone (so it works
offline, and on a laptop after copying the runs from a cluster).

A study is a sweep directory (with the ``sweep.json`` that ``ssl-bench sweep`` writes) or, without one, a run
directory or a folder of run directories (those holding ``summary.json`` or ``metrics.jsonl``), whose grid points are
the runs' W&B groups (``EXPERIMENT/AXIS=VALUE,...``), their metrics and paper values those of the runs' ``sweep``
config section. Its report, ``report.md`` and a self-contained ``report.html`` (figures embedded as data URIs, no
external resources), holds per study:

- the table: per grid point, its runs by status and the mean ± std over the finished runs of each final metric, the
  paper's value beside it;
- curves (:mod:`ssl_bench.study.plots`): each metric over epochs, one line per grid point (the mean over its finished
  runs) with the min-max band across them;
- eigen-spectra: the singular values of the embedding covariance against their rank at the last record, before and
  after the projector;
- R^2 heatmaps: layers x latents adjusted R^2 at the last record, for runs with the R^2 probe.
"""

from __future__ import annotations

import base64
import functools
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jinja2

from ssl_bench.config import ReferenceRow, SweepConfig
from ssl_bench.errors import ConfigError
from ssl_bench.rundir import (
    STATUS_ORDER,
    as_number,
    read_config,
    read_summary,
    replace_json,
)
from ssl_bench.study import plots
from ssl_bench.study.claims import (
    VERDICTS,
    claim_records,
    claims_from_record,
    markdown_cell,
    scoreboard,
    scoreboard_markdown,
)
from ssl_bench.study.record import read_spec, recorded_points
from ssl_bench.study.table import GridPoint, Study, plural, reference_value, runs_cell

HISTORY_FILES = ("summary.json", "metrics.jsonl")
"""A directory holding one of these is a run directory."""

CLAIMS = "claims.json"
"""The claims' records and scoreboard, beside report.md when the studies check claims."""

CURVE_EXTRA = ("train/loss",)
"""Metrics drawn over epochs besides the study's table metrics."""


def _reference_rows(rows: Any, where: str) -> list[ReferenceRow]:
    if not isinstance(rows, list) or not all(isinstance(row, dict) and set(row) == {"match", "values"}
                                             for row in rows):
        raise ConfigError(f"{where}: 'reference' must be a list of {{match, values}} rows; rerun `ssl-bench sweep` "
                          "with the same --sweep-dir to rewrite it (finished runs are kept)")
    return [ReferenceRow(**row) for row in rows]


def _parse_label(label: str) -> dict[str, str]:
    """The axes of a grid point label ``AXIS=VALUE,AXIS=VALUE``."""
    return dict(part.split("=", 1) for part in label.split(",") if "=" in part)


def _grouped(runs: list[tuple[Path, dict[str, Any] | None, str]], experiment: str,
             order: Sequence[str] = ()) -> list[GridPoint]:
    """Grid points from ``(run_dir, summary, group)``, labelled by the group without the experiment's prefix, ordered
    as ``order`` lists the groups and then by name."""
    groups: dict[str, list[tuple[Path, dict[str, Any] | None]]] = {}
    for run_dir, summary, group in runs:
        groups.setdefault(group, []).append((run_dir, summary))
    rank = {group: i for i, group in enumerate(order)}
    points = []
    for group in sorted(groups, key=lambda g: (rank.get(g, len(rank)), g)):
        label = group.removeprefix(f"{experiment}/") if group != experiment else ""
        dirs, summaries = zip(*groups[group])
        points.append(GridPoint(label, _parse_label(label), list(dirs), list(summaries)))
    return points


def sweep_study(sweep_dir: Path) -> Study:
    """The study of a sweep directory: its grid points and seeds as ``sweep.json`` records them (a record without
    grid points: the groups of the summaries found below it)."""
    spec = read_spec(sweep_dir)
    spec_file = sweep_dir / "sweep.json"
    reference = _reference_rows(spec.get("reference", []), str(spec_file))
    recorded = recorded_points(spec, spec_file)
    experiment = str(spec["experiment"])
    if recorded is not None:
        points = [GridPoint(str(p["label"]), {str(k): str(v) for k, v in p["axes"].items()},
                            [sweep_dir / str(p["dir"]) / f"seed{seed}" for seed in spec["seeds"]]) for p in recorded]
    else:
        found = [(f.parent, s) for f in sorted(sweep_dir.rglob("summary.json")) if (s := read_summary(f.parent))]
        points = _grouped([(d, s, str(s.get("group", experiment))) for d, s in found], experiment,
                          [str(g) for g in spec.get("groups", [])])
    claims = claims_from_record(spec.get("claims", []), str(spec_file))
    profile = spec.get("profile")
    return Study(experiment, sweep_dir, [str(a) for a in spec.get("axes", [])], [str(m) for m in spec["metrics"]],
                 reference, points, claims, None if profile is None else str(profile))


def runs_study(path: Path) -> Study:
    """The study of a run directory or a folder of them, grouped by the runs' W&B group; the table's metrics and
    the paper's values are the ``sweep`` section of the first run's config that has one."""
    if any((path / name).is_file() for name in HISTORY_FILES):
        run_dirs = [path]
    else:
        run_dirs = sorted({f.parent for name in HISTORY_FILES for f in path.rglob(name)})
    if not run_dirs:
        raise ConfigError(f"{path} holds no runs (no sweep.json, and no summary.json or metrics.jsonl below it); "
                          "give a sweep directory or a directory of run directories")
    runs, experiments, sweep = [], [], None
    for run_dir in run_dirs:
        summary, config = read_summary(run_dir), read_config(run_dir)
        experiment = str((summary or {}).get("experiment") or config.get("experiment") or path.name)
        group = (summary or {}).get("group") or config.get("group") or experiment
        runs.append((run_dir, summary, str(group)))
        experiments.append(experiment)
        if sweep is None and isinstance(config.get("sweep"), dict):
            sweep = config["sweep"]
    name = experiments[0] if len(set(experiments)) == 1 else path.name
    points = _grouped(runs, name)
    if all(point.axes and point.label == ",".join(f"{k}={v}" for k, v in point.axes.items()) for point in points):
        axes = list(dict.fromkeys(axis for point in points for axis in point.axes))
    else:  # groups that are no grid labels: the group is the row's name
        axes = ["group"]
        for point in points:
            point.axes = {"group": point.label or name}
    metrics = (sweep or {}).get("metrics") or SweepConfig().metrics
    reference = _reference_rows((sweep or {}).get("reference") or [], f"{run_dirs[0] / 'config.yaml'}: sweep")
    return Study(name, path, axes, [str(m) for m in metrics], reference, points)


def load_study(path: Path | str) -> Study:
    """The study in ``path``: a sweep directory, a run directory, or a directory of run directories."""
    path = Path(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"{path} {what}; give a sweep directory (with sweep.json) or a directory of run directories")
    return sweep_study(path) if (path / "sweep.json").is_file() else runs_study(path)


def check_points(studies: Sequence[Study], points: Sequence[str] | None) -> None:
    """Refuse a grid point label that no study has, listing the labels there are."""
    known = list(dict.fromkeys(point.label for study in studies for point in study.points))
    unknown = [label for label in points or [] if label not in known]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not a grid point of {', '.join(str(s.dir) for s in studies)}; its grid "
                          "points: " + ", ".join(repr(label) for label in known))


# ----------------------------------------------------------------------------------------------------- the table


@dataclass
class Row:
    """A table row: the axis values, the runs by status, and per metric our ``mean ± std`` (``-`` without a finished
    run) with the paper's value (None where the paper gives none)."""

    axes: list[str]
    runs: str
    cells: list[tuple[str, float | None]]


def _mean_std(values: list[float]) -> str:
    """``mean ± std`` (population std) to three decimals; non-finite values show as nan or inf."""
    if all(math.isfinite(v) for v in values):
        return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"
    mean = sum(values) / len(values)
    return f"{mean:.3f} ± nan"


def has_runs(point: GridPoint) -> bool:
    """Whether any run of the grid point has started (a grid point left out by ``--only`` has none)."""
    return any(status != "missing" for status in point.statuses)


def unrun_line(study: Study) -> str:
    """One line for the grid points without any run, or '' when every grid point has one."""
    unrun = sum(not has_runs(point) for point in study.points)
    return f"{plural(unrun, 'other grid point')} of {len(study.points)} without runs." if unrun else ""


def table_rows(study: Study, with_unrun: bool = True) -> list[Row]:
    """The rows of the study's table, one per grid point (``with_unrun=False``: one per grid point with runs)."""
    rows = []
    for point in study.points if with_unrun else [p for p in study.points if has_runs(p)]:
        done = [s for s, status in zip(point.summaries, point.statuses) if status == "finished" and s is not None]
        cells = []
        for metric in study.metrics:
            values = [v for s in done if isinstance(s.get("metrics"), dict)
                      and (v := as_number(s["metrics"].get(metric))) is not None]
            cells.append((_mean_std(values) if values else "-", reference_value(study.reference, point.axes, metric)))
        rows.append(Row([point.axes.get(a, "") for a in study.axes], runs_cell(point.statuses), cells))
    return rows


def markdown_table(study: Study, with_unrun: bool = True) -> str:
    """The table as ``ssl-bench sweep`` prints it: a title line, then one row per grid point with the paper's value
    in parentheses beside ours (``with_unrun=False``, as ``ssl-bench report`` prints it: the grid points without
    runs summed up in one line below)."""
    lines = []
    for row in table_rows(study, with_unrun):
        cells = [cell + (f" ({paper:.2f})" if paper is not None else "") for cell, paper in row.cells]
        lines.append("| " + " | ".join([*row.axes, row.runs, *cells]) + " |")
    header = [*study.axes, "runs", *study.metrics]
    title = (f"{study.name}: mean ± std over the finished runs of the final values"
             + (", paper's value in parentheses" if study.reference else "")
             + "; runs: finished/all, the others by status")
    unrun = [] if with_unrun or not unrun_line(study) else ["", unrun_line(study)]
    return "\n".join([title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines, *unrun])


def _paper_columns(study: Study, rows: list[Row]) -> list[bool]:
    """Per metric, whether the paper gives a value for some row (and so the metric gets a ``paper`` column)."""
    return [any(row.cells[i][1] is not None for row in rows) for i in range(len(study.metrics))]


def paper_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """The table for the report: header and a row per grid point with runs, a ``paper`` column beside each metric the
    paper reports."""
    rows = table_rows(study, with_unrun=False)
    papers = _paper_columns(study, rows)
    header = [*study.axes, "runs"]
    for metric, paper in zip(study.metrics, papers):
        header += [metric, "paper"] if paper else [metric]
    body = []
    for row in rows:
        cells = [*row.axes, row.runs]
        for (ours, value), paper in zip(row.cells, papers):
            cells += [ours, "" if value is None else f"{value:.2f}"] if paper else [ours]
        body.append(cells)
    return header, body


# ---------------------------------------------------------------------------------------------------- the report


@dataclass
class Figure:
    """A PNG of the report and what it shows."""

    path: Path
    caption: str

    def link(self, out: Path) -> str:
        """The PNG's path relative to the report's folder ``out``, as a markdown link takes it."""
        return self.path.relative_to(out).as_posix()

    def base64(self) -> str:
        """The PNG's bytes in base64, for a data URI."""
        return base64.b64encode(self.path.read_bytes()).decode("ascii")


@dataclass
class Section:
    """One study's part of the report."""

    study: Study
    figures: list[Figure]
    notes: list[str]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "study"


def _run_count(study: Study) -> str:
    statuses = [s for point in study.points for s in point.statuses]
    counts = {s: statuses.count(s) for s in STATUS_ORDER if statuses.count(s)}
    return f"{plural(len(statuses), 'run')} in {plural(len(study.points), 'grid point')}: " + ", ".join(
        f"{n} {status}" for status, n in counts.items())


def draw_study(study: Study, figures_dir: Path, stem: str, metrics: Sequence[str] | None = None,
               points: Sequence[str] | None = None) -> Section:
    """Every figure of ``study`` as ``figures_dir/STEM-*.png``: the curves of ``metrics`` (default: the table's and
    ``train/loss``), each table metric's final value against a numeric grid axis (e.g. a width) when there is one,
    the spectra, the R^2 heatmaps, the R^2 of each latent group per layer and the predictor's eigenvalue regimes; a
    note for each figure that has nothing to show (one for R^2, which both of its figures need). The study's figures
    of an earlier report into the same folder are removed first, so the folder holds only what the report shows."""
    for old in figures_dir.glob(f"{stem}-*.png"):
        old.unlink()
    chosen = [point for point in study.points if points is None or point.label in points]
    figures, notes = [], []
    for metric in dict.fromkeys(metrics or [*study.metrics, *CURVE_EXTRA]):
        path = figures_dir / f"{stem}-{_slug(metric.replace('/', '-'))}.png"
        drawn = plots.draw_curves([(study, chosen)], metric, path)
        if drawn is None:
            notes.append(f"No finished run logged {metric}.")
        else:
            figures.append(Figure(path, drawn))
    axis = plots.numeric_axis(study)
    for metric in study.metrics if axis else ():
        path = figures_dir / f"{stem}-{_slug(metric.replace('/', '-'))}-vs-{_slug(axis)}.png"
        drawn = plots.draw_against_axis(study, chosen, axis, metric, path)
        if drawn is not None:
            figures.append(Figure(path, drawn))
    for kind, draw, absent in (
            ("spectra", plots.draw_spectra, "No finished run recorded spectra (spectra.jsonl)."),
            ("r2-heatmap", plots.draw_r2, ("No finished run recorded R^2 (r2.jsonl; add the probe with "
                                           "+callbacks.r2_probe={}).")),
            ("r2-layers", plots.draw_r2_layers, ""),
            ("regimes", plots.draw_regimes, "")):
        path = figures_dir / f"{stem}-{kind}.png"
        drawn = draw(study, chosen, path)
        if drawn is not None:
            figures.append(Figure(path, drawn))
        elif absent:
            notes.append(absent)
    return Section(study, figures, notes)


CURVES_NOTE = ("In the figures, each grid point's line is the mean over its finished runs and its band the range "
               "(min to max) across them; the legend gives the number of runs.")
"""What the lines and bands of the figures are."""


@functools.cache
def _templates() -> jinja2.Environment:
    """The report's templates (``ssl_bench/study/templates``); HTML ones escape every value they show."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("ssl_bench.study", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.globals["zip"] = zip
    environment.filters["cell"] = markdown_cell
    return environment


def _section_view(section: Section) -> dict[str, Any]:
    """What the templates show of one study: its name, directory and run count, the table (header, rows, and each
    column's kind: ``axis``, ``runs``, ``paper`` or none), the figures and the notes."""
    study = section.study
    header, body = paper_table(study)
    kinds = ["axis"] * len(study.axes) + ["runs"] + ["paper" if h == "paper" else "" for h in header[
        len(study.axes) + 1:]]
    return {"name": study.name, "dir": str(study.dir), "run_count": _run_count(study), "header": header,
            "body": body, "kinds": kinds, "unrun": unrun_line(study), "figures": section.figures,
            "notes": section.notes}


def _claim_view(record: dict[str, Any]) -> dict[str, str]:
    """What the report shows of one claim: its id, source, statement, the paper's numbers, the check, ours (or why
    there is no verdict) and the verdict."""
    paper = ", ".join(f"{name} {value:g}" for name, value in record["paper"].items())
    return {"id": record["id"], "source": record["source"], "statement": record["statement"], "paper": paper,
            "checks": record["checks"], "ours": record["reason"], "verdict": record["verdict"]}


def render(template: str, sections: list[Section], out: Path, claims: list[dict[str, Any]]) -> str:
    """The report ``template`` (``report.md.j2`` or ``report.html.j2``) of ``sections`` and the ``claims``' records,
    written to ``out``."""
    return _templates().get_template(template).render(
        sections=[_section_view(section) for section in sections], out=out, curves_note=CURVES_NOTE,
        scoreboard=scoreboard(claims) if claims else [], verdicts=VERDICTS,
        claims=[_claim_view(record) for record in claims])


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    sections: list[Section]
    claims: list[dict[str, Any]]
    """The record of every claim of the studies (also in ``claims.json`` beside the report when there are any)."""

    @property
    def figures(self) -> list[Path]:
        """Every PNG written, in the order the report shows them."""
        return [figure.path for section in self.sections for figure in section.figures]


def default_out(dirs: Sequence[Path]) -> Path:
    """``DIR/report`` for one directory; several need ``--out``."""
    if len(dirs) != 1:
        raise ConfigError(f"a report of {len(dirs)} directories needs --out OUT (where report.md, report.html and "
                          "figures/ go)")
    return dirs[0] / "report"


def write_report(studies: Sequence[Study], out: Path, metrics: Sequence[str] | None = None,
                 points: Sequence[str] | None = None, claim_studies: Sequence[Study] | None = None) -> Report:
    """Draw every study's figures into ``out/figures`` and write ``out/report.md`` and ``out/report.html``, with the
    claims of ``claim_studies`` (default: ``studies``) first and their records in ``out/claims.json``.
    ``metrics`` chooses the curves; ``points`` (grid point labels) the grid points drawn, in every study."""
    figures_dir = out / "figures"
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out} cannot be written ({err.strerror or err}); choose a directory you can write "
                          "to") from None
    stems = [_slug(study.name) for study in studies]
    stems = [stem if stems.count(stem) == 1 else f"{stem}-{i + 1}" for i, stem in enumerate(stems)]
    sections = [draw_study(study, figures_dir, stem, metrics, points) for study, stem in zip(studies, stems)]
    claims = claim_records(list(studies if claim_studies is None else claim_studies), relative_to=out)
    markdown, page = out / "report.md", out / "report.html"
    markdown.write_text(render("report.md.j2", sections, out, claims), encoding="utf-8")
    page.write_text(render("report.html.j2", sections, out, claims), encoding="utf-8")
    if claims:
        replace_json(out / CLAIMS, {"scoreboard": scoreboard(claims), "claims": claims})
    return Report(markdown, page, sections, claims)


def curves(dirs: Sequence[Path | str], metric: str, out_png: Path | str, points: Sequence[str] | None = None) -> Path:
    """One figure of ``metric`` over epochs for the grid points of one or more sweep or run directories (``points``:
    their labels, e.g. ``["model=Simplified-SimCLR,data.sparsity=0.1"]``; all by default): per grid point the mean
    over its finished runs with the min-max band across them. Returns ``out_png``; an error when no finished run
    logged the metric."""
    studies = [load_study(d) for d in dirs]
    check_points(studies, points)
    chosen = [(study, [p for p in study.points if points is None or p.label in points]) for study in studies]
    out_png = Path(out_png)
    if plots.draw_curves(chosen, metric, out_png) is None:
        raise ConfigError(f"no finished run in {', '.join(map(str, dirs))} logged {metric}; choose a metric of their "
                          "metrics.jsonl")
    return out_png


def report_command(dirs: Sequence[Path], out: Path | None, metrics: Sequence[str] | None,
                   points: Sequence[str] | None) -> int:
    """``ssl-bench report``: the tables on stdout, the report files written, where they went on stderr."""
    studies = [load_study(d) for d in dirs]
    check_points(studies, points)  # before anything is drawn
    out = out or default_out(dirs)
    print("\n\n".join(markdown_table(study, with_unrun=False) for study in studies))
    report = write_report(studies, out, metrics, points)
    if report.claims:
        print("\n" + scoreboard_markdown(report.claims))
    files = [str(report.markdown), str(report.html), *([str(out / CLAIMS)] if report.claims else [])]
    print(f"report: {', '.join(files[:-1])} and {files[-1]} ({len(report.figures)} figures in {out / 'figures'})",
          file=sys.stderr)
    return 0


def sweep_table_markdown(sweep_dir: Path, with_unrun: bool = True) -> str:
    """A markdown table with one row per grid point: how many of its runs finished (the others counted by status:
    diverged, failed, interrupted, missing) and the mean ± std over its finished runs of each final metric, with the
    paper's value beside it. A grid point without a finished run has ``-`` cells; with ``with_unrun=False`` the grid
    points without any run are summed up in one line instead."""
    return markdown_table(sweep_study(sweep_dir), with_unrun)
