"""The benchmark scripts run end to end at tiny settings (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    """A benchmark script as a module; its folder is on the import path, as when it runs, for the helpers the
    scripts share."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_cifar_runs(capsys):
    results = script("speed_cifar").main(["--device", "cpu", "--batch-size", "4", "--steps", "1", "--warmup-steps",
                                          "1", "--num-workers", "0", "--threads", "1", "--rounds", "1"])
    assert results and all(math.isfinite(value) and value > 0 for value in results.values())
    assert "| ssl-bench fit |" in capsys.readouterr().out


def test_speed_sparse_runs(capsys):
    results = script("speed_sparse").main(["--epochs", "2", "--rounds", "1"])
    assert set(results) == {"CL-basic", "NCL-basic", "VICReg", "BarlowTwins"}
    for row in results.values():
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert 0 < row["callback_share"] < 1  # the last epoch evaluates every metric callback
        assert row["suite_peak_mib"] > 100 and row["plain_peak_mib"] > 100  # the process holds torch at least
    out = capsys.readouterr().out
    assert "| NCL-basic |" in out and "| BarlowTwins |" in out and "metric callbacks (% of ssl-bench)" in out


def test_speed_sparse_times_the_models_asked_for(capsys):
    results = script("speed_sparse").main(["--epochs", "1", "--rounds", "1", "--models", "VICReg"])
    assert set(results) == {"VICReg"}
    with pytest.raises(SystemExit):
        script("speed_sparse").main(["--models", "VICReg,MoCo"])
    assert "--models: unknown MoCo" in capsys.readouterr().err


def test_callback_share_times_each_callback(capsys):
    module = script("callback_share")
    assert [module.evaluations(e, 2) for e in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]  # multiples of 2 and the last
    shares = module.main(["--config", "rusak2022/nonlinear_box", "--epochs", "3", "--every", "2", "data.batch_size=64",
                          "data.steps_per_epoch=2", "data.condition_draws=100", "callbacks.r2_probe.samples=128",
                          "callbacks.r2_probe.batch_size=128", "~callbacks.gradient_spectrum"])
    assert set(shares) == {"r2_probe"} and shares["r2_probe"] > 0
    out = capsys.readouterr().out
    assert "(2 evaluations)" in out and "| r2_probe |" in out


def test_esser_dynamics_times_both_solvers(capsys):
    results = script("esser_dynamics").main(["--widths", "64,128", "--steps", "2", "--rounds", "1",
                                             "--per-class", "20"])
    assert set(results) == {64, 128}
    assert all(math.isfinite(row["ratio"]) and row["gradient_ms"] > 0 and row["dynamics_ms"] > 0
               for row in results.values())
    assert "| 128 |" in capsys.readouterr().out
