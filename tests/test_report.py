"""``ssl-bench report``: report.md, a self-contained report.html and PNG figures of the expected size from a real tiny
sweep; the series a figure is drawn from (mean, min and max across seeds, aligned on the epoch) against known values;
run directories without sweep.json; bad input in one line."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
from conftest import TINY, error_line

from ssl_bench.cli import main
from ssl_bench.errors import ConfigError
from ssl_bench.study.plots import (
    axis_bands,
    band,
    numeric_axis,
    r2_layer_bands,
    r2_mean,
    spectrum_bands,
)
from ssl_bench.study.report import curves, load_study, sweep_table_markdown

STUDY = """\
defaults: [quickstart, _self_]
experiment: tiny_study
callbacks:
  r2_probe: {samples: 64}
sweep:
  seeds: [1, 2]
  grid: {optim.lr: [0.01, 0.05]}
  reference:
    - {match: {optim.lr: 0.01}, values: {maxcos/max: 0.94, maxcos/min: 0.83}}
"""
"""Two grid points x two seeds of quickstart with the R^2 probe, and the paper's values for one grid point."""

CURVE_PX, SPECTRA_PX = (1000, 500), (1400, 500)
R2_PX = (950, 380)
"""Pixel sizes: a curve figure 10 x 5 in, spectra 14 x 5 in, R^2 of two grid points 2 x 4 + 1.5 by 3 + 0.8 in, all at
100 dpi (ssl_bench.study.plots)."""


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG from its IHDR chunk, after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real sweep: 2 learning rates x 2 seeds, 4 epochs, metrics every 2, trained as one ensemble."""
    root = tmp_path_factory.mktemp("report")
    config = root / "study.yaml"
    config.write_text(STUDY)
    sweep_dir = root / "sweep"
    args = ["sweep", "--config", str(config), *[o for o in TINY if not o.startswith("trainer.max_epochs")],
            "trainer.max_epochs=4", "trainer.metrics_every_n_epochs=2", "--ensemble", "--sweep-dir", str(sweep_dir)]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(args)
    assert code == 0, out.getvalue() + err.getvalue()
    return sweep_dir


def test_report_writes_markdown_html_and_figures_of_a_sweep(sweep_dir, run_cli):
    code, out, err = run_cli("report", sweep_dir)
    assert code == 0, err
    assert out.strip() == sweep_table_markdown(sweep_dir)  # stdout is the table, as before
    out_dir = sweep_dir / "report"
    assert err.strip().splitlines() == [f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'} (7 figures "
                                        f"in {out_dir / 'figures'})"]

    figures = {p.name: p.read_bytes() for p in (out_dir / "figures").glob("*.png")}
    curves_ = [f"tiny_study-{m}.png" for m in ("maxcos-max", "maxcos-median", "maxcos-min", "train-loss")]
    assert sorted(figures) == sorted([*curves_, "tiny_study-spectra.png", "tiny_study-r2-heatmap.png",
                                      "tiny_study-r2-layers.png"])
    for name in curves_:
        assert png_size(figures[name]) == CURVE_PX, name
    assert png_size(figures["tiny_study-spectra.png"]) == SPECTRA_PX
    assert png_size(figures["tiny_study-r2-heatmap.png"]) == R2_PX
    assert png_size(figures["tiny_study-r2-layers.png"]) == CURVE_PX

    page = (out_dir / "report.html").read_text()
    embedded = [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)]
    assert sorted(embedded) == sorted(figures.values())  # every PNG, byte for byte
    assert not re.search(r"<(link|script)|(src|href)=\"(?!data:)", page)  # nothing fetched from elsewhere
    assert "<th>maxcos/max</th><th class=\"paper\">paper</th>" in page

    markdown = (out_dir / "report.md").read_text()
    assert "| optim.lr | runs | maxcos/max | paper | maxcos/median | maxcos/min | paper |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 0.01 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["0.01", "2/2"] and cells[3] == "0.94" and cells[6] == "0.83"
    assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", cells[2])
    other = next(line for line in markdown.splitlines() if line.startswith("| 0.05 |"))
    assert [c.strip() for c in other.strip("|").split("|")][3] == ""  # no paper value for this grid point
    for name in figures:
        assert f"](figures/{name})" in markdown


def test_metrics_and_points_choose_the_curves(sweep_dir, run_cli, tmp_path):
    out_dir = tmp_path / "docs"
    code, out, err = run_cli("report", sweep_dir, "--out", out_dir)  # every figure: then fewer into the same folder
    assert code == 0, err
    assert len(list((out_dir / "figures").glob("*.png"))) > 4
    code, out, err = run_cli("report", sweep_dir, "--out", out_dir, "--metrics", "maxcos/min,train/loss",
                             "--point", "optim.lr=0.05")
    assert code == 0, err
    assert sorted(p.name for p in (out_dir / "figures").glob("*.png")) == [
        "tiny_study-maxcos-min.png", "tiny_study-r2-heatmap.png", "tiny_study-r2-layers.png",
        "tiny_study-spectra.png", "tiny_study-train-loss.png"]
    heatmap = (out_dir / "figures" / "tiny_study-r2-heatmap.png").read_bytes()
    assert png_size(heatmap) == (550, 380)  # one grid point
    assert "| 0.01 | 2/2 |" in (out_dir / "report.md").read_text()  # the table keeps every grid point

    code, out, err = run_cli("report", sweep_dir, "--out", out_dir, "--point", "optim.lr=0.5")
    assert error_line(code, err) == (f"'optim.lr=0.5' is not a grid point of {sweep_dir}; its grid points: "
                                     "'optim.lr=0.01', 'optim.lr=0.05'")


# ------------------------------------------------------------------------------------------ the series, by hand


def write_run(run_dir: Path, group: str, status: str | None, metrics: list[dict], seed: int = 1) -> None:
    """A run directory: its metrics.jsonl and, unless ``status`` is None (a run still going), its summary.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in metrics))
    if status is not None:
        (run_dir / "summary.json").write_text(json.dumps({
            "status": status, "group": group, "experiment": "hand", "seed": seed,
            "metrics": {k: v for record in metrics for k, v in record.items() if k not in ("step", "epoch")}}))


def test_band_is_mean_min_max_over_seeds_aligned_on_the_epoch(tmp_path):
    """Three seeds: the third is shorter (stopped after 4 epochs), the second logged 'nan' in epoch 4 and a
    record without the metric; a line cut off at the end is skipped. Epochs count from 1 (the record's 0-based
    epoch + 1)."""
    values = {1: [1.0, 0.5, 0.25, 0.125], 2: [3.0, 1.5, "nan", 0.375], 3: [2.0, 1.0]}
    for seed, series in values.items():
        records = [{"step": 10 * e, "epoch": float(2 * e + 1), "train/loss": v} for e, v in enumerate(series)]
        records.insert(1, {"step": 5, "epoch": 1.0, "maxcos/min": 0.4})
        write_run(tmp_path / f"seed{seed}", "hand/lr=1", "finished", records, seed)
    with open(tmp_path / "seed2" / "metrics.jsonl", "a") as file:
        file.write('{"step": 80, "epoch": 9.0, "train/lo')

    with pytest.warns(UserWarning, match=r"metrics\.jsonl: its last line is cut off"):
        b = band([tmp_path / f"seed{seed}" for seed in values], "train/loss")
    assert b.x == [2, 4, 6, 8] and b.runs == 3
    assert b.mean == pytest.approx([2.0, 1.0, 0.25, 0.25])
    assert b.low == [1.0, 0.5, 0.25, 0.125]
    assert b.high == [3.0, 1.5, 0.25, 0.375]
    assert band([tmp_path / "seed1"], "maxcos/max") is None
    assert band([tmp_path / "absent"], "train/loss") is None


def test_spectra_are_geometric_means_and_r2_skips_nan(tmp_path):
    for seed, (s, r2) in enumerate([([1.0, 0.1, 0.0], [[0.5, "nan"]]), ([4.0, 0.4, 0.01], [[1.0, "nan"]])], 1):
        run_dir = tmp_path / f"seed{seed}"
        run_dir.mkdir()
        (run_dir / "spectra.jsonl").write_text(json.dumps({"epoch": 2, "backbone": [9.0]}) + "\n"
                                               + json.dumps({"epoch": 4, "step": 8, "backbone": s}) + "\n")
        (run_dir / "r2.jsonl").write_text(json.dumps({"epoch": 4, "groups": {"latent": [0, 1]},
                                                      "adjusted_r2": r2, "r2": r2}) + "\n")
    runs = [tmp_path / "seed1", tmp_path / "seed2"]
    bands, epochs = spectrum_bands(runs)
    assert list(bands) == ["backbone"] and epochs == [4]
    backbone = bands["backbone"]
    assert backbone.x == [1, 2, 3]
    assert backbone.mean == pytest.approx([2.0, 0.2, 0.01])  # sqrt(1 * 4), sqrt(0.1 * 0.4); rank 3: 0 has no log
    assert backbone.low == pytest.approx([1.0, 0.1, 0.01]) and backbone.high == pytest.approx([4.0, 0.4, 0.01])
    matrix = r2_mean(runs)
    assert matrix.values[0][0] == pytest.approx(0.75) and math.isnan(matrix.values[0][1])
    assert matrix.runs == 2 and matrix.groups == {"latent": [0, 1]} and matrix.epochs == [4]


def test_r2_per_layer_is_the_group_mean_of_each_layer_across_runs(tmp_path):
    """Rusak et al. 2022, Fig. 1 (middle, right): per group, the mean adjusted R^2 of its latents at each layer; a
    NaN latent is left out of its group's mean, and the band runs over the runs."""
    groups = {"content": [0], "style": [1, 2]}
    matrices = [[[0.9, 0.8, 0.6], [0.9, 0.1, "nan"]], [[0.7, 0.6, 0.4], [1.0, 0.3, 0.1]]]
    for seed, matrix in enumerate(matrices, 1):
        run_dir = tmp_path / f"seed{seed}"
        run_dir.mkdir()
        (run_dir / "r2.jsonl").write_text(
            json.dumps({"epoch": 2, "groups": groups, "adjusted_r2": [[0.0] * 3] * 2}) + "\n"
            + json.dumps({"epoch": 4, "groups": groups, "adjusted_r2": matrix}) + "\n")
    bands = r2_layer_bands([tmp_path / "seed1", tmp_path / "seed2", tmp_path / "absent"])
    assert list(bands) == ["content", "style"]
    assert bands["content"].x == [0, 1] and bands["content"].runs == 2
    assert bands["content"].mean == pytest.approx([0.8, 0.95])
    assert bands["content"].low == pytest.approx([0.7, 0.9]) and bands["content"].high == pytest.approx([0.9, 1.0])
    assert bands["style"].mean == pytest.approx([0.6, 0.15])  # layer 0: (0.7, 0.5); layer 1: (0.1, 0.2)
    assert bands["style"].low == pytest.approx([0.5, 0.1]) and bands["style"].high == pytest.approx([0.7, 0.2])


def test_run_directories_without_sweep_json_are_grouped_by_their_group(tmp_path, run_cli):
    """Runs copied from a cluster without their sweep.json: grid points from the summaries' groups; a grid point
    whose runs all failed or are still going is counted and left out of the figures."""
    curve = [{"step": e, "epoch": float(e), "maxcos/min": 0.1 * e, "train/loss": 5.0 - e} for e in range(4)]
    write_run(tmp_path / "runs" / "a1", "hand/lr=0.1", "finished", curve, 1)
    write_run(tmp_path / "runs" / "a2", "hand/lr=0.1", "finished", curve, 2)
    write_run(tmp_path / "runs" / "b1", "hand/lr=0.2", "failed", curve[:1], 1)
    write_run(tmp_path / "runs" / "b2" / "deeper", "hand/lr=0.2", None, curve[:2], 2)
    (tmp_path / "runs" / "b2" / "deeper" / "config.yaml").write_text("group: hand/lr=0.2\nexperiment: hand\n")

    study = load_study(tmp_path / "runs")
    assert study.name == "hand" and study.axes == ["lr"]
    assert [(p.label, p.statuses) for p in study.points] == [("lr=0.1", ["finished", "finished"]),
                                                              ("lr=0.2", ["failed", "missing"])]
    code, out, err = run_cli("report", tmp_path / "runs", "--metrics", "maxcos/min")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| 0.")]
    assert rows == ["| 0.1 | 2/2 | - | - | 0.300 ± 0.000 |", "| 0.2 | 0/2 (1 failed, 1 missing) | - | - | - |"]
    markdown = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "![hand-maxcos-min](figures/hand-maxcos-min.png)" in markdown
    assert "No finished run recorded spectra" in markdown

    png = curves([tmp_path / "runs"], "train/loss", tmp_path / "loss.png", points=["lr=0.1"])
    assert png_size(png.read_bytes()) == CURVE_PX
    write_run(tmp_path / "more" / "c1", "hand/lr=0.3", "finished", curve)
    png = curves([tmp_path / "runs", str(tmp_path / "more")], "maxcos/min", tmp_path / "both.png")  # two studies
    assert png_size(png.read_bytes()) == CURVE_PX
    with pytest.raises(ConfigError, match=r"^'lr=9' is not a grid point of .*; its grid points: 'lr=0.1', 'lr=0.2', "
                                          r"'lr=0.3'$"):
        curves([tmp_path / "runs", tmp_path / "more"], "maxcos/min", tmp_path / "x.png", points=["lr=9"])


def test_final_metrics_against_a_numeric_axis(tmp_path, run_cli):
    """A width x activation grid: a line per activation of the final value against the width, mean, min and max
    over the finished runs (a diverged run and a non-finite value are left out); the report draws it."""
    for activation, scale in (("tanh", 1.0), ("sigmoid", 10.0)):
        for width in (10, 100, 1000):
            for seed in (1, 2):
                value = scale / width * seed
                write_run(tmp_path / "runs" / f"{activation}{width}s{seed}",
                          f"hand/encoder.activation={activation},encoder.width={width}", "finished",
                          [{"step": 1, "epoch": 0.0, "maxcos/min": value}], seed)
    write_run(tmp_path / "runs" / "diverged", "hand/encoder.activation=tanh,encoder.width=10", "diverged",
              [{"step": 1, "epoch": 0.0, "maxcos/min": 99.0}], 3)
    write_run(tmp_path / "runs" / "nan", "hand/encoder.activation=tanh,encoder.width=100", "finished",
              [{"step": 1, "epoch": 0.0, "maxcos/min": "nan"}], 4)
    study = load_study(tmp_path / "runs")
    assert study.axes == ["encoder.activation", "encoder.width"] and numeric_axis(study) == "encoder.width"
    bands = axis_bands(study, study.points, "encoder.width", "maxcos/min")
    assert set(bands) == {"tanh", "sigmoid"}
    tanh = bands["tanh"]
    assert tanh.x == [10, 100, 1000] and tanh.runs == 6
    assert tanh.mean == pytest.approx([0.15, 0.015, 0.0015]) and tanh.low == pytest.approx([0.1, 0.01, 0.001])
    assert bands["sigmoid"].high == pytest.approx([2.0, 0.2, 0.02])
    code, _, err = run_cli("report", tmp_path / "runs", "--metrics", "maxcos/min")
    assert code == 0, err
    figure = tmp_path / "runs" / "report" / "figures" / "hand-maxcos-min-vs-encoder.width.png"
    assert png_size(figure.read_bytes()) == CURVE_PX
    assert "against encoder.width" in (tmp_path / "runs" / "report" / "report.md").read_text()


def test_regime_panels_one_per_grid_point_with_regimes(tmp_path, run_cli):
    """A panel per grid point whose finished runs recorded regimes.jsonl; a grid point without them is left out."""
    record = {"epoch": 1, "eigenvalues_signed": [0.5, -0.2], "intervals": [["-inf", 0.1, "collapse"],
                                                                           [0.1, "inf", "converge"]]}
    for rho in ("0.1", "0.5"):
        run = tmp_path / "runs" / f"rho{rho}"
        write_run(run, f"hand/rho={rho}", "finished", [{"step": 1, "epoch": 0.0, "train/loss": 1.0}])
        (run / "regimes.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "epoch": 2}) + "\n")
    write_run(tmp_path / "runs" / "none", "hand/rho=0.9", "finished", [{"step": 1, "epoch": 0.0, "train/loss": 1.0}])
    code, _, err = run_cli("report", tmp_path / "runs", "--metrics", "train/loss")
    assert code == 0, err
    figure = (tmp_path / "runs" / "report" / "figures" / "hand-regimes.png").read_bytes()
    width, height = png_size(figure)
    assert width > 2 * 4 * 100 and height < 5 * 100  # two panels side by side, one row
    assert "the predictor's 8 largest eigenvalues" in (tmp_path / "runs" / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_directories_are_one_line(run_cli, tmp_path):
    code, out, err = run_cli("report", tmp_path / "absent")
    assert error_line(code, err) == (f"{tmp_path / 'absent'} does not exist; give a sweep directory (with sweep.json) "
                                     "or a directory of run directories")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, out, err = run_cli("report", tmp_path / "empty")
    assert error_line(code, err) == (f"{tmp_path / 'empty'} holds no runs (no sweep.json, and no summary.json or "
                                     "metrics.jsonl below it); give a sweep directory or a directory of run "
                                     "directories")
    assert not (tmp_path / "empty" / "report").exists()
    write_run(tmp_path / "one", "hand", "finished", [])
    code, out, err = run_cli("report", tmp_path / "one", tmp_path / "one")
    assert error_line(code, err) == ("a report of 2 directories needs --out OUT (where report.md, report.html and "
                                     "figures/ go)")
    with pytest.raises(ConfigError, match="no finished run in .* logged maxcos/min"):
        curves([tmp_path / "one"], "maxcos/min", tmp_path / "x.png")


def test_html_report_escapes_what_the_runs_name(tmp_path, run_cli):
    """A study name, a metric and a note taken from run files reach report.html as text, never as markup; the
    markdown keeps them as written."""
    script = "<script>alert(1)</script>"
    run = tmp_path / "runs" / "a"
    write_run(run, "hand", "finished", [{"step": 1, "epoch": 0.0, script: 1.0}])
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "experiment": script, "group": script}))
    (run / "config.yaml").write_text(json.dumps({"sweep": {"metrics": [script, "maxcos/min"]}}))
    code, _, err = run_cli("report", tmp_path / "runs", "--metrics", "maxcos/min")
    assert code == 0, err
    page = (tmp_path / "runs" / "report" / "report.html").read_text()
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<h2>{escaped}</h2>" in page and f"<th>{escaped}</th>" in page
    assert '<p class="note">No finished run logged maxcos/min.</p>' in page
    assert f"## {script}" in (tmp_path / "runs" / "report" / "report.md").read_text()


def test_a_figure_names_the_left_out_points_with_runs_and_counts_the_rest(tmp_path):
    from matplotlib.figure import Figure

    from ssl_bench.study import plots
    from ssl_bench.study.table import GridPoint

    failed = GridPoint("model=B", {"model": "B"}, [tmp_path / "b"], [{"status": "failed"}])
    unrun = [GridPoint(f"model=C{i}", {"model": f"C{i}"}, [tmp_path / f"c{i}"], [None]) for i in range(48)]
    figure = Figure(figsize=(8, 5))
    plots._footnote(figure, [("B", failed), *((p.label, p) for p in unrun)], "no finished run logged m")
    text = " ".join(figure._supxlabel.get_text().split())
    assert text == "Not drawn, no finished run logged m: B (runs 0/1 (1 failed)) 48 grid points without runs not drawn."


def test_up_to_forty_lines_differ_in_colour_or_dashes():
    from ssl_bench.figures import line_styles

    looks = [(style["color"], style["ls"], style["marker"]) for style in line_styles(49)]
    assert len(set(looks[:40])) == 40 and len(set(looks)) == 49
    assert {style["ls"] for style in line_styles(20)} == {"-", "--"}
