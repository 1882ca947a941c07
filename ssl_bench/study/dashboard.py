"""``ssl-bench dashboard``: a saved W&B workspace that shows a sweep's study as the paper's figures.

A sweep's runs log to W&B (:mod:`ssl_bench.train.wandb_logging`) with the group ``EXPERIMENT/GRID_POINT`` (the
experiment alone for a sweep without a grid), the name ``GROUP/seedS``, the tags experiment, method, data and
``logger.tags``, and the run's config, which holds ``experiment``. The workspace selects the runs whose
``config.experiment`` is the sweep's experiment and whose name is ``GROUP/seedS`` for one of its grid points' groups (a
regular-expression run search: wandb-workspaces cannot put a group such as ``E/data.n=8`` in a filter, it reads the
``=`` in the value as an operator), groups them by W&B group, and draws one line per grid point in every plot: the mean
over its seeds with the min-max band across seeds, as the paper figures do.

Its sections, in order:

- ``Table``: the sweep's table (:func:`ssl_bench.study.report.sweep_table_markdown`: mean ± std over seeds, the
  paper's values beside ours, finished/failed/diverged counts) as read from the sweep directory when the workspace
  was built;
- ``Final values``: the last value of each of the sweep's metrics per grid point, as bars with the min-max range;
- ``Curves``: the sweep's metrics and ``train/loss`` against the epoch (spectrum and R^2 metrics go to their own
  sections);
- ``Spectra``, when the study runs the spectrum callback: effective rank, rank and the std of the l2-normalised
  embedding after the projector and before it (``_backbone``), the first-layer weight's ranks with
  ``spectrum.weights``, and the log singular values against rank (the line series the callback logs);
- ``Collapse diagnostics``, when the study runs the collapse callback: RankMe, LiDAR, alpha-ReQ, stable rank, NESum,
  effective rank, std, uniformity, Wasserstein uniformity and alignment after the projector and before it, and the
  kNN accuracy;
- ``R^2``, when the study runs the r2_probe callback: the output's adjusted R^2 per latent group, the same for every
  layer (``r2/layerK/GROUP``), and the heatmaps (layers x latents);
- ``Feature alignment`` (feature_alignment, Wen & Li 2022): every neuron's alignment with every feature, the features
  detected, the collapse flag and the heatmap over time;
- ``Predictor`` (predictor_dynamics, Wen & Li 2022, Bao 2023): the head's eigenvalues, off-diagonal, distance to the
  identity and asymmetry; with ``norms`` Bao's ``N_Phi``, ``N_Psi``, ``N_T`` and commutator; with ``regimes`` the
  regime, the ODE's error and the eigenvalues drawn on their regimes;
- ``Output dynamics`` (output_dynamics), ``Linear gap`` (linear_gap) and ``NTK`` (ntk), Esser et al. 2023: every
  scalar they log.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_bench.errors import ConfigError, UserError
from ssl_bench.study.record import read_spec
from ssl_bench.study.report import sweep_table_markdown
from ssl_bench.study.truth import DIAGNOSTICS as COMPARED_DIAGNOSTICS

X_AXIS = "epoch"
"""The x axis of every curve: Lightning logs the epoch with each metric."""

GROUP_BY = "Group"
"""Runs are grouped by their W&B group, ``EXPERIMENT/GRID_POINT``: one line (mean, min-max band) per grid point."""

SPECTRUM = ["spectrum/effective_rank", "spectrum/rank", "collapse/std_l2"]
"""The spectrum callback's scalars for the projector's output; the backbone's carry the suffix ``_backbone``."""

DIAGNOSTICS = [f"collapse/{name}" for name in (*COMPARED_DIAGNOSTICS, "alignment")]
"""The label-free diagnostics of ``callbacks.collapse`` (each also with a ``_backbone`` suffix): those that
``ssl-bench diagnostics`` compares, and the alignment of two views."""

WEIGHT_SPECTRUM = ["spectrum/weight_effective_rank", "spectrum/weight_rank"]
"""The spectrum callback's scalars for the first-layer weight (``callbacks.spectrum.weights=true``)."""

SPECTRUM_PREFIXES = ("spectrum/", "collapse/std_l2")
"""The spectrum callback's metrics (the other ``collapse/`` ones belong to the collapse callback)."""

SPECTRUM_CHART = "spectrum/log_singular_values"
"""The key of the callback's line series (log singular value against rank); W&B keeps its data in ``KEY_table``."""

OWN_SECTION = ("spectrum/", "collapse/", "r2/", "align/", "predictor/", "dynamics/", "linear_gap/", "ntk/")
"""Metric prefixes that the callbacks' own sections show rather than Curves."""


def _sweep_callbacks(spec: dict[str, Any]) -> set[str]:
    """The callbacks that any grid point of the sweep runs (none known for a record without settings)."""
    names: set[str] = set()
    for point in spec.get("points") or []:
        callbacks = point.get("settings", {}).get("callbacks")
        if isinstance(callbacks, dict):
            names |= set(callbacks)
    return names


def _callback_setting(spec: dict[str, Any], callback: str, key: str) -> bool:
    """Whether any grid point runs ``callback`` with ``key`` set (e.g. the spectrum's ``weights``)."""
    return any(isinstance(settings := (p.get("settings", {}).get("callbacks") or {}).get(callback), dict)
               and bool(settings.get(key)) for p in spec.get("points") or [])


def _groups(spec: dict[str, Any]) -> list[str]:
    """The W&B groups of the sweep's runs, one per grid point."""
    points = spec.get("points")
    if points:
        return [str(p.get("group") or spec["experiment"]) for p in points]
    return [str(g) for g in spec.get("groups") or [spec["experiment"]]]


def run_names(groups: list[str]) -> str:
    """A regular expression for the names of the runs in ``groups`` (``GROUP/seedS``), for the workspace's run
    search. Only the characters special to JavaScript, RE2 and ICU expressions alike are escaped, so the W&B app
    reads it the same wherever it runs the search."""
    escaped = [re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", group) for group in groups]
    return f"^({'|'.join(escaped)})/seed[0-9]+$"


@dataclass(frozen=True)
class Panels:
    """The workspace's plot panels, each with one line or bar per grid point (the mean over its seeds) and the
    min-max band or whisker across seeds, showing up to ``runs`` runs."""

    runs: int

    def curve(self, metric: str | None = None, regex: str | None = None, title: str | None = None) -> Any:
        """A line plot against the epoch of ``metric``, or of every metric matching ``regex``."""
        import wandb_workspaces.reports.v2 as wr

        return wr.LinePlot(title=title or metric, x=X_AXIS, y=[metric] if metric else [], metric_regex=regex,
                           groupby=GROUP_BY, groupby_aggfunc="mean", groupby_rangefunc="minmax",
                           max_runs_to_show=self.runs)

    def bars(self, metric: str) -> Any:
        """A bar chart of ``metric``'s final value."""
        import wandb_workspaces.reports.v2 as wr

        return wr.BarPlot(title=f"{metric} (final)", metrics=[metric], orientation="v", groupby=GROUP_BY,
                          groupby_aggfunc="mean", groupby_rangefunc="minmax", max_runs_to_show=self.runs)


def _section(name: str, panels: list[Any]) -> Any:
    import wandb_workspaces.workspaces as ws

    return ws.Section(name=name, panels=panels, is_open=True)


def _table_section(sweep_dir: Path, spec: dict[str, Any]) -> Any:
    """``Table``: the sweep's table and what its lines and bands are."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    legend = (f"Runs: W&B group `{spec['experiment']}/GRID_POINT` (one line or bar per grid point: the mean over seeds "
              f"{spec.get('seeds', [])}, the band or whisker from the smallest to the largest value over seeds). "
              f"Table from `{sweep_dir}`; rebuild the workspace with `ssl-bench dashboard` when more runs have "
              "finished.")
    table = wr.MarkdownPanel(markdown=f"{sweep_table_markdown(sweep_dir)}\n\n{legend}")
    return ws.Section(name="Table", panels=[table], is_open=True,
                      layout_settings=ws.SectionLayoutSettings(columns=1, rows=1))


def _spectra_section(spec: dict[str, Any], metrics: list[str], panels: Panels) -> Any:
    """``Spectra``: the spectrum callback's scalars and its line series of log singular values against rank."""
    import wandb_workspaces.reports.v2 as wr

    scalars = [*SPECTRUM, *(f"{m}_backbone" for m in SPECTRUM),
               *(WEIGHT_SPECTRUM if _callback_setting(spec, "spectrum", "weights") else [])]
    scalars += [m for m in metrics if m.startswith(SPECTRUM_PREFIXES) and m not in scalars]
    chart = wr.CustomChart(query={"summaryTable": {"tableKey": f"{SPECTRUM_CHART}_table"}},
                           chart_name="wandb/lineseries/v0",
                           chart_fields={"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
                           chart_strings={"title": "log singular value against rank (last logged epoch)",
                                          "xname": "rank"})
    return _section("Spectra", [*(panels.curve(m) for m in scalars), chart])


def _r2_section(metrics: list[str], panels: Panels) -> Any:
    """``R^2``: the output's adjusted R^2 per latent group, the same per layer, and the heatmaps."""
    import wandb_workspaces.reports.v2 as wr

    curve = panels.curve
    names = list(dict.fromkeys(m.split("/")[1] for m in metrics if re.fullmatch(r"r2/[^/]+", m)))
    shown = [curve(f"r2/{name}") for name in names] or [curve(regex=r"^r2/[^/]+$", title="r2 (output)")]
    shown += [curve(regex=rf"^r2/layer\d+/{re.escape(name)}$", title=f"r2/layerK/{name}") for name in names] \
        or [curve(regex=r"^r2/layer\d+/", title="r2/layerK")]
    shown.append(wr.MediaBrowser(title="r2/heatmap (adjusted R^2, layers x latents)", media_keys=["r2/heatmap"],
                                 gallery_axis="step"))
    return _section("R^2", shown)


def _alignment_section(panels: Panels) -> Any:
    """``Feature alignment``: every neuron's alignment with every feature, the features detected, the collapse flag
    and the heatmap."""
    import wandb_workspaces.reports.v2 as wr

    return _section("Feature alignment", [
        panels.curve(regex=r"^align/neuron\d+_feature\d+$", title="align/neuronJ_featureL: |<w_j, v_l>| / ||w_j||"),
        panels.curve("align/features_detected"), panels.curve("align/collapsed"),
        wr.MediaBrowser(title="align/heatmap (neuron x feature over time)", media_keys=["align/heatmap"],
                        gallery_axis="step")])


def _predictor_section(spec: dict[str, Any], panels: Panels) -> Any:
    """``Predictor``: the head's eigenvalues and distances; Bao's norms and the regimes when the callback logs them."""
    import wandb_workspaces.reports.v2 as wr

    curve = panels.curve
    shown = [curve(regex=r"^predictor/eigenvalue\d+$", title="predictor/eigenvalueK (moduli, largest first)"),
             curve("predictor/offdiag_norm"), curve("predictor/identity_distance"), curve("predictor/asymmetry")]
    if _callback_setting(spec, "predictor_dynamics", "norms"):
        shown += [curve(f"predictor/{key}") for key in ("n_phi", "n_psi", "n_t", "commutator")]
    if _callback_setting(spec, "predictor_dynamics", "regimes"):
        shown += [curve("predictor/regime", title="predictor/regime (0 collapse, 1 acute, 2 stable)"),
                  curve("predictor/ode_error"),
                  wr.MediaBrowser(title="predictor/regimes (|p_j| on their regimes)",
                                  media_keys=["predictor/regimes"], gallery_axis="step")]
    return _section("Predictor", shown)


def _sections(sweep_dir: Path, spec: dict[str, Any], panels: Panels) -> list[Any]:
    """The workspace's sections, in the order the module's docstring lists them; a callback's section only when a
    grid point runs that callback (or, for spectra and R^2, when the table shows their metrics)."""
    metrics = [str(m) for m in spec["metrics"]]
    callbacks = _sweep_callbacks(spec)
    sections = [
        _table_section(sweep_dir, spec),
        _section("Final values", [panels.bars(m) for m in metrics]),
        _section("Curves", [panels.curve(m) for m in dict.fromkeys([*metrics, "train/loss"])
                            if not m.startswith(OWN_SECTION)]),
    ]
    if "spectrum" in callbacks or any(m.startswith(SPECTRUM_PREFIXES) for m in metrics):
        sections.append(_spectra_section(spec, metrics, panels))
    if "collapse" in callbacks:
        sections.append(_section("Collapse diagnostics", [
            *(panels.curve(m) for m in DIAGNOSTICS), *(panels.curve(f"{m}_backbone") for m in DIAGNOSTICS),
            panels.curve("readout/knn_acc"), panels.curve("readout/knn_acc_backbone")]))
    if "r2_probe" in callbacks or any(m.startswith("r2/") for m in metrics):
        sections.append(_r2_section(metrics, panels))
    if "feature_alignment" in callbacks:
        sections.append(_alignment_section(panels))
    if "predictor_dynamics" in callbacks:
        sections.append(_predictor_section(spec, panels))
    for callback, name, prefix in (("output_dynamics", "Output dynamics", "dynamics/"),
                                   ("linear_gap", "Linear gap", "linear_gap/"), ("ntk", "NTK", "ntk/")):
        if callback in callbacks:
            sections.append(_section(name, [*(panels.curve(m) for m in metrics if m.startswith(prefix)),
                                            panels.curve(regex=rf"^{prefix}", title=f"{prefix}* (every scalar)")]))
    return sections


def build_workspace(sweep_dir: Path, project: str, entity: str = "") -> Any:
    """The workspace of the sweep in ``sweep_dir`` (a ``wandb_workspaces.workspaces.Workspace``, not saved)."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    spec = read_spec(sweep_dir)
    experiment, groups = str(spec["experiment"]), _groups(spec)
    if re.search(r"[=<>]", experiment):  # wandb-workspaces reads = < > inside a filter's value as operators
        raise ConfigError(f"the experiment name '{experiment}' holds = < or >, which a W&B workspace filter cannot "
                          "match; run the sweep with an experiment=NAME without them")
    runs = max(1, len(groups) * len(spec.get("seeds") or [1]))
    return ws.Workspace(
        entity=entity, project=project, name=experiment, sections=_sections(sweep_dir, spec, Panels(runs)),
        settings=ws.WorkspaceSettings(x_axis=X_AXIS, max_runs=runs),
        runset_settings=ws.RunsetSettings(filters=expr.And(expr.Config("experiment") == experiment),
                                          query=run_names(groups),
                                          regex_query=True, groupby=[expr.Metric(GROUP_BY)]))


def describe_workspace(workspace: Any) -> str:
    """What the workspace shows: its runs (filters, grouping), then each section's panels with their type, x, y,
    grouping, aggregation and range; a markdown panel shows its text."""
    import wandb_workspaces.reports.v2 as wr

    runset = workspace.runset_settings
    lines = [(f"workspace '{workspace.name}' in project {workspace.project} (entity: "
              f"{workspace.entity or 'your default entity'})"),
             f"runs: {runset.filters}" + (f" and name matches /{runset.query}/" if runset.query else ""),
             (f"grouped by: {', '.join(g.name for g in runset.groupby)}; x axis: {workspace.settings.x_axis}; "
              f"at most {workspace.settings.max_runs} run{'' if workspace.settings.max_runs == 1 else 's'} per panel")]
    for section in workspace.sections:
        lines.append(f"section '{section.name}':")
        for panel in section.panels:
            if isinstance(panel, wr.MarkdownPanel):
                lines.append("  markdown:")
                lines += [f"    {line}" for line in panel.markdown.splitlines()]
            elif isinstance(panel, (wr.LinePlot, wr.BarPlot)):
                y = ", ".join(map(str, panel.y if isinstance(panel, wr.LinePlot) else panel.metrics))
                if getattr(panel, "metric_regex", None):
                    y = f"/{panel.metric_regex}/"
                x = f" x={panel.x}" if isinstance(panel, wr.LinePlot) else ""
                lines.append(f"  {type(panel).__name__}:{x} y={y} groupby={panel.groupby} "
                             f"agg={panel.groupby_aggfunc} range={panel.groupby_rangefunc}")
            elif isinstance(panel, wr.CustomChart):
                lines.append(f"  CustomChart: {panel.chart_name} of {panel.query['summaryTable']['tableKey']} "
                             f"(x={panel.chart_strings.get('xname')}, the runs in view)")
            elif isinstance(panel, wr.MediaBrowser):
                lines.append(f"  MediaBrowser: {', '.join(panel.media_keys)} (one image per run and step)")
    return "\n".join(lines)


def dashboard(sweep_dir: Path, project: str, entity: str | None = None, dry_run: bool = False) -> int:
    """Build the sweep's workspace; print it (``dry_run``: no network, no credentials) or save it to W&B and print
    its URL. Missing credentials, an unreachable server or a refused save are one :class:`UserError` line."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"--sweep {sweep_dir} is not a directory; give a directory that `ssl-bench sweep` wrote")
    if not project.strip():
        raise ConfigError("--project is empty; give the W&B project the sweep's runs logged to (logger.project, "
                          "default ssl-bench)")
    workspace = build_workspace(sweep_dir, project, entity or "")
    if dry_run:
        print(describe_workspace(workspace))
        return 0
    import wandb

    from ssl_bench.wandb_server import wandb_answers, wandb_has_credentials

    base_url = wandb.setup().settings.base_url
    if not wandb_has_credentials(base_url):
        raise UserError(f"no W&B credentials for {base_url} to save the workspace: run `wandb login` or set "
                        "WANDB_API_KEY (or look at it first with --dry-run)")
    unreachable = wandb_answers(base_url, 30.0)
    if unreachable:
        raise UserError(f"{unreachable}; the workspace was not saved (try again when W&B answers, or --dry-run)")
    try:
        if not entity:
            workspace.entity = wandb.Api().default_entity
        url = workspace.save().url
    except Exception as err:  # noqa: BLE001  (whatever W&B refuses is reported in one line)
        why = next(iter(str(err).strip().splitlines()), "") or type(err).__name__
        raise UserError(f"W&B did not save the workspace ({why}); check --entity and --project (the project must "
                        "hold the sweep's runs: `wandb sync` offline ones first) and the key (`wandb login "
                        "--relogin`)") from None
    print(url)
    print(f"saved workspace '{workspace.name}' for {sweep_dir} in {workspace.entity}/{project}", file=sys.stderr)
    return 0
