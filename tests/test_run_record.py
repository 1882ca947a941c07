"""What a run directory holds after faults: a resume from an older checkpoint (after a kill) repeats no record, a
history line cut off by a kill does not stop the resume, checks that fail late write nothing, a checkpoint cannot run
code, and a full disk ends in one line. Driven through the CLI and the files of the run directory only."""

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
from conftest import REPO, TINY, assert_same_run, error_line

# Every epoch logs its record (and its spectrum / regimes / output dynamics); the checkpoint of every second epoch
# is older than the last records of a run of three epochs.
EVERY_EPOCH = ["trainer.log_every_n_epochs=1", "trainer.metrics_every_n_epochs=1",
               "trainer.checkpoint_every_n_epochs=2", "trainer.max_epochs=3"]

STUDIES = {
    # quickstart writes metrics.jsonl and spectra.jsonl
    "quickstart": ("spectra.jsonl", [*TINY, *EVERY_EPOCH]),
    # the predictor_dynamics callback writes predictor.jsonl and regimes.jsonl
    "bao2023/linear": ("regimes.jsonl", [
        "logger=none", "trainer.progress=none", "~callbacks.spectrum", "data.dim=8", "data.n=128",
        "data.batch_size=64", "encoder.width=4", "encoder.init_std=0.35", "callbacks.predictor_dynamics.samples=128",
        *EVERY_EPOCH]),
    # the output_dynamics callback writes dynamics.jsonl
    "esser2023/collapse": ("dynamics.jsonl", [
        "logger=none", "trainer.progress=none", "data.n=40", "data.batch_size=40", "encoder.width=4", *EVERY_EPOCH]),
}


def records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the run's ``last.ckpt`` (read here with torch's full unpickler: it is our own run's file)."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"]


def mark_first_record(run_dir: Path) -> tuple[str, float]:
    """Nudge a number of the first record of ``metrics.jsonl`` far below any tolerance (a record written before the
    checkpoint, which a resume keeps as it is and a fresh start would write again); return its key and new value."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    key = next(k for k, v in first.items() if k not in ("step", "epoch") and isinstance(v, float))
    first[key] = first[key] * (1 + 1e-9) + 1e-12
    lines[0] = json.dumps(first) + "\n"
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    return key, first[key]


@pytest.mark.parametrize("config", list(STUDIES))
def test_resume_from_an_older_checkpoint_repeats_no_record(run_cli, tmp_path, config):
    """A run killed after epoch 3's records, before its summary, with the checkpoint of epoch 2: resumed with
    trainer.resume=auto from that genuine checkpoint it continues (the records before the checkpoint are kept), and
    every history (metrics.jsonl and the config's own: spectra.jsonl, regimes.jsonl, dynamics.jsonl) equals the
    uninterrupted run's, with no record of epoch 3 twice."""
    own_history, overrides = STUDIES[config]
    whole, part = tmp_path / "whole", tmp_path / "part"
    for run_dir in (whole, part):
        code, out, err = run_cli("fit", "--config", config, *overrides, f"run_dir={run_dir}")
        assert code == 0, err[-2000:]
    assert (whole / own_history).is_file() and len(records(whole, own_history)) >= 2
    assert checkpoint_epoch(part) == 1  # the checkpoint is older than the last epoch's records
    (part / "summary.json").unlink()  # as a kill after the last records, before the summary, leaves it
    key, marked = mark_first_record(part)
    code, out, err = run_cli("fit", "--config", config, *overrides, f"run_dir={part}", "trainer.resume=auto")
    assert code == 0, err[-2000:]
    assert "Traceback" not in out + err
    assert records(part)[0][key] == marked  # resumed from the checkpoint, not started again
    for name in (own_history, "metrics.jsonl"):  # each epoch's record once, in order
        assert [(r.get("epoch"), r["step"]) for r in records(part, name)] == \
            [(r.get("epoch"), r["step"]) for r in records(whole, name)], name
    assert_same_run(part, whole)


FOREVER = [*TINY[:5], "trainer.progress=none", "logger=none", "trainer.log_every_n_epochs=1",
           "trainer.metrics_every_n_epochs=3", "trainer.checkpoint_every_n_epochs=4", "trainer.max_epochs=400"]


def complete_records(path: Path) -> list[dict]:
    """The records of the complete lines of a history that a running fit is writing."""
    text = path.read_text() if path.is_file() else ""
    found = []
    for line in text.split("\n")[:-1]:  # the last piece has no newline yet
        try:
            found.append(json.loads(line))
        except ValueError:
            pass
    return found


def killable(run_dir: Path) -> bool:
    """The run has a complete last.ckpt and, after it, records of a later epoch: a kill now leaves histories that
    run ahead of the checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return False
    try:
        epoch = checkpoint_epoch(run_dir)
    except Exception:  # noqa: BLE001  (a checkpoint being written)
        return False
    return any(record.get("epoch", -1) > epoch for record in complete_records(run_dir / "metrics.jsonl"))


def test_resume_after_sigkill_equals_the_uninterrupted_run(run_cli, tmp_path):
    """A fit killed with SIGKILL some epochs after a checkpoint (no summary, histories ahead of the checkpoint,
    perhaps a line cut off) and resumed with trainer.resume=auto has the uninterrupted run's histories and ending."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    log = tmp_path / "killed.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", "fit", "--config", "quickstart", *FOREVER,
                                 f"run_dir={killed}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the fit ended before it could be killed: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint with later records within 180 s"
            if killable(killed):
                proc.send_signal(signal.SIGSTOP)  # hold it still while the state is checked again
                if killable(killed):
                    break
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert not (killed / "summary.json").exists()
    ahead = checkpoint_epoch(killed)
    assert max(r["epoch"] for r in complete_records(killed / "metrics.jsonl")) > ahead
    code, out, err = run_cli("fit", "--config", "quickstart", *FOREVER, f"run_dir={killed}", "trainer.resume=auto")
    assert code == 0, err[-2000:]
    assert "Traceback" not in out + err
    code, out, err = run_cli("fit", "--config", "quickstart", *FOREVER, f"run_dir={whole}")
    assert code == 0, err[-2000:]
    assert_same_run(killed, whole)


def test_a_history_line_cut_off_by_a_kill_does_not_stop_the_resume(run_cli, tmp_path):
    """A kill while a record was being written leaves its line cut off without a newline; the resume drops it and
    goes on (exit 0, no traceback) to the uninterrupted run's histories."""
    _, overrides = STUDIES["quickstart"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    for run_dir in (whole, part):
        code, out, err = run_cli("fit", "--config", "quickstart", *overrides, f"run_dir={run_dir}")
        assert code == 0, err[-2000:]
    assert (part / "spectra.jsonl").is_file()
    (part / "summary.json").unlink()
    with open(part / "spectra.jsonl", "a") as file:
        file.write('{"step": 9, "backbone": [1.0, 0.5')
    with pytest.warns(UserWarning, match=r"spectra\.jsonl: its last line is cut off"):
        code, out, err = run_cli("fit", "--config", "quickstart", *overrides, f"run_dir={part}", "trainer.resume=auto")
    assert "Traceback" not in out + err, err[-3000:]
    assert code == 0, err[-2000:]
    assert_same_run(part, whole)


@pytest.mark.parametrize("config, override, named", [
    ("bao2023/linear", "data.noise_from=32", "callbacks.predictor_dynamics"),
    ("rusak2022/table1", "trainer.progress=epochs", "encoder.name=inverse"),  # f = g^-1 trains nothing
], ids=["bao-regimes-without-sigma", "rusak-inverse-encoder"])
def test_checks_that_fail_late_write_nothing(run_cli, tmp_path, config, override, named):
    """A setting refused only once the run is built is still one line (exit 2) before anything is written: no run
    directory (no summary of a failed run), and no progress bar (the default setting) before the error."""
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", config, "logger=none", override, f"run_dir={run_dir}")
    line = error_line(code, err, out)
    assert named in line, line
    assert "%|" not in out + err and "epoch/s" not in out + err, out  # no progress bar was drawn
    assert not run_dir.exists(), sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))


class _Touch:
    """Unpickled, creates ``path``: what any code in a pickle could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def planted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A file shaped like a Lightning checkpoint whose pickle creates a marker file when it is loaded."""
    marker, path = tmp_path / "marker", tmp_path / "planted.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "epoch": 0, "hyper_parameters": _Touch(marker)}, path)
    assert not marker.exists()
    with open(path, "rb") as file:  # the pickle really does run Path.touch (a sanity check of the fixture)
        assert b"touch" in file.read()
    return path, marker


def test_fit_refuses_a_checkpoint_that_would_run_code(run_cli, tmp_path):
    """trainer.resume=FILE whose pickle holds objects other than tensors and plain data: one line naming the file
    (exit 2), the pickle's code never runs, nothing written."""
    path, marker = planted_checkpoint(tmp_path)
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={run_dir}", f"trainer.resume={path}")
    line = error_line(code, err, out)
    assert f"trainer.resume={path}" in line, line
    assert not marker.exists(), "loading the checkpoint ran the code in its pickle"
    assert not run_dir.exists()


def test_evaluate_refuses_a_checkpoint_that_would_run_code_and_reads_a_real_one(run_cli, tmp_path):
    """`ssl-bench evaluate` reads the last.ckpt of a real fit; a planted pickle given as trainer.resume is one line
    naming the file (exit 2) and its code never runs."""
    model = ["data.condition_draws=200", "encoder=mlp", "encoder.widths=[2]"]
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "rusak2022/table1", *model, "logger=none", "trainer.progress=none",
                             "trainer.accelerator=cpu", "data.steps_per_epoch=2", "data.batch_size=64",
                             "trainer.max_epochs=1", "trainer.checkpoint_every_n_epochs=1", f"run_dir={run_dir}")
    assert code == 0, err[-2000:]
    code, out, err = run_cli("evaluate", "--config", "rusak2022/table1", *model,
                             f"trainer.resume={run_dir / 'checkpoints' / 'last.ckpt'}", "--samples", "50")
    assert code == 0, err[-2000:]
    assert json.loads(out)["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    path, marker = planted_checkpoint(tmp_path)
    code, out, err = run_cli("evaluate", "--config", "rusak2022/table1", *model, f"trainer.resume={path}",
                             "--samples", "50")
    line = error_line(code, err, out)
    assert f"trainer.resume={path}" in line, line
    assert not marker.exists(), "loading the checkpoint ran the code in its pickle"


@pytest.fixture
def small_disk(tmp_path):
    """A real 400 KB tmpfs at ``tmp_path / "disk"`` (unmounted afterwards). Mounting needs root, as in CI: where it
    is refused the test fails rather than skips."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    assert mounted.returncode == 0, f"cannot mount a 400 KB tmpfs (root needed): {mounted.stderr.strip()}"
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("outgrows", [
    # a checkpoint of about 400 KB: the first one fills the disk
    ["encoder.width=2000", "trainer.checkpoint_every_n_epochs=1", "trainer.max_epochs=3"],
    # spectra of 600 values every epoch: the histories fill it
    ["encoder.width=600", "callbacks.spectrum.samples=600", "trainer.metrics_every_n_epochs=1",
     "trainer.log_every_n_epochs=1", "trainer.max_epochs=60"],
], ids=["checkpoint", "histories"])
def test_a_full_disk_is_one_line(cli_subprocess, small_disk, outgrows):
    """A run whose checkpoint or histories outgrow the disk of its run directory stops with one stderr line that
    names the run directory and says the disk is full, no traceback; a summary.json, if there is room for it, says
    the run failed."""
    run_dir = small_disk / "run"
    result = cli_subprocess("fit", "--config", "quickstart", "data.n=64", "data.batch_size=32", "logger=none",
                            "trainer.progress=none", *outgrows, f"run_dir={run_dir}", timeout=300)
    err = result.stderr
    assert "Traceback" not in result.stdout + err, err[-3000:]
    assert result.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-bench: error: "), err[-3000:]
    assert str(run_dir) in lines[0], lines[0]
    assert "No space left on device" in lines[0] or "full" in lines[0].lower(), lines[0]
    summary = run_dir / "summary.json"
    if summary.exists():
        assert json.loads(summary.read_text())["status"] == "failed"


# Not tested here (left to whoever fixes those files): tests/test_esser2023_data.py and tests/test_wen2022.py import
# `from tests.conftest import ...`, which fails under plain `pytest` (only `python -m pytest` puts the repository
# root on sys.path); `from conftest import ...` works under both.
