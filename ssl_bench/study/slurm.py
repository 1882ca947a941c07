"""A sweep as one SLURM array job: one array task per grid point x seed, preemption-safe.

``ssl-bench sweep --slurm`` fills ``slurm/array.sbatch`` and writes, under ``SWEEP_DIR/slurm/``, the filled script
``array-K.sbatch`` and its task table ``tasks-K.json`` (K counts the sweep's submissions: each array reads its own
table, so a later submission never changes what an earlier array's tasks run), then submits the script with
``sbatch``. The table maps each array task id to its run directory (``SWEEP_DIR/POINT/seedS``, as a local sweep
uses) and its ``ssl-bench fit`` arguments, and records the job id once SLURM has given one.

Each task runs ``ssl-bench sweep-task TABLE`` in the batch step. It prepares the run directory as a local sweep
does (resume an interrupted run from ``last.ckpt``, else start from scratch), starts the run's processes with
``srun`` (one per GPU, through Lightning's ``SLURMEnvironment``), appends their output to the run's ``log.txt``, and
forwards SIGUSR1 to them. SIGUSR1 (``#SBATCH --signal=USR1@90``: the warning before the time limit; or ``scancel
--signal=USR1``) makes the run stop at the end of its epoch with a checkpoint
(``ssl_bench.train.session.StopAtEpochEnd``); the task then requeues itself with ``scontrol requeue ARRAYJOB_TASK`` and
records ``requeued: true`` in the run's ``summary.json``, whose status stays ``interrupted`` until the requeued task
resumes and finishes the run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_bench.errors import ConfigError
from ssl_bench.rundir import (
    ENDED,
    last_checkpoint,
    mark_requeued,
    prepare_run_dir,
    read_summary,
    run_status,
)
from ssl_bench.study.grid import Run, fit_arguments

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "array.sbatch"
"""The sbatch template: ``{{NAME}}`` placeholders, filled by :func:`render`."""

PLACEHOLDERS = ("JOB_NAME", "ARRAY", "LOG", "NODES", "TASKS_PER_NODE", "CPUS_PER_TASK", "RESOURCES", "WORKDIR",
                "PYTHON", "TABLE")

RESOURCE_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes")
"""Run settings that a task's resources decide (:meth:`SlurmOptions.trainer_overrides`)."""

QUEUE_STATES = {"PENDING": "pending", "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running",
                "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending", "RESIZING": "running",
                "SUSPENDED": "suspended", "STOPPED": "suspended", "SIGNALING": "running"}
"""squeue's job states as what ``sweep --status`` shows."""


EXAMPLES = {"--partition": "gpu", "--mem": "16G", "--time": "04:00:00", "--account": "myproject", "--qos": "normal"}
"""An example value of each option that takes a word, for the error that refuses one."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks SLURM for. ``gpus_per_task`` GPUs per run (on each of ``nodes`` nodes), one
    process per GPU (one process without GPUs); ``cpus_per_task`` CPUs per process; ``max_parallel`` tasks at once
    (``%K`` of ``--array``); ``extra_sbatch``: further ``#SBATCH`` options, written as given."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    time: str | None = None
    max_parallel: int | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    extra_sbatch: str = ""

    def check(self, submit: bool) -> None:
        """One-line :class:`ConfigError` for an option SLURM would refuse or misread; ``submit``: sbatch must be
        on PATH."""
        for name, value, least in (("--gpus-per-task", self.gpus_per_task, 0), ("--nodes", self.nodes, 1),
                                   ("--cpus-per-task", self.cpus_per_task, 1),
                                   ("--max-parallel", self.max_parallel, 1)):
            if value is not None and value < least:
                raise ConfigError(f"{name}={value} must be >= {least}")
        for name, value in (("--partition", self.partition), ("--mem", self.mem), ("--time", self.time),
                            ("--account", self.account), ("--qos", self.qos)):
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise ConfigError(f"{name}={value!r} must be one word, e.g. {name}={EXAMPLES[name]}")
        try:
            shlex.split(self.extra_sbatch)
        except ValueError as err:
            raise ConfigError(f"--extra-sbatch {self.extra_sbatch!r} cannot be read ({err}); quote it as a shell "
                              "would, e.g. --extra-sbatch \"--constraint=a100 --exclusive\"") from None
        if submit and shutil.which("sbatch") is None:
            raise ConfigError("--slurm needs sbatch, which is not on PATH; run on a SLURM login node, or add --dry-run "
                              "to only print the script and its task table")

    def sbatch_lines(self) -> list[str]:
        """The ``#SBATCH`` lines of the options that are set (besides those the template always has)."""
        lines = [f"#SBATCH --{flag}={value}" for flag, value in (
            ("partition", self.partition), ("gpus-per-node", self.gpus_per_task or None), ("mem", self.mem),
            ("time", self.time), ("account", self.account), ("qos", self.qos)) if value is not None]
        extra = shlex.split(self.extra_sbatch)
        return lines + [f"#SBATCH {option}" for option in extra]

    def trainer_overrides(self) -> list[str]:
        """The run settings of one process per GPU (or one CPU process) on each of ``nodes`` nodes."""
        accelerator, devices = ("gpu", self.gpus_per_task) if self.gpus_per_task else ("cpu", 1)
        return [f"trainer.accelerator={accelerator}", f"trainer.devices={devices}", f"trainer.num_nodes={self.nodes}"]


def slurm_options(args: Any) -> SlurmOptions | None:
    """The :class:`SlurmOptions` of ``ssl-bench sweep``'s parsed arguments, or None without ``--slurm`` (when a
    SLURM option given without it is a one-line error)."""
    given = {name: value for name in SlurmOptions.__dataclass_fields__
             if (value := getattr(args, name, None)) is not None}
    if not args.slurm:
        if given:
            raise ConfigError(f"--{next(iter(given)).replace('_', '-')} is an option of SLURM sweeps; add --slurm, "
                              "or drop it")
        return None
    return SlurmOptions(**given)


def check_resource_overrides(overrides: list[str]) -> None:
    """The task's resources set the trainer's devices: refuse overrides of them (one line naming the option)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RESOURCE_KEYS:
            raise ConfigError(f"{override} cannot be given to a SLURM sweep, whose tasks set {key} from their "
                              "resources; use --gpus-per-task G (G GPUs per run, one process each) and --nodes N")


def render(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """``template`` with each ``{{NAME}}`` replaced by ``values[NAME]``; a template that lacks one, or has one
    this function does not know, is a one-line error."""
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"the sbatch template {template} cannot be read ({err.strerror}); restore slurm/array.sbatch "
                          "from the repository") from None
    found = set(re.findall(r"{{(\w+)}}", text))
    if found != set(PLACEHOLDERS):
        odd = sorted(found - set(PLACEHOLDERS)) or [f"no {{{{{n}}}}}" for n in sorted(set(PLACEHOLDERS) - found)]
        raise ConfigError(f"the sbatch template {template} has {', '.join(odd)}; its placeholders are "
                          f"{', '.join('{{' + n + '}}' for n in PLACEHOLDERS)}")
    return re.sub(r"{{(\w+)}}", lambda m: values[m[1]], text)


def array_tasks(config: str, runs: list[Any], experiment: str, overrides: list[str], options: SlurmOptions
                ) -> list[dict[str, Any]]:
    """The task table of ``runs`` (:class:`ssl_bench.study.sweep.Run`): task id, absolute run dir (the same on every
    launch of the task), the grid point's overrides and seed (for a person), and the ``ssl-bench`` arguments."""

    tasks = []
    for task_id, run in enumerate(runs):
        run = Run(run.point, run.seed, run.dir.resolve())
        tasks.append({"task": task_id, "run_dir": str(run.dir), "overrides": [*run.point.overrides, f"seed={run.seed}"],
                      "args": [*fit_arguments(config, run, experiment, overrides), *options.trainer_overrides()]})
    return tasks


def check_not_queued(sweep_dir: Path, tasks: list[dict[str, Any]]) -> None:
    """Refuse to submit runs that a task of an earlier array of ``sweep_dir`` is still running or waiting to run:
    two tasks would write one run directory."""
    wanted = {t["run_dir"] for t in tasks}
    busy = [s for s in task_states(sweep_dir) if s["state"] in ("pending", "running", "suspended")
            and s["run_dir"] in wanted]
    if busy:
        first = busy[0]
        raise ConfigError(f"{len(busy)} of these runs are still {first['state']} in SLURM job {first['job']} (e.g. "
                          f"task {first['task']}: {first['run_dir']}); wait for it (ssl-bench sweep --status "
                          f"{sweep_dir}) or cancel it (scancel {first['job']}) before submitting them again")


def array_spec(count: int, max_parallel: int | None) -> str:
    return f"0-{count - 1}" + (f"%{max_parallel}" if max_parallel else "")


def plan_array(sweep_dir: Path, experiment: str, tasks: list[dict[str, Any]], options: SlurmOptions
               ) -> tuple[Path, Path, str]:
    """The paths of the next submission's script and table under ``sweep_dir/slurm``, and the filled script."""
    slurm_dir = sweep_dir.resolve() / "slurm"
    number = 1 + sum(1 for _ in slurm_dir.glob("tasks-*.json")) if slurm_dir.is_dir() else 1
    script, table = slurm_dir / f"array-{number}.sbatch", slurm_dir / f"tasks-{number}.json"
    name = "ssl-bench-" + re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    text = render({
        "JOB_NAME": name, "ARRAY": array_spec(len(tasks), options.max_parallel),
        "LOG": str(slurm_dir / "logs" / "%A_%a.out"), "NODES": str(options.nodes),
        "TASKS_PER_NODE": str(max(1, options.gpus_per_task)), "CPUS_PER_TASK": str(options.cpus_per_task),
        "RESOURCES": "\n".join(options.sbatch_lines()), "WORKDIR": shlex.quote(str(Path.cwd())),
        "PYTHON": shlex.quote(sys.executable), "TABLE": shlex.quote(str(table))})
    return script, table, text


def task_lines(tasks: list[dict[str, Any]]) -> list[str]:
    """The task table for a person: ``task ID: RUN_DIR: OVERRIDES``."""
    return [f"task {t['task']}: {t['run_dir']}: {' '.join(t['overrides'])}" for t in tasks]


def submit_array(sweep_dir: Path, experiment: str, tasks: list[dict[str, Any]], options: SlurmOptions,
                 dry_run: bool) -> int:
    """Write the script and task table of ``tasks`` (each: task, run_dir, overrides, args) and submit them with
    sbatch; with ``dry_run``, print both and write nothing."""
    script, table, text = plan_array(sweep_dir, experiment, tasks, options)
    if dry_run:
        print(text.rstrip("\n"))
        print(f"\n# task table ({table}, by SLURM_ARRAY_TASK_ID):")
        print("\n".join(f"# {line}" for line in task_lines(tasks)))
        return 0
    (table.parent / "logs").mkdir(parents=True, exist_ok=True)
    record = {"experiment": experiment, "script": script.name, "job_id": None, "tasks": tasks}
    table.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    script.write_text(text, encoding="utf-8")
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        table.unlink()
        why = next(iter(done.stderr.strip().splitlines()), f"exit code {done.returncode}")
        raise ConfigError(f"sbatch refused {script}: {why.removeprefix('sbatch: error: ')}; fix the options (or the "
                          "template) and submit again")
    job_id = done.stdout.strip().split(";")[0]
    record["job_id"] = job_id
    table.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"submitted array job {job_id}: {len(tasks)} tasks ({script}); logs in {table.parent / 'logs'}")
    print(f"watch it: squeue -r -j {job_id}   or   ssl-bench sweep --status {sweep_dir}")
    print(f"the table when it is done: ssl-bench report {sweep_dir}")
    return 0


# ------------------------------------------------------------------------------------------------------ the task


def read_table(table: Path) -> dict[str, Any]:
    try:
        record = json.loads(table.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{table} is not a task table of `ssl-bench sweep --slurm` ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("tasks"), list):
        raise ConfigError(f"{table} is not a task table of `ssl-bench sweep --slurm` (no tasks)")
    return record


def _launcher() -> list[str]:
    """How a run's processes start: ``SSL_BENCH_LAUNCH`` (set in the sbatch script, e.g. to run them in a
    container), else ``srun`` with this Python."""
    launch = os.environ.get("SSL_BENCH_LAUNCH")
    if launch:
        return shlex.split(launch)
    return ["srun", "--kill-on-bad-exit=1", sys.executable, "-m", "ssl_bench.cli"]


def _log(message: str) -> None:
    print(f"ssl-bench sweep-task: {message}", flush=True)


def run_task(table: Path, task_id: int | None = None) -> int:
    """Run array task ``task_id`` (default ``SLURM_ARRAY_TASK_ID``) of ``table`` unless its run has ended for good
    (finished or diverged): prepare its run directory, train it (resuming from ``last.ckpt`` when it was
    interrupted with one, e.g. after a requeue), and requeue the task when the run stopped on SIGUSR1. Returns the
    run's exit code (0 after a requeue)."""

    record = read_table(table)
    if task_id is None:
        if "SLURM_ARRAY_TASK_ID" not in os.environ:
            raise ConfigError("sweep-task runs one task of a SLURM array: give --task ID, or run it as an array task "
                              "(SLURM_ARRAY_TASK_ID)")
        task_id = int(os.environ["SLURM_ARRAY_TASK_ID"])
    tasks = {int(t["task"]): t for t in record["tasks"]}
    if task_id not in tasks:
        raise ConfigError(f"{table} has no task {task_id}; its tasks are 0-{len(tasks) - 1}")
    task = tasks[task_id]
    run_dir = Path(task["run_dir"])
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    ended = run_status(run_dir)
    if ended in ENDED:  # e.g. a task that SLURM requeued after its run had ended
        _log(f"task {task_id}: {run_dir} has {ended} already; nothing to do")
        return 0
    resume = prepare_run_dir(run_dir, restarted=restarts > 0)
    command = [*_launcher(), *task["args"], *(["trainer.resume=auto"] if resume else [])]
    _log(f"task {task_id} (restart {restarts}): {run_dir}: "
         + (f"resuming from {last_checkpoint(run_dir)}" if resume else "starting"))
    with open(run_dir / "log.txt", "a" if resume else "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        # SIGUSR1 that reaches the batch step (--signal=B:USR1@T, scancel --batch) goes on to the run; srun passes
        # it to every process of the run
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: process.send_signal(signum))
        try:
            code = process.wait()
        finally:
            signal.signal(signal.SIGUSR1, previous)
    summary = read_summary(run_dir) or {}
    status = summary.get("status", "missing")
    _log(f"task {task_id}: {status} (exit code {code}); log: {run_dir / 'log.txt'}")
    if status == "interrupted" and summary.get("signal") == "SIGUSR1" and summary.get("resume"):
        return requeue(run_dir, summary, code)
    return code


def requeue(run_dir: Path, summary: dict[str, Any], code: int) -> int:
    """Put this array task back in the queue (``scontrol requeue``) and record ``requeued: true`` in the run's
    summary, which stays ``interrupted``: the requeued task resumes from the run's checkpoint. Without scontrol
    (inside a container, say) the run stays interrupted, and the sweep submitted again resumes it."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if scontrol is None or job_id is None:
        why = "scontrol is not on PATH" if scontrol is None else "this is no SLURM job"
        print(f"ssl-bench: cannot requeue ({why}); the run stays interrupted: submit the sweep again to resume it "
              f"from {summary['resume']}", file=sys.stderr, flush=True)
        return code
    # requeueing ends this job with SIGTERM; nothing is left to do but that, so it must not cut the summary short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    mark_requeued(run_dir, summary, True)
    done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        mark_requeued(run_dir, summary, False)
        why = next(iter(done.stderr.strip().splitlines()), f"exit code {done.returncode}")
        print(f"ssl-bench: scontrol requeue {job_id} failed ({why}); the run stays interrupted: submit the sweep "
              "again to resume it", file=sys.stderr, flush=True)
        return code
    _log(f"requeued {job_id}; it resumes from {summary['resume']}")
    return 0


# ---------------------------------------------------------------------------------------------------- --status


def queued_tasks(job_ids: list[str]) -> dict[str, str]:
    """``JOB_TASK`` -> what squeue says of it (pending, running, suspended) for the array jobs ``job_ids``; empty
    without squeue."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                          text=True, check=False)
    states = {}
    for line in done.stdout.splitlines():
        job_task, _, state = line.strip().partition(" ")
        states[job_task] = QUEUE_STATES.get(state, state.lower())
    return states


def accounted_tasks(job_ids: list[str]) -> dict[str, str]:
    """``JOB_TASK`` -> sacct's final state (e.g. TIMEOUT, OUT_OF_MEMORY, CANCELLED) of the array jobs ``job_ids``;
    empty without sacct or accounting."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {}
    return dict(line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)


def task_states(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every run that an array of ``sweep_dir`` ran or runs, by its latest submission: task id, job, run dir, and
    its state: pending or running (squeue), else how the run ended (summary.json: finished, diverged, failed,
    interrupted; ``missing`` without one, with sacct's state when accounting is on)."""

    latest: dict[str, dict[str, Any]] = {}
    tables = sorted((sweep_dir / "slurm").glob("tasks-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    for table in tables:
        record = read_table(table)
        for task in record["tasks"]:
            latest[task["run_dir"]] = {**task, "job": record.get("job_id")}
    jobs = list(dict.fromkeys(str(t["job"]) for t in latest.values() if t["job"]))
    queued, accounted = queued_tasks(jobs), accounted_tasks(jobs)
    states = []
    for run_dir, task in latest.items():
        job_task = f"{task['job']}_{task['task']}"
        summary = read_summary(Path(run_dir)) or {}
        state = queued.get(job_task) or summary.get("status") or "missing"
        detail = "requeued" if summary.get("requeued") and state in ("pending", "running", "interrupted") else \
            accounted.get(job_task, "") if state == "missing" else ""
        states.append({"task": task["task"], "job": task["job"], "run_dir": run_dir, "state": state,
                       "detail": detail})
    return states


def print_status(sweep_dir: Path) -> int:
    """Print one line per task of the sweep's arrays and the counts by state; 0 when every run ended for good."""
    if not (sweep_dir / "slurm").is_dir():
        raise ConfigError(f"{sweep_dir} has no SLURM arrays (no slurm/ folder); submit one with `ssl-bench sweep "
                          "--config NAME --slurm --sweep-dir DIR`")
    states = task_states(sweep_dir)
    counts: dict[str, int] = {}
    for s in states:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
        detail = f" ({s['detail']})" if s["detail"] else ""
        print(f"{s['job']}_{s['task']}\t{s['state']}{detail}\t{s['run_dir']}")
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(states)} tasks")
    return 0 if all(s["state"] in ("finished", "diverged") for s in states) else 1
