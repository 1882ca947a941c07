"""Progress bars: one over the epochs, for runs of thousands of short epochs (synthetic data) and for output that is
not a terminal (log files), and one over each epoch's batches (images, in a terminal)."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from tqdm.auto import tqdm


class EpochProgressBar(ProgressBar):
    """One bar for the whole fit, advanced per epoch, showing the latest logged scalars."""

    def __init__(self) -> None:
        super().__init__()
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

    def _advance(self, trainer: L.Trainer, draw: bool = True) -> None:
        """Count the finished epochs and show the scalars logged at the end of the last one; ``draw=False`` leaves
        the drawing to the bar's ``close``, so the final line is printed once."""
        if self._bar is not None and self._bar.n < trainer.current_epoch:
            metrics = {k: f"{float(v):.4f}" for k, v in trainer.logged_metrics.items() if k != "epoch"}
            self._bar.set_postfix(metrics, refresh=False)
            if draw:
                self._bar.update(trainer.current_epoch - self._bar.n)
            else:
                self._bar.n = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning calls the module's epoch-end hook after the callbacks', so the previous epoch's logs are
        complete only when the next one starts."""
        self._advance(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._advance(trainer, draw=False)
            self._bar.close()
            self._bar = None


def progress_bar(kind: str) -> ProgressBar:
    """The bar of ``trainer.progress``: ``epochs``, or ``steps`` in a terminal; in a log file, where every redraw of
    a batch bar would stay as a line, ``steps`` also gets the epoch bar."""
    return StepProgressBar() if kind == "steps" and sys.stdout.isatty() else EpochProgressBar()


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar over every epoch's batches (images), showing the latest logged scalars."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        return {k: f"{float(v):.4f}" for k, v in trainer.logged_metrics.items() if k != "epoch"}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Show the scalars that the module logs at its last epoch's end (after the callbacks' epoch-end hooks)."""
        if self._train_progress_bar is not None and not self.is_disabled:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)
