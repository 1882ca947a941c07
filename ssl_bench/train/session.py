"""A run's session: its run directory's start and end (:class:`RunSession`) and how signals end it
(:class:`Interrupted`, :class:`StopAtEpochEnd`, :func:`stop_on_signals`), shared by ``fit`` and the ensembles."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

from ssl_bench.config import ConfigError, RunConfig, to_yaml
from ssl_bench.rundir import (
    disk_error,
    json_value,
    last_checkpoint,
    truncate_histories,
    write_config,
)
from ssl_bench.train.lightning_module import Diverged
from ssl_bench.train.recorder import RunRecorder
from ssl_bench.train.wandb_logging import make_wandb_logger


def resolve_run_dir(cfg: RunConfig) -> Path:
    """``run_dir``, or ``runs/<experiment>/<time>-seed<seed>``; processes that Lightning's DDP launcher starts
    inherit the first process's directory through ``SSL_BENCH_RUN_DIR``."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    inherited = os.environ.get("SSL_BENCH_RUN_DIR")
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)
    run_dir = Path("runs") / cfg.experiment / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{cfg.seed}"
    os.environ["SSL_BENCH_RUN_DIR"] = str(run_dir)
    return run_dir


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during training: the run stops at once (status ``interrupted``); or SIGUSR1 did,
    and the run stopped at the end of an epoch with a checkpoint (see :class:`StopAtEpochEnd`). A
    ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.signal)


class StopAtEpochEnd(L.Callback):
    """SIGUSR1, the warning SLURM sends before a time limit or a preemption (``#SBATCH --signal=USR1@90``), stops
    the run at the end of the epoch it is in: that epoch is completed and logged as usual, then ``last.ckpt`` is
    written and the run ends as interrupted (signal ``SIGUSR1``). A run resumed from that checkpoint continues
    exactly as if it had never stopped, and its last epoch's ``on_train_end`` work (e.g. a linear readout) is not
    done early. Under DDP every process stops at the same epoch: the request is reduced across processes. A signal
    during the last epoch changes nothing: the run finishes."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.requested = False
        self.stopping = False

    def request(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) > 0
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False) and not last_epoch:
            self.stopping = trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopping:
            trainer.save_checkpoint(self.checkpoint)
            raise Interrupted(signal.SIGUSR1)


@contextmanager
def stop_on_signals(stop_at_epoch_end: Callable[[int, Any], None]) -> Iterator[None]:
    """While training, SIGINT and SIGTERM raise :class:`Interrupted`, after which further signals are ignored until
    the run directory is written; SIGUSR1 calls ``stop_at_epoch_end(signum, frame)`` (e.g.
    :meth:`StopAtEpochEnd.request`). Only the main thread can
    install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        for name in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(name, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {name: signal.signal(name, interrupt) for name in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, stop_at_epoch_end)
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)


class RunSession:
    """One run's life in its run directory, the same for a run of :func:`ssl_bench.train.fit.fit` and for each
    member of an ensemble: the start writes ``config.yaml``, cuts every history back to the checkpoint it resumes
    from (``resume_step``; None: a fresh run) and opens the loggers (the run directory's :class:`RunRecorder`
    first, then W&B with ``logger.backend=wandb``; with ``shared_process``, a W&B run beside the other runs of this
    process); :meth:`end` writes ``summary.json``, which says how the run ended, and closes the loggers.

    A run directory that cannot be written is a one-line :class:`ConfigError` (a full disk says so)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume_step: int | None = None, resuming: bool = False,
                 shared_process: bool = False) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        try:
            write_config(run_dir, to_yaml(cfg))
            truncate_histories(run_dir, resume_step)
        except OSError as err:
            raise disk_error(run_dir, err) or ConfigError(f"run_dir={run_dir} cannot be written ({err.strerror}); "
                                                          "choose a directory you can write to") from None
        self.loggers: list[Any] = [RunRecorder(run_dir)]
        if cfg.logger.backend == "wandb":
            self.loggers.append(make_wandb_logger(cfg, run_dir, resuming=resuming, shared_process=shared_process))

    def end(self, status: str, epochs: int, ending: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (``status``: finished, diverged, interrupted or failed; ``epochs`` completed; the
        ``ending``'s details) and close the other loggers: a W&B run ends with exit code 0 when it finished, else
        1, and is marked preempted when SIGUSR1 stopped it (the resumed run continues it). Returns the summary. A
        summary that cannot be written (a full disk) is left out: a failed run raises its own error, any other is a
        one-line error."""
        recorder, *others = self.loggers
        summary, unwritten = {}, None
        try:
            summary = recorder.write_summary(status, epochs=epochs, run_dir=str(self.run_dir),
                                             experiment=self.cfg.experiment, group=self.cfg.resolved_group,
                                             seed=self.cfg.seed, **ending)
        except OSError as err:
            unwritten = err
        for logger in others:
            logger.finalize(status)
            if not logger.started:  # a W&B run never started (e.g. in another DDP process)
                continue
            if ending.get("signal") == "SIGUSR1":
                logger.experiment.mark_preempting()
            logger.experiment.finish(exit_code=0 if status == "finished" else 1)
        if unwritten is not None and status != "failed":
            raise disk_error(self.run_dir, unwritten) or unwritten from None
        return summary


def ending_of(err: BaseException, run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """How an exception ends a run: ``diverged`` with the epoch, step and loss of :class:`Diverged`, ``interrupted``
    with the signal and the checkpoint to resume from (None without one); None for any other exception (the run
    ``failed``, and the exception is raised again)."""
    if isinstance(err, Diverged):
        return "diverged", {"diverged": {"epoch": err.epoch, "step": err.step, "loss": json_value(err.loss)}}
    if isinstance(err, Interrupted):
        last = last_checkpoint(run_dir)
        return "interrupted", {"signal": err.signal, "resume": str(last) if last.is_file() else None}
    return None
