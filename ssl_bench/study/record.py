"""A sweep directory's record, ``sweep.json``: the experiment, its metrics, seeds and grid points with the settings
each was made with. ``ssl-bench sweep`` writes it (:func:`write_spec`); the report, the dashboard and SLURM status
read it (:func:`read_spec`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssl_bench.errors import ConfigError
from ssl_bench.rundir import replace_json

SPEC = "sweep.json"


def write_spec(sweep_dir: Path, spec: dict[str, Any]) -> None:
    """Replace ``sweep_dir/sweep.json`` by ``spec`` whole (:func:`ssl_bench.rundir.replace_file`): a kill while it
    is written leaves the previous record."""
    replace_json(sweep_dir / SPEC, spec)


def read_spec(sweep_dir: Path) -> dict[str, Any]:
    """``sweep_dir/sweep.json``; a one-line :class:`ConfigError` when there is none or it is not one."""
    spec_file = sweep_dir / SPEC
    if not spec_file.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no sweep.json); run `ssl-bench sweep` first")
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{spec_file} cannot be read ({err}); run `ssl-bench sweep` again with --force and the same "
                          "--sweep-dir to rewrite it") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("metrics"), list) or "experiment" not in spec:
        raise ConfigError(f"{spec_file} is not the record of a sweep (no experiment and metrics); run `ssl-bench "
                          "sweep` again with --force and the same --sweep-dir to rewrite it")
    return spec


def recorded_points(spec: dict[str, Any], spec_file: Path) -> list[dict[str, Any]] | None:
    """The grid points that ``sweep.json`` records with their settings, or None for a record without them."""
    points = spec.get("points")
    if points is None:
        return None
    if not (isinstance(points, list) and isinstance(spec.get("seeds"), list) and all(
            isinstance(p, dict) and isinstance(p.get("settings"), dict) and {"label", "dir", "axes"} <= p.keys()
            for p in points)):
        raise ConfigError(f"{spec_file}: 'points' must be a list of grid points with their label, dir, axes and "
                          "settings; run `ssl-bench sweep` again with --force and the same --sweep-dir to rewrite it")
    return points
