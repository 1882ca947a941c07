"""Sweeps: an experiment's grid x seeds as independent ``ssl-bench fit`` processes, and the paper-style table.

``sweep.grid`` is a list of blocks; each block maps an axis to its values, and a block stands for the Cartesian
product of its axes. An axis is either a config key with a list of values (``data.sparsity: [0.1, 0.2]``) or a name
with named override sets (``model: {CL-basic: [method=simclr, encoder=basic_official]}``). Every run writes its
own run directory under the sweep directory, so a sweep that is run again skips the runs that already finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ssl_bench.config import ConfigError, RunConfig, ReferenceRow


@dataclass(frozen=True)
class Point:
    """One grid point: its axis values (for the table) and the Hydra overrides that produce it."""

    axes: tuple[tuple[str, str], ...]
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return ",".join(f"{axis}={value}" for axis, value in self.axes)

    def group(self, experiment: str) -> str:
        """The runs' W&B group and the key their table row is found by."""
        return f"{experiment}/{self.label}"

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", self.label) or "default"


def _axis_options(axis: str, values: Any) -> list[tuple[str, tuple[str, ...]]]:
    if isinstance(values, dict):
        return [(str(name), tuple(str(o) for o in (ovr if isinstance(ovr, list) else [ovr])))
                for name, ovr in values.items()]
    if isinstance(values, list):
        return [(str(v), (f"{axis}={json.dumps(v) if isinstance(v, (list, dict)) else v}",)) for v in values]
    raise ConfigError(f"sweep.grid axis '{axis}' must be a list of values or a mapping of named override lists")


def expand_grid(grid: Any) -> list[Point]:
    """All grid points, in the order the blocks and axes are written."""
    blocks = grid if isinstance(grid, list) else [grid or {}]
    points: list[Point] = []
    for block in blocks:
        if not isinstance(block, dict):
            raise ConfigError("sweep.grid must be a mapping of axes, or a list of such mappings")
        axes = [(axis, _axis_options(axis, values)) for axis, values in block.items()]
        for combo in itertools.product(*(options for _, options in axes)):
            points.append(Point(tuple((axis, name) for (axis, _), (name, _) in zip(axes, combo)),
                                tuple(o for _, ovr in combo for o in ovr)))
    return points or [Point((), ())]


def _override_key(override: str) -> str:
    """The config key of a Hydra override (``+data.n=3`` -> ``data.n``)."""
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(value: str) -> str:
    """A Hydra override value that may hold ``=``, ``,`` or spaces."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "finished"


def run_sweep(config: str, cfg: RunConfig, overrides: list[str], jobs: int = 1, sweep_dir: Path | None = None,
              dry_run: bool = False) -> int:
    """Run every grid point x seed (``jobs`` at a time, one thread each), then print and save the table."""
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be >= 1")
    points = expand_grid(cfg.sweep.grid)
    grid_keys = {_override_key(o) for p in points for o in p.overrides}
    for override in overrides:
        key = _override_key(override)
        if key in grid_keys:
            raise ConfigError(f"{key} is set by the sweep's grid, so the override '{override}' would relabel its "
                              "rows; change sweep.grid instead, or run `ssl-bench fit` for a single point")
    sweep_dir = sweep_dir or Path("runs") / "sweeps" / cfg.experiment / time.strftime("%Y%m%d-%H%M%S")
    runs = [(point, seed, sweep_dir / point.dirname / f"seed{seed}") for point in points for seed in cfg.sweep.seeds]
    if dry_run:
        for point, seed, run_dir in runs:
            print(f"{run_dir}: {' '.join(point.overrides)} seed={seed}")
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "experiment": cfg.experiment, "config": config, "overrides": overrides, "metrics": list(cfg.sweep.metrics),
        "reference": [dataclasses.asdict(row) for row in cfg.sweep.reference],
        "axes": list(dict.fromkeys(a for p in points for a, _ in p.axes)),
        "groups": [p.group(cfg.experiment) for p in points],
    }, indent=2) + "\n")
    todo = [run for run in runs if not _finished(run[2])]
    print(f"sweep {cfg.experiment}: {len(points)} points x {len(cfg.sweep.seeds)} seeds = {len(runs)} runs, "
          f"{len(runs) - len(todo)} already finished; writing to {sweep_dir}")

    def launch(run: tuple[Point, int, Path]) -> int:
        point, seed, run_dir = run
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "ssl_bench.cli", "fit", "--config", config, *point.overrides,
                   f"seed={seed}", f"run_dir={_quoted(str(run_dir))}", f"group={_quoted(point.group(cfg.experiment))}",
                   "trainer.progress=none", *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(run_dir / "log.txt", "w", encoding="utf-8") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(tqdm(pool.map(launch, todo), total=len(todo), desc="sweep", unit="run", file=sys.stdout))
    table = report(sweep_dir)
    (sweep_dir / "table.md").write_text(table + "\n")
    print(table)
    failed = [str(run[2]) for run, code in zip(todo, codes) if code != 0]
    for run_dir in failed:
        print(f"failed: {run_dir} (see its log.txt)", file=sys.stderr)
    return 1 if failed else 0


def reference_value(rows: list[ReferenceRow], axes: dict[str, str], metric: str) -> float | None:
    """The paper's ``metric`` for the table row with these grid ``axes``, if a reference row matches them."""
    for row in rows:
        if all(str(axes.get(k)) == str(v) for k, v in row.match.items()) and metric in row.values:
            return float(row.values[metric])
    return None


def report(sweep_dir: Path) -> str:
    """A markdown table of mean +- std over seeds of the final metrics, with the paper's values beside them."""
    spec_file = sweep_dir / "sweep.json"
    if not spec_file.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no sweep.json); run `ssl-bench sweep` first")
    spec = json.loads(spec_file.read_text())
    groups: dict[str, list[dict[str, Any]]] = {}
    for summary_file in sorted(sweep_dir.rglob("summary.json")):
        summary = json.loads(summary_file.read_text())
        groups.setdefault(summary["group"], []).append(summary)
    order = {group: i for i, group in enumerate(spec.get("groups", []))}
    groups = dict(sorted(groups.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
    metrics = spec["metrics"]
    rows = spec.get("reference", [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) and set(row) == {"match", "values"} for row in rows):
        raise ConfigError(f"{spec_file}: 'reference' must be a list of {{match, values}} rows; rerun `ssl-bench sweep` "
                          "with the same --sweep-dir to rewrite it (finished runs are kept)")
    reference = [ReferenceRow(**row) for row in rows]
    rows, axes_names = [], list(spec.get("axes", []))
    for group, summaries in groups.items():
        label = group.removeprefix(f"{spec['experiment']}/")
        axes = dict(part.split("=", 1) for part in label.split(",") if "=" in part)
        done = [s for s in summaries if s["status"] == "finished"]
        cells = [axes.get(a, "") for a in axes_names] + [f"{len(done)}/{len(summaries)}"]
        for metric in metrics:
            values = [float(s["metrics"][metric]) for s in done if metric in s["metrics"]]
            cell = "-" if not values else f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"
            ref = reference_value(reference, axes, metric)
            cells.append(cell + (f" ({ref:.2f})" if ref is not None else ""))
        rows.append(cells)
    header = axes_names + ["runs"] + metrics
    lines = [f"{spec['experiment']}: mean ± std over seeds of the final values"
             + (", paper's value in parentheses" if spec.get("reference") else ""),
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
