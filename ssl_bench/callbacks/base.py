"""The base of ssl-bench's metric callbacks: Lightning's hook names and arguments, plus a per-optimizer-step hook.

A callback is a plain class (no Lightning import), registered by name with its ``Config``; the runner wraps each in
a Lightning callback (:class:`ssl_bench.train.lightning_module.CallbackAdapter`) that forwards the hooks below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ssl_bench.batch import Step
from ssl_bench.config import CallbackConfig, check_positive


@dataclass
class CadenceConfig(CallbackConfig):
    """The config of a callback with a cadence of its own: ``every_n_epochs`` (null: the run's
    ``trainer.metrics_every_n_epochs``)."""

    every_n_epochs: Optional[int] = None

    def validate(self, prefix: str) -> None:
        if self.every_n_epochs is not None:
            check_positive(f"{prefix}.every_n_epochs", self.every_n_epochs)


class Callback:
    """Override the hooks you need. ``trainer`` is the Lightning trainer; ``module`` the
    :class:`ssl_bench.train.lightning_module.SSLModule` (``module.method`` the method, ``module.method.encoder`` its encoder);
    ``trainer.datamodule`` the datamodule with its ground truth. ``every_n_epochs`` is
    ``trainer.metrics_every_n_epochs``; :meth:`due` says whether an epoch-end evaluation is due."""

    Config = CallbackConfig

    def __init__(self, config: CallbackConfig, every_n_epochs: int = 1) -> None:
        self.config, self.every_n_epochs = config, every_n_epochs

    @classmethod
    def from_config(cls, config: CallbackConfig, every_n_epochs: int) -> Callback:
        """The callback evaluated every ``every_n_epochs`` epochs, or at its own :class:`CadenceConfig` cadence."""
        return cls(config, getattr(config, "every_n_epochs", None) or every_n_epochs)

    @staticmethod
    def wandb_runs(trainer: Any) -> list[Any]:
        """The W&B runs among ``trainer.loggers`` (Lightning's ``WandbLogger`` and its subclasses, recognised by
        name so that callbacks need not import Lightning), for what only W&B can show (images, plots)."""
        return [logger.experiment for logger in trainer.loggers
                if any(kind.__name__ == "WandbLogger" for kind in type(logger).__mro__)]

    def due(self, trainer: Any) -> bool:
        """Whether the epoch that just ended is a multiple of ``every_n_epochs`` or the last one."""
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        """Before training; check here what the callback reads."""

    def on_train_start(self, trainer: Any, module: Any) -> None:
        """When training starts (also after a resume)."""

    def on_optimizer_step(self, trainer: Any, module: Any, step: Step) -> None:
        """After every optimizer step, called by the update loop with the step's index and loss."""

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        """After every training epoch, before the module logs its epoch scalars."""

    def on_train_end(self, trainer: Any, module: Any) -> None:
        """After the last epoch, with the model still on its device."""

    def state_dict(self) -> dict[str, Any]:
        """What the callback keeps across a resume (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when a run resumes."""
