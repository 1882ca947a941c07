"""How runs end after faults: signals, divergence, resuming into a run directory, checks before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY

from ssl_bench.config.compose import load
from ssl_bench.rundir import truncate_histories
from ssl_bench.train.build import build_data, build_module, checkpoint_step
from ssl_bench.train.ensemble import fit_ensemble
from ssl_bench.train.fit import fit
from ssl_bench.train.lightning_module import Diverged
from ssl_bench.train.recorder import RunRecorder
from ssl_bench.train.session import Interrupted

FOREVER = [*TINY[:5], "trainer.max_epochs=100000", "trainer.progress=none", "logger=none",
           "trainer.log_every_n_epochs=1", "trainer.checkpoint_every_n_epochs=5"]


def history(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_real_fit_as_interrupted_with_how_to_resume(tmp_path, signum, code):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", "fit", "--config", "quickstart", *FOREVER,
                             f"run_dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["signal"] == signal.Signals(signum).name
    assert summary["resume"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert 5 <= summary["epochs"] < 100000
    [line] = [line for line in err.splitlines() if line.startswith("ssl-bench:")]
    assert line.startswith(f"ssl-bench: interrupted by {signal.Signals(signum).name} at epoch ")
    assert line.endswith(f"run_dir={run_dir} trainer.resume=auto")
    assert "Traceback" not in err
    assert all(isinstance(record["step"], int) for record in history(run_dir))  # the history stays valid JSON


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_signal_just_after_an_epoch_is_recorded_counts_that_epoch(tmp_path, monkeypatch, ensemble):
    """SIGTERM's handler raises wherever the run is; raised right after epoch 1's record is written, the summary
    counts epochs 0 and 1: no history holds an epoch its summary leaves out."""
    write = RunRecorder.log_metrics

    def interrupted_after_epoch_one(self, metrics, step=None):
        write(self, metrics, step)
        if metrics.get("epoch") == 1.0:
            raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(RunRecorder, "log_metrics", interrupted_after_epoch_one)
    overrides = [*TINY, "trainer.max_epochs=10", "trainer.log_every_n_epochs=1"]
    cfgs = [load("quickstart", [*overrides, f"seed={seed}", f"run_dir={tmp_path / str(seed)}"]) for seed in (1, 2)]
    summaries = fit_ensemble(cfgs) if ensemble else [fit(cfgs[0])]
    for summary in summaries:
        assert (summary["status"], summary["signal"], summary["epochs"]) == ("interrupted", "SIGTERM", 2)
    assert max(record["epoch"] for record in history(tmp_path / "1")) == 1.0


def test_a_non_finite_loss_stops_the_run_as_diverged(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "trainer.max_epochs=50", "optim=adamw",
                             "optim.lr=1e30", "trainer.log_every_n_epochs=1", "trainer.metrics_every_n_epochs=1",
                             f"run_dir={run_dir}")
    assert code == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    at = summary["diverged"]
    assert at["loss"] in ("nan", "inf", "-inf") and 0 <= at["epoch"] < 50 and at["step"] >= 1
    assert summary["epochs"] == at["epoch"]
    assert f"ssl-bench: diverged: non-finite loss ({at['loss']}) at epoch {at['epoch']}, step {at['step']}" in err
    records = history(run_dir)
    assert max(record["step"] for record in records) <= at["step"]  # nothing logged after the divergence
    assert all(json.loads(json.dumps(record)) == record for record in records)


def test_diverged_is_raised_before_the_step_is_taken():
    cfg = load("quickstart", [*TINY, "optim=adamw", "optim.lr=1e30", "trainer.max_epochs=50"])
    data = build_data(cfg)
    module = build_module(cfg, data)
    from lightning import Trainer

    from ssl_bench.train.lightning_module import DataModuleAdapter

    trainer = Trainer(max_epochs=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    with pytest.raises(Diverged) as caught:
        trainer.fit(module, datamodule=DataModuleAdapter(data))
    assert caught.value.step == trainer.global_step  # the step of the non-finite loss was never taken
    assert caught.value.epoch == trainer.current_epoch
    assert not torch.isfinite(torch.tensor(caught.value.loss))


def test_resuming_continues_the_history_without_doubled_or_lost_lines(run_cli, tmp_path):
    settings = [*TINY, "trainer.log_every_n_epochs=1", "trainer.metrics_every_n_epochs=2",
                "trainer.checkpoint_every_n_epochs=2"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli("fit", "--config", "quickstart", *settings, "trainer.max_epochs=6", f"run_dir={whole}")[0] == 0
    assert run_cli("fit", "--config", "quickstart", *settings, "trainer.max_epochs=4", f"run_dir={part}")[0] == 0
    # the run goes on from its epoch-4 checkpoint in the same directory, as `trainer.resume=auto` finds it
    code, out, err = run_cli("fit", "--config", "quickstart", *settings, "trainer.max_epochs=6", f"run_dir={part}",
                             "trainer.resume=auto")
    assert code == 0, err
    for name in ("metrics.jsonl", "spectra.jsonl"):
        assert history(part, name) == history(whole, name), name
    assert sorted(p.name for p in (part / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert json.loads((part / "summary.json").read_text())["metrics"] == \
        json.loads((whole / "summary.json").read_text())["metrics"]


def test_a_moved_run_resumes_into_one_last_checkpoint(run_cli, tmp_path):
    settings = [*TINY, "trainer.checkpoint_every_n_epochs=1"]
    first = tmp_path / "first"
    assert run_cli("fit", "--config", "quickstart", *settings, "trainer.max_epochs=2", f"run_dir={first}")[0] == 0
    moved = tmp_path / "moved"
    first.rename(moved)
    code, out, err = run_cli("fit", "--config", "quickstart", *settings, "trainer.max_epochs=4", f"run_dir={moved}",
                             "trainer.resume=auto")
    assert code == 0, err
    assert sorted(p.name for p in (moved / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 3


def test_resume_auto_without_a_checkpoint_starts_from_scratch(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={run_dir}", "trainer.resume=auto")
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3


def test_truncate_histories_keeps_records_up_to_the_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 4)))
    truncate_histories(tmp_path, 2)
    assert [r["step"] for r in history(tmp_path)] == [1, 2]
    truncate_histories(tmp_path, None)
    assert history(tmp_path) == []


def bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    other = load("quickstart", [*TINY, "method=byol"])
    byol = build_module(other, build_data(other))
    torch.save({"state_dict": byol.state_dict(), "global_step": 3}, tmp_path / "byol.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": byol.state_dict(), "global_step": 3}, tmp_path / "truncated.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "truncated.ckpt").read_bytes()[:100])
    torch.save({"weights": 1}, tmp_path / "dict.ckpt")
    return {
        "missing": (tmp_path / "missing.ckpt", "is not a file"),
        "directory": (tmp_path, "is not a file"),
        "garbage": (tmp_path / "garbage.ckpt", "is not a readable checkpoint (UnpicklingError)"),
        "truncated": (tmp_path / "truncated.ckpt", "is not a readable checkpoint"),
        "not lightning": (tmp_path / "dict.ckpt", "is not a Lightning checkpoint"),
        "another model": (tmp_path / "byol.ckpt", "holds another model ("),
    }


def test_bad_resume_checkpoints_are_one_line_errors_before_anything_is_written(run_cli, tmp_path):
    cases = bad_checkpoints(tmp_path)
    for name, (path, needle) in cases.items():
        run_dir = tmp_path / f"run-{name.replace(' ', '-')}"
        code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={run_dir}",
                                 f"trainer.resume={path}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (name, err)
        assert lines[0].startswith(f"ssl-bench: error: trainer.resume={path} {needle}"), (name, lines[0])
        assert not run_dir.exists(), name


def test_checkpoint_step_reads_a_checkpoint_of_this_model(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("fit", "--config", "quickstart", *TINY, "trainer.checkpoint_every_n_epochs=1",
                   f"run_dir={run_dir}")[0] == 0
    cfg = load("quickstart", list(TINY))
    step = checkpoint_step(run_dir / "checkpoints" / "last.ckpt", build_module(cfg, build_data(cfg)))
    assert step == 3 * 2  # 3 epochs of 2 mini-batches (n=64, batch 32)


@pytest.mark.parametrize("overrides,message", [
    (["trainer.resume=auto"], "trainer.resume=auto needs run_dir=PATH, the run directory to continue"),
    (["trainer.precision=16-mixed", "trainer.accelerator=cpu"],
     "trainer.precision=16-mixed needs a GPU (on a CPU Lightning would train in bf16-mixed); use "
     "trainer.precision=32-true, bf16-mixed or auto"),
], ids=["resume-auto-without-run-dir", "16-mixed-on-cpu"])
def test_run_settings_this_machine_cannot_run_are_one_line_errors(run_cli, tmp_path, monkeypatch, overrides,
                                                                   message):
    monkeypatch.chdir(tmp_path)  # the default run directory would be runs/quickstart/... here
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, *overrides)
    assert code == 2
    assert err.strip() == f"ssl-bench: error: {message}"
    assert not (tmp_path / "runs").exists()


def test_gpu_accelerator_without_a_gpu_is_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "trainer.accelerator=gpu",
                             f"run_dir={tmp_path / 'run'}")
    assert code == 2
    assert err.strip() == ("ssl-bench: error: trainer.accelerator=gpu but no CUDA GPU is visible here; use "
                           "trainer.accelerator=auto (a GPU when there is one) or trainer.accelerator=cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["below a file", "in /proc"])
def test_a_run_dir_that_cannot_be_written_is_one_line(run_cli, tmp_path, where):
    (tmp_path / "file").write_text("x")
    run_dir = tmp_path / "file" / "run" if where == "below a file" else Path("/proc/ssl-bench-run")
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={run_dir}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"ssl-bench: error: run_dir={run_dir} cannot be written (")
    assert lines[0].endswith("); choose a directory you can write to")


@pytest.mark.parametrize("progress", ["epochs", "steps"])
def test_the_final_progress_line_is_printed_once_in_a_log_file(tmp_path, progress):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    settings = [o for o in TINY if not o.startswith("trainer.progress")]
    proc = subprocess.run([sys.executable, "-m", "ssl_bench.cli", "fit", "--config", "quickstart", *settings,
                           "trainer.max_epochs=40", f"trainer.progress={progress}", f"run_dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    redraws = proc.stdout.replace("\r", "\n").splitlines()
    assert sum("40/40" in line for line in redraws) == 1, proc.stdout
