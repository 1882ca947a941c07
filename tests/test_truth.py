"""ssl-bench diagnostics: Spearman correlations of the label-free diagnostics with the ground truth, with bootstrap
intervals, over the finished runs of sweep directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line
from scipy.stats import spearmanr

from ssl_bench.study.truth import bootstrap_interval, spearman, surviving_eigenvalues


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, rel=1e-12)
    assert spearman(x, -y) == pytest.approx(-spearmanr(x, y).statistic, rel=1e-12)
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    low, high = bootstrap_interval(x, y, draws=500)
    assert (low, high) == bootstrap_interval(x, y, draws=500)
    assert low < spearman(x, y) < high and -1 <= low < high <= 1
    assert bootstrap_interval(x, 2 * x + 1, draws=200) == (1.0, 1.0)


def test_surviving_eigenvalues_count_the_moduli_above_001():
    assert surviving_eigenvalues({"predictor/eigenvalue1": 0.4, "predictor/eigenvalue2": 0.02,
                                  "predictor/eigenvalue10": 0.005, "predictor/norm": 3.0}) == 2
    assert surviving_eigenvalues({"train/loss": 1.0}) is None


def write_sweep(root: Path, truths: list[float], ranks: list[float]) -> Path:
    """A sweep directory as `ssl-bench sweep` leaves it: sweep.json and one finished summary per seed (plus a
    diverged run, which the correlations leave out)."""
    root.mkdir(parents=True)
    seeds = list(range(1, len(truths) + 2))
    (root / "sweep.json").write_text(json.dumps({
        "experiment": "diagnostics/toy", "metrics": ["maxcos/min", "collapse/rankme"], "reference": [],
        "axes": ["model"], "groups": ["diagnostics/toy/model=a"], "seeds": seeds,
        "points": [{"label": "model=a", "group": "diagnostics/toy/model=a", "dir": "model=a", "axes": {"model": "a"},
                    "overrides": [], "settings": {}}]}))
    for seed, truth, rank in zip(seeds, [*truths, 0.0], [*ranks, 0.0]):
        run = root / "model=a" / f"seed{seed}"
        run.mkdir(parents=True)
        status = "finished" if seed <= len(truths) else "diverged"
        run.joinpath("summary.json").write_text(json.dumps({
            "status": status, "metrics": {"maxcos/min": truth, "collapse/rankme": rank, "collapse/std": -rank,
                                          "predictor/eigenvalue1": rank / 10}}))
    return root


def test_the_command_writes_the_table_and_the_figure(run_cli, tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [0.2, 0.5, 0.6, 0.9, 0.95], [2.0, 3.0, 3.5, 7.0, 9.0])
    code, out, err = run_cli("diagnostics", str(sweep), "--truth", "maxcos/min,r2/style,predictor/surviving",
                             "--out", str(tmp_path / "out"), "--draws", "100")
    assert code == 0, err
    table = (tmp_path / "out" / "diagnostics.md").read_text()
    assert table.strip() == out.strip()
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"`maxcos/min`", "`predictor/surviving`"}  # r2/style: logged by no run
    assert "| 5 | +1.00 [+1.00, +1.00] | -1.00 [-1.00, -1.00] |" in rows["`maxcos/min`"]
    assert table.splitlines()[0].endswith("| `collapse/rankme` | `collapse/std` |")
    assert (tmp_path / "out" / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"


def test_no_usable_runs_is_one_line(run_cli, tmp_path):
    sweep = write_sweep(tmp_path / "sweep", [0.2, 0.5], [2.0, 3.0])
    code, out, err = run_cli("diagnostics", str(sweep), "--truth", "maxcos/min", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "has 4 finished runs" in error_line(code, err, out)
