"""Sweeps: an experiment's grid x seeds as independent ``ssl-bench fit`` processes, and the paper-style table.

``sweep.grid`` is a list of blocks; each block maps an axis to its values, and a block stands for the Cartesian
product of its axes. An axis is either a config key with a list of values (``data.sparsity: [0.1, 0.2]``) or a name
with named override sets (``model: {CL-basic: [method=simclr, encoder=basic_official]}``).

A sweep directory holds ``sweep.json`` and one run directory per grid point and seed, ``POINT/seedS``.
``sweep.json`` records the resolved settings of every grid point: the runs' config without the keys that the sweep
sets per run (``seed``, ``run_dir``, ``group``, ``trainer.resume``) and without the ``sweep`` section, which only
says which runs there are and how to tabulate them. Running a sweep again into the same directory

- with the same settings keeps the runs that ended for good (finished, or diverged: a diverged run is
  deterministic, so running it again would diverge again) and runs the others: failed and missing ones from scratch,
  interrupted ones from their last checkpoint when they have one;
- with other settings is refused, naming the keys that differ, unless ``--force`` replaces every run.

Grid points and seeds may be added to a sweep directory; dropping one counts as a change of settings, since
``sweep.json`` would no longer describe the runs in the directory.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ssl_bench.cli import hydra_quoted
from ssl_bench.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from ssl_bench.slurm import SlurmOptions

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

ENDED = ("finished", "diverged")
"""How a run that is kept when the sweep runs again ended."""

STATUS_ORDER = ("finished", "diverged", "failed", "interrupted", "missing")
"""The order of the statuses in messages and in the table's ``runs`` cells."""


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


def _override_key(override: str) -> str:
    """The config key of a Hydra override (``+data.n=3`` -> ``data.n``)."""
    return override.split("=", 1)[0].lstrip("+~")


def check_overrides(overrides: list[str], points: list[Point]) -> None:
    """Refuse overrides that would make the sweep's runs other than its grid x seeds: keys the sweep sets per run
    (:data:`PER_RUN`) and keys its grid sets."""
    grid_keys = {_override_key(o) for p in points for o in p.overrides}
    for override in overrides:
        key = _override_key(override)
        if key in PER_RUN:
            why, fix, example = PER_RUN[key]
            value = override.split("=", 1)[1] if "=" in override else ""
            raise ConfigError(f"{override} cannot be given to a sweep, which sets {key} for each run ({why}); "
                              + fix.format(value=value or example))
        if key in grid_keys:
            raise ConfigError(f"{key} is set by the sweep's grid, so the override '{override}' would relabel its "
                              "rows; change sweep.grid instead, or run `ssl-bench fit` for a single point")


def settings_of(plain: dict[str, Any]) -> dict[str, Any]:
    """A run's config (plain dicts) without what the sweep sets per run and without the ``sweep`` section: what
    every run of one grid point shares, as JSON would read it back."""
    kept = {key: value for key, value in plain.items() if key not in ("seed", "run_dir", "group", "sweep")}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k != "resume"}
    return json.loads(json.dumps(kept, default=str))


def point_settings(config: str, points: list[Point], overrides: list[str]) -> dict[str, dict[str, Any]]:
    """The resolved settings of every grid point (by label); a config error names the grid point it is in."""
    from ssl_bench.cli import load

    settings = {}
    for point in points:
        try:
            cfg = load(config, [*point.overrides, *RUN_OVERRIDES, *overrides])
        except ConfigError as err:
            if not point.axes:
                raise
            raise ConfigError(f"grid point {point.label}: {err}") from None
        settings[point.label] = settings_of(cfg.to_container())
    return settings


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"data": {"n": 64}}`` -> ``{"data.n": 64}``)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def setting_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, as ``key: old -> new`` (``unset`` where a side lacks the key)."""
    unset = object()

    def show(value: Any) -> str:
        return "unset" if value is unset else value if isinstance(value, str) else json.dumps(value)

    before, after = _flat(old), _flat(new)
    return [f"{key}: {show(before.get(key, unset))} -> {show(after.get(key, unset))}"
            for key in dict.fromkeys([*before, *after]) if before.get(key, unset) != after.get(key, unset)]


def read_spec(sweep_dir: Path) -> dict[str, Any]:
    """``sweep_dir/sweep.json``; a one-line :class:`ConfigError` when there is none or it is not one."""
    spec_file = sweep_dir / "sweep.json"
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


def _recorded_points(spec: dict[str, Any], spec_file: Path) -> list[dict[str, Any]] | None:
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


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``, or None when it has none (not started, still running, or killed) or a broken one."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run_status(run_dir: Path) -> str:
    """How the run in ``run_dir`` ended: its summary's status, or ``missing`` without a summary."""
    summary = read_summary(run_dir)
    return "missing" if summary is None else str(summary.get("status", "failed"))


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _previous_runs(sweep_dir: Path, runs: list[Run]) -> tuple[dict[str, dict[str, Any]], list[int], list[Path]]:
    """What ``sweep_dir`` already holds: the settings its runs were made with (by grid point label), their seeds,
    and their run directories. A record from before settings were kept is read from the runs' own config.yaml."""
    import yaml

    if not sweep_dir.is_dir():
        return {}, [], []
    spec_file = sweep_dir / "sweep.json"
    spec = read_spec(sweep_dir) if spec_file.is_file() else {}
    points = _recorded_points(spec, spec_file)
    if points is not None:
        seeds = spec["seeds"]
        dirs = [sweep_dir / str(p["dir"]) / f"seed{s}" for p in points for s in seeds]
        return {str(p["label"]): p["settings"] for p in points}, list(seeds), [d for d in dirs if _inside(d, sweep_dir)]
    settings: dict[str, dict[str, Any]] = {}
    for run in runs:
        config_file = run.dir / "config.yaml"
        if run.point.label not in settings and config_file.is_file():
            try:
                plain = yaml.safe_load(config_file.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue  # no evidence of the settings this run was made with
            if isinstance(plain, dict):
                settings[run.point.label] = settings_of(plain)
    return settings, [], [run.dir for run in runs]


def _changes(previous: dict[str, dict[str, Any]], old_seeds: list[int], settings: dict[str, dict[str, Any]],
             seeds: list[int]) -> list[str]:
    """How this sweep differs from the runs already in its directory; growing the grid or the seeds is no change."""
    changes: list[str] = []
    for label, old in previous.items():
        if label not in settings:
            changes.append(f"grid point {label or '(no grid)'} dropped")
            continue
        changes += [c for c in setting_changes(old, settings[label]) if c not in changes]
    if not set(old_seeds) <= set(seeds):
        changes.append(f"sweep.seeds: {json.dumps(old_seeds)} -> {json.dumps(seeds)}")
    return changes


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _remove_run(run_dir: Path) -> None:
    """Delete a run directory of the sweep and its grid point's directory when that is left empty."""
    if run_dir.is_dir():
        shutil.rmtree(run_dir)
    try:
        run_dir.parent.rmdir()
    except OSError:
        pass


def prepare_run_dir(run_dir: Path, fresh: bool = False, restarted: bool = False) -> bool:
    """Make ``run_dir`` ready for its run and say whether the run resumes from its ``last.ckpt``: it does when it
    was interrupted with a checkpoint to continue from, or, for a job that the scheduler ``restarted`` (requeued
    after a node failure, say), when it left a checkpoint and no summary. Otherwise (or when ``fresh``) a failed or
    broken run starts again from scratch in an emptied directory."""
    summary = None if fresh else read_summary(run_dir)
    resume = summary is not None and summary.get("status") == "interrupted" and bool(summary.get("resume"))
    resume = resume or (not fresh and restarted and summary is None
                        and (run_dir / "checkpoints" / "last.ckpt").is_file())
    if not resume and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return resume


def run_overrides(run: Run, experiment: str, overrides: list[str]) -> list[str]:
    """The overrides that make ``run`` of a sweep: its grid point's, its seed, run directory and group, and the
    sweep's own."""
    return [*run.point.overrides, f"seed={run.seed}", f"run_dir={hydra_quoted(str(run.dir))}",
            f"group={hydra_quoted(run.point.group(experiment))}", *RUN_OVERRIDES, *overrides]


def fit_arguments(config: str, run: Run, experiment: str, overrides: list[str]) -> list[str]:
    """The ``ssl-bench`` arguments that train ``run`` of a sweep of ``config`` (add ``trainer.resume=auto`` to
    continue it from its last checkpoint)."""
    return ["fit", "--config", config, *run_overrides(run, experiment, overrides)]


def ensemble_tasks(runs: list[Run], settings: dict[str, dict[str, Any]], jobs: int) -> list[list[Run]]:
    """``runs`` as ensembles (:func:`ssl_bench.ensemble.ensemble_key` of their grid point's settings), each cut
    into pieces of at most ``ceil(len(runs) / jobs)`` members so that ``jobs`` processes share the work."""
    from ssl_bench.ensemble import ensemble_key

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(ensemble_key(settings[run.point.label]), []).append(run)
    size = -(-len(runs) // jobs)
    return [group[start:start + size] for group in groups.values() for start in range(0, len(group), size)]


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


def run_sweep(config: str, cfg: RunConfig, overrides: list[str], jobs: int = 1, sweep_dir: Path | None = None,
              dry_run: bool = False, force: bool = False, only: list[str] | None = None,
              slurm: SlurmOptions | None = None, ensemble: str | None = None) -> int:
    """Run every grid point x seed that has not ended for good (``jobs`` at a time, one thread each), then print
    and save the table. ``force`` replaces every run, whatever settings the directory's runs were made with.
    ``only`` (``AXIS=V1,V2`` entries, see :func:`select_points`) runs just the matching grid points; the record and
    the table keep the whole grid, whose other rows count their runs as missing until they are run.

    With ``slurm``, the runs to do are submitted as one SLURM array instead (:mod:`ssl_bench.slurm`), or with
    ``dry_run`` its script and task table are printed. With ``ensemble`` (the batching: ``auto``, ``vmap`` or
    ``loop``), runs that differ only in their seed and data values train together as ensembles (:mod:`ssl_bench.ensemble`; :func:`ensemble_tasks`), one process each,
    ``jobs`` at a time; an interrupted run then starts again from scratch.

    Returns 0 when every run ended for good (finished or diverged), 1 when some failed, were interrupted or are
    missing, 130 when the sweep itself was interrupted (Ctrl-C)."""
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be >= 1")
    if ensemble and slurm is not None:
        raise ConfigError("--ensemble trains a local sweep's runs together; with --slurm each run is its own task, so "
                          "drop one of the two")
    if slurm is not None:
        from ssl_bench import slurm as arrays

        if jobs != 1:
            raise ConfigError(f"--jobs={jobs} runs a local sweep; with --slurm use --max-parallel {jobs}")
        slurm.check(submit=not dry_run)
        arrays.check_resource_overrides(overrides)
    points = expand_grid(cfg.sweep.grid)
    check_overrides(overrides, points)
    selected = set(select_points(points, only or []))
    sweep_dir = sweep_dir or Path("runs") / "sweeps" / cfg.experiment / time.strftime("%Y%m%d-%H%M%S")
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"--sweep-dir {sweep_dir} is a file; choose a directory (a new one, or a sweep's)")
    seeds = list(cfg.sweep.seeds)
    runs = [Run(point, seed, sweep_dir / point.dirname / f"seed{seed}") for point in points for seed in seeds]
    settings = point_settings(config, points, overrides)
    previous, old_seeds, old_dirs = _previous_runs(sweep_dir, runs)
    changes = _changes(previous, old_seeds, settings, seeds)
    if changes and not force:
        shown = changes[:5] + ([f"and {len(changes) - 5} more"] if len(changes) > 5 else [])
        raise ConfigError(f"{sweep_dir} holds runs made with other settings ({', '.join(shown)}); run with --force "
                          "to replace them, or choose another --sweep-dir")
    if changes and force and len(selected) < len(points):
        raise ConfigError(f"--force with --only would keep the other grid points' runs, made with other settings "
                          f"({changes[0]}); run with --force but without --only, or choose another --sweep-dir")
    status = {run: run_status(run.dir) for run in runs}
    todo = [run for run in runs if run.point in selected and (force or status[run] not in ENDED)]
    if slurm is not None:
        tasks = arrays.array_tasks(config, todo, cfg.experiment, overrides, slurm)
        if dry_run:
            return arrays.submit_array(sweep_dir, cfg.experiment, tasks, slurm, dry_run=True)
        arrays.check_not_queued(sweep_dir, tasks)
    if dry_run:
        for run in (run for run in runs if run.point in selected):
            state = "" if status[run] == "missing" else \
                f" [{status[run]}: {'replaced' if force else 'kept' if run not in todo else 'run again'}]"
            print(f"{run.dir}: {' '.join([*run.point.overrides, f'seed={run.seed}'])}{state}")
        if ensemble:
            sizes = [len(members) for members in ensemble_tasks(todo, settings, jobs)]
            print(f"--ensemble: {_count(len(todo), 'run')} to do as {_count(len(sizes), 'ensemble')} of "
                  f"{', '.join(map(str, sizes)) or 0} members, {jobs} at a time")
        return 0

    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if force:
            for run_dir in dict.fromkeys([*old_dirs, *(run.dir for run in runs if run.point in selected)]):
                _remove_run(run_dir)
        (sweep_dir / "sweep.json").write_text(json.dumps({
            "experiment": cfg.experiment, "config": config, "overrides": overrides, "metrics": list(cfg.sweep.metrics),
            "reference": [dataclasses.asdict(row) for row in cfg.sweep.reference],
            "axes": list(dict.fromkeys(a for p in points for a, _ in p.axes)),
            "groups": [p.group(cfg.experiment) for p in points],
            "seeds": seeds,
            "points": [{"label": p.label, "group": p.group(cfg.experiment), "dir": p.dirname, "axes": dict(p.axes),
                        "overrides": list(p.overrides), "settings": settings[p.label]} for p in points],
        }, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--sweep-dir {sweep_dir} cannot be written ({err.strerror or err}); choose a directory you "
                          "can write to") from None

    counts = Counter(status[run] for run in runs if run.point in selected)
    kept = "all to run again (--force)" if force else f"{counts['finished']} already finished" + (
        f", {counts['diverged']} diverged (kept)" if counts["diverged"] else "")
    subset = f" (--only: {_count(len(selected), 'point')})" if len(selected) < len(points) else ""
    print(f"sweep {cfg.experiment}: {_count(len(points), 'point')} x {_count(len(seeds), 'seed')} = "
          f"{_count(len(runs), 'run')}{subset}, {kept}; running {len(todo)}; writing to {sweep_dir}", flush=True)
    if slurm is not None:
        return arrays.submit_array(sweep_dir, cfg.experiment, tasks, slurm, dry_run=False) if tasks else 0

    def launch(run: Run) -> int:
        resume = prepare_run_dir(run.dir, fresh=force)
        command = [sys.executable, "-m", "ssl_bench.cli", *fit_arguments(config, run, cfg.experiment, overrides),
                   *(["trainer.resume=auto"] if resume else [])]
        with open(run.dir / "log.txt", "a" if resume else "w", encoding="utf-8") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode

    def launch_ensemble(index: int, members: list[Run]) -> int:
        for run in members:
            prepare_run_dir(run.dir, fresh=True)
        table = sweep_dir / "ensembles" / f"{index}.json"
        table.parent.mkdir(exist_ok=True)
        table.write_text(json.dumps({"config": config, "batching": ensemble, "members": [
            {"run_dir": str(run.dir), "overrides": run_overrides(run, cfg.experiment, overrides)} for run in members]},
            indent=2) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "ssl_bench.cli", "fit-ensemble", str(table)]
        with open(table.with_suffix(".log"), "w", encoding="utf-8") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pool = ThreadPoolExecutor(max_workers=jobs)
    logs: dict[Run, Path] = {}
    if ensemble:
        tasks = ensemble_tasks(todo, settings, jobs)
        logs = {run: sweep_dir / "ensembles" / f"{i}.log" for i, members in enumerate(tasks) for run in members}
        futures = {pool.submit(launch_ensemble, i, members): members for i, members in enumerate(tasks)}
        print(f"sweep: {_count(len(todo), 'run')} as {_count(len(tasks), 'ensemble')} (logs in "
              f"{sweep_dir / 'ensembles'})", flush=True)
    else:
        futures = {pool.submit(launch, run): [run] for run in todo}
    # A bar only on a terminal; a log or a pipe gets one plain line per run that ends, so no line is written twice.
    bar = tqdm(total=len(todo), desc="sweep", unit="run", file=sys.stdout) if todo and sys.stdout.isatty() else None
    try:
        done = 0
        for future in as_completed(futures):
            future.result()
            for run in futures[future]:
                done += 1
                if bar is not None:
                    bar.update(1)
                else:
                    print(f"sweep [{done}/{len(todo)}] {run.dir.relative_to(sweep_dir)}: {run_status(run.dir)}",
                          flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
        print(f"ssl-bench: sweep interrupted, no further run started; run the same command again to continue in "
              f"{sweep_dir} (finished runs are kept, interrupted ones resume from their last checkpoint)",
              file=sys.stderr)
        return 130
    if bar is not None:
        bar.close()
    pool.shutdown()

    table = report(sweep_dir)
    (sweep_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    unfinished = 0
    for run in (run for run in runs if run.point in selected):
        summary = read_summary(run.dir) or {}
        state = summary.get("status", "missing")
        if state == "diverged":
            at = summary.get("diverged") if isinstance(summary.get("diverged"), dict) else {}
            print(f"diverged: {run.dir} (non-finite loss at epoch {at.get('epoch')}, step {at.get('step')})",
                  file=sys.stderr)
        elif state != "finished":
            unfinished += 1
            log = logs.get(run, run.dir / "log.txt")
            print(f"{state}: {run.dir} (see {log}; run the sweep again to retry it)", file=sys.stderr)
    return 1 if unfinished else 0


def report(sweep_dir: Path) -> str:
    """A markdown table with one row per grid point: how many of its runs finished (the others counted by status:
    diverged, failed, interrupted, missing) and the mean ± std over its finished runs of each final metric, with the
    paper's value beside it. A grid point without a finished run has ``-`` cells."""
    from ssl_bench.report import markdown_table, sweep_study

    return markdown_table(sweep_study(sweep_dir))
