"""The base of ssl-bench's metric callbacks: Lightning's hook names and arguments, plus a per-optimizer-step hook.

A callback is a plain class (no Lightning import), registered by name with its ``Config``; the runner wraps each in
a Lightning callback (:class:`ssl_bench.train.lightning_module.CallbackAdapter`) that forwards the hooks below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

import torch

from ssl_bench.batch import StepInfo
from ssl_bench.config import CallbackConfig, check_positive


@runtime_checkable
class StrategyContext(Protocol):
    """What callbacks and datamodules read of the trainer's strategy: the device this process trains on, and a
    barrier that waits for every process."""

    @property
    def root_device(self) -> torch.device: ...

    def barrier(self, name: str | None = None) -> None: ...


@runtime_checkable
class RunContext(Protocol):
    """What callbacks and datamodules may read of the trainer, and all they may read: Lightning's ``Trainer``
    implements it, and so does an ensemble member's view
    (:class:`ssl_bench.train.ensemble.MemberRunContext`).

    ``current_epoch`` counts from 0; ``global_step`` is the number of optimizer steps taken; ``default_root_dir``
    is the run directory; ``loggers`` the run's loggers (its recorder first, then W&B); ``datamodule`` the run's
    datamodule (ground truth included); ``global_rank``, ``world_size`` and ``is_global_zero`` the process's place
    among the run's processes."""

    @property
    def current_epoch(self) -> int: ...

    @property
    def max_epochs(self) -> int | None: ...

    @property
    def global_step(self) -> int: ...

    @property
    def loggers(self) -> list[Any]: ...

    @property
    def default_root_dir(self) -> str: ...

    @property
    def datamodule(self) -> Any: ...

    @property
    def global_rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    @property
    def strategy(self) -> StrategyContext: ...


@runtime_checkable
class ModuleContext(Protocol):
    """What callbacks may read of the module: the :class:`~ssl_bench.methods.base.Method` (``method``, its
    ``encoder`` and heads), the ``optim`` config, the ``device`` it trains on, and ``log``, which adds a scalar to
    the epoch's record. :class:`ssl_bench.train.lightning_module.SSLModule` implements it, and so does an ensemble
    member's view (:class:`ssl_bench.train.ensemble.MemberModuleContext`)."""

    @property
    def method(self) -> Any: ...

    @property
    def optim(self) -> Any: ...

    @property
    def device(self) -> torch.device: ...

    def log(self, name: str, value: Any, **options: Any) -> None: ...


@dataclass
class CadenceConfig(CallbackConfig):
    """The config of a callback with a cadence of its own: ``every_n_epochs`` (null: the run's
    ``trainer.metrics_every_n_epochs``)."""

    every_n_epochs: Optional[int] = None

    def validate(self, prefix: str) -> None:
        if self.every_n_epochs is not None:
            check_positive(f"{prefix}.every_n_epochs", self.every_n_epochs)


class Callback:
    """Override the hooks you need. ``trainer`` is a :class:`RunContext` (Lightning's trainer, or an ensemble
    member's view of one) and ``module`` a :class:`ModuleContext` (``module.method`` the method,
    ``module.method.encoder`` its encoder); read nothing else of them. ``trainer.datamodule`` is the datamodule with
    its ground truth. ``every_n_epochs`` is ``trainer.metrics_every_n_epochs``; :meth:`due` says whether an
    epoch-end evaluation is due."""

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig, every_n_epochs: int = 1) -> None:
        self.config, self.every_n_epochs = config, every_n_epochs

    @classmethod
    def from_config(cls, config: CallbackConfig, every_n_epochs: int) -> Callback:
        """The callback evaluated every ``every_n_epochs`` epochs, or at its own :class:`CadenceConfig` cadence."""
        return cls(config, getattr(config, "every_n_epochs", None) or every_n_epochs)

    @staticmethod
    def wandb_runs(trainer: RunContext) -> list[Any]:
        """The W&B runs among ``trainer.loggers`` (Lightning's ``WandbLogger`` and its subclasses, recognised by
        name so that callbacks need not import Lightning), for what only W&B can show (images, plots)."""
        return [logger.experiment for logger in trainer.loggers
                if any(kind.__name__ == "WandbLogger" for kind in type(logger).__mro__)]

    def due(self, trainer: RunContext) -> bool:
        """Whether the epoch that just ended is a multiple of ``every_n_epochs`` or the last one."""
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs

    def check(self, data: Any, method: Any, optim: Any) -> None:
        """Raise a one-line :class:`~ssl_bench.errors.ConfigError` for a run whose built parts this callback cannot
        evaluate (the datamodule, the :class:`~ssl_bench.methods.base.Method` and the ``optim`` config); called once
        the run is built, before anything is written or the datamodule is set up. By default: nothing to check."""

    def setup(self, trainer: RunContext, module: ModuleContext, stage: str) -> None:
        """Before training, once the datamodule is set up; prepare here what the callback reads."""

    def on_train_start(self, trainer: RunContext, module: ModuleContext) -> None:
        """When training starts (also after a resume)."""

    def on_optimizer_step(self, trainer: RunContext, module: ModuleContext, step: StepInfo) -> None:
        """After every optimizer step, called by the update loop with the step's index and loss."""

    def on_train_epoch_end(self, trainer: RunContext, module: ModuleContext) -> None:
        """After every training epoch, before the module logs its epoch scalars."""

    def on_train_end(self, trainer: RunContext, module: ModuleContext) -> None:
        """After the last epoch, with the model still on its device."""

    def state_dict(self) -> dict[str, Any]:
        """What the callback keeps across a resume (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when a run resumes."""
