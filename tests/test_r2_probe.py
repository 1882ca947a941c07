"""Held-out R^2 of the latents from every layer (``ssl_bench.ops.metrics.r2_scores``), the encoders' ``layer_outputs``,
the MLP encoder and the ``r2_probe`` callback through the CLI."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_line

from datamodules.sparse_coding import SparseCodingDataModule
from ssl_bench.callbacks.r2_probe import R2Probe, heatmap_pixels
from ssl_bench.nets.mlp import MLPEncoder
from ssl_bench.nets.resnet import ResNetBackbone
from ssl_bench.nets.sparse import SparseEncoder
from ssl_bench.ops.metrics import r2_scores


def gaussian(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_r2_is_one_for_an_affine_function_of_the_features():
    x, x_test = gaussian(300, 5, seed=0), gaussian(200, 5, seed=1)
    weight, intercept = gaussian(5, 3, seed=2), torch.tensor([2.0, -1.0, 5.0])
    scores = r2_scores(x, x @ weight + intercept, x_test, x_test @ weight + intercept)
    assert torch.allclose(scores["r2"], torch.ones(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(scores["adjusted_r2"], torch.ones(3, dtype=torch.float64), atol=1e-9)


def test_r2_is_about_zero_for_independent_noise():
    scores = r2_scores(gaussian(2000, 10, seed=0), gaussian(2000, 4, seed=1), gaussian(2000, 10, seed=2),
                       gaussian(2000, 4, seed=3))
    assert (scores["r2"].abs() < 0.05).all(), scores
    assert (scores["adjusted_r2"] < scores["r2"]).all()


def test_r2_and_adjusted_r2_against_numpy_least_squares():
    x, x_test = gaussian(400, 6, seed=0), gaussian(150, 6, seed=1)
    z = torch.tanh(x[:, :3] @ gaussian(3, 2, seed=2)) + 0.3 * gaussian(400, 2, seed=3)
    z_test = torch.tanh(x_test[:, :3] @ gaussian(3, 2, seed=2)) + 0.3 * gaussian(150, 2, seed=4)
    scores = r2_scores(x, z, x_test, z_test)
    design = np.c_[np.ones(400), x.double().numpy()]
    coefficients = np.linalg.lstsq(design, z.double().numpy(), rcond=None)[0]
    prediction = np.c_[np.ones(150), x_test.double().numpy()] @ coefficients
    truth = z_test.double().numpy()
    r2 = 1 - ((truth - prediction) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(scores["r2"].numpy(), r2, rtol=1e-8, atol=1e-10)
    n, k = 150, 6
    np.testing.assert_allclose(scores["adjusted_r2"].numpy(), 1 - (1 - r2) * (n - 1) / (n - k - 1), rtol=1e-8)
    assert 0.2 < r2.min() and r2.max() < 0.99


def test_r2_of_collapsed_features_ignores_the_redundant_directions():
    """A layer whose many features span a few directions (collapse) reads the latents as its span does."""
    x, x_test = gaussian(500, 3, seed=0), gaussian(500, 3, seed=1)
    mixing = gaussian(3, 60, seed=2)
    z, z_test = x @ gaussian(3, 2, seed=3), x_test @ gaussian(3, 2, seed=3)
    full = r2_scores(x @ mixing, z, x_test @ mixing, z_test)["r2"]
    assert torch.allclose(full, torch.ones(2, dtype=torch.float64), atol=1e-6)


def test_r2_is_nan_for_non_finite_features_and_undefined_adjustment():
    x, z = gaussian(50, 4, seed=0), gaussian(50, 2, seed=1)
    bad = x.clone()
    bad[3, 1] = math.inf
    scores = r2_scores(bad, z, x, z)
    assert scores["r2"].isnan().all() and scores["adjusted_r2"].isnan().all()
    wide = r2_scores(gaussian(50, 60, seed=2), z, gaussian(50, 60, seed=3), z)
    assert wide["adjusted_r2"].isnan().all() and wide["r2"].isfinite().all()


def test_sparse_encoder_layer_outputs():
    encoder = SparseEncoder(12, 8, layers=2).eval()
    x = gaussian(16, 12, seed=0)
    outputs = encoder.layer_outputs(x)
    assert [tuple(o.shape) for o in outputs] == [(16, 8), (16, 8)]
    assert torch.equal(outputs[-1], encoder(x))


def test_resnet18_layer_outputs_end_in_the_pooled_features():
    torch.manual_seed(0)
    encoder = ResNetBackbone("resnet18").eval()
    x = gaussian(2, 3, 32, 32, seed=0)
    with torch.no_grad():
        outputs = encoder.layer_outputs(x)
        features = encoder(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 64), (2, 128), (2, 256), (2, 512)]
    assert torch.allclose(outputs[-1], features, atol=1e-6)


def mlp(**keys) -> MLPEncoder:
    config = MLPEncoder.Config(name="mlp", **keys)
    config.validate("encoder")
    return MLPEncoder.from_config(config, types.SimpleNamespace(input_dim=4), torch.Generator().manual_seed(0))


def test_mlp_layer_outputs_widths_and_reproducible_init():
    encoder = mlp(widths=[10, 50, 10], relative_widths=True, output_dim=4)
    x = gaussian(8, 4, seed=0)
    outputs = encoder.layer_outputs(x)
    assert [o.shape[1] for o in outputs] == [40, 200, 40, 4]
    assert torch.equal(outputs[-1], encoder(x))
    assert (outputs[0] < 0).any()  # LeakyReLU keeps negative values, scaled by 0.2
    pre = encoder.layers[0](x)
    assert torch.allclose(outputs[0], torch.where(pre > 0, pre, 0.2 * pre))
    again = mlp(widths=[10, 50, 10], relative_widths=True, output_dim=4)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values()))


def test_mlp_output_modes():
    x = 10 * gaussian(64, 4, seed=0)
    sphere = mlp(widths=[16], output="sphere")(x)
    assert torch.allclose(sphere.norm(dim=1), torch.ones(64), atol=1e-6)
    box = mlp(widths=[16], output="box")(x)
    assert ((box >= 0) & (box <= 1)).all() and box.std() > 0.01


def test_bias_free_linear_encoder_is_a_matrix():
    encoder = mlp(widths=[], output_dim=4, activation="linear", bias=False)
    assert len(encoder.layers) == 1 and encoder.layers[0].bias is None
    x = gaussian(8, 4, seed=0)
    assert torch.allclose(encoder(x), x @ encoder.first_layer_weight.T)
    assert torch.allclose(encoder(2 * x), 2 * encoder(x))
    assert len(encoder.layer_outputs(x)) == 1


def test_sparse_coding_latent_probe_data_is_held_out():
    data = SparseCodingDataModule(n=100, p=12, d=4, noise_std=0.05, seed=3)
    (x, z), (x_test, z_test) = data.latent_probe_data(64)
    assert x.shape == x_test.shape == (64, 12) and z.shape == z_test.shape == (64, 4)
    assert torch.equal(x, data.inputs[:64]) and torch.equal(z, data.latents[:64])
    assert not torch.equal(x, x_test)
    assert torch.allclose(x_test, z_test @ data.dictionary.T, atol=0.5)
    assert data.latent_groups == {"latent": [0, 1, 2, 3]}
    assert data.latent_probe_data(500)[1][0].shape == (100, 12)


def test_heatmap_pixels():
    pixels = heatmap_pixels(torch.tensor([[0.0, 1.0], [float("nan"), 0.5]]), cell=2)
    assert pixels.shape == (4, 4, 3) and pixels.dtype == torch.uint8
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 2].tolist() == [255, 255, 255]
    assert pixels[2, 0].tolist() == [255, 0, 0] and pixels[3, 3].tolist() == [128, 128, 128]


def test_every_n_epochs_falls_back_to_the_run_cadence():
    assert R2Probe.from_config(R2Probe.Config(), 50).every_n_epochs == 50
    assert R2Probe.from_config(R2Probe.Config(every_n_epochs=7), 50).every_n_epochs == 7


def test_r2_probe_end_to_end_on_sparse_coding(fit_tiny):
    code, run_dir, summary = fit_tiny("encoder.layers=2", "callbacks.r2_probe.samples=64",
                                      "callbacks.r2_probe.every_n_epochs=2")
    assert code == 0
    metrics = summary["metrics"]
    for key in ("r2/latent", "r2/layer0/latent", "r2/layer1/latent"):
        assert -1 < metrics[key] <= 1, (key, metrics)
    assert metrics["r2/latent"] == metrics["r2/layer1/latent"]
    records = [json.loads(line) for line in (run_dir / "r2.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 3]
    assert records[0]["step"] < records[1]["step"]
    assert records[-1]["groups"] == {"latent": [0, 1, 2, 3]}
    for key in ("r2", "adjusted_r2"):
        assert np.array(records[-1][key]).shape == (2, 4)
    assert np.mean(records[-1]["adjusted_r2"][1]) == pytest.approx(metrics["r2/latent"])
    assert 0 < metrics["mcc/latent"] <= 1


def probe_once(encoder: torch.nn.Module, data: SparseCodingDataModule, config: R2Probe.Config,
               run_dir: Path) -> dict[str, float]:
    """What the probe logs at the end of the last of 5 epochs (step 10) of a run of ``encoder`` on ``data``."""
    logged: dict[str, float] = {}
    module = types.SimpleNamespace(method=types.SimpleNamespace(encoder=encoder), device=torch.device("cpu"),
                                   log=lambda key, value, **_: logged.__setitem__(key, value))
    trainer = types.SimpleNamespace(datamodule=data, current_epoch=4, max_epochs=5, global_step=10, loggers=[],
                                    is_global_zero=True, default_root_dir=str(run_dir))
    probe = R2Probe.from_config(config, 50)
    probe.setup(trainer, module, "fit")
    probe.on_train_epoch_end(trainer, module)
    return logged


class Identity(torch.nn.Module):
    """An encoder whose output is its input's first columns: the latents themselves, permuted and scaled."""

    def __init__(self, columns: list[int], scale: torch.Tensor) -> None:
        super().__init__()
        self.columns, self.scale = columns, scale

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, self.columns] * self.scale]


def test_mcc_of_permuted_rescaled_latents_is_one_and_of_a_group_its_own(tmp_path):
    """Fed the latents themselves (permuted, scaled, sign-flipped), the output's MCC with every latent is 1."""
    data = SparseCodingDataModule(n=200, p=4, d=4, noise_std=0.0, dictionary="identity", seed=0)
    encoder = Identity([2, 0, 3, 1], torch.tensor([2.0, -1.0, 0.5, -3.0]))
    logged = probe_once(encoder, data, R2Probe.Config(samples=150), tmp_path)
    assert logged["mcc/latent"] == pytest.approx(1.0)


def test_r2_probe_on_cifar_is_a_capability_error(run_cli):
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "+callbacks.r2_probe={}")
    message = error_line(code, err, out)
    assert message.startswith("callbacks.r2_probe needs ground-truth latents"), message
    assert message.endswith("remove it with ~callbacks.r2_probe")


class Diverged(torch.nn.Module):
    """An encoder whose second layer has overflowed."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(12)

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.norm(x)
        return [h, torch.full_like(h, math.inf)]


def test_r2_probe_logs_nan_for_non_finite_layers_and_restores_modes(tmp_path):
    data = SparseCodingDataModule(n=100, p=12, d=4, noise_std=0.05, seed=0)
    encoder = Diverged().train()
    logged = probe_once(encoder, data, R2Probe.Config(samples=80), tmp_path)
    assert encoder.training and encoder.norm.training
    assert 0.5 < logged["r2/layer0/latent"] <= 1
    assert math.isnan(logged["r2/layer1/latent"]) and math.isnan(logged["r2/latent"])
    assert math.isnan(logged["mcc/latent"])
    record = json.loads((tmp_path / "r2.jsonl").read_text())
    assert record["epoch"] == 5 and record["step"] == 10 and record["r2"][1] == ["nan"] * 4
