"""Which ground-truth feature each first-layer neuron detects, and dimensional collapse (Wen & Li 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.callbacks.r2_probe import heatmap_pixels
from ssl_bench.config import check_range
from ssl_bench.registry import register
from ssl_bench.rundir import append_records, json_value


def alignment(weight: Tensor, features: Tensor) -> Tensor:
    """``A_jl = |<w_j, v_l>| / (||w_j|| ||v_l||)`` (m x L) for neuron weights ``w_j`` (rows of ``weight``, m x d) and
    features ``v_l`` (rows of ``features``, L x d); Wen & Li's ``|<w_j, v_l>| / ||w_j||`` for unit features. A
    neuron of zero norm gives NaN."""
    weight, features = weight.detach().double(), features.detach().double().to(weight.device)
    return (weight @ F.normalize(features, dim=1).T).abs() / weight.norm(dim=1, keepdim=True)


def detected_features(scores: Tensor, threshold: float) -> Tensor:
    """The feature each neuron detects, numbered from 1 (``v_1``, ``v_2``, ...): ``argmax_l A_jl + 1`` where
    ``max_l A_jl > threshold``, else 0 (none); one entry per row of ``scores`` (m x L)."""
    best, index = scores.max(dim=1)
    return torch.where(best > threshold, index + 1, torch.zeros_like(index))


def collapsed(detects: Tensor) -> bool:
    """Dimensional collapse: every neuron detects one and the same feature (none counts as no feature)."""
    return bool((detects > 0).all() and (detects == detects[0]).all())


def history_pixels(history: Tensor) -> Tensor:
    """An RGB image (uint8) of alignments over time, ``history`` being (T evaluations, m, L): one row of 16 pixels
    per (neuron, feature) pair in the order (1, 1), (1, 2), ..., (m, L), one column per evaluation (widened to about
    512 pixels in all); black 0, white 1, red NaN."""
    matrix = history.flatten(start_dim=1).T
    return heatmap_pixels(matrix, cell=1).repeat_interleave(16, dim=0).repeat_interleave(
        max(1, 512 // matrix.shape[1]), dim=1)


@register("callback", "feature_alignment")
class FeatureAlignment(Callback):
    """Logs how each neuron of the encoder's first layer aligns with each ground-truth feature (Wen & Li 2022),
    every ``every_n_epochs`` epochs (null: the run's ``trainer.metrics_every_n_epochs``) and at the last one.

    Reads ``trainer.datamodule.features`` (L x d, rows the features ``v_l``) and
    ``module.method.encoder.first_layer_weight`` (m x d, rows the neurons ``w_j``); nothing else. With
    ``A_jl = |<w_j, v_l>| / ||w_j||`` (:func:`alignment`), neurons and features numbered from 1, it logs
    ``align/neuron{j}_feature{l}`` (``A_jl``), ``align/feature{l}_max`` (``max_j A_jl``), ``align/neuron{j}_detects``
    (the feature neuron j detects: ``argmax_l A_jl`` where ``max_l A_jl > threshold``, else 0 for none),
    ``align/features_detected`` (how many distinct features the neurons detect) and ``align/collapsed`` (1.0 when
    every neuron detects the same feature: dimensional collapse; else 0.0). Each evaluation appends
    ``{"epoch", "step", "alignment": A, "detects", "collapsed"}`` to ``alignment.jsonl`` in the trainer's
    ``default_root_dir`` and, to every W&B logger, the image ``align/heatmap`` of every ``A_jl`` (rows) over the
    evaluations so far (columns).
    """

    @dataclass
    class Config(CadenceConfig):
        threshold: float = 0.5
        needs = ("features", "first_layer_weight")

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_range(f"{prefix}.threshold", self.threshold, 0.0, 1.0, "[)")

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.history: list[Tensor] = []

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        weight, features = module.method.encoder.first_layer_weight, trainer.datamodule.features
        if features.ndim != 2 or weight.ndim != 2 or weight.shape[1] != features.shape[1]:
            raise ValueError(f"callbacks.feature_alignment needs neurons (m x d) and features (L x d) of one d; got "
                             f"first_layer_weight {tuple(weight.shape)} and features {tuple(features.shape)}")

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        scores = alignment(module.method.encoder.first_layer_weight, trainer.datamodule.features).cpu()
        detects = detected_features(scores, self.config.threshold)
        is_collapsed = collapsed(detects)
        for j, row in enumerate(scores.tolist(), start=1):
            for l, value in enumerate(row, start=1):
                module.log(f"align/neuron{j}_feature{l}", value, rank_zero_only=True)
            module.log(f"align/neuron{j}_detects", float(detects[j - 1]), rank_zero_only=True)
        for l, value in enumerate(scores.max(dim=0).values.tolist(), start=1):
            module.log(f"align/feature{l}_max", value, rank_zero_only=True)
        module.log("align/features_detected", float(detects[detects > 0].unique().numel()), rank_zero_only=True)
        module.log("align/collapsed", float(is_collapsed), rank_zero_only=True)
        self.history.append(scores)
        if trainer.is_global_zero:
            self._record(trainer, trainer.current_epoch + 1, scores, detects, is_collapsed)

    def _record(self, trainer: Any, epoch: int, scores: Tensor, detects: Tensor, is_collapsed: bool) -> None:
        """The evaluation to ``alignment.jsonl``, the heatmap over time to W&B."""
        wandb_runs = self.wandb_runs(trainer)
        if wandb_runs:
            import wandb

            m, features = scores.shape
            image = wandb.Image(history_pixels(torch.stack(self.history)).numpy(),
                                caption=f"|<w_j, v_l>| / ||w_j|| up to epoch {epoch}: rows (neuron, feature) for "
                                        f"{m} neurons x {features} features, columns evaluations")
            for run in wandb_runs:
                run.log({"align/heatmap": image, "trainer/global_step": trainer.global_step})
        record = {"epoch": epoch, "step": trainer.global_step,
                  "alignment": [[json_value(value) for value in row]
                                for row in scores.tolist()],
                  "detects": detects.tolist(), "collapsed": is_collapsed}
        append_records(trainer.default_root_dir, "alignment.jsonl", [record])

    def state_dict(self) -> dict[str, Any]:
        return {"history": [scores.tolist() for scores in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [torch.tensor(scores, dtype=torch.float64) for scores in state.get("history", [])]
