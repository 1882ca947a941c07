"""One way through: config -> datamodule + method + callbacks -> Lightning Trainer -> loggers and run directory."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ssl_bench.config import ConfigError, RunConfig, to_yaml
from ssl_bench.rundir import (
    CHECKPOINTS,
    disk_error,
    json_value,
    last_checkpoint,
    truncate_histories,
    write_config,
)
from ssl_bench.train.atomic_checkpoint import AtomicCheckpointIO
from ssl_bench.train.build import (  # noqa: F401  (build_data, build_module: re-exported)
    build_data,
    build_module,
    build_run,
    check_environment,
    checkpoint_step,
    resume_checkpoint,
)
from ssl_bench.train.lightning_module import DataModuleAdapter, Diverged
from ssl_bench.train.progress import progress_bar
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


def slurm_plugins() -> list[Any]:
    """Under ``srun``, Lightning's SLURM environment (ranks, world size and master address from SLURM) without its
    auto-requeue: SIGUSR1 is handled by :class:`StopAtEpochEnd`, whose checkpoint resumes exactly, and the requeue
    is the job's (``ssl-bench sweep-task``), after the run has written its summary."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def fit(cfg: RunConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any] | None:
    """Train one run; write ``config.yaml``, ``metrics.jsonl``, ``summary.json`` (and W&B files) to its run dir.

    Everything that can be checked is checked before anything is written. The summary's ``status`` says how the run
    ended: ``finished``; ``diverged`` (a non-finite loss stopped it; ``diverged`` holds the epoch and step);
    ``interrupted`` (SIGINT or SIGTERM at once, SIGUSR1 at the end of an epoch with a checkpoint; ``signal``, and
    ``resume``, the checkpoint to continue from or None); or
    ``failed`` (any other error, which is raised again). Returns the summary, or None in DDP processes other than
    global rank 0 (which writes it)."""
    t = cfg.trainer
    precision = check_environment(cfg)
    run_dir = resolve_run_dir(cfg)
    resume = resume_checkpoint(cfg)
    torch.set_num_threads(t.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    noise = ("does not have many workers|treespec|Total length of `list` across ranks"
             "|`srun` command is available")  # on a SLURM login node: a run there need not be a SLURM job
    warnings.filterwarnings("ignore", message=f".*({noise}).*")
    run = build_run(cfg)
    data, module = run.data, run.module
    if t.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if t.compile:
        module.method.encoder.compile()
    resume_step = None if resume is None else checkpoint_step(resume, module)
    start_run_dir(cfg, run_dir, resume_step)
    loggers = run_loggers(cfg, run_dir, resuming=resume is not None)
    checkpoints = run_dir / CHECKPOINTS
    stopper = StopAtEpochEnd(last_checkpoint(run_dir))  # first, so that it stops before other on_train_end work
    callbacks: list[L.Callback] = [stopper, *(extra_callbacks or []), *run.callbacks]
    if t.progress != "none":
        callbacks.append(progress_bar(t.progress, cfg.sweep.metrics))
    if t.checkpoint_every_n_epochs:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True,
                                                             every_n_epochs=t.checkpoint_every_n_epochs,
                                                             enable_version_counter=False))
    unused = t.strategy != "auto" and module.method.find_unused_parameters
    strategy = f"{t.strategy}_find_unused_parameters_true" if unused else t.strategy
    trainer = L.Trainer(max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                        strategy=strategy, sync_batchnorm=t.sync_batchnorm, precision=precision,
                        use_distributed_sampler=False, check_val_every_n_epoch=t.val_every_n_epochs,
                        logger=loggers, callbacks=callbacks,
                        enable_checkpointing=bool(t.checkpoint_every_n_epochs),
                        enable_progress_bar=t.progress != "none", enable_model_summary=False,
                        deterministic=t.deterministic, log_every_n_steps=1, num_sanity_val_steps=0,
                        default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO(), *slurm_plugins()])
    status, ending = "failed", {}
    try:
        with stop_on_signals(stopper.request):
            trainer.fit(module, datamodule=DataModuleAdapter(data), ckpt_path=resume, weights_only=True)
        status = "finished"
    except Diverged as err:
        status, ending = "diverged", {"diverged": {"epoch": err.epoch, "step": err.step, "loss": json_value(err.loss)}}
    except Interrupted as err:
        last = last_checkpoint(run_dir)
        status, ending = "interrupted", {"signal": err.signal, "resume": str(last) if last.is_file() else None}
    except OSError as err:  # a full disk is one line; any other error is raised as it is
        raise disk_error(run_dir, err) or err from None
    finally:
        # the epochs trained: Lightning counts an epoch processed before its end-of-epoch records are written
        summary = end_run(cfg, run_dir, loggers, status, trainer.fit_loop.epoch_progress.current.processed, ending)
    return summary


def start_run_dir(cfg: RunConfig, run_dir: Path, resume_step: int | None = None) -> None:
    """Create ``run_dir`` with the run's ``config.yaml`` and its histories up to ``resume_step`` (none: a fresh run);
    a one-line :class:`ConfigError` when it cannot be written."""
    try:
        write_config(run_dir, to_yaml(cfg))
        truncate_histories(run_dir, resume_step)
    except OSError as err:
        raise disk_error(run_dir, err) or ConfigError(f"run_dir={run_dir} cannot be written ({err.strerror}); choose "
                                                      "a directory you can write to") from None


def run_loggers(cfg: RunConfig, run_dir: Path, resuming: bool = False, shared_process: bool = False) -> list[Any]:
    """The run's loggers: its :class:`RunRecorder` first, then W&B with ``logger.backend=wandb`` (with
    ``shared_process``, a W&B run beside the other runs of this process instead of the process's one run)."""
    if cfg.logger.backend != "wandb":
        return [RunRecorder(run_dir)]
    return [RunRecorder(run_dir), make_wandb_logger(cfg, run_dir, resuming=resuming, shared_process=shared_process)]


def end_run(cfg: RunConfig, run_dir: Path, loggers: list[Any], status: str, epochs: int,
            ending: dict[str, Any]) -> dict[str, Any]:
    """Write the run's ``summary.json`` through its recorder (``loggers[0]``) and close its other loggers: a W&B
    run ends with exit code 0 when it finished, else 1, and is marked preempted when SIGUSR1 stopped it (the
    resumed run continues it). Returns the summary. A summary that cannot be written (a full disk) is left out:
    a failed run raises its own error, any other is a one-line error."""
    recorder, *others = loggers
    summary, unwritten = {}, None
    try:
        summary = recorder.write_summary(status, epochs=epochs, run_dir=str(run_dir), experiment=cfg.experiment,
                                         group=cfg.resolved_group, seed=cfg.seed, **ending)
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
        raise disk_error(run_dir, unwritten) or unwritten from None
    return summary
