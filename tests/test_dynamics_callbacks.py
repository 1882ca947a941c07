"""The feature-alignment and predictor-dynamics callbacks: their numbers on hand-made weights, their histories and
cadence with a stand-in trainer, and tiny fits through the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import error_line
from lightning.pytorch.loggers import WandbLogger

from datamodules.sparse_coding import SparseCodingDataModule
from ssl_bench.batch import StepInfo
from ssl_bench.callbacks.feature_alignment import (
    FeatureAlignment,
    alignment,
    collapsed,
    detected_features,
    history_pixels,
)
from ssl_bench.callbacks.predictor_dynamics import (
    PredictorDynamics,
    linear_head,
    predictor_metrics,
    scalars,
)
from ssl_bench.nets.heads import LinearPredictor
from ssl_bench.registry import register

V = torch.eye(3)[:2]  # v1 = e1, v2 = e2 in R^3


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeWandb(WandbLogger):
    """A W&B logger that keeps what ``experiment.log`` receives."""

    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    @property
    def experiment(self) -> Any:
        return SimpleNamespace(log=self.logged.append)


def stand_ins(tmp_path: Path, method: Any, max_epochs: int, features: torch.Tensor | None = None
              ) -> tuple[SimpleNamespace, SimpleNamespace, list[tuple[int, str, float]]]:
    """A trainer and a module with what the callbacks read; ``logged`` collects ``(epoch, key, value)``."""
    logged: list[tuple[int, str, float]] = []
    trainer = SimpleNamespace(current_epoch=0, max_epochs=max_epochs, global_step=0, is_global_zero=True,
                              default_root_dir=str(tmp_path), loggers=[FakeWandb()],
                              datamodule=SimpleNamespace(features=features))
    module = SimpleNamespace(method=method, log=lambda key, value, **_: logged.append(
        (trainer.current_epoch + 1, key, float(value))))
    return trainer, module, logged


# ---------------------------------------------------------------------------------------------- feature alignment


def test_alignment_is_the_normalised_correlation_and_detection_follows_the_threshold():
    w = torch.tensor([[2.0, 0.1, 0.0], [0.2, -3.0, 0.5], [0.1, 0.1, 1.0]])
    a = alignment(w, V)
    expected = torch.tensor([[2.0, 0.1], [0.2, 3.0], [0.1, 0.1]]) / w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(a, expected.double())
    assert a.shape == (3, 2) and a.dtype == torch.float64
    torch.testing.assert_close(alignment(w, 5 * V), a)  # the features' scale does not matter
    assert detected_features(a, 0.5).tolist() == [1, 2, 0]  # neuron 3 is mostly noise: none
    assert detected_features(a, 0.999).tolist() == [0, 0, 0]
    assert detected_features(a, 0.0).tolist() == [1, 2, 1]


def test_collapse_means_every_neuron_detects_one_and_the_same_feature():
    assert collapsed(torch.tensor([1, 1, 1])) and collapsed(torch.tensor([2, 2]))
    assert not collapsed(torch.tensor([1, 2, 1]))
    assert not collapsed(torch.tensor([1, 1, 0]))  # a neuron that detects nothing
    assert not collapsed(torch.tensor([0, 0]))


def test_a_zero_neuron_detects_nothing():
    a = alignment(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), V)
    assert a[0].isnan().all() and detected_features(a, 0.5).tolist() == [0, 1]


def test_history_pixels_rows_are_neuron_feature_pairs_and_columns_evaluations():
    history = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]], dtype=torch.float64)  # 2 evaluations, 1 neuron, 2 features
    pixels = history_pixels(history)
    assert pixels.shape == (32, 512, 3) and pixels.dtype == torch.uint8
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, -1].tolist() == [255, 255, 255]  # (1, 1): 0 then 1
    assert pixels[-1, 0].tolist() == [255, 255, 255] and pixels[-1, -1].tolist() == [0, 0, 0]


def test_feature_alignment_logs_records_and_draws_over_time(tmp_path):
    """Two neurons: both random (nothing detected), both on v1 (collapse), then the second on v2."""
    weights = [torch.tensor([[0.3, 0.2, 1.0], [-0.1, 0.3, -1.0]]), torch.tensor([[1.0, 0.1, 0.2], [-2.0, 0.2, 0.1]]),
               torch.tensor([[1.0, 0.1, 0.2], [0.1, 2.0, 0.1]])]
    encoder = SimpleNamespace(first_layer_weight=weights[0])
    trainer, module, logged = stand_ins(tmp_path, SimpleNamespace(encoder=encoder), max_epochs=5, features=V)
    callback = FeatureAlignment.from_config(FeatureAlignment.Config(threshold=0.5, every_n_epochs=2), 100)
    callback.setup(trainer, module, "fit")
    for epoch, weight in zip(range(5), [weights[0], weights[0], weights[1], weights[1], weights[2]]):
        trainer.current_epoch, trainer.global_step = epoch, 3 * (epoch + 1)
        encoder.first_layer_weight = weight
        callback.on_train_epoch_end(trainer, module)
    records = lines(tmp_path / "alignment.jsonl")
    assert [(r["epoch"], r["step"]) for r in records] == [(2, 6), (4, 12), (5, 15)]  # every 2 epochs and the last
    assert [r["detects"] for r in records] == [[0, 0], [1, 1], [1, 2]]
    assert [r["collapsed"] for r in records] == [False, True, False]
    for record, weight in zip(records, weights):
        torch.testing.assert_close(torch.tensor(record["alignment"], dtype=torch.float64), alignment(weight, V))
    by_epoch = {(epoch, key): value for epoch, key, value in logged}
    assert {epoch for epoch, _, _ in logged} == {2, 4, 5}
    assert [by_epoch[e, "align/features_detected"] for e in (2, 4, 5)] == [0, 1, 2]
    assert [by_epoch[e, "align/collapsed"] for e in (2, 4, 5)] == [0, 1, 0]
    assert [by_epoch[e, "align/neuron2_detects"] for e in (2, 4, 5)] == [0, 1, 2]
    assert by_epoch[5, "align/neuron2_feature2"] == pytest.approx(2 / math.sqrt(4.02))
    assert by_epoch[5, "align/feature2_max"] == pytest.approx(2 / math.sqrt(4.02))
    images = trainer.loggers[0].logged
    assert [entry["trainer/global_step"] for entry in images] == [6, 12, 15]
    assert [entry["align/heatmap"].image.size for entry in images] == [(512, 64), (512, 64), (510, 64)]
    resumed = FeatureAlignment(FeatureAlignment.Config())
    resumed.load_state_dict(callback.state_dict())
    torch.testing.assert_close(torch.stack(resumed.history), torch.stack(callback.history))


def test_feature_alignment_refuses_features_of_another_dimension(tmp_path):
    encoder = SimpleNamespace(first_layer_weight=torch.ones(2, 4))
    trainer, module, _ = stand_ins(tmp_path, SimpleNamespace(encoder=encoder), max_epochs=1, features=V)
    with pytest.raises(ValueError, match=r"first_layer_weight \(2, 4\) and features \(2, 3\)"):
        FeatureAlignment(FeatureAlignment.Config()).setup(trainer, module, "fit")


@pytest.mark.parametrize("threshold", [-0.1, 1.0])
def test_feature_alignment_threshold_range(threshold):
    with pytest.raises(Exception, match=r"callbacks.feature_alignment.threshold=.* is out of range"):
        FeatureAlignment.Config(threshold=threshold).validate("callbacks.feature_alignment")


# ---------------------------------------------------------------------------------------------- predictor dynamics


def test_predictor_metrics_on_a_hand_made_head():
    w = torch.tensor([[1.0, 0.3], [0.0, 1.0]])
    metrics = {key: value[0] for key, value in predictor_metrics(w[None]).items()}
    values = scalars(w, metrics)
    assert values["predictor/offdiag_12"] == pytest.approx(0.3) and values["predictor/offdiag_21"] == 0.0
    assert values["predictor/offdiag_norm"] == pytest.approx(0.3)
    assert values["predictor/identity_distance"] == pytest.approx(0.3)
    assert values["predictor/norm"] == pytest.approx(math.sqrt(2.09))
    assert values["predictor/asymmetry"] == pytest.approx(0.3 * math.sqrt(2) / math.sqrt(2.09))
    assert values["predictor/eigenvalue1"] == pytest.approx(1.0) and values["predictor/eigenvalue2"] == pytest.approx(1.0)


def test_eigenvalues_are_moduli_sorted_and_heads_are_read_in_a_stack():
    heads = torch.tensor([[[0.0, -1.0], [1.0, 0.0]],  # a rotation: eigenvalues +-i
                          [[2.0, 0.0], [0.0, -3.0]],
                          [[0.0, 0.0], [0.0, 0.0]]])
    metrics = predictor_metrics(heads)
    torch.testing.assert_close(metrics["eigenvalues"], torch.tensor([[1.0, 1.0], [3.0, 2.0], [0.0, 0.0]]).double())
    torch.testing.assert_close(metrics["asymmetry"][:2], torch.tensor([2.0, 0.0]).double())  # ||2A|| / ||A||
    assert metrics["asymmetry"][2].isnan()
    torch.testing.assert_close(metrics["identity_distance"], torch.tensor([2.0, math.sqrt(17), math.sqrt(2)]).double())
    assert predictor_metrics(torch.full((1, 2, 2), math.nan))["eigenvalues"].isnan().all()


def test_wide_heads_log_no_single_entries():
    w = torch.eye(5)
    values = scalars(w, {key: value[0] for key, value in predictor_metrics(w[None]).items()})
    assert not any("offdiag_" in key and key != "predictor/offdiag_norm" for key in values)
    assert [values[f"predictor/eigenvalue{k}"] for k in range(1, 6)] == [1.0] * 5


def test_linear_head_reads_square_weights_only():
    assert linear_head(SimpleNamespace(predictor=torch.nn.Identity())) is None
    assert linear_head(SimpleNamespace()) is None
    assert linear_head(SimpleNamespace(predictor=torch.nn.Linear(3, 4))) is None
    assert linear_head(SimpleNamespace(predictor=torch.nn.Linear(3, 3))).shape == (3, 3)


def test_predictor_dynamics_cadence_per_step_and_per_epoch(tmp_path):
    """4 steps an epoch, 3 epochs; a reading every 3 steps and at every 2nd epoch and the last (step 12 once)."""
    head = LinearPredictor(2, bias=False, init="identity", frozen_diagonal=True)
    method = SimpleNamespace(predictor=head, config=SimpleNamespace(name="simsiam"))
    trainer, module, logged = stand_ins(tmp_path, method, max_epochs=3)
    callback = PredictorDynamics.from_config(PredictorDynamics.Config(every_n_steps=3, every_n_epochs=2), 100)
    callback.setup(trainer, module, "fit")
    for epoch in range(3):
        trainer.current_epoch = epoch
        for i in range(4):
            index = 4 * epoch + i
            with torch.no_grad():
                head.linear.weight.copy_(torch.tensor([[5.0, 0.1 * index], [-0.01 * index, 5.0]]))
            trainer.global_step = index + 1
            callback.on_optimizer_step(trainer, module, StepInfo(index, epoch, i, 0, torch.tensor(0.0), 0.1))
        callback.on_train_epoch_end(trainer, module)
    records = lines(tmp_path / "predictor.jsonl")
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 3), (2, 6), (2, 8), (3, 9), (3, 12)]
    for record in records:
        index = record["step"] - 1
        torch.testing.assert_close(torch.tensor(record["weight"]),  # the frozen diagonal stays 1
                                   torch.tensor([[1.0, 0.1 * index], [-0.01 * index, 1.0]]))
        assert record["offdiag_norm"] == pytest.approx(math.hypot(0.1 * index, 0.01 * index))
        assert record["identity_distance"] == pytest.approx(record["offdiag_norm"])
        assert len(record["eigenvalues"]) == 2
    assert {epoch for epoch, _, _ in logged} == {2, 3}  # module.log at due epochs only
    by_epoch = {(epoch, key): value for epoch, key, value in logged}
    assert by_epoch[2, "predictor/offdiag_12"] == pytest.approx(0.7) and by_epoch[3, "predictor/offdiag_21"] == (
        pytest.approx(-0.11))
    wandb = trainer.loggers[0].logged  # the per-step readings only; epoch ends go through module.log
    assert [entry["trainer/global_step"] for entry in wandb] == [3, 6, 9, 12]
    assert wandb[1]["predictor/offdiag_12"] == pytest.approx(0.5)


def test_predictor_dynamics_without_a_linear_head_warns_once_and_logs_nothing(tmp_path):
    method = SimpleNamespace(predictor=torch.nn.Identity(), config=SimpleNamespace(name="byol"))
    trainer, module, logged = stand_ins(tmp_path, method, max_epochs=1)
    callback = PredictorDynamics(PredictorDynamics.Config(every_n_steps=1))
    with pytest.warns(UserWarning, match="method.name=byol has no linear predictor") as caught:
        callback.setup(trainer, module, "fit")
    assert len(caught) == 1
    callback.on_optimizer_step(trainer, module, StepInfo(0, 0, 0, 0, torch.tensor(0.0), 0.1))
    callback.on_train_epoch_end(trainer, module)
    assert logged == [] and not (tmp_path / "predictor.jsonl").exists()


@pytest.mark.parametrize("key", ["every_n_steps", "every_n_epochs"])
def test_predictor_dynamics_cadence_must_be_positive(key):
    with pytest.raises(Exception, match=rf"callbacks.predictor_dynamics.{key}=0 must be > 0"):
        PredictorDynamics.Config(**{key: 0}).validate("callbacks.predictor_dynamics")


# ------------------------------------------------------------------------------------------------------ tiny fits


@register("data", "sparse_coding_features")
class FeaturesDataModule(SparseCodingDataModule):
    """Sparse-coding data whose first two dictionary atoms serve as the ground-truth features."""

    @dataclass
    class Config(SparseCodingDataModule.Config):
        def provides(self) -> set[str]:
            return {*super().provides(), "features"}

    @classmethod
    def from_config(cls, config: Config, seed: int) -> FeaturesDataModule:
        data = super().from_config(config, seed)
        data.features = data.dictionary[:, :2].T.contiguous()
        return data


def metrics_of(run_dir: Path) -> dict[str, float]:
    """The last logged value of every key in ``metrics.jsonl``."""
    last: dict[str, float] = {}
    for record in lines(run_dir / "metrics.jsonl"):
        last.update(record)
    return last


def test_tiny_fit_records_the_frozen_diagonal_head_every_step(fit_tiny):
    code, run_dir, summary = fit_tiny("method=simsiam", "method.predictor=identity_frozen_diagonal",
                                      "callbacks.predictor_dynamics.every_n_steps=1")
    assert code == 0 and summary["status"] == "finished"
    records = lines(run_dir / "predictor.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # 64 samples in batches of 32, 3 epochs
    assert [r["epoch"] for r in records] == [1, 1, 2, 2, 3, 3]
    for record in records:  # the diagonal stays at 1: the distance to I is the off-diagonal's norm
        assert record["identity_distance"] == pytest.approx(record["offdiag_norm"], rel=1e-6)
        assert 0 < record["offdiag_norm"] < 1 and len(record["eigenvalues"]) == 8 and "weight" not in record
    metrics = metrics_of(run_dir)
    assert metrics["predictor/offdiag_norm"] == pytest.approx(records[-1]["offdiag_norm"], rel=1e-6)
    assert metrics["predictor/eigenvalue1"] == pytest.approx(records[-1]["eigenvalues"][0], rel=1e-6)


def test_tiny_fit_without_a_predictor_warns_and_writes_nothing(fit_tiny):
    with pytest.warns(UserWarning, match="method.name=simclr has no linear predictor"):
        code, run_dir, summary = fit_tiny("callbacks.predictor_dynamics.every_n_steps=1")
    assert code == 0 and summary["status"] == "finished"
    assert not (run_dir / "predictor.jsonl").exists()
    assert not any(key.startswith("predictor/") for key in metrics_of(run_dir))


def test_tiny_fit_aligns_neurons_with_the_datamodules_features(fit_tiny):
    code, run_dir, summary = fit_tiny("data.name=sparse_coding_features", "callbacks.feature_alignment.threshold=0.3",
                                      "callbacks.feature_alignment.every_n_epochs=1")
    assert code == 0 and summary["status"] == "finished"
    records = lines(run_dir / "alignment.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    scores = torch.tensor(records[-1]["alignment"])
    assert scores.shape == (8, 2) and bool(((scores >= 0) & (scores <= 1)).all())
    metrics = metrics_of(run_dir)
    assert metrics["align/neuron8_feature2"] == pytest.approx(scores[7, 1].item(), rel=1e-6)
    detects = records[-1]["detects"]
    assert metrics["align/features_detected"] == len({d for d in detects if d})
    assert metrics["align/collapsed"] == float(records[-1]["collapsed"])


def test_feature_alignment_needs_features_from_the_data(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "quickstart", "callbacks.feature_alignment.threshold=0.5",
                             "--print-config")
    message = error_line(code, err, out)
    assert message.startswith("callbacks.feature_alignment needs ") and "~callbacks.feature_alignment" in message
