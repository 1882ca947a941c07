"""The Lightning side: one LightningModule that trains any method, and the adapters that hand ssl-bench's plain
datamodules and callbacks to Lightning."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from datamodules.base import DataModule
from ssl_bench.batch import StepInfo, Views
from ssl_bench.callbacks.base import Callback
from ssl_bench.config import OptimConfig
from ssl_bench.methods.base import Method
from ssl_bench.optim import build_optimizer, probe_group, warmup_cosine
from ssl_bench.train.memory import release_free_heap

# The Lightning hooks that only the wrapped backward and optimizer step call.
_WRAPPER_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class Diverged(Exception):
    """The training loss became non-finite: the run stops at once (status ``diverged``)."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"non-finite loss ({loss}) at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


class SSLModule(L.LightningModule):
    """Manual optimization of ``method`` over training batches of type ``list[Views]``.

    Every entry of a batch is one mini-batch and one optimizer step (:meth:`update`) on the method's
    ``training_loss``, plus the online linear probe's cross-entropy on the detached backbone features when the views
    carry labels. The learning rate is set from ``optim.schedule`` before every step, and every
    :class:`~ssl_bench.callbacks.base.Callback` with an ``on_optimizer_step`` hook is called after it. The validation
    loop scores the online probe as ``readout/online_acc``. A non-finite loss raises :class:`Diverged` before its
    step is taken (in every process at once under DDP).

    On one device in 32-bit precision, unless a hook needs them (:meth:`needs_lightning_step`), an optimizer step calls
    ``backward`` and the torch optimizer directly instead of through Lightning's ``manual_backward`` and
    ``LightningOptimizer.step``, which would add nothing there but their per-step cost, and counts the step in
    ``trainer.global_step`` as ``LightningOptimizer.step`` does.
    """

    _wrapped = True  # whether update steps through Lightning's wrappers; on_train_start decides

    def __init__(self, method: Method, optim: OptimConfig, num_classes: int | None = None, batch_size: int = 256,
                 log_every_n_epochs: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.method, self.optim = method, optim
        self.batch_size, self.log_every_n_epochs = batch_size, log_every_n_epochs
        self.probe = nn.Linear(method.encoder.output_dim, num_classes) if num_classes else None
        self.online_accuracy = MulticlassAccuracy(num_classes, average="micro") if num_classes else None
        self._epoch_losses: list[Tensor] = []
        self._epoch_record: dict[str, float] = {}
        self.latest_scalars: dict[str, float] = {}
        """The latest value of every scalar the epoch records logged."""
        self._step_hooks: list[Callback] = []

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        return self.method.representations(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.method.representations(x)

    def peak_lr(self) -> float:
        """``optim.lr``, times ``global_batch / 256`` when ``optim.scale_lr``."""
        if not self.optim.scale_lr:
            return self.optim.lr
        return self.optim.lr * self.batch_size * self.trainer.world_size / 256

    def optimizer_groups(self) -> list[list[dict[str, Any]]]:
        """The parameter groups of each optimizer: the method's, and the online probe's in the first."""
        groups = self.method.parameter_groups()
        if self.probe is not None:
            groups[0].append(probe_group(self.probe, self.optim))
        return groups

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [build_optimizer(self.optim, g, self.peak_lr()) for g in self.optimizer_groups()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep every process's losses of the epochs since ``train/loss`` was last logged (one row per process): a
        run resumed from this checkpoint then logs the same mean over the same epochs as a run that never stopped.
        Every process writes a checkpoint's contents (rank 0 saves them), so the gather is a collective."""
        losses = torch.stack(self._epoch_losses) if self._epoch_losses else torch.zeros(0, device=self.device)
        checkpoint["ssl_bench_epoch_losses"] = self.all_gather(losses).reshape(self.trainer.world_size, -1).cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rows = checkpoint.get("ssl_bench_epoch_losses")
        self._epoch_losses = list(rows[self.global_rank]) if rows is not None and self.global_rank < len(rows) else []

    def on_train_start(self) -> None:
        """Collect the callbacks that implement the per-optimizer-step hook; choose how :meth:`update` steps."""
        self.use_step_hooks(adapter.callback for adapter in self.trainer.callbacks
                            if isinstance(adapter, CallbackAdapter))
        self._wrapped = self.needs_lightning_step()

    def use_step_hooks(self, callbacks: Iterable[Callback]) -> None:
        """Call, after every optimizer step, those of ``callbacks`` that implement ``on_optimizer_step``."""
        self._step_hooks = [callback for callback in callbacks
                            if type(callback).on_optimizer_step is not Callback.on_optimizer_step]

    def needs_lightning_step(self) -> bool:
        """Whether optimizer steps must go through Lightning's ``manual_backward`` and ``LightningOptimizer.step``:
        under any strategy but one device (DDP prepares its gradient all-reduce in them), in any precision but
        ``32-true`` (mixed precision scales the loss and unscales the gradients in them), or when this module
        overrides ``backward`` or this module or a callback implements a hook that only they call
        (:data:`_WRAPPER_HOOKS`)."""
        trainer = self.trainer
        if type(trainer.strategy) is not SingleDeviceStrategy or type(trainer.precision_plugin) is not Precision:
            return True
        return any(is_overridden(hook, self, L.LightningModule) for hook in ("backward", *_WRAPPER_HOOKS)) or any(
            is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks for hook in _WRAPPER_HOOKS)

    def progress(self, batch_idx: int, index: int, batch_size: int) -> float:
        """Fraction of training done before mini-batch ``index`` of the ``batch_size`` mini-batches of batch
        ``batch_idx``, from the epoch and batch index (so a resumed run continues every schedule where it stopped)."""
        batches = max(1, int(self.trainer.num_training_batches))
        return (self.current_epoch + (batch_idx + index / batch_size) / batches) / self.trainer.max_epochs

    def schedule_lr(self, optimizer: torch.optim.Optimizer, progress: float) -> None:
        """Set every group's learning rate to ``base_lr * warmup_cosine(progress)``."""
        if self.optim.schedule == "constant":
            return
        warmup = self.optim.warmup_epochs / self.trainer.max_epochs
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * warmup_cosine(progress, warmup, self.optim.min_lr / group["base_lr"])

    def objective(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        """The SSL loss of mini-batch ``index`` of a batch, and the total that its optimizer step minimises: the loss
        plus the online probe's cross-entropy on the detached backbone features when the views carry labels and the
        first optimizer steps. A function of the parameters, buffers and views alone (an ensemble vmaps it)."""
        loss, features = self.method.training_loss(index, views)
        if views.labels is None or self.probe is None or self.method.optimizer_index(index) != 0:
            return loss, loss
        return loss, loss + F.cross_entropy(self.probe(features.detach()), views.labels)

    def update(self, index: int, views: Views, progress: float) -> None:
        """One optimizer step on mini-batch ``index`` of the batch.

        Unless :meth:`needs_lightning_step`, ``total.backward()`` and the torch optimizer's ``step`` are called
        directly, the step between the ``LightningOptimizer``'s before- and after-step callbacks, which count it in
        ``trainer.global_step`` (the manual loop's ``optim_step_progress``) and time it in the trainer's profiler.
        Those callbacks are private to Lightning, so its minor version is pinned and ``tests/test_fast_path.py``
        checks them."""
        optimizer = self.batch_optimizers[self.method.optimizer_index(index)]
        self.schedule_lr(optimizer, progress)
        loss, total = self.objective(index, views)
        self.check_finite(loss)
        optimizer.zero_grad(set_to_none=True)
        if self._wrapped:
            self.manual_backward(total)
            optimizer.step()
        else:
            total.backward()
            optimizer._on_before_step()
            optimizer.optimizer.step()
            optimizer._on_after_step()
        self.after_step(index, progress, loss.detach())

    def after_step(self, index: int, progress: float, loss: Tensor) -> None:
        """After the optimizer step on mini-batch ``index`` with the detached ``loss``: the loss joins the epoch's
        (for ``train/loss``), then the method's ``after_optimizer_step`` (e.g. weight normalisation, a target
        network's EMA) and every callback's ``on_optimizer_step`` run."""
        self._epoch_losses.append(loss)
        self.method.after_optimizer_step(index, progress)
        if self._step_hooks:
            optimizer = self.method.optimizer_index(index)
            step = StepInfo(index=self.trainer.global_step - 1, epoch=self.current_epoch, index_in_batch=index,
                            optimizer=optimizer, loss=loss, lr=self.batch_optimizers[optimizer].param_groups[0]["lr"])
            for callback in self._step_hooks:
                callback.on_optimizer_step(self.trainer, self, step)

    def check_finite(self, loss: Tensor) -> None:
        """Raise :class:`Diverged` when ``loss`` is not finite in this or (under DDP) any other process.

        One read of the loss's value by the host, which on a GPU waits for the forward pass: whether to raise must be
        known before the optimizer step is taken."""
        value = loss.item()
        finite = math.isfinite(value)
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise Diverged(self.current_epoch, self.trainer.global_step, value)

    def training_step(self, batch: list[Views], batch_idx: int) -> None:
        optimizers = self.optimizers()
        self.batch_optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for i, views in enumerate(batch):
            self.update(i, views, self.progress(batch_idx, i, len(batch)))

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        if self.probe is None:
            return
        images, labels = batch
        self.online_accuracy.update(self.probe(self.method.encoder(images)), labels)
        self.log("readout/online_acc", self.online_accuracy, on_epoch=True)

    def epoch_scalars(self) -> dict[str, Tensor | float]:
        """What the epoch that just ended logs, every ``log_every_n_epochs`` epochs and at the last one (else
        nothing): ``train/loss``, this process's mean loss over the epochs since the last log (which it then
        forgets), ``train/lr`` and the method's :meth:`~ssl_bench.methods.base.Method.epoch_metrics`."""
        epoch = self.current_epoch + 1
        if epoch % self.log_every_n_epochs and epoch != self.trainer.max_epochs:
            return {}
        losses = torch.stack([loss.to(self.device) for loss in self._epoch_losses])
        self._epoch_losses.clear()
        return {"train/loss": losses.mean(), "train/lr": self.batch_optimizers[0].param_groups[0]["lr"],
                **self.method.epoch_metrics()}

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """While training, ``value`` joins the epoch's record, which :meth:`on_train_epoch_end` hands to the loggers
        (every other option is moot there: the loggers write rank 0's values); elsewhere (the validation loop's
        online accuracy) Lightning's ``log``. Scalars logged once per epoch need none of the reduction machinery of
        Lightning's results, whose bookkeeping of every key ever logged would cost each epoch more than the
        optimizer steps of a small model."""
        if self.trainer.training:
            self._epoch_record[name] = logged_value(value)
        else:
            super().log(name, value, *args, **kwargs)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's record: what the callbacks logged at this epoch's end (Lightning calls their hooks first)
        and :meth:`epoch_scalars`, with ``train/loss`` averaged over the processes, to every logger with the
        epoch's index, at the optimizer steps taken (``global_step``, the step of every run-directory record); the
        latest value of every scalar stays in :attr:`latest_scalars`, which the progress bars show."""
        scalars = self.epoch_scalars()
        if "train/loss" in scalars and self.trainer.world_size > 1:
            scalars["train/loss"] = self.trainer.strategy.reduce(scalars["train/loss"], reduce_op="mean")
        record = {**self._epoch_record, **{key: logged_value(value) for key, value in scalars.items()}}
        self._epoch_record.clear()
        if record:
            record["epoch"] = self.current_epoch
            self.latest_scalars.update(record)
            for logger in self.loggers:
                logger.log_metrics(record, step=self.trainer.global_step)
        release_free_heap()


def logged_value(value: Tensor | float) -> float:
    """``value`` as Lightning's ``log`` records it: a tensor as it is, a Python number as a float32 tensor."""
    return float(value if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float32))


class DataModuleAdapter(L.LightningDataModule):
    """Lightning's view of an ssl-bench :class:`~datamodules.base.DataModule`: forwards the hooks, sets the
    datamodule's ``trainer``, and reads every other attribute (ground truth, evaluation interface) from it."""

    def __init__(self, data: DataModule) -> None:
        super().__init__()
        self.data = data

    def __getattr__(self, name: str) -> Any:
        if name == "data":
            raise AttributeError(name)
        return getattr(self.data, name)

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.trainer = self.trainer
        self.data.setup(stage)

    def train_dataloader(self) -> Any:
        return self.data.train_dataloader()

    def val_dataloader(self) -> Any:
        return self.data.val_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return self.data.transfer_batch_to_device(batch, device)


class CallbackAdapter(L.Callback):
    """Lightning's view of an ssl-bench :class:`~ssl_bench.callbacks.base.Callback` registered as ``name``."""

    def __init__(self, name: str, callback: Callback) -> None:
        self.name, self.callback = name, callback

    @property
    def state_key(self) -> str:
        return f"ssl_bench.{self.name}"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.callback.setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.callback.on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.callback.on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.callback.on_train_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return self.callback.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.callback.load_state_dict(state_dict)
