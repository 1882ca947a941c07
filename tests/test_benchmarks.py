"""The benchmark scripts run end to end at tiny settings (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
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
    assert set(results) == {"CL-basic", "NCL-basic"}
    for row in results.values():
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert 0 < row["callback_share"] < 1  # the last epoch evaluates every metric callback
        assert row["suite_peak_mib"] > 100 and row["plain_peak_mib"] > 100  # the process holds torch at least
    out = capsys.readouterr().out
    assert "| NCL-basic |" in out and "metric callbacks (% of ssl-bench)" in out
