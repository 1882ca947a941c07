"""The run directory: every file a run leaves, who writes it, and the only functions that write or read it.

::

    RUN_DIR/
      config.yaml            the resolved config          write_config (train.fit), read_config (study.sweep, report)
      summary.json           how the run ended            write_summary (train.recorder at the end of every run,
                                                          study.slurm's requeue marks: mark_requeued), read_summary,
                                                          run_status (study.sweep, slurm, table, report)
      checkpoints/last.ckpt  the checkpoint to resume     last_checkpoint; Lightning writes it through
                                                          train.atomic_checkpoint.AtomicCheckpointIO (replace_file)
      wandb/id.txt           the W&B run id               wandb_id_file (train.wandb_logging)
      *.jsonl                the histories of HISTORIES   append_records (the callbacks), HistoryWriter
                                                          (train.recorder), read_records (study.plots, report),
                                                          truncate_histories (train.fit, as a run starts or resumes)

A history holds one JSON record per line, each with ``step``: the number of optimizer steps taken when it was written
(Lightning's ``trainer.global_step``, the ``global_step`` of a checkpoint). A run resumed from a checkpoint of step S
keeps every history's records up to S and writes the rest again. A kill while a line is written leaves it cut off:
every read drops such a last line, with one warning naming the file. ``summary.json``, ``config.yaml``, the
checkpoints and a sweep's ``sweep.json`` are replaced whole (:func:`replace_file`), so a kill while one is written
leaves the previous complete file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ssl_bench.errors import UserError

CONFIG = "config.yaml"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"

HISTORIES = {
    "metrics.jsonl": "every scalar the run logs at an epoch's end (train.recorder.RunRecorder)",
    "spectra.jsonl": "singular values of the representations (callbacks.spectrum)",
    "r2.jsonl": "R^2 of the latents from each layer (callbacks.r2_probe)",
    "alignment.jsonl": "alignment of features with the ground truth (callbacks.feature_alignment)",
    "weight_alignment.jsonl": "|V2^T U1| of two stacked linear layers and their spectra (callbacks.weight_alignment)",
    "predictor.jsonl": "the linear prediction head, per step or epoch (callbacks.predictor_dynamics)",
    "regimes.jsonl": "the head's eigenvalue regimes (callbacks.predictor_dynamics with regimes)",
    "dynamics.jsonl": "output dynamics against theory (callbacks.output_dynamics)",
    "gradient_spectra.jsonl": "singular values of the loss's gradient (callbacks.gradient_spectrum)",
}
"""The histories a run directory may hold, with what each records (and who writes it)."""

ENDED = ("finished", "diverged")
"""How a run that is kept when the sweep runs again ended."""

STATUS_ORDER = ("finished", "diverged", "failed", "interrupted", "missing")
"""The order of the statuses in messages and in the table's ``runs`` cells."""


def as_number(value: Any) -> float | None:
    """A logged value as a float ("nan", "inf" and "-inf" included), None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def json_value(value: float) -> float | str:
    """``value``, or its name ("nan", "inf", "-inf") where JSON has no number for it."""
    return value if math.isfinite(value) else str(value)


# ------------------------------------------------------------------------------------------ whole-file replacement


@contextmanager
def replace_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A new file (``mode`` ``"w"`` for text, ``"wb"`` for bytes) that replaces ``path`` once the block ends without
    an error: written to a temporary file in the same directory, flushed and fsynced, then renamed over ``path``
    (``os.replace``, atomic). Any error (a kill, a full disk, a value that fails to serialise) leaves ``path`` as it
    was and no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the permissions of a plain open
    try:
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (:func:`replace_file`)."""
    with replace_file(path) as file:
        file.write(text)


def replace_json(path: Path, value: Any) -> None:
    """Replace ``path`` by ``value`` as indented JSON (:func:`replace_file`)."""
    replace_text(path, json.dumps(value, indent=2) + "\n")


def disk_error(run_dir: Path, err: OSError) -> UserError | None:
    """The one-line error for a run directory whose disk is full (or over quota), else None."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return UserError(f"run_dir={run_dir}: {os.strerror(err.errno)}; free space on its disk or choose another run_dir")


# ------------------------------------------------------------------------------------- config, summary, checkpoint


def write_config(run_dir: Path, text: str) -> None:
    """Write the run's resolved config (YAML ``text``) as ``config.yaml``, creating ``run_dir``."""
    replace_text(run_dir / CONFIG, text)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as plain dicts ({} when it has none or a broken one)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json``: ``status`` (finished, failed, interrupted or diverged) and how the run got there."""
    replace_json(run_dir / SUMMARY, summary)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``, or None when it has none (not started, still running, or killed) or a broken one."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def mark_requeued(run_dir: Path, summary: dict[str, Any], requeued: bool) -> None:
    """Record in the interrupted run's summary whether its SLURM task was requeued (``requeued``); the status stays
    ``interrupted`` until the requeued task resumes the run."""
    write_summary(run_dir, {**summary, "requeued": requeued})


def run_status(run_dir: Path) -> str:
    """How the run in ``run_dir`` ended: its summary's status, or ``missing`` without a summary."""
    summary = read_summary(run_dir)
    return "missing" if summary is None else str(summary.get("status", "failed"))


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run resumes from: ``checkpoints/last.ckpt``."""
    return run_dir / CHECKPOINTS / "last.ckpt"


def wandb_id_file(run_dir: Path) -> Path:
    """The file holding the run's W&B run id: ``wandb/id.txt``."""
    return run_dir / "wandb" / "id.txt"


def prepare_run_dir(run_dir: Path, fresh: bool = False, restarted: bool = False) -> bool:
    """Make ``run_dir`` ready for its run and say whether the run resumes from its ``last.ckpt``: it does when it
    was interrupted with a checkpoint to continue from, or, for a job that the scheduler ``restarted`` (requeued
    after a node failure, say), when it left a checkpoint and no summary. Otherwise (or when ``fresh``) a failed or
    broken run starts again from scratch in an emptied directory."""
    summary = None if fresh else read_summary(run_dir)
    resume = summary is not None and summary.get("status") == "interrupted" and bool(summary.get("resume"))
    resume = resume or (not fresh and restarted and summary is None and last_checkpoint(run_dir).is_file())
    if not resume and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return resume


# ------------------------------------------------------------------------------------------------------ histories


def history_path(run_dir: str | Path, name: str) -> Path:
    """The history ``name`` of ``run_dir``; a ValueError for a name that :data:`HISTORIES` does not register."""
    if name not in HISTORIES:
        raise ValueError(f"{name} is not a registered history of a run directory (one of {', '.join(HISTORIES)})")
    return Path(run_dir) / name


class HistoryWriter:
    """Appends records to the history ``name`` of ``run_dir`` (a ValueError for a name that :data:`HISTORIES` does
    not register), keeping the file open from the first append to :meth:`close`: a run that logs each of thousands
    of short epochs would otherwise spend more time opening it than training."""

    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.path = history_path(run_dir, name)
        self._file: IO[str] | None = None

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append ``records``, one JSON line each, flushed; each must carry ``step``, the number of optimizer steps
        taken (a ValueError otherwise)."""
        if any(isinstance(r.get("step"), bool) or not isinstance(r.get("step"), int) for r in records):
            raise ValueError(f"every record of {self.path.name} needs an integer step (optimizer steps taken)")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close)
        self._file.write("".join(json.dumps(record) + "\n" for record in records))
        self._file.flush()

    def close(self) -> None:
        """Close the file. Every append was flushed, so an error here (a full disk) only repeats the error that
        an append already raised; it is not raised again."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


def append_records(run_dir: str | Path, name: str, records: list[dict[str, Any]]) -> None:
    """Append ``records`` to the history ``name`` of ``run_dir`` (:meth:`HistoryWriter.append`)."""
    writer = HistoryWriter(run_dir, name)
    try:
        writer.append(records)
    finally:
        writer.close()


_warned_cut: set[Path] = set()
"""The histories whose cut-off last line a warning has named (one warning per file and process)."""


def read_records(run_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """The records of the history ``name`` of ``run_dir`` ([] when there is none). A last line that is not a JSON
    object (cut off by a kill while it was written) is dropped, with one warning naming the file; any other such line
    is a one-line :class:`UserError`."""
    path = history_path(run_dir, name)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            if path.resolve() not in _warned_cut:
                _warned_cut.add(path.resolve())
                warnings.warn(f"{path}: its last line is cut off (a kill while it was written); it is left out",
                              stacklevel=2)
        else:
            raise UserError(f"{path}:{number} is not a JSON record; remove the line or the run directory")
    return records


def truncate_histories(run_dir: Path, last_step: int | None) -> None:
    """Keep the records of every registered history of ``run_dir`` up to ``last_step`` optimizer steps (all of them
    go when it is None), dropping a cut-off last line: a run resumed from a checkpoint of step S writes again
    everything after S, so no record is doubled or lost. Each history is replaced whole (:func:`replace_file`)."""
    for name in HISTORIES:
        path = run_dir / name
        if not path.is_file():
            continue
        kept = [] if last_step is None else [r for r in read_records(run_dir, name) if r.get("step", 0) <= last_step]
        replace_text(path, "".join(json.dumps(record) + "\n" for record in kept))
