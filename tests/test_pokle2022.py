"""Pokle et al. 2022, Table 1's ordering: Simplified-SimCLR recovers every atom, Simplified-SimSiam leaves some
unrecovered (slow: two 2000-epoch runs of the table's grid points; the full table is `ssl-bench sweep --config
pokle2022/table1`)."""

from __future__ import annotations

import json

import pytest

from ssl_bench.config.compose import load
from ssl_bench.study.grid import expand_grid


@pytest.mark.slow
def test_table1_simclr_recovers_atoms_that_simsiam_misses(run_cli, tmp_path):
    points = {dict(p.axes)["model"]: p for p in expand_grid(load("pokle2022/table1", []).sweep.grid)
              if dict(p.axes)["data.sparsity"] == "0.1"}
    minimum = {}
    for model in ("Simplified-SimCLR", "Simplified-SimSiam"):
        run_dir = tmp_path / model
        code, out, err = run_cli("fit", "--config", "pokle2022/table1", *points[model].overrides, "seed=1",
                                 "trainer.max_epochs=2000", "trainer.progress=none", "logger=none",
                                 f"run_dir={run_dir}")
        assert code == 0, err
        minimum[model] = json.loads((run_dir / "summary.json").read_text())["metrics"]["maxcos/min"]
    # measured at 2000 epochs, seed 1: .60 against .43 (at 8000 epochs and 3 seeds: .91 against .43)
    assert minimum["Simplified-SimCLR"] > minimum["Simplified-SimSiam"] + 0.1, minimum
