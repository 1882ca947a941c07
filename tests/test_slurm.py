"""SLURM arrays: the filled sbatch script and task table, bad options as one line, and, on a real single-node
cluster (munged, slurmctld, slurmd started by the tests), an array of four tiny runs and a task that gets the
preemption warning, requeues itself and ends with exactly the metrics of a run that was never stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
from conftest import REPO, TINY, error_line
from slurm_cluster import missing_binaries, slurm_cluster

from ssl_bench.study.grid import Point, Run
from ssl_bench.study.slurm import SlurmOptions, array_tasks, render, requeue

SLURM_TINY = [o for o in TINY if o != "trainer.max_epochs=3"]


def records(history: Path) -> list[dict]:
    return [json.loads(line) for line in history.read_text().splitlines()]


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


# ------------------------------------------------------------------------------------------ without a scheduler


def test_dry_run_prints_the_filled_script_and_task_table_and_writes_nothing(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    code, out, err = run_cli(
        "sweep", "--config", "quickstart", *TINY, "sweep.seeds=[1,2]", "sweep.grid={data.sparsity: [0.1, 0.2]}",
        "--slurm", "--dry-run", "--sweep-dir", sweep_dir, "--partition", "gpu", "--gpus-per-task", "2",
        "--cpus-per-task", "4", "--mem", "32G", "--time", "01:00:00", "--max-parallel", "3", "--account", "proj",
        "--qos", "high", "--nodes", "2", "--extra-sbatch", "--constraint=a100 --exclusive")
    assert code == 0, err
    assert not sweep_dir.exists()
    script, _, table = out.partition("\n# task table")
    table_file = sweep_dir.resolve() / "slurm" / "tasks-1.json"
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=ssl-bench-quickstart", "#SBATCH --array=0-3%3",
        f"#SBATCH --output={sweep_dir.resolve()}/slurm/logs/%A_%a.out", "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={Path.cwd()}", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=4", "#SBATCH --requeue", "#SBATCH --signal=USR1@90", "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2", "#SBATCH --mem=32G", "#SBATCH --time=01:00:00", "#SBATCH --account=proj",
        "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --exclusive"]
    assert f"sweep-task {table_file}" in script.splitlines()[-1]
    assert "{{" not in script.replace("{{...}}", "")
    runs = [f"{sweep_dir.resolve()}/data.sparsity={s}/seed{seed}" for s in (0.1, 0.2) for seed in (1, 2)]
    assert table.strip().splitlines()[1:] == [
        f"# task {i}: {run}: data.sparsity={s} seed={seed}"
        for i, (run, (s, seed)) in enumerate(zip(runs, [(s, seed) for s in (0.1, 0.2) for seed in (1, 2)]))]


def test_each_task_trains_one_process_per_gpu_in_its_own_stable_run_dir(tmp_path):
    point = Point((("data.sparsity", "0.1"),), ("data.sparsity=0.1",))
    run = Run(point, 3, tmp_path / "sweep" / point.dirname / "seed3")
    gpu, cpu = (array_tasks("quickstart", [run], "exp", ["data.n=64"], SlurmOptions(gpus_per_task=g, nodes=2))[0]
                for g in (4, 0))
    assert gpu["run_dir"] == str(run.dir.resolve()) and gpu["overrides"] == ["data.sparsity=0.1", "seed=3"]
    assert gpu["args"][:3] == ["fit", "--config", "quickstart"]
    assert f"run_dir='{run.dir.resolve()}'" in gpu["args"] and "group='exp/data.sparsity=0.1'" in gpu["args"]
    assert gpu["args"][-4:] == ["data.n=64", "trainer.accelerator=gpu", "trainer.devices=4", "trainer.num_nodes=2"]
    assert cpu["args"][-3:] == ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2"]


@pytest.mark.parametrize("options, message", [
    (["--slurm", "--max-parallel", "0"], "--max-parallel=0 must be >= 1"),
    (["--slurm", "--gpus-per-task", "-1"], "--gpus-per-task=-1 must be >= 0"),
    (["--slurm", "--nodes", "0"], "--nodes=0 must be >= 1"),
    (["--slurm", "--time", "1 hour"], "--time='1 hour' must be one word, e.g. --time=04:00:00"),
    (["--partition", "gpu"], "--partition is an option of SLURM sweeps; add --slurm, or drop it"),
    (["--slurm", "--jobs", "4"], "--jobs=4 runs a local sweep; with --slurm use --max-parallel 4"),
    (["--slurm", "trainer.devices=2"], "trainer.devices=2 cannot be given to a SLURM sweep, whose tasks set "
                                       "trainer.devices from their resources; use --gpus-per-task G (G GPUs per run, "
                                       "one process each) and --nodes N"),
], ids=["max-parallel", "gpus", "nodes", "time", "without-slurm", "jobs", "devices"])
def test_bad_slurm_options_are_one_line(run_cli, tmp_path, options, message):
    code, out, err = run_cli("sweep", "--config", "quickstart", *TINY, "--dry-run", "--sweep-dir", tmp_path / "s",
                             *options)
    assert error_line(code, err, out) == message


def test_slurm_without_sbatch_on_path_is_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = run_cli("sweep", "--config", "quickstart", *TINY, "--slurm", "--sweep-dir", tmp_path / "s")
    assert error_line(code, err, out) == ("--slurm needs sbatch, which is not on PATH; run on a SLURM login node, or "
                                          "add --dry-run to only print the script and its task table")
    assert not (tmp_path / "s").exists()


def test_a_template_without_a_placeholder_is_one_line(tmp_path):
    template = tmp_path / "array.sbatch"
    template.write_text("#!/bin/bash\n#SBATCH --array={{ARRAY}}\n#SBATCH --gres={{GRES}}\n")
    with pytest.raises(Exception, match=r"^the sbatch template .* has GRES; its placeholders are \{\{JOB_NAME\}\}"):
        render({}, template)


def test_status_needs_a_sweep_with_slurm_arrays(run_cli, tmp_path):
    code, out, err = run_cli("sweep", "--status", tmp_path)
    assert error_line(code, err, out) == (f"{tmp_path} has no SLURM arrays (no slurm/ folder); submit one with "
                                          "`ssl-bench sweep --config NAME --slurm --sweep-dir DIR`")
    code, out, err = run_cli("sweep", *TINY)
    assert error_line(code, err, out) == "sweep needs --config NAME (or --status DIR for the state of a SLURM sweep)"


def test_a_task_trains_its_run_and_leaves_a_finished_run_alone(tmp_path, monkeypatch, capsys):
    """sweep-task outside SLURM (the run's processes started without srun): the task's run trains into its run
    directory with its output in log.txt; run again (as after a requeue that came too late) it keeps the finished
    run as it is."""
    point = Point((), ())
    run = Run(point, 2, tmp_path / "sweep" / "default" / "seed2")
    tasks = array_tasks("quickstart", [run], "quickstart", TINY, SlurmOptions())
    table = tmp_path / "sweep" / "slurm" / "tasks-1.json"
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps({"experiment": "quickstart", "script": "array-1.sbatch", "job_id": None,
                                 "tasks": tasks}))
    monkeypatch.setenv("SSL_BENCH_LAUNCH", f"{sys.executable} -m ssl_bench.cli")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    from ssl_bench.cli import main

    assert main(["sweep-task", str(table), "--task", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"ssl-bench sweep-task: task 0 (restart 0): {run.dir}: starting",
                   f"ssl-bench sweep-task: task 0: finished (exit code 0); log: {run.dir / 'log.txt'}"]
    assert summary(run.dir)["status"] == "finished" and summary(run.dir)["seed"] == 2
    assert f"run directory: {run.dir}" in (run.dir / "log.txt").read_text()
    before = (run.dir / "summary.json").stat().st_mtime_ns
    assert main(["sweep-task", str(table), "--task", "0"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"ssl-bench sweep-task: task 0: {run.dir} has finished already; nothing to do"]
    assert (run.dir / "summary.json").stat().st_mtime_ns == before
    code, err = main(["sweep-task", str(table), "--task", "1"]), capsys.readouterr().err
    assert error_line(code, err) == f"{table} has no task 1; its tasks are 0-0"
    code, err = main(["sweep-task", str(table)]), capsys.readouterr().err
    assert error_line(code, err) == ("sweep-task runs one task of a SLURM array: give --task ID, or run it as an array "
                                     "task (SLURM_ARRAY_TASK_ID)")


def test_without_scontrol_the_run_stays_interrupted_and_says_why(tmp_path, monkeypatch, capsys):
    summary = {"status": "interrupted", "signal": "SIGUSR1", "resume": str(tmp_path / "checkpoints" / "last.ckpt")}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert requeue(tmp_path, summary, 138) == 138
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ssl-bench: cannot requeue (scontrol is not on PATH); the run stays interrupted: submit the sweep "
                   f"again to resume it from {summary['resume']}"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


# ------------------------------------------------------------------------------- the warning signal in a run


class SignalAtEpoch(L.Callback):
    """Sends this process SIGUSR1 at the start of epoch ``epoch``, as SLURM's warning would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGUSR1)


def fit_tiny(run_dir: Path, *extra: str, signal_at: int | None = None) -> dict:
    from ssl_bench.config.compose import load
    from ssl_bench.train.fit import fit

    cfg = load("quickstart", [*SLURM_TINY, "trainer.max_epochs=30", f"run_dir={run_dir}", *extra])
    return fit(cfg, [] if signal_at is None else [SignalAtEpoch(signal_at)])


def test_sigusr1_stops_at_the_epochs_end_with_a_checkpoint_that_resumes_exactly(tmp_path):
    """Stopped in the middle of a train/loss window (logged every 10 epochs) and resumed, a run ends with the
    metrics and histories of the run that never stopped, and continues its W&B run; a run started afresh in the
    same directory gets a W&B run of its own."""
    wandb = ["logger=wandb"]
    stopped = fit_tiny(tmp_path / "run", *wandb, signal_at=14)
    assert {k: stopped[k] for k in ("status", "signal", "epochs")} == {"status": "interrupted", "signal": "SIGUSR1",
                                                                       "epochs": 15}
    assert stopped["resume"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    run_id = (tmp_path / "run" / "wandb" / "id.txt").read_text()
    resumed = fit_tiny(tmp_path / "run", *wandb, "trainer.resume=auto")
    never_stopped = fit_tiny(tmp_path / "reference", *wandb)
    assert resumed["status"] == "finished" and resumed["epochs"] == 30
    assert resumed["metrics"] == never_stopped["metrics"]
    for history in ("metrics.jsonl", "spectra.jsonl"):
        assert records(tmp_path / "run" / history) == records(tmp_path / "reference" / history), history
    assert (tmp_path / "run" / "wandb" / "id.txt").read_text() == run_id
    segments = list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # one per start, both with the run's id
    assert len(segments) == 2 and all(f"-{run_id.strip()}" in p.name for p in segments)
    fit_tiny(tmp_path / "run", *wandb)
    assert (tmp_path / "run" / "wandb" / "id.txt").read_text() != run_id


def test_sigusr1_in_the_last_epoch_lets_the_run_finish(tmp_path):
    assert fit_tiny(tmp_path / "run", "trainer.max_epochs=3", signal_at=2)["status"] == "finished"


# ------------------------------------------------------------------------------------------- a real scheduler


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A running single-node SLURM cluster; the environment in which its clients (and jobs) find it."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not on PATH): apt-get install slurm-wlm munge")
    with contextlib.ExitStack() as stack:
        try:
            env = stack.enter_context(slurm_cluster(tmp_path_factory.mktemp("slurm")))
        except RuntimeError as err:
            pytest.skip(f"the SLURM cluster did not start: {str(err).splitlines()[0]}")
        yield {**os.environ, **env, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_bench.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def submit(env: dict[str, str], sweep_dir: Path, *args: str) -> str:
    """Submit a SLURM sweep of the tiny quickstart; return its array job id."""
    done = cli(env, sweep_dir.parent, "sweep", "--config", "quickstart", *SLURM_TINY, *args, "--slurm",
               "--sweep-dir", sweep_dir)
    assert done.returncode == 0, done.stderr
    job = re.search(r"^submitted array job (\d+):", done.stdout, re.M)
    assert job, done.stdout
    return job[1]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.5)


def queued(env: dict[str, str], job: str) -> str:
    """squeue's ``TASK STATE REASON`` lines of ``job`` (empty once it left the queue; ``unknown`` when squeue
    could not ask the controller)."""
    done = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T %r"], env=env, capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def test_an_array_of_four_runs_finishes_every_task(cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    job = submit(cluster, sweep_dir, "trainer.max_epochs=5", "sweep.seeds=[1,2,3,4]", "--max-parallel", "2")
    assert "#SBATCH --array=0-3%2" in (sweep_dir / "slurm" / "array-1.sbatch").read_text().splitlines()
    wait_for(lambda: not queued(cluster, job), 120, f"array job {job} did not leave the queue")
    runs = [sweep_dir / "default" / f"seed{seed}" for seed in (1, 2, 3, 4)]
    for task, run_dir in enumerate(runs):
        assert summary(run_dir).get("status") == "finished", (run_dir / "log.txt").read_text()[-2000:]
        assert summary(run_dir)["seed"] == task + 1 and summary(run_dir)["epochs"] == 5
        log = (sweep_dir / "slurm" / "logs" / f"{job}_{task}.out").read_text()
        assert f"task {task} (restart 0): {run_dir}: starting" in log
    status = cli(cluster, tmp_path, "sweep", "--status", sweep_dir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == [f"{job}_{task}\tfinished\t{run}" for task, run in enumerate(runs)] + [
        "4 finished of 4 tasks"]


def test_the_warning_signal_requeues_a_task_that_resumes_to_the_uninterrupted_metrics(cluster, tmp_path):
    """scancel --signal=USR1 (what SLURM sends before the time limit) reaches the run through srun; it stops at the
    end of an epoch with a checkpoint, the task requeues itself (Restarts=1), and the requeued task resumes from
    the checkpoint to exactly the metrics and history of the same run trained without a stop."""
    sweep_dir = tmp_path / "sweep"
    epochs = 400
    job = submit(cluster, sweep_dir, f"trainer.max_epochs={epochs}", "sweep.seeds=[5]")
    run_dir = sweep_dir / "default" / "seed5"
    table = json.loads((sweep_dir / "slurm" / "tasks-1.json").read_text())
    # the same run, never stopped, beside it
    reference = tmp_path / "reference"
    args = [a for a in table["tasks"][0]["args"] if not a.startswith("run_dir=")] + [f"run_dir={reference}"]
    uninterrupted = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", *args], cwd=tmp_path, env=cluster,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics = run_dir / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, 60, "the run did not start training")
        subprocess.run(["scancel", "--signal=USR1", f"{job}_0"], env=cluster, check=True)
        wait_for(lambda: summary(run_dir).get("requeued") is True, 60, "the task did not requeue itself")
        stopped = summary(run_dir)
        assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGUSR1"
        assert stopped["resume"] == str(run_dir.resolve() / "checkpoints" / "last.ckpt")
        assert 0 < stopped["epochs"] < epochs
        # SLURM holds a requeued job for the credentials' lifetime (reason BeginTime; cred_expire=10 in this cluster)
        wait_for(lambda: queued(cluster, job) == f"{job}_0 PENDING BeginTime", 30, "the task was not requeued")
        show = subprocess.run(["scontrol", "show", "job", f"{job}_0"], env=cluster, capture_output=True, text=True)
        assert "Restarts=1" in show.stdout
        wait_for(lambda: not queued(cluster, job), 90, "the requeued task did not finish")
        assert uninterrupted.wait(timeout=90) == 0
    finally:
        uninterrupted.kill()
    log = (sweep_dir / "slurm" / "logs" / f"{job}_0.out").read_text()
    assert f"requeued {job}_0; it resumes from {stopped['resume']}" in log
    assert f"task 0 (restart 1): {run_dir.resolve()}: resuming from {stopped['resume']}" in log
    resumed, never_stopped = summary(run_dir), summary(reference)
    assert resumed["status"] == "finished" and resumed["epochs"] == epochs
    assert resumed["metrics"] == never_stopped["metrics"]
    for history in ("metrics.jsonl", "spectra.jsonl"):
        assert records(run_dir / history) == records(reference / history), history
    status = cli(cluster, tmp_path, "sweep", "--status", sweep_dir)
    assert status.stdout.splitlines()[0] == f"{job}_0\tfinished\t{run_dir.resolve()}"
