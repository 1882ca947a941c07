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

from datamodules.base import DataModule
from ssl_bench.config import ConfigError, RunConfig, to_yaml
from ssl_bench.registry import lookup
from ssl_bench.rundir import json_value, truncate_histories
from ssl_bench.train.checkpoint import read_checkpoint
from ssl_bench.train.lightning_module import (
    CallbackAdapter,
    DataModuleAdapter,
    Diverged,
    SSLModule,
)
from ssl_bench.train.progress import progress_bar
from ssl_bench.train.recorder import RunRecorder
from ssl_bench.train.wandb_logging import make_wandb_logger


def build_data(cfg: RunConfig) -> DataModule:
    """The datamodule registered as ``data.name``, built from its config."""
    return lookup("data", cfg.data.name).from_config(cfg.data, seed=cfg.seed)


def build_module(cfg: RunConfig, data: DataModule) -> SSLModule:
    """The method registered as ``method.name`` over encoders registered as ``encoder.name`` (each drawn
    independently from one generator seeded by ``seed``), trained by :class:`SSLModule` with the online probe when
    the training batches carry labels."""
    encoder = lookup("encoder", cfg.encoder.name)
    generator = torch.Generator().manual_seed(cfg.seed)
    method = lookup("method", cfg.method.name).from_config(
        cfg.method, lambda: encoder.from_config(cfg.encoder, data, generator), cfg.encoder.output_dim)
    return SSLModule(method, cfg.optim, num_classes=data.num_classes if data.labelled_batches else None,
                     batch_size=cfg.data.batch_size, log_every_n_epochs=cfg.trainer.log_every_n_epochs)


def build_callbacks(cfg: RunConfig) -> list[CallbackAdapter]:
    """Every callback under ``callbacks``, evaluated every ``trainer.metrics_every_n_epochs`` epochs."""
    every = cfg.trainer.metrics_every_n_epochs
    return [CallbackAdapter(name, lookup("callback", name).from_config(config, every))
            for name, config in cfg.callbacks.items()]


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


def check_environment(cfg: RunConfig) -> str:
    """The precision to train in; a one-line :class:`ConfigError` for settings this machine cannot run."""
    t = cfg.trainer
    has_gpu = torch.cuda.is_available()
    if t.accelerator == "gpu" and not has_gpu:
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible here; use trainer.accelerator=auto "
                          "(a GPU when there is one) or trainer.accelerator=cpu")
    on_gpu = t.accelerator == "gpu" or (t.accelerator == "auto" and has_gpu)
    precision = t.precision if t.precision != "auto" else ("16-mixed" if on_gpu else "32-true")
    if precision == "16-mixed" and not on_gpu:
        raise ConfigError("trainer.precision=16-mixed needs a GPU (on a CPU Lightning would train in bf16-mixed); use "
                          "trainer.precision=32-true, bf16-mixed or auto")
    if t.sync_batchnorm and not on_gpu and t.devices * t.num_nodes > 1:
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no CPU version); set "
                          "trainer.sync_batchnorm=false or trainer.accelerator=gpu")
    return precision


def resume_checkpoint(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume`` names: a path, or with ``auto`` the run directory's ``last.ckpt`` when
    there is one (None: start from scratch)."""
    resume = cfg.trainer.resume
    if resume != "auto":
        return None if resume is None else Path(resume)
    if not cfg.run_dir:
        raise ConfigError("trainer.resume=auto needs run_dir=PATH, the run directory to continue")
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def checkpoint_step(path: Path, module: SSLModule) -> int:
    """The global step of the checkpoint at ``path``; a one-line :class:`ConfigError` when it is not a readable
    checkpoint of this model."""
    checkpoint = read_checkpoint(path, module.state_dict(), "resume with the config.yaml of the run that wrote it")
    return int(checkpoint["global_step"])


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
    resume = resume_checkpoint(cfg, run_dir)
    torch.set_num_threads(t.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    noise = ("does not have many workers|LightningModule.log|_DataFetcher|treespec|Total length of `list` across ranks"
             "|`srun` command is available")  # on a SLURM login node: a run there need not be a SLURM job
    warnings.filterwarnings("ignore", message=f".*({noise}).*")
    L.seed_everything(cfg.seed, verbose=False)
    data = build_data(cfg)
    data.check()
    module = build_module(cfg, data)
    if t.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if t.compile:
        module.method.encoder.compile()
    resume_step = None if resume is None else checkpoint_step(resume, module)
    start_run_dir(cfg, run_dir, resume_step)
    loggers = run_loggers(cfg, run_dir, resuming=resume is not None)
    checkpoints = run_dir / "checkpoints"
    stopper = StopAtEpochEnd(checkpoints / "last.ckpt")  # first, so that it stops before other on_train_end work
    callbacks: list[L.Callback] = [stopper, *(extra_callbacks or []), *build_callbacks(cfg)]
    if t.progress != "none":
        callbacks.append(progress_bar(t.progress))
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
                        default_root_dir=str(run_dir), plugins=slurm_plugins())
    status, ending = "failed", {}
    try:
        with stop_on_signals(stopper.request):
            trainer.fit(module, datamodule=DataModuleAdapter(data), ckpt_path=resume)
        status = "finished"
    except Diverged as err:
        status, ending = "diverged", {"diverged": {"epoch": err.epoch, "step": err.step, "loss": json_value(err.loss)}}
    except Interrupted as err:
        last = checkpoints / "last.ckpt"
        status, ending = "interrupted", {"signal": err.signal, "resume": str(last) if last.is_file() else None}
    finally:
        # the epochs trained: Lightning counts an epoch processed before its end-of-epoch records are written
        summary = end_run(cfg, run_dir, loggers, status, trainer.fit_loop.epoch_progress.current.processed, ending)
    return summary


def start_run_dir(cfg: RunConfig, run_dir: Path, resume_step: int | None = None) -> None:
    """Create ``run_dir`` with the run's ``config.yaml`` and its histories up to ``resume_step`` (none: a fresh run);
    a one-line :class:`ConfigError` when it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"run_dir={run_dir} cannot be written ({err.strerror}); choose a directory you can write "
                          "to") from None
    truncate_histories(run_dir, resume_step)


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
    resumed run continues it). Returns the summary."""
    recorder, *others = loggers
    summary = recorder.write_summary(status, epochs=epochs, run_dir=str(run_dir), experiment=cfg.experiment,
                                     group=cfg.resolved_group, seed=cfg.seed, **ending)
    for logger in others:
        logger.finalize(status)
        if getattr(logger, "_experiment", None) is None:  # a W&B run never started (e.g. in another DDP process)
            continue
        if ending.get("signal") == "SIGUSR1":
            logger.experiment.mark_preempting()
        logger.experiment.finish(exit_code=0 if status == "finished" else 1)
    return summary
