"""Progress bars: one over the epochs, for runs of thousands of short epochs (synthetic data) and for output that is
not a terminal (log files), and one over each epoch's batches (images, in a terminal). Both show the loss and the
study's headline metric (:func:`postfix`); every other scalar is in the run's logs."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from tqdm.auto import tqdm

LOSS = "train/loss"
DEFAULT_HEADLINE = "maxcos/min"
"""The headline metric of a study whose ``sweep.metrics`` are none of the logged ones (when it is logged)."""


def postfix(metrics: Mapping[str, float], headlines: Sequence[str] = ()) -> dict[str, str]:
    """A bar's postfix from the logged ``metrics``: ``train/loss`` and the headline metric, the first of
    ``headlines`` (the run's ``sweep.metrics``) that is logged, else ``maxcos/min``; each present one to 4
    decimals."""
    headline = next((key for key in headlines if key in metrics), DEFAULT_HEADLINE)
    return {key: f"{float(metrics[key]):.4f}" for key in dict.fromkeys((LOSS, headline)) if key in metrics}


def logged_scalars(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
    """The latest value of every logged scalar: the epoch records' (the module's ``latest_scalars``) and the
    validation loop's (Lightning's ``logged_metrics``, e.g. ``readout/online_acc``)."""
    return {**trainer.logged_metrics, **pl_module.latest_scalars}


class EpochProgressBar(ProgressBar):
    """One bar for the whole fit, advanced per epoch, showing the latest :func:`postfix` of the logged scalars."""

    def __init__(self, headlines: Sequence[str] = ()) -> None:
        super().__init__()
        self.headlines = tuple(headlines)
        self._bar: tqdm | None = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            self._bar = tqdm(total=trainer.max_epochs, initial=trainer.current_epoch, desc="fit", unit="epoch",
                             dynamic_ncols=True, file=sys.stdout, mininterval=0.5)

    def _advance(self, trainer: L.Trainer, pl_module: L.LightningModule, draw: bool = True) -> None:
        """Count the finished epochs and show the scalars logged at the end of the last one; ``draw=False`` leaves
        the drawing to the bar's ``close``, so the final line is printed once."""
        if self._bar is not None and self._bar.n < trainer.current_epoch:
            self._bar.set_postfix(postfix(logged_scalars(trainer, pl_module), self.headlines), refresh=False)
            if draw:
                self._bar.update(trainer.current_epoch - self._bar.n)
            else:
                self._bar.n = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning calls the module's epoch-end hook after the callbacks', so the previous epoch's logs are
        complete only when the next one starts."""
        self._advance(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._advance(trainer, pl_module, draw=False)
            self._bar.close()
            self._bar = None


def progress_bar(kind: str, headlines: Sequence[str] = ()) -> ProgressBar:
    """The bar of ``trainer.progress``: ``epochs``, or ``steps`` in a terminal; in a log file, where every redraw of
    a batch bar would stay as a line, ``steps`` also gets the epoch bar. ``headlines``: the run's ``sweep.metrics``
    (see :func:`postfix`)."""
    return StepProgressBar(headlines) if kind == "steps" and sys.stdout.isatty() else EpochProgressBar(headlines)


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar over every epoch's batches (images), showing the latest :func:`postfix` of the logged
    scalars."""

    def __init__(self, headlines: Sequence[str] = ()) -> None:
        super().__init__()
        self.headlines = tuple(headlines)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        return postfix(logged_scalars(trainer, pl_module), self.headlines)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Show the scalars that the module logs at its last epoch's end (after the callbacks' epoch-end hooks)."""
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)
