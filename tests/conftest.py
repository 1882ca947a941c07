"""Shared fixtures: tiny run settings, the CLI in-process and as a subprocess; the check that two run directories
hold the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Never talk to W&B servers from the tests, and keep wandb quiet.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_CONSOLE", "off")

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# Overrides that shrink any experiment to a fit of well under a second.
TINY = [
    "data.n=64",
    "data.batch_size=32",
    "data.p=12",
    "data.d=4",
    "encoder.width=8",
    "trainer.max_epochs=3",
    "trainer.progress=none",
    "logger=none",
]


def error_line(code: int, err: str, out: str = "") -> str:
    """The message of a refused CLI command: exit code 2, exactly one stderr line with the CLI's prefix, and no
    traceback on either stream; returned without the prefix."""
    assert code == 2, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ssl-bench: error: "), lines[0]
    return lines[0].removeprefix("ssl-bench: error: ")


def assert_same_run(ours: Path, theirs: Path, tolerance: float = 1e-5) -> None:
    """Run directory ``ours`` holds the run of ``theirs``: the same histories (every ``*.jsonl``: the same records,
    keys, steps and epochs, numbers within ``tolerance``, relative above 1) and the same ending."""
    names = sorted(path.name for path in theirs.glob("*.jsonl"))
    assert sorted(path.name for path in ours.glob("*.jsonl")) == names
    for name in names:
        records = [[json.loads(line) for line in (run / name).read_text().splitlines()] for run in (ours, theirs)]
        assert_close(*records, tolerance, (name,))
    endings = [json.loads((run / "summary.json").read_text()) for run in (ours, theirs)]
    for key in ("status", "epochs", "seed", "group", "experiment", "diverged"):
        assert endings[0].get(key) == endings[1].get(key), key


def assert_close(ours: object, theirs: object, tolerance: float, where: tuple = ()) -> None:
    """JSON values equal in structure and keys, numbers within ``tolerance`` (relative for magnitudes above 1)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and sorted(ours) == sorted(theirs), where
        for key, value in theirs.items():
            assert_close(ours[key], value, tolerance, (*where, key))
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, tolerance, (*where, index))
    elif isinstance(theirs, float) and not isinstance(ours, bool) and isinstance(ours, (int, float)):
        assert abs(ours - theirs) <= tolerance * max(1.0, abs(theirs)), (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)


@pytest.fixture(autouse=True)
def _single_thread():
    """Every test runs on one intra-op thread (fit() also sets trainer.threads=1 by default)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture
def run_cli(capsys):
    """Run ``ssl_bench.cli.main(argv)`` in-process; return ``(exit_code, stdout, stderr)``."""
    from ssl_bench.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse --help / usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def fit_tiny(run_cli, tmp_path):
    """Fit ``--config quickstart`` with the tiny overrides (plus ``extra``) into a fresh run dir; return
    ``(exit_code, run_dir, summary)``."""
    counter = iter(range(10_000))

    def fit(*extra: str, config: str = "quickstart") -> tuple[int, Path, dict]:
        run_dir = tmp_path / f"run{next(counter)}"
        code, out, err = run_cli("fit", "--config", config, *TINY, f"run_dir={run_dir}", *extra)
        summary_file = run_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        return code, run_dir, summary

    return fit


@pytest.fixture
def cli_subprocess(tmp_path):
    """Run ``python -m ssl_bench.cli ARGS`` in a subprocess (cwd = a tmp dir); return the CompletedProcess."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ssl_bench.cli", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    return run

