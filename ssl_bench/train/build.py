"""The one build step of a run, shared by ``fit``, ensembles and ``evaluate``: the config's parts, built and checked
before anything is written (no run directory, logger or progress bar exists yet when a check fails)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from datamodules.base import DataModule
from ssl_bench.callbacks.base import Callback
from ssl_bench.config import ConfigError, RunConfig
from ssl_bench.methods.base import Method
from ssl_bench.registry import lookup
from ssl_bench.rundir import last_checkpoint
from ssl_bench.train.checkpoint import read_checkpoint
from ssl_bench.train.lightning_module import CallbackAdapter, SSLModule


def build_data(cfg: RunConfig) -> DataModule:
    """The datamodule registered as ``data.name``, built from its config."""
    return lookup("data", cfg.data.name).from_config(cfg.data, seed=cfg.seed)


def build_method(cfg: RunConfig, data: DataModule) -> Method:
    """The method registered as ``method.name`` over encoders registered as ``encoder.name``, each drawn
    independently from one generator seeded by ``seed``."""
    encoder = lookup("encoder", cfg.encoder.name)
    generator = torch.Generator().manual_seed(cfg.seed)
    return lookup("method", cfg.method.name).from_config(
        cfg.method, lambda: encoder.from_config(cfg.encoder, data, generator), cfg.encoder.output_dim)


def build_module(cfg: RunConfig, data: DataModule) -> SSLModule:
    """:func:`build_method` trained by :class:`SSLModule`, with the online probe when the training batches carry
    labels."""
    return SSLModule(build_method(cfg, data), cfg.optim,
                     num_classes=data.num_classes if data.labelled_batches else None,
                     batch_size=cfg.data.batch_size, log_every_n_epochs=cfg.trainer.log_every_n_epochs)


def build_callbacks(cfg: RunConfig) -> list[CallbackAdapter]:
    """Every callback under ``callbacks``, evaluated every ``trainer.metrics_every_n_epochs`` epochs."""
    every = cfg.trainer.metrics_every_n_epochs
    return [CallbackAdapter(name, lookup("callback", name).from_config(config, every))
            for name, config in cfg.callbacks.items()]


def preflight(cfg: RunConfig, data: DataModule, module: SSLModule, callbacks: list[Callback]) -> None:
    """Raise a one-line :class:`ConfigError` for a run that its built parts cannot train: an encoder without a
    trainable parameter, or a setting a callback's :meth:`~ssl_bench.callbacks.base.Callback.check` refuses."""
    if not any(parameter.requires_grad for parameter in module.method.encoder.parameters()):
        raise ConfigError(f"encoder.name={cfg.encoder.name} has nothing to train; evaluate it with `ssl-bench "
                          "evaluate`, or fit a trainable encoder, e.g. encoder=mlp")
    for callback in callbacks:
        callback.check(data, module.method, module.optim)


@dataclass
class BuiltRun:
    """A run's parts, built and checked: its datamodule, module and metric callbacks."""

    data: DataModule
    module: SSLModule
    callbacks: list[CallbackAdapter]


def build_run(cfg: RunConfig) -> BuiltRun:
    """Seed every generator with ``seed``, then build the datamodule (and check that its data loads), the module and
    the callbacks, and run :func:`preflight` on them; nothing is written."""
    L.seed_everything(cfg.seed, verbose=False)
    data = build_data(cfg)
    data.check()
    module = build_module(cfg, data)
    callbacks = build_callbacks(cfg)
    preflight(cfg, data, module, [adapter.callback for adapter in callbacks])
    return BuiltRun(data, module, callbacks)


def on_gpu(cfg: RunConfig) -> bool:
    """Whether the run trains on a GPU: ``trainer.accelerator=gpu``, or ``auto`` with a CUDA GPU visible."""
    accelerator = cfg.trainer.accelerator
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def check_environment(cfg: RunConfig) -> str:
    """The precision to train in; a one-line :class:`ConfigError` for settings this machine cannot run."""
    t = cfg.trainer
    if t.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible here; use trainer.accelerator=auto "
                          "(a GPU when there is one) or trainer.accelerator=cpu")
    gpu = on_gpu(cfg)
    precision = t.precision if t.precision != "auto" else ("16-mixed" if gpu else "32-true")
    if precision == "16-mixed" and not gpu:
        raise ConfigError("trainer.precision=16-mixed needs a GPU (on a CPU Lightning would train in bf16-mixed); use "
                          "trainer.precision=32-true, bf16-mixed or auto")
    if t.sync_batchnorm and not gpu and t.devices * t.num_nodes > 1:
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no CPU version); set "
                          "trainer.sync_batchnorm=false or trainer.accelerator=gpu")
    return precision


def resume_checkpoint(cfg: RunConfig) -> Path | None:
    """The checkpoint ``trainer.resume`` names: a path, or with ``auto`` the ``checkpoints/last.ckpt`` of ``run_dir``
    when there is one (None: start from scratch)."""
    resume = cfg.trainer.resume
    if resume != "auto":
        return None if resume is None else Path(resume)
    if not cfg.run_dir:
        raise ConfigError("trainer.resume=auto needs run_dir=PATH, the run directory to continue")
    last = last_checkpoint(Path(cfg.run_dir))
    return last if last.is_file() else None


def checkpoint_step(path: Path, module: SSLModule) -> int:
    """The global step of the checkpoint at ``path``; a one-line :class:`ConfigError` when it is not a readable
    checkpoint of this model."""
    checkpoint = read_checkpoint(path, module.state_dict(), "resume with the config.yaml of the run that wrote it")
    return int(checkpoint["global_step"])
