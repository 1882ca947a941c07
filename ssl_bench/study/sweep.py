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
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from tqdm.auto import tqdm

from ssl_bench.config import ConfigError, RunConfig, ensemble_key
from ssl_bench.rundir import (
    ENDED,
    prepare_run_dir,
    read_config,
    read_summary,
    run_status,
)
from ssl_bench.study import slurm as arrays
from ssl_bench.study.grid import (
    PER_RUN,
    RUN_OVERRIDES,
    Point,
    Run,
    expand_grid,
    fit_arguments,
    run_overrides,
    select_points,
)
from ssl_bench.study.record import read_spec, recorded_points, write_spec
from ssl_bench.study.report import sweep_table_markdown
from ssl_bench.study.table import plural


def _override_key(override: str) -> str:
    """The config key of a Hydra override (``+data.n=3`` -> ``data.n``)."""
    return override.split("=", 1)[0].lstrip("+~")


def refuse_per_run_overrides(overrides: list[str], points: list[Point]) -> None:
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
    from ssl_bench.config.compose import run_loader

    settings = {}
    with run_loader(config) as load_run:
        for point in points:
            try:
                cfg = load_run([*point.overrides, *RUN_OVERRIDES, *overrides])
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


NEUTRAL_KEYS = ("logger", "trainer.progress", "trainer.accelerator", "trainer.devices", "trainer.num_nodes",
                "trainer.strategy", "data.root", "data.num_workers")
"""Config keys that change where and how a sweep's runs log and run but not their results: a change of one keeps
the finished runs, and a sweep with only these overrides (and a profile's) still runs at that profile."""


def is_neutral(key: str) -> bool:
    """Whether the dotted ``key`` is one of :data:`NEUTRAL_KEYS` or below one."""
    return any(key == neutral or key.startswith(f"{neutral}.") for neutral in NEUTRAL_KEYS)


def profile_of(profile: str | None, overrides: list[str]) -> str | None:
    """The profile a sweep's runs are made at: ``profile`` (``full`` when none is named), or None when overrides
    of other keys than :data:`NEUTRAL_KEYS` change the runs, which then match no profile's claims."""
    return profile or "full" if all(is_neutral(_override_key(override)) for override in overrides) else None


def setting_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, but :data:`NEUTRAL_KEYS`, as ``key: old -> new`` (``unset`` where a side lacks
    the key)."""
    unset = object()

    def show(value: Any) -> str:
        return "unset" if value is unset else value if isinstance(value, str) else json.dumps(value)

    before, after = _flat(old), _flat(new)
    return [f"{key}: {show(before.get(key, unset))} -> {show(after.get(key, unset))}"
            for key in dict.fromkeys([*before, *after])
            if before.get(key, unset) != after.get(key, unset) and not is_neutral(key)]


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _previous_runs(sweep_dir: Path, runs: list[Run]) -> tuple[dict[str, dict[str, Any]], list[int], list[Path]]:
    """What ``sweep_dir`` already holds: the settings its runs were made with (by grid point label), their seeds,
    and their run directories. A record from before settings were kept is read from the runs' own config.yaml."""
    if not sweep_dir.is_dir():
        return {}, [], []
    spec_file = sweep_dir / "sweep.json"
    spec = read_spec(sweep_dir) if spec_file.is_file() else {}
    points = recorded_points(spec, spec_file)
    if points is not None:
        seeds = spec["seeds"]
        dirs = [sweep_dir / str(p["dir"]) / f"seed{s}" for p in points for s in seeds]
        return {str(p["label"]): p["settings"] for p in points}, list(seeds), [d for d in dirs if _inside(d, sweep_dir)]
    settings: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.point.label not in settings and (plain := read_config(run.dir)):  # {}: no evidence of its settings
            settings[run.point.label] = settings_of(plain)
    return settings, [], [run.dir for run in runs]


def _changes(previous: dict[str, dict[str, Any]], old_seeds: list[int], settings: dict[str, dict[str, Any]],
             seeds: list[int]) -> list[str]:
    """How this sweep differs from the runs already in its directory; growing the grid or the seeds is no change, nor
    is a change of where and how the runs log and run (:func:`setting_changes`)."""
    changes: list[str] = []
    for label, old in previous.items():
        if label not in settings:
            changes.append(f"grid point {label or '(no grid)'} dropped")
            continue
        changes += [c for c in setting_changes(old, settings[label]) if c not in changes]
    if not set(old_seeds) <= set(seeds):
        changes.append(f"sweep.seeds: {json.dumps(old_seeds)} -> {json.dumps(seeds)}")
    return changes


def _remove_run(run_dir: Path) -> None:
    """Delete a run directory of the sweep and its grid point's directory when that is left empty."""
    if run_dir.is_dir():
        shutil.rmtree(run_dir)
    try:
        run_dir.parent.rmdir()
    except OSError:
        pass


def ensemble_tasks(runs: list[Run], settings: dict[str, dict[str, Any]], jobs: int) -> list[list[Run]]:
    """``runs`` as ensembles (:func:`ssl_bench.config.ensemble_key` of their grid point's settings), each cut
    into pieces of at most ``ceil(len(runs) / jobs)`` members so that ``jobs`` processes share the work."""

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(ensemble_key(settings[run.point.label]), []).append(run)
    size = -(-len(runs) // jobs)
    return [group[start:start + size] for group in groups.values() for start in range(0, len(group), size)]


@dataclass
class SweepPlan:
    """What a sweep is to do, decided before anything is written: its grid points and runs, the grid points chosen
    (``--only``), each point's settings, what the directory held before, each run's status and the runs to do."""

    config: str
    experiment: str
    overrides: list[str]
    sweep_dir: Path
    force: bool
    points: list[Point]
    seeds: list[int]
    runs: list[Run]
    selected: set[Point]
    settings: dict[str, dict[str, Any]]
    old_dirs: list[Path]
    status: dict[Run, str]
    todo: list[Run]
    profile: str | None = "full"

    @property
    def chosen(self) -> list[Run]:
        """The runs of the chosen grid points, in grid order."""
        return [run for run in self.runs if run.point in self.selected]


def _check_options(jobs: int, ensemble: str | None, slurm: arrays.SlurmOptions | None, dry_run: bool,
                   overrides: list[str]) -> None:
    """Refuse command-line options that do not go together, and SLURM options that cannot work."""
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be >= 1")
    if ensemble and slurm is not None:
        raise ConfigError("--ensemble trains a local sweep's runs together; with --slurm each run is its own task, so "
                          "drop one of the two")
    if slurm is not None:
        if jobs != 1:
            raise ConfigError(f"--jobs={jobs} runs a local sweep; with --slurm use --max-parallel {jobs}")
        slurm.check(submit=not dry_run)
        arrays.check_resource_overrides(overrides)


def profile_overrides(cfg: RunConfig, profile: str | None) -> list[str]:
    """The overrides that make the config's ``profile`` (:class:`ssl_bench.config.ProfileConfig`): its own and its
    seeds; none for ``full``, the config as written."""
    if profile is None or (profile == "full" and profile not in cfg.sweep.profiles):
        return []
    if profile not in cfg.sweep.profiles:
        raise ConfigError(f"--profile {profile}: {cfg.experiment} has no such profile; its profiles: "
                          f"{', '.join(dict.fromkeys(['full', *cfg.sweep.profiles]))}")
    chosen = cfg.sweep.profiles[profile]
    seeds = [f"sweep.seeds=[{','.join(map(str, chosen.seeds))}]"] if chosen.seeds else []
    return [*chosen.overrides, *seeds]


def plan_sweep(config: str, cfg: RunConfig, overrides: list[str], sweep_dir: Path | None, force: bool,
               only: list[str], labels: Collection[str] | None = None) -> SweepPlan:
    """The sweep's plan; reads the sweep directory but writes nothing. Refuses a directory whose runs were made with
    other settings (unless ``force``), and ``force`` with ``only`` when that would keep such runs. ``labels``
    narrows the grid points chosen to those with these labels."""
    points = expand_grid(cfg.sweep.grid)
    refuse_per_run_overrides(overrides, points)
    selected = {p for p in select_points(points, only) if labels is None or p.label in labels}
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
    return SweepPlan(config, cfg.experiment, overrides, sweep_dir, force, points, seeds, runs, selected, settings,
                     old_dirs, status, todo)


def print_plan(plan: SweepPlan, batching: str | None, jobs: int) -> None:
    """``--dry-run``: the overrides every run takes (the profile's, then the command line's), each chosen run with its
    own and what becomes of a run already there; with ``batching`` (``--ensemble``), how the runs to do group into
    ensembles."""
    if plan.overrides:
        print(f"every run: {' '.join(plan.overrides)}")
    for run in plan.chosen:
        state = "" if plan.status[run] == "missing" else \
            f" [{plan.status[run]}: {'replaced' if plan.force else 'kept' if run not in plan.todo else 'run again'}]"
        print(f"{run.dir}: {' '.join([*run.point.overrides, f'seed={run.seed}'])}{state}")
    if batching:
        sizes = [len(members) for members in ensemble_tasks(plan.todo, plan.settings, jobs)]
        print(f"--ensemble: {plural(len(plan.todo), 'run')} to do as {plural(len(sizes), 'ensemble')} of "
              f"{', '.join(map(str, sizes)) or 0} members, {jobs} at a time")


def record_sweep(plan: SweepPlan, cfg: RunConfig) -> None:
    """Create the sweep directory (with ``force``, first remove the runs it replaces) and write ``sweep.json``: the
    experiment, config, overrides, metrics, the paper's values, axes, seeds and every grid point's settings."""
    sweep_dir, experiment, points = plan.sweep_dir, plan.experiment, plan.points
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if plan.force:
            for run_dir in dict.fromkeys([*plan.old_dirs, *(run.dir for run in plan.chosen)]):
                _remove_run(run_dir)
        write_spec(sweep_dir, {
            "experiment": experiment, "config": plan.config, "overrides": plan.overrides,
            "metrics": list(cfg.sweep.metrics), "reference": [dataclasses.asdict(row) for row in cfg.sweep.reference],
            "profile": plan.profile, "claims": [dataclasses.asdict(claim) for claim in cfg.sweep.claims],
            "axes": list(dict.fromkeys(a for p in points for a, _ in p.axes)),
            "groups": [p.group(experiment) for p in points],
            "seeds": plan.seeds,
            "points": [{"label": p.label, "group": p.group(experiment), "dir": p.dirname, "axes": dict(p.axes),
                        "overrides": list(p.overrides), "settings": plan.settings[p.label]} for p in points],
        })
    except OSError as err:
        raise ConfigError(f"--sweep-dir {sweep_dir} cannot be written ({err.strerror or err}); choose a directory you "
                          "can write to") from None


def print_start(plan: SweepPlan) -> None:
    """The sweep's opening line: grid points x seeds, the runs kept and the runs to do, where they go."""
    counts = Counter(plan.status[run] for run in plan.chosen)
    kept = "all to run again (--force)" if plan.force else f"{counts['finished']} already finished" + (
        f", {counts['diverged']} diverged (kept)" if counts["diverged"] else "")
    subset = f" (--only: {plural(len(plan.selected), 'point')})" if len(plan.selected) < len(plan.points) else ""
    print(f"sweep {plan.experiment}: {plural(len(plan.points), 'point')} x {plural(len(plan.seeds), 'seed')} = "
          f"{plural(len(plan.runs), 'run')}{subset}, {kept}; running {len(plan.todo)}; writing to {plan.sweep_dir}",
          flush=True)


CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Set for every training process of a local sweep: one thread each, ``--jobs`` of them side by side."""


def launch_run(plan: SweepPlan, run: Run) -> int:
    """Train ``run`` in an ``ssl-bench fit`` process, logging to ``RUN_DIR/log.txt`` (appended to when the run resumes
    from its last checkpoint); returns the process's exit code."""
    resume = prepare_run_dir(run.dir, fresh=plan.force)
    command = [sys.executable, "-m", "ssl_bench.cli", *fit_arguments(plan.config, run, plan.experiment, plan.overrides),
               *(["trainer.resume=auto"] if resume else [])]
    with open(run.dir / "log.txt", "a" if resume else "w", encoding="utf-8") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CHILD_ENV},
                              check=False).returncode


def launch_ensemble(plan: SweepPlan, index: int, members: list[Run], batching: str) -> int:
    """Train ``members`` from scratch as one ensemble in an ``ssl-bench fit-ensemble`` process, from the table
    ``SWEEP_DIR/ensembles/INDEX.json`` and logging to ``INDEX.log`` beside it; returns the process's exit code."""
    for run in members:
        prepare_run_dir(run.dir, fresh=True)
    table = plan.sweep_dir / "ensembles" / f"{index}.json"
    table.parent.mkdir(exist_ok=True)
    table.write_text(json.dumps({"config": plan.config, "batching": batching, "members": [
        {"run_dir": str(run.dir), "overrides": run_overrides(run, plan.experiment, plan.overrides)}
        for run in members]}, indent=2) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "ssl_bench.cli", "fit-ensemble", str(table)]
    with open(table.with_suffix(".log"), "w", encoding="utf-8") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CHILD_ENV},
                              check=False).returncode


def execute_local(plan: SweepPlan, jobs: int, batching: str | None) -> dict[Run, Path] | None:
    """Train the runs to do, ``jobs`` processes at a time (with ``batching``: as ensembles, :func:`ensemble_tasks`),
    reporting each run that ends. Returns the log of every run trained in an ensemble (the others log to
    ``RUN_DIR/log.txt``), or None when Ctrl-C interrupted the sweep: then no further process starts."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    logs: dict[Run, Path] = {}
    if batching:
        tasks = ensemble_tasks(plan.todo, plan.settings, jobs)
        logs = {run: plan.sweep_dir / "ensembles" / f"{i}.log" for i, members in enumerate(tasks) for run in members}
        futures = {pool.submit(launch_ensemble, plan, i, members, batching): members
                   for i, members in enumerate(tasks)}
        print(f"sweep: {plural(len(plan.todo), 'run')} as {plural(len(tasks), 'ensemble')} (logs in "
              f"{plan.sweep_dir / 'ensembles'})", flush=True)
    else:
        futures = {pool.submit(launch_run, plan, run): [run] for run in plan.todo}
    # A bar only on a terminal; a log or a pipe gets one plain line per run that ends, so no line is written twice.
    bar = tqdm(total=len(plan.todo), desc="sweep", unit="run", file=sys.stdout) \
        if plan.todo and sys.stdout.isatty() else None
    try:
        done = 0
        for future in as_completed(futures):
            future.result()
            for run in futures[future]:
                done += 1
                if bar is not None:
                    bar.update(1)
                else:
                    print(f"sweep [{done}/{len(plan.todo)}] {run.dir.relative_to(plan.sweep_dir)}: "
                          f"{run_status(run.dir)}", flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
        return None
    if bar is not None:
        bar.close()
    pool.shutdown()
    return logs


def summarize(plan: SweepPlan, logs: dict[Run, Path]) -> int:
    """Print the sweep's table (its grid points without runs in one line) and save it as ``table.md``, then one
    line on stderr per chosen run that diverged or did not end for good, with its log. Returns 1 when some run did
    not end for good, else 0."""
    table = sweep_table_markdown(plan.sweep_dir, with_unrun=False)
    (plan.sweep_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    unfinished = 0
    for run in plan.chosen:
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


def run_sweep(config: str, cfg: RunConfig, overrides: list[str], jobs: int = 1, sweep_dir: Path | None = None,
              dry_run: bool = False, force: bool = False, only: list[str] | None = None,
              slurm: arrays.SlurmOptions | None = None, ensemble: str | None = None, profile: str | None = None,
              labels: Collection[str] | None = None) -> int:
    """Run every grid point x seed that has not ended for good (``jobs`` at a time, one thread each), then print
    and save the table: :func:`plan_sweep` -> :func:`record_sweep` -> :func:`execute_local` (or a SLURM array) ->
    :func:`summarize`. ``force`` replaces every run, whatever settings the directory's runs were made with.
    ``only`` (``AXIS=V1,V2`` entries, see :func:`select_points`) runs just the matching grid points; the record and
    the table keep the whole grid, whose other rows count their runs as missing until they are run.

    With ``slurm``, the runs to do are submitted as one SLURM array instead (:mod:`ssl_bench.study.slurm`), or with
    ``dry_run`` its script and task table are printed. With ``ensemble`` (the batching: ``auto``, ``vmap`` or
    ``loop``), runs that differ only in their seed and data values train together as ensembles
    (:mod:`ssl_bench.train.ensemble`; :func:`ensemble_tasks`), one process each, ``jobs`` at a time; an interrupted
    run then starts again from scratch.

    ``profile`` runs the config's profile of that name (its overrides come before ``overrides``);
    ``sweep.json`` records the profile, or none when ``overrides`` change more than where the runs go
    (:func:`profile_of`), so that the report checks each claim at its length. ``labels``
    runs only the grid points with these labels (``ssl-bench reproduce``: those its claims need).

    Returns 0 when every run ended for good (finished or diverged), 1 when some failed, were interrupted or are
    missing, 130 when the sweep itself was interrupted (Ctrl-C)."""
    _check_options(jobs, ensemble, slurm, dry_run, overrides)
    made_at = profile_of(profile, overrides)
    if extra := profile_overrides(cfg, profile):
        from ssl_bench.config.compose import load

        overrides = [*extra, *overrides]
        cfg = load(config, overrides)
    plan = plan_sweep(config, cfg, overrides, sweep_dir, force, only or [], labels)
    plan.profile = made_at
    tasks: list[dict[str, Any]] = []
    if slurm is not None:
        tasks = arrays.array_tasks(config, plan.todo, cfg.experiment, overrides, slurm)
        if dry_run:
            return arrays.submit_array(plan.sweep_dir, cfg.experiment, tasks, slurm, dry_run=True)
        arrays.check_not_queued(plan.sweep_dir, tasks)
    if dry_run:
        print_plan(plan, ensemble, jobs)
        return 0
    record_sweep(plan, cfg)
    print_start(plan)
    if slurm is not None:
        return arrays.submit_array(plan.sweep_dir, cfg.experiment, tasks, slurm, dry_run=False) if tasks else 0
    logs = execute_local(plan, jobs, ensemble)
    if logs is None:
        print(f"ssl-bench: sweep interrupted, no further run started; run the same command again to continue in "
              f"{plan.sweep_dir} (finished runs are kept, interrupted ones resume from their last checkpoint)",
              file=sys.stderr)
        return 130
    return summarize(plan, logs)
