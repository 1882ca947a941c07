"""One way through: config -> datamodule + method + callbacks -> Lightning Trainer -> loggers and run directory."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch

from ssl_bench.config import RunConfig
from ssl_bench.rundir import (
    CHECKPOINTS,
    disk_error,
    last_checkpoint,
)
from ssl_bench.train.atomic_checkpoint import AtomicCheckpointIO
from ssl_bench.train.build import (
    build_run,
    check_environment,
    checkpoint_step,
    resume_checkpoint,
)
from ssl_bench.train.lightning_module import DataModuleAdapter, Diverged
from ssl_bench.train.progress import progress_bar
from ssl_bench.train.session import (
    Interrupted,
    RunSession,
    StopAtEpochEnd,
    ending_of,
    resolve_run_dir,
    stop_on_signals,
)


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
    session = RunSession(cfg, run_dir, resume_step, resuming=resume is not None)
    trainer, stopper = build_trainer(cfg, session, [*(extra_callbacks or []), *run.callbacks], precision,
                                     module.method.find_unused_parameters)
    status, ending = "failed", {}
    try:
        with stop_on_signals(stopper.request):
            trainer.fit(module, datamodule=DataModuleAdapter(data), ckpt_path=resume, weights_only=True)
        status = "finished"
    except (Diverged, Interrupted) as err:
        status, ending = ending_of(err, run_dir)
    except OSError as err:  # a full disk is one line; any other error is raised as it is
        raise disk_error(run_dir, err) or err from None
    finally:
        # the epochs trained: Lightning counts an epoch processed before its end-of-epoch records are written
        summary = session.end(status, trainer.fit_loop.epoch_progress.current.processed, ending)
    return summary


def build_trainer(cfg: RunConfig, session: RunSession, callbacks: list[L.Callback], precision: str,
                  find_unused_parameters: bool) -> tuple[L.Trainer, StopAtEpochEnd]:
    """The Lightning Trainer of a run: the session's loggers; SIGUSR1's stop at the epoch's end first (so that it
    stops before other ``on_train_end`` work), then ``callbacks``, the progress bar and the periodic checkpoint;
    atomic checkpoint writes; SLURM's environment under ``srun``."""
    t = cfg.trainer
    stopper = StopAtEpochEnd(last_checkpoint(session.run_dir))
    extra: list[L.Callback] = []
    if t.progress != "none":
        extra.append(progress_bar(t.progress, cfg.sweep.metrics))
    if t.checkpoint_every_n_epochs:
        extra.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=session.run_dir / CHECKPOINTS, save_last=True,
                                                         every_n_epochs=t.checkpoint_every_n_epochs,
                                                         enable_version_counter=False))
    strategy = f"{t.strategy}_find_unused_parameters_true" if t.strategy != "auto" and find_unused_parameters \
        else t.strategy
    trainer = L.Trainer(max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                        strategy=strategy, sync_batchnorm=t.sync_batchnorm, precision=precision,
                        use_distributed_sampler=False, check_val_every_n_epoch=t.val_every_n_epochs,
                        logger=session.loggers, callbacks=[stopper, *callbacks, *extra],
                        enable_checkpointing=bool(t.checkpoint_every_n_epochs),
                        enable_progress_bar=t.progress != "none", enable_model_summary=False,
                        deterministic=t.deterministic, log_every_n_steps=1, num_sanity_val_steps=0,
                        default_root_dir=str(session.run_dir), plugins=[AtomicCheckpointIO(), *slurm_plugins()])
    return trainer, stopper


