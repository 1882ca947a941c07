"""One way through: config -> datamodule + method + callbacks -> Lightning Trainer -> loggers and run directory."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.base import DataModule
from ssl_bench.config import ConfigError, RunConfig, to_yaml
from ssl_bench.module import CallbackAdapter, DataModuleAdapter, SSLModule
from ssl_bench.progress import EpochProgressBar, StepProgressBar
from ssl_bench.recorder import RunRecorder
from ssl_bench.registry import lookup
from ssl_bench.wandb_logging import make_wandb_logger


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


def fit(cfg: RunConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any] | None:
    """Train one run; write ``config.yaml``, ``metrics.jsonl``, ``summary.json`` (and W&B files) to its run dir.

    Returns the summary, or None in DDP processes other than global rank 0 (which writes it)."""
    t = cfg.trainer
    on_gpu = t.accelerator == "gpu" or (t.accelerator == "auto" and torch.cuda.is_available())
    precision = t.precision if t.precision != "auto" else ("16-mixed" if on_gpu else "32-true")
    if t.sync_batchnorm and not on_gpu and t.devices * t.num_nodes > 1:
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no CPU version); set "
                          "trainer.sync_batchnorm=false or trainer.accelerator=gpu")
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    torch.set_num_threads(t.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    noise = "does not have many workers|LightningModule.log|_DataFetcher|treespec|Total length of `list` across ranks"
    warnings.filterwarnings("ignore", message=f".*({noise}).*")
    L.seed_everything(cfg.seed, verbose=False)

    data = build_data(cfg)
    module = build_module(cfg, data)
    recorder = RunRecorder(run_dir)
    loggers: list[Any] = [recorder]
    if cfg.logger.backend == "wandb":
        loggers.append(make_wandb_logger(cfg, run_dir))
    callbacks: list[L.Callback] = [*(extra_callbacks or []), *build_callbacks(cfg)]
    if t.progress != "none":
        callbacks.append(EpochProgressBar() if t.progress == "epochs" else StepProgressBar())
    if t.checkpoint_every_n_epochs:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                                             every_n_epochs=t.checkpoint_every_n_epochs))
    unused = t.strategy != "auto" and module.method.find_unused_parameters
    strategy = f"{t.strategy}_find_unused_parameters_true" if unused else t.strategy
    trainer = L.Trainer(max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                        strategy=strategy, sync_batchnorm=t.sync_batchnorm, precision=precision,
                        use_distributed_sampler=False, check_val_every_n_epoch=t.val_every_n_epochs,
                        logger=loggers, callbacks=callbacks,
                        enable_checkpointing=bool(t.checkpoint_every_n_epochs),
                        enable_progress_bar=t.progress != "none", enable_model_summary=False,
                        deterministic=t.deterministic, log_every_n_steps=1, num_sanity_val_steps=0,
                        default_root_dir=str(run_dir))
    status = "failed"
    try:
        trainer.fit(module, datamodule=DataModuleAdapter(data), ckpt_path=t.resume)
        status = "interrupted" if trainer.interrupted else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = recorder.write_summary(status, epochs=trainer.current_epoch, run_dir=str(run_dir),
                                         experiment=cfg.experiment, group=cfg.resolved_group, seed=cfg.seed)
        for logger in loggers[1:]:
            logger.finalize(status)
        if cfg.logger.backend == "wandb":
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=0 if status == "finished" else 1)
    return summary
