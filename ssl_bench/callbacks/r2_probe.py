"""How linearly the ground-truth latents can be read from every layer of the encoder: held-out R^2 per layer and
latent (Rusak et al. 2022, Sec. 5; Zimmermann et al. 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.config import check_positive
from ssl_bench.metrics import mcc
from ssl_bench.ops.frozen import frozen
from ssl_bench.ops.metrics import r2_scores
from ssl_bench.registry import register
from ssl_bench.rundir import append_records, json_value


def frozen_layer_outputs(encoder: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> list[Tensor]:
    """``encoder.layer_outputs`` of ``x``, ``batch_size`` rows at a time, each flattened to (N, features) and
    concatenated on ``device``; in eval mode without gradients, every submodule put back in its previous mode."""
    layers: list[list[Tensor]] = []
    with frozen(encoder):
        for batch in x.split(batch_size):
            outputs = encoder.layer_outputs(batch.to(device))
            layers = layers or [[] for _ in outputs]
            for kept, output in zip(layers, outputs):
                kept.append(output.flatten(start_dim=1))
    return [torch.cat(kept) for kept in layers]


def heatmap_pixels(matrix: Tensor, cell: int = 16) -> Tensor:
    """An RGB image (uint8, H x W x 3) of a layers x latents matrix of R^2 values: one ``cell`` x ``cell`` square
    per entry, black at 0 (and below), white at 1, red for NaN."""
    value = matrix.detach().double().cpu().nan_to_num(nan=0.0).clamp(0, 1)
    rgb = value.unsqueeze(-1).expand(*value.shape, 3).clone()
    rgb[matrix.detach().cpu().isnan()] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    rgb = rgb.repeat_interleave(cell, dim=0).repeat_interleave(cell, dim=1)
    return (rgb * 255).round().to(torch.uint8)


@register("callback", "r2_probe")
class R2Probe(Callback):
    """Fits a linear map with intercept from every layer's activations to every ground-truth latent on ``samples``
    training points and scores R^2 on as many held-out points (:func:`ssl_bench.ops.metrics.r2_scores`), every
    ``every_n_epochs`` epochs (null: the run's ``trainer.metrics_every_n_epochs``) and at the last one.

    Reads ``trainer.datamodule.latent_probe_data(samples)`` (once; ``((x, z), (x_test, z_test))``),
    ``trainer.datamodule.latent_groups`` (group name -> latent indices) and ``module.method.encoder.layer_outputs``
    (run in eval mode without gradients, ``batch_size`` inputs at a time). Logs the mean adjusted R^2 over each
    group's latents as ``r2/layer{k}/{group}`` for layer k (from 0) and ``r2/{group}`` for the output (the last
    layer), and beside it ``mcc/{group}``, the output's mean correlation coefficient with the group's held-out
    latents (:func:`ssl_bench.metrics.mcc`: absolute Pearson correlations after Hungarian matching, as cl-ica
    reports); appends the layers x latents matrices of R^2 and adjusted R^2 to ``r2.jsonl`` in the trainer's
    ``default_root_dir`` and logs the adjusted R^2 matrix as an image ``r2/heatmap`` (rows layers, columns latents,
    black 0, white 1) to every W&B logger. Non-finite activations give NaN for their layer.
    """

    @dataclass
    class Config(CadenceConfig):
        samples: int = 2048
        batch_size: int = 1024
        needs = ("latents",)

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            for key in ("samples", "batch_size"):
                check_positive(f"{prefix}.{key}", getattr(self, key))

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        self._data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    def scores(self, trainer: Any, module: Any) -> tuple[dict[str, Tensor], Tensor]:
        """``{"r2": (layers, latents), "adjusted_r2": (layers, latents)}`` for the current encoder, and its output on
        the held-out inputs."""
        if self._data is None:
            self._data = trainer.datamodule.latent_probe_data(self.config.samples)
        (x_train, z_train), (x_test, z_test) = self._data
        encoder, size, device = module.method.encoder, self.config.batch_size, module.device
        train = frozen_layer_outputs(encoder, x_train, size, device)
        test = frozen_layer_outputs(encoder, x_test, size, device)
        layers = [r2_scores(f_train, z_train, f_test, z_test) for f_train, f_test in zip(train, test)]
        return {key: torch.stack([layer[key] for layer in layers]).cpu() for key in ("r2", "adjusted_r2")}, test[-1]

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        scores, output = self.scores(trainer, module)
        latents_test = self._data[1][1]
        groups = trainer.datamodule.latent_groups
        adjusted = scores["adjusted_r2"]
        last = len(adjusted) - 1
        for name, latents in groups.items():
            means = adjusted[:, latents].mean(dim=1)
            for k, mean in enumerate(means.tolist()):
                module.log(f"r2/layer{k}/{name}", mean, rank_zero_only=True)
            module.log(f"r2/{name}", means[last].item(), rank_zero_only=True)
            module.log(f"mcc/{name}", mcc(output, latents_test[:, latents]) if bool(torch.isfinite(output).all())
                       else math.nan, rank_zero_only=True)
        if trainer.is_global_zero:
            self._record(trainer, trainer.current_epoch + 1, scores, groups)

    def _record(self, trainer: Any, epoch: int, scores: dict[str, Tensor], groups: dict[str, list[int]]) -> None:
        """The matrices to ``r2.jsonl``, the adjusted R^2 heatmap to W&B."""
        wandb_runs = self.wandb_runs(trainer)
        if wandb_runs:
            import wandb

            layers, latents = scores["adjusted_r2"].shape
            image = wandb.Image(heatmap_pixels(scores["adjusted_r2"]).numpy(),
                                caption=f"adjusted R^2, epoch {epoch}: {layers} layers (rows) x {latents} latents")
            for run in wandb_runs:
                run.log({"r2/heatmap": image, "trainer/global_step": trainer.global_step})

        def plain(matrix: Tensor) -> list[list[float | str]]:
            return [[json_value(value) for value in row] for row in matrix.tolist()]

        record = {"epoch": epoch, "step": trainer.global_step, "groups": groups,
                  **{key: plain(matrix) for key, matrix in scores.items()}}
        append_records(trainer.default_root_dir, "r2.jsonl", [record])
