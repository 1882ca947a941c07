"""An experiment's grid: its points (axis values and the overrides that make them), the planned runs (point x
seed) and the ``ssl-bench fit`` arguments of each."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_bench.config.compose import hydra_quoted
from ssl_bench.errors import ConfigError

PER_RUN = {
    "seed": ("every run would get the same seed", "give the sweep's seeds with sweep.seeds=[{value}]", "1,2,3"),
    "run_dir": ("every run would write to the same directory",
                "choose where the sweep's runs go with --sweep-dir {value}", "DIR"),
    "group": ("the sweep groups its runs as EXPERIMENT/GRID_POINT", "name the groups with experiment={value}", "NAME"),
    "trainer.resume": ("every run would start from the same checkpoint",
                       "a sweep run again resumes its interrupted runs from their own last checkpoints", ""),
}
"""Keys that the sweep sets for each run: why an override of one is refused, the fix, and a value for the fix."""


RUN_OVERRIDES = ("trainer.progress=none",)
"""What every run of a sweep gets besides its grid point's overrides and the user's (a log file has no use for a
progress bar)."""


@dataclass(frozen=True)
class Point:
    """One grid point: its axis values (for the table) and the Hydra overrides that produce it."""

    axes: tuple[tuple[str, str], ...]
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return ",".join(f"{axis}={value}" for axis, value in self.axes)

    def group(self, experiment: str) -> str:
        """The runs' W&B group: ``EXPERIMENT/LABEL``, or the experiment alone for a sweep without a grid."""
        return f"{experiment}/{self.label}" if self.axes else experiment

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", self.label) or "default"


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a grid point with a seed, in its own run directory."""

    point: Point
    seed: int
    dir: Path


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


def run_overrides(run: Run, experiment: str, overrides: list[str]) -> list[str]:
    """The overrides that make ``run`` of a sweep: its grid point's, its seed, run directory and group, and the
    sweep's own."""
    return [*run.point.overrides, f"seed={run.seed}", f"run_dir={hydra_quoted(str(run.dir))}",
            f"group={hydra_quoted(run.point.group(experiment))}", *RUN_OVERRIDES, *overrides]


def fit_arguments(config: str, run: Run, experiment: str, overrides: list[str]) -> list[str]:
    """The ``ssl-bench`` arguments that train ``run`` of a sweep of ``config`` (add ``trainer.resume=auto`` to
    continue it from its last checkpoint)."""
    return ["fit", "--config", config, *run_overrides(run, experiment, overrides)]


def select_points(points: list[Point], only: list[str]) -> list[Point]:
    """The grid points whose axes take one of the given values: each entry of ``only`` is ``AXIS=V1,V2,...``, and a
    point is selected when it matches every entry (a point of a grid block without that axis matches none). An
    unknown axis or value is a one-line error listing the valid ones."""
    values: dict[str, list[str]] = {}
    for point in points:
        for axis, value in point.axes:
            values.setdefault(axis, [])
            if value not in values[axis]:
                values[axis].append(value)
    wanted: dict[str, set[str]] = {}
    for entry in only:
        axis, sep, listed = entry.partition("=")
        if not sep or not listed:
            raise ConfigError(f"--only {entry!r} must be AXIS=VALUE[,VALUE...], e.g. --only "
                              f"{next(iter(values), 'model')}=...")
        if axis not in values:
            raise ConfigError(f"--only {entry}: '{axis}' is not an axis of the grid; its axes: "
                              f"{', '.join(values) or 'none (a sweep without a grid)'}")
        chosen = {v.strip() for v in listed.split(",")}
        unknown = sorted(chosen - set(values[axis]))
        if unknown:
            raise ConfigError(f"--only {entry}: {', '.join(unknown)} not a value of {axis}; its values: "
                              f"{', '.join(values[axis])}")
        wanted.setdefault(axis, set()).update(chosen)
    return [p for p in points if all(dict(p.axes).get(axis) in chosen for axis, chosen in wanted.items())]
