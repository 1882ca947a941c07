"""Golden traces: every experiment config, shrunk to a deterministic CPU fit of a few epochs, with its per-epoch
loss and final summary metrics committed under ``tests/golden/``. ``tests/test_golden.py`` refits each case and
fails on any change beyond float noise.

A trace is a result: regenerate one only for a change of results made on purpose, and say why in the commit.

    python tests/golden.py                 # every experiment config
    python tests/golden.py quickstart ...  # only these

Each case fits the config's first grid point (the base config of e.g. rusak2022/table1 is the untrained g^-1) with
the tiny overrides of its datamodule, logging and evaluating every epoch, so that every callback runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden"
TOLERANCE = 1e-6
"""Relative (absolute below 1) difference allowed between a refit and its trace: float noise, nothing more."""

WALL_CLOCK = re.compile(r"ms_per_step|seconds")
"""Summary metrics that measure time, not results: never part of a trace."""

COMMON = ["trainer.log_every_n_epochs=1", "trainer.metrics_every_n_epochs=1",
          "trainer.progress=none", "trainer.threads=1", "logger=none"]

TINY_DATA: dict[str, list[str]] = {
    "sparse_coding": ["data.n=64", "data.batch_size=32"],
    "invertible_mlp": ["data.steps_per_epoch=2", "data.batch_size=64", "data.condition_draws=500",
                       "data.eval_samples=128"],
    "gaussian": ["data.n=128", "data.batch_size=64"],
    "moons": ["data.n=32", "data.batch_size=32"],
    "digits": ["data.per_class=16", "data.batch_size=32"],
    "strong_weak": ["data.n=64", "data.batch_size=32"],
    "cifar10": ["data.batch_size=8", "data.num_workers=0", "data.verify_checksums=false"],
}
"""Per datamodule: overrides that shrink an epoch to a few small batches."""

EPOCHS = {"cifar10": 2}
"""Epochs per datamodule where it is not 3: a ResNet epoch costs a second even on a few images."""

CIFAR_IMAGES = (8, 8)
"""Train and test images of the CIFAR-format data set the cases write (``write_cifar10_batches``, seed 0)."""


def experiments() -> list[str]:
    """Every experiment config under ``configs/``."""
    from ssl_bench.config.compose import available_configs

    return available_configs()[0]


CIFAR_ROOT = "@CIFAR_ROOT"
"""Stands for the CIFAR-format data set's folder in a trace's overrides (see :func:`with_data_root`)."""


def case_overrides(name: str) -> list[str]:
    """The overrides of experiment ``name``'s trace: its first grid point, then the tiny settings."""
    from ssl_bench.config.compose import load
    from ssl_bench.study.grid import expand_grid

    points = expand_grid(load(name, []).sweep.grid)
    point = list(points[0].overrides) if points else []
    data = load(name, point).data.name
    root = [f"data.root={CIFAR_ROOT}"] if data == "cifar10" else []
    return [*point, *TINY_DATA[data], *root, f"trainer.max_epochs={EPOCHS.get(data, 3)}", *COMMON]


def cifar_root(folder: Path) -> Path:
    """A small CIFAR-format data set under ``folder``, the same on every call."""
    from datamodules.cifar10 import write_cifar10_batches

    return write_cifar10_batches(folder, *CIFAR_IMAGES, seed=0)


def with_data_root(overrides: list[str], data_root: Path) -> list[str]:
    """``overrides`` with the CIFAR-format data set at ``data_root``."""
    return [o.replace(CIFAR_ROOT, str(data_root)) for o in overrides]


def fit_trace(name: str, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Fit ``name`` with ``overrides`` into ``run_dir`` in this process and return its trace: the per-epoch
    ``train/loss`` of ``metrics.jsonl``, and the summary's status, epochs and metrics (wall-clock ones left out)."""
    from ssl_bench.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["fit", "--config", name, *overrides, f"run_dir={run_dir}"])
    if code != 0:
        raise RuntimeError(f"{name}: fit exited {code}: {err.getvalue().strip()}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "loss": [record["train/loss"] for record in records if "train/loss" in record],
        "status": summary["status"],
        "epochs": summary["epochs"],
        "metrics": {k: v for k, v in summary["metrics"].items() if not WALL_CLOCK.search(k)},
    }


def trace_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Where two traces differ beyond :data:`TOLERANCE` (names of lost or new keys included)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        found = [f"{where}/{k}: {'missing' if k not in ours else 'new'}" for k in sorted(ours.keys() ^ theirs.keys())]
        return found + [d for k in sorted(ours.keys() & theirs.keys()) for d in differences(ours[k], theirs[k],
                                                                                           f"{where}/{k}")]
    if isinstance(theirs, list) and isinstance(ours, list):
        if len(ours) != len(theirs):
            return [f"{where}: {len(ours)} values, trace has {len(theirs)}"]
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in differences(a, b, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers) and not isinstance(ours, bool):
        if math.isclose(ours, theirs, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            return []
    elif ours == theirs:
        return []
    return [f"{where}: {ours!r}, trace has {theirs!r}"]


def regenerate(names: list[str]) -> None:
    """Write the traces of ``names``, each fitted twice: a case whose two fits differ is not deterministic and is
    refused."""
    with tempfile.TemporaryDirectory() as tmp:
        root = cifar_root(Path(tmp) / "cifar")
        for name in names:
            overrides = case_overrides(name)
            first, second = (fit_trace(name, with_data_root(overrides, root), Path(tmp) / f"{name}-{i}")
                             for i in range(2))
            if found := differences(second, first):
                raise SystemExit(f"{name} is not deterministic: {found[:3]}")
            path = trace_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"config": name, "overrides": overrides, **first}, indent=1) + "\n")
            print(f"{name}: {len(first['loss'])} losses, {len(first['metrics'])} metrics -> {path}")


if __name__ == "__main__":
    regenerate(sys.argv[1:] or experiments())
