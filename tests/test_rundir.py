"""The run directory's one module: the registry of histories, tolerant reads, truncation by the optimizer step, and
files replaced whole."""

from __future__ import annotations

import errno
import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

from ssl_bench import rundir
from ssl_bench.errors import UserError
from ssl_bench.train.atomic_checkpoint import AtomicCheckpointIO


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_append_records_refuses_an_unregistered_history_and_a_record_without_a_step(tmp_path):
    with pytest.raises(ValueError, match="notes.jsonl is not a registered history"):
        rundir.append_records(tmp_path, "notes.jsonl", [{"step": 1}])
    for record in ({"epoch": 1}, {"step": 1.0}, {"step": "1"}, {"step": True}):
        with pytest.raises(ValueError, match="integer step"):
            rundir.append_records(tmp_path, "spectra.jsonl", [{"step": 1}, record])
    assert not any(tmp_path.iterdir())  # nothing written
    rundir.append_records(tmp_path, "spectra.jsonl", [{"step": 1}, {"step": 2, "x": [0.5]}])
    assert lines(tmp_path / "spectra.jsonl") == [{"step": 1}, {"step": 2, "x": [0.5]}]


def test_every_history_that_a_run_writes_is_registered():
    package = Path(rundir.__file__).parent
    named = {name for path in package.rglob("*.py")
             for name in re.findall(r'(?:append_records|HistoryWriter)\([^,]+, "([^"]+)"', path.read_text())}
    assert {"metrics.jsonl", "regimes.jsonl", "dynamics.jsonl"} <= named <= set(rundir.HISTORIES), named


def test_a_cut_last_line_is_dropped_with_one_warning_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "train/lo')
    with pytest.warns(UserWarning, match=f"{path}: its last line is cut off"):
        assert rundir.read_records(tmp_path, "metrics.jsonl") == [{"step": 1}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second read of the same file warns no more
        assert rundir.read_records(tmp_path, "metrics.jsonl") == [{"step": 1}]
    assert rundir.read_records(tmp_path, "r2.jsonl") == []  # no history: no records


def test_a_broken_line_before_the_last_is_a_one_line_error(tmp_path):
    (tmp_path / "spectra.jsonl").write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(UserError, match="spectra.jsonl:2 is not a JSON record"):
        rundir.read_records(tmp_path, "spectra.jsonl")


def test_truncation_keeps_every_history_up_to_the_checkpoint_step(tmp_path):
    """Every registered history (regimes and dynamics included) keeps its records up to optimizer step 4, the step
    of the checkpoint a run resumes from, and loses a cut-off last line; a file that is not a history is left."""
    for name in rundir.HISTORIES:
        (tmp_path / name).write_text("".join(json.dumps({"epoch": e, "step": 2 * e}) + "\n" for e in (1, 2, 3))
                                     + '{"epoch": 4, "step": 8, "x": [1.0, 0.')
    (tmp_path / "other.jsonl").write_text('{"step": 9}\n')
    with pytest.warns(UserWarning):
        rundir.truncate_histories(tmp_path, 4)
    for name in rundir.HISTORIES:
        assert lines(tmp_path / name) == [{"epoch": 1, "step": 2}, {"epoch": 2, "step": 4}], name
    rundir.truncate_histories(tmp_path, None)
    assert all((tmp_path / name).read_text() == "" for name in rundir.HISTORIES)
    assert (tmp_path / "other.jsonl").read_text() == '{"step": 9}\n'


def test_a_failed_replacement_leaves_the_previous_file(tmp_path, monkeypatch):
    """A write that fails half-way (a value that JSON cannot hold, a rename that does not happen: a kill or a full
    disk) leaves the previous complete summary.json and no temporary file."""
    rundir.write_summary(tmp_path, {"status": "interrupted", "resume": "last.ckpt"})
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(TypeError):
        rundir.write_summary(tmp_path, {"status": "finished", "metrics": {"x": object()}})

    def no_rename(source: str, target: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        rundir.mark_requeued(tmp_path, rundir.read_summary(tmp_path) or {}, True)
    assert (tmp_path / "summary.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_checkpoint_is_replaced_whole(tmp_path, monkeypatch):
    path = rundir.last_checkpoint(tmp_path)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, path)
    monkeypatch.setattr(os, "replace", lambda source, target: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 4}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_full_disk_is_a_user_error_naming_the_run_dir(tmp_path):
    full = rundir.disk_error(tmp_path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert isinstance(full, UserError) and str(full).startswith(f"run_dir={tmp_path}: No space left on device; ")
    assert rundir.disk_error(tmp_path, PermissionError(errno.EACCES, "Permission denied")) is None


def test_config_and_summary_round_trip(tmp_path):
    run_dir = tmp_path / "run"
    assert rundir.read_config(run_dir) == {} and rundir.read_summary(run_dir) is None
    assert rundir.run_status(run_dir) == "missing"
    rundir.write_config(run_dir, "seed: 3\ndata:\n  n: 64\n")
    rundir.write_summary(run_dir, {"status": "interrupted", "signal": "SIGUSR1"})
    rundir.mark_requeued(run_dir, rundir.read_summary(run_dir) or {}, True)
    assert rundir.read_config(run_dir) == {"seed": 3, "data": {"n": 64}}
    assert rundir.read_summary(run_dir) == {"status": "interrupted", "signal": "SIGUSR1", "requeued": True}
    assert rundir.run_status(run_dir) == "interrupted"
