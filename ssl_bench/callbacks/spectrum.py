"""Embedding spectrum of the backbone and projector outputs (Jing et al. 2022) and the std of l2-normalized embeddings
(Chen & He 2021) on a fixed evaluation set."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.callbacks.base import Callback
from ssl_bench.config import CallbackConfig, check_positive
from ssl_bench.ops.frozen import frozen
from ssl_bench.ops.metrics import (
    effective_rank,
    embedding_spectrum,
    numerical_rank,
    std_l2,
)
from ssl_bench.registry import register
from ssl_bench.rundir import append_records

KINDS = ("backbone", "projector")


def frozen_representations(method: nn.Module, batches: Iterable[Tensor], device: torch.device
                           ) -> dict[str, Tensor]:
    """``method.representations`` of every batch, concatenated per key, on ``device``.

    Runs in eval mode without gradients and puts every submodule back in its previous train/eval mode
    (:func:`~ssl_bench.ops.frozen.frozen`).
    """
    outputs: dict[str, list[Tensor]] = {kind: [] for kind in KINDS}
    with frozen(method):
        for x in batches:
            representations = method.representations(x.to(device))
            for kind in KINDS:
                outputs[kind].append(representations[kind])
    return {kind: torch.cat(values) for kind, values in outputs.items()}


def labelled_representations(method: nn.Module, loader: Iterable[Any], device: torch.device,
                             limit: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`frozen_representations` of the ``(x, y)`` batches of ``loader`` (its first ``limit`` samples; all
    when None) and their labels, on ``device``."""
    labels: list[Tensor] = []

    def inputs():
        taken = 0
        for x, y in loader:
            keep = len(x) if limit is None else min(len(x), limit - taken)
            taken += keep
            labels.append(y[:keep])
            yield x[:keep]
            if limit is not None and taken >= limit:
                return

    representations = frozen_representations(method, inputs(), device)
    return representations, torch.cat(labels).to(device)


@register("callback", "spectrum")
class EigenSpectrum(Callback):
    """Logs the spectrum metrics of the backbone and projector embeddings every ``every_n_epochs`` epochs and at the
    end, on the first ``samples`` of ``trainer.datamodule.evaluation_inputs`` (embedded ``batch_size`` at a time).

    Scalars: ``spectrum/effective_rank``, ``spectrum/rank`` (singular values above ``tolerance`` times the largest)
    and ``collapse/std_l2`` for the projector embedding, the same with a ``_backbone`` suffix for the backbone. The
    log singular values against their rank go to every W&B logger as a line series, and the singular values are
    appended to ``spectra.jsonl`` in the trainer's ``default_root_dir``. Under complete collapse (``std_l2`` near 0)
    the covariance is rounding noise, below :data:`ssl_bench.ops.metrics.NOISE_FLOOR`, and both ranks read 0. Non-finite
    embeddings (a diverging model) log every scalar as NaN and record no spectrum. Reads
    ``module.method.representations`` and ``trainer.datamodule.evaluation_inputs``; nothing else.

    With ``weights``, also the spectrum of the encoder's first-layer weight ``W`` (the whole map of a linear
    encoder; Rusak et al. 2022, Fig. 1 left): its singular values divided by the largest go to ``spectra.jsonl``
    (key ``weight``) and W&B, and ``spectrum/weight_effective_rank`` and ``spectrum/weight_rank`` are logged.
    """

    @dataclass
    class Config(CallbackConfig):
        samples: int = 2048
        tolerance: float = 1e-4
        batch_size: int = 512
        weights: bool = False

        def validate(self, prefix: str) -> None:
            for key in ("samples", "tolerance", "batch_size"):
                check_positive(f"{prefix}.{key}", getattr(self, key))

        def required(self) -> tuple[str, ...]:
            return (*self.needs, "first_layer_weight") if self.weights else self.needs

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self._inputs: Tensor | None = None

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        if self._inputs is None:
            self._inputs = trainer.datamodule.evaluation_inputs(self.config.samples)
        embeddings = frozen_representations(module.method, self._inputs.split(self.config.batch_size), module.device)
        if not all(bool(torch.isfinite(z).all()) for z in embeddings.values()):
            for name in ("spectrum/effective_rank", "spectrum/rank", "collapse/std_l2"):
                for suffix in ("", "_backbone"):
                    module.log(f"{name}{suffix}", float("nan"), rank_zero_only=True)
            return
        spectra = {kind: embedding_spectrum(z) for kind, z in embeddings.items()}
        for kind in KINDS:
            suffix = "" if kind == "projector" else f"_{kind}"
            module.log(f"spectrum/effective_rank{suffix}", effective_rank(spectra[kind]), rank_zero_only=True)
            module.log(f"spectrum/rank{suffix}", float(numerical_rank(spectra[kind], self.config.tolerance)),
                       rank_zero_only=True)
            module.log(f"collapse/std_l2{suffix}", std_l2(embeddings[kind]), rank_zero_only=True)
        if self.config.weights:
            weight = torch.linalg.svdvals(module.method.encoder.first_layer_weight.detach().double())
            spectra["weight"] = weight / weight.max()
            module.log("spectrum/weight_effective_rank", effective_rank(weight), rank_zero_only=True)
            module.log("spectrum/weight_rank", float(numerical_rank(weight, self.config.tolerance)),
                       rank_zero_only=True)
        if trainer.is_global_zero:
            self._record(trainer, trainer.current_epoch + 1, {kind: s.cpu() for kind, s in spectra.items()})

    def _record(self, trainer: Any, epoch: int, spectra: dict[str, Tensor]) -> None:
        """Line series of ``log s_k`` against ``k`` (non-zero values) on W&B, singular values to ``spectra.jsonl``."""
        wandb_runs = self.wandb_runs(trainer)
        if wandb_runs:
            import wandb

            positive = {kind: s[s > 0] for kind, s in spectra.items()}
            plot = wandb.plot.line_series(xs=[list(range(1, len(s) + 1)) for s in positive.values()],
                                          ys=[s.log().tolist() for s in positive.values()], keys=list(positive),
                                          title=f"Log singular values, epoch {epoch}", xname="rank")
            for run in wandb_runs:
                run.log({"spectrum/log_singular_values": plot,
                                       "trainer/global_step": trainer.global_step})
        record = {"epoch": epoch, "step": trainer.global_step, **{kind: s.tolist() for kind, s in spectra.items()}}
        append_records(trainer.default_root_dir, "spectra.jsonl", [record])
