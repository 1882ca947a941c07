"""Embedding spectrum, effective rank, std of l2-normalized embeddings and linear readout: the metrics against direct
formulas, the callbacks in a real Trainer with the run directory's recorder and an offline W&B logger."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules.sparse_coding import SparseCodingDataModule
from ssl_bench.batch import Views
from ssl_bench.callbacks.readout import LinearReadout
from ssl_bench.callbacks.spectrum import EigenSpectrum, frozen_representations
from ssl_bench.ops.metrics import (
    effective_rank,
    embedding_spectrum,
    fit_linear_readout,
    numerical_rank,
    std_l2,
)
from ssl_bench.train.lightning_module import CallbackAdapter, DataModuleAdapter
from ssl_bench.train.recorder import RunRecorder

SPECTRUM_KEYS = [f"{name}{suffix}" for suffix in ("", "_backbone")
                 for name in ("spectrum/effective_rank", "spectrum/rank", "collapse/std_l2")]
READOUT_KEYS = ["readout/backbone_acc", "readout/projector_acc"]


def normalized(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("n,d", [(50, 7), (9, 12), (300, 3)])
def test_embedding_spectrum_matches_numpy(n, d):
    rng = np.random.default_rng(n + d)
    z = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, size=d) + rng.normal(size=d)
    expected = np.linalg.svd(np.cov(normalized(z).T), compute_uv=False)
    got = embedding_spectrum(torch.from_numpy(z).float())
    assert got.dtype == torch.float64 and got.shape == (d,)
    assert torch.all(got[:-1] >= got[1:])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-9)


def test_embedding_spectrum_is_scale_invariant_per_row_and_rejects_bad_shapes():
    z = torch.randn(40, 6, dtype=torch.float64)
    scaled = z * torch.rand(40, 1, dtype=torch.float64).add(0.1)
    torch.testing.assert_close(embedding_spectrum(scaled), embedding_spectrum(z))
    for shape in [(1, 5), (5,), (2, 3, 4)]:
        with pytest.raises(ValueError):
            embedding_spectrum(torch.randn(shape))


def test_effective_rank():
    assert effective_rank(torch.ones(17)) == pytest.approx(17)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0, 0.0])) == pytest.approx(1)
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2)
    assert effective_rank(torch.zeros(4)) == 0.0
    s = np.random.default_rng(0).uniform(size=10)
    p = s / s.sum()
    assert effective_rank(torch.from_numpy(s)) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert 1 <= effective_rank(torch.from_numpy(s)) <= 10


def test_numerical_rank_is_relative_and_finds_the_rank_of_low_rank_data():
    s = torch.tensor([1.0, 1e-3, 1e-5, 0.0])
    assert numerical_rank(s, 1e-4) == 2 and numerical_rank(s * 1e6, 1e-4) == 2
    assert numerical_rank(s, 1e-6) == 3 and numerical_rank(torch.zeros(3), 1e-4) == 0
    rng = np.random.default_rng(1)
    z = torch.from_numpy(rng.normal(size=(200, 3)) @ rng.normal(size=(3, 16)))
    spectrum = embedding_spectrum(z)
    assert numerical_rank(spectrum, 1e-8) == 3
    assert numerical_rank(embedding_spectrum(torch.randn(200, 16)), 1e-8) == 16


def test_std_l2():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4000, 32))
    assert std_l2(torch.from_numpy(z)) == pytest.approx(np.std(normalized(z), axis=0, ddof=1).mean() * np.sqrt(32))
    assert std_l2(torch.from_numpy(z)) == pytest.approx(1.0, abs=0.03)
    collapsed = torch.from_numpy(rng.uniform(0.5, 2, size=(100, 1)) * rng.normal(size=(1, 32)))
    assert std_l2(collapsed) == pytest.approx(0.0, abs=1e-6)


def clusters(n: int, d: int, classes: int, separation: float, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centers = separation * torch.randn(classes, d, generator=torch.Generator().manual_seed(100))
    labels = torch.randint(classes, (n,), generator=generator)
    return centers[labels] + torch.randn(n, d, generator=generator), labels


def test_linear_readout_separates_clusters_and_is_at_chance_on_random_labels():
    (x_train, y_train), (x_test, y_test) = clusters(800, 20, 4, 3.0, 0), clusters(800, 20, 4, 3.0, 1)
    acc = fit_linear_readout(x_train, y_train, x_test, y_test, 4, epochs=50, lr=1e-2, batch_size=128)
    assert isinstance(acc, float) and acc > 0.95
    assert fit_linear_readout(x_train, y_train, x_test, y_test, 4, epochs=50, lr=1e-2, batch_size=128) == acc
    random_train, random_test = torch.randint(4, (800,)), torch.randint(4, (800,))
    chance = fit_linear_readout(x_train, random_train, x_test, random_test, 4, epochs=50, lr=1e-2, batch_size=128)
    assert abs(chance - 0.25) < 0.08


# ----------------------------------------------------------------------------------------------- datamodule


def test_sparse_coding_evaluation_interface():
    dm = SparseCodingDataModule(n=200, p=12, d=4, latent="one_hot", noise_std=0.1, seed=3)
    assert dm.num_classes == 4
    assert torch.equal(dm.evaluation_inputs(50), dm.inputs[:50])
    assert len(dm.evaluation_inputs(10_000)) == 200
    train, test = dm.readout_dataloaders(64)
    (x_train, y_train), (x_test, y_test) = ([torch.cat(t) for t in zip(*loader)] for loader in (train, test))
    assert torch.equal(x_train, dm.inputs) and torch.equal(y_train, dm.latents.argmax(dim=1))
    assert x_test.shape == x_train.shape and not torch.equal(x_test, x_train)
    clean = dm.dictionary[:, y_test].T
    assert (x_test - clean).std().item() == pytest.approx(0.1, rel=0.1)
    again = torch.cat([x for x, _ in dm.readout_dataloaders(64)[1]])
    assert torch.equal(again, x_test)
    for latent in ("symmetric", "binary"):
        other = SparseCodingDataModule(n=20, p=12, d=4, latent=latent)
        assert other.num_classes is None and other.readout_dataloaders(8) is None


# -------------------------------------------------------------------------------------------------- callbacks


class TinyMethod(nn.Module):
    """MLP backbone and linear projector, read by the callbacks through :meth:`representations`, which records the
    train mode and grad mode it was called in."""

    def __init__(self, in_dim: int, hidden: int = 16, out: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, hidden))
        self.projector = nn.Linear(hidden, out, bias=False)
        self.modes: list[tuple[bool, bool]] = []

    def collapse_projector(self, x: Tensor) -> None:
        """Rank-1 projector ``u v^T`` with ``v`` orthogonal to the mean backbone output on ``x``: the embeddings are
        ``(v . h) u`` with both signs of ``v . h``, so their normalized covariance has rank 1 (dimensional collapse;
        one sign only would be complete collapse, whose covariance is rounding noise)."""
        with torch.no_grad():
            h = self.backbone(x)
            mean, v = h.mean(dim=0), h[0] - h[1]
            v = v - (v @ mean) / (mean @ mean) * mean
            self.projector.weight.copy_(torch.randn(self.projector.out_features, 1) @ v.unsqueeze(0))

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        self.modes.append((self.training, torch.is_grad_enabled()))
        h = self.backbone(x)
        return {"backbone": h, "projector": self.projector(h)}


class TinyModel(L.LightningModule):
    """A :class:`TinyMethod` as ``module.method``; the loss trains only the backbone, so a rank-1 projector stays
    rank 1. Batches are ``(x, y)`` (Blobs) or ``list[Views]`` (sparse coding)."""

    def __init__(self, in_dim: int, hidden: int = 16, out: int = 8) -> None:
        super().__init__()
        self.method = TinyMethod(in_dim, hidden, out)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        assert self.training and self.method.training and self.method.backbone.training
        x = torch.cat([views.view1 for views in batch]) if isinstance(batch[0], Views) else batch[0]
        return 1e-3 * self.method.backbone(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.method.backbone.parameters(), lr=0.01)


class Blobs(L.LightningDataModule):
    """Gaussian clusters with labels (or without: ``classes=None`` means one unlabelled cloud)."""

    def __init__(self, n: int = 256, dim: int = 6, classes: int | None = 3) -> None:
        super().__init__()
        self.num_classes = classes
        self.x, self.y = clusters(n, dim, classes or 1, 4.0, 0)
        self.x_test, self.y_test = clusters(n, dim, classes or 1, 4.0, 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=64)

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        return self.x[:num_samples]

    def readout_dataloaders(self, batch_size: int) -> tuple[DataLoader, DataLoader] | None:
        if self.num_classes is None:
            return None
        return (DataLoader(TensorDataset(self.x, self.y), batch_size=batch_size),
                DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=batch_size))


def fit(tmp_path, model, datamodule, max_epochs=2, every_n_epochs=1, wandb=False) -> dict:
    """Fit with both callbacks; return the summary's metrics."""
    recorder = RunRecorder(tmp_path)
    loggers = [recorder, WandbLogger(save_dir=str(tmp_path), offline=True)] if wandb else [recorder]
    callbacks = [CallbackAdapter("spectrum", EigenSpectrum(EigenSpectrum.Config(samples=200), every_n_epochs)),
                 CallbackAdapter("readout", LinearReadout(LinearReadout.Config(epochs=100)))]
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=loggers, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, default_root_dir=str(tmp_path))
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        recorder.write_summary("finished", epochs=trainer.current_epoch)
        if wandb:
            import wandb as wandb_module

            wandb_module.finish()
    return json.loads((tmp_path / "summary.json").read_text())["metrics"]


def spectra(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "spectra.jsonl").read_text().splitlines()]


def test_callbacks_record_a_collapsed_projector(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    model, datamodule = TinyModel(6), Blobs()
    model.method.collapse_projector(datamodule.x)
    metrics = fit(tmp_path, model, datamodule, wandb=True)
    for key in SPECTRUM_KEYS + READOUT_KEYS:
        assert key in metrics, key
    assert metrics["spectrum/rank"] == 1 and metrics["spectrum/effective_rank"] == pytest.approx(1, abs=1e-3)
    assert metrics["spectrum/rank_backbone"] > 3 and metrics["spectrum/effective_rank_backbone"] > 2
    assert metrics["readout/backbone_acc"] > 0.9
    assert f"backbone {metrics['readout/backbone_acc']:.4f}" in capsys.readouterr().out
    assert model.method.modes and all(mode == (False, False) for mode in model.method.modes)

    records = spectra(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(records[-1]["backbone"]) == 16 and len(records[-1]["projector"]) == 8
    with torch.no_grad():
        final = model.method.eval().representations(datamodule.x[:200])
    for kind in ("backbone", "projector"):
        np.testing.assert_allclose(records[-1][kind], embedding_spectrum(final[kind]).numpy(), rtol=1e-6, atol=1e-12)
    assert metrics["spectrum/effective_rank_backbone"] == pytest.approx(
        effective_rank(torch.tensor(records[-1]["backbone"])))
    assert metrics["collapse/std_l2_backbone"] == pytest.approx(std_l2(final["backbone"]))
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/table/spectrum/log_singular_values*.table.json"))


def test_unlabelled_data_skips_the_readout(tmp_path):
    metrics = fit(tmp_path, TinyModel(6), Blobs(classes=None), max_epochs=3, every_n_epochs=2)
    assert all(key in metrics for key in SPECTRUM_KEYS)
    assert not any(key in metrics for key in READOUT_KEYS)
    assert [r["epoch"] for r in spectra(tmp_path)] == [2, 3]
    assert metrics["spectrum/rank"] == 8 and metrics["collapse/std_l2"] > 0.1


def test_callbacks_with_one_hot_sparse_coding(tmp_path):
    data = SparseCodingDataModule(n=256, p=12, d=4, latent="one_hot", noise_std=0.05, batch_size=64)
    metrics = fit(tmp_path, TinyModel(12), DataModuleAdapter(data))
    assert all(key in metrics for key in SPECTRUM_KEYS + READOUT_KEYS)
    assert metrics["readout/backbone_acc"] > 0.9
    # the inputs are four atoms plus small noise: the embeddings concentrate near a 3-dimensional affine span
    assert metrics["spectrum/effective_rank_backbone"] < 5
    assert len(spectra(tmp_path)[-1]["backbone"]) == 16


def test_complete_collapse_has_rank_zero():
    z = torch.randn(1, 8, dtype=torch.float64).repeat(64, 1) * torch.rand(64, 1, dtype=torch.float64)
    s = embedding_spectrum(z)
    assert numerical_rank(s, 1e-4) == 0 and effective_rank(s) == 0.0
    assert std_l2(z) < 1e-6


def test_frozen_representations_run_in_eval_mode_and_restore_every_submodule():
    method = TinyMethod(6).train()
    method.projector.eval()  # a mixed state, which must come back as it was
    x = torch.randn(10, 6)
    features = frozen_representations(method, x.split(4), torch.device("cpu"))
    assert method.modes == [(False, False)] * 3  # one call per batch, in eval mode without gradients
    assert method.training and method.backbone.training and not method.projector.training
    assert features["backbone"].shape == (10, 16) and features["projector"].shape == (10, 8)
    assert not features["backbone"].requires_grad
    with torch.no_grad():
        torch.testing.assert_close(features["projector"], method.projector(method.backbone(x)))


def test_weight_spectrum_of_the_first_layer(run_cli, tmp_path):
    """``callbacks.spectrum.weights`` records the first-layer weight's singular values over the largest, the same as
    a direct SVD of the checkpointed weight."""
    from conftest import TINY

    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "callbacks.spectrum.weights=true",
                             "trainer.checkpoint_every_n_epochs=1", f"run_dir={run_dir}")
    assert code == 0, err
    weight = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"][
        "method.encoder.layers.0.linear.weight"].double()
    s = np.linalg.svd(weight.numpy(), compute_uv=False)
    record = json.loads((run_dir / "spectra.jsonl").read_text().splitlines()[-1])
    np.testing.assert_allclose(record["weight"], s / s.max(), rtol=1e-6, atol=1e-9)
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert metrics["spectrum/weight_effective_rank"] == pytest.approx(effective_rank(torch.from_numpy(s)))
    assert metrics["spectrum/weight_rank"] == min(weight.shape)


def test_weight_spectrum_needs_a_first_layer_weight(run_cli):
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "callbacks.spectrum.weights=true", "--print-config")
    assert code == 2
    assert err.strip() == ("ssl-bench: error: callbacks.spectrum needs a first-layer weight matrix (e.g. "
                           "encoder.name=sparse), which data.name=cifar10 with encoder.name=resnet18 does not provide; "
                           "turn off the callbacks.spectrum option that needs it")
