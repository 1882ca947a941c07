"""The invertible-MLP datamodule: the mixing and its inverse, the marginals and conditionals, the epoch stream, the
latent interface, config errors and a tiny fit through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy import special

from datamodules.invertible_mlp import (
    InvertibleMLPDataModule,
    condition_numbers,
    sample_vmf,
)
from ssl_bench.config.compose import load
from ssl_bench.errors import ConfigError

Config = InvertibleMLPDataModule.Config
FAST = {"condition_draws": 500, "condition_quantile": 0.25, "steps_per_epoch": 3, "batch_size": 64,
        "eval_samples": 128}


def make(seed: int = 0, **keys) -> InvertibleMLPDataModule:
    config = Config(name="invertible_mlp", **{**FAST, **keys})
    config.validate("data")
    return InvertibleMLPDataModule(config, seed)


def pairs(data: InvertibleMLPDataModule, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = data.sample_marginal(n, generator)
    return z, data.sample_conditional(z, generator)


def mean_resultant_length(kappa: float, d: int) -> float:
    """``A_d(kappa) = I_(d/2)(kappa) / I_(d/2-1)(kappa)``: E[mu^T x] of a vMF on S^(d-1)."""
    return float(special.ive(d / 2, kappa) / special.ive(d / 2 - 1, kappa))


# -- the mixing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixing", ["linear", "mlp"])
def test_unmixing_inverts_mixing(mixing):
    data = make(mixing=mixing, mixing_layers=3, d=10)
    assert len(data.weights) == (1 if mixing == "linear" else 3)
    z, _ = pairs(data, 2000)
    x = data.mixing(z)
    assert (data.unmixing(x) - z).abs().max() < 1e-4  # float32 rounding, amplified by the layers' conditions
    x64 = data.mixing(z.double())
    assert x64.dtype == torch.float64 and (x64 - x).abs().max() < 1e-5
    assert (data.unmixing(x64) - z.double()).abs().max() < 1e-10
    assert (data.mixing(data.unmixing(x64)) - x64).abs().max() < 1e-10
    if mixing == "mlp":  # not linear: g(a + b) != g(a) + g(b)
        assert (data.mixing(z[:10] + z[10:20]) - x[:10] - x[10:20]).abs().max() > 1e-3
    assert data.input_dim == data.latent_dim == 10


def test_layers_meet_condition_bound_and_are_column_normalized():
    low, high = make(mixing_layers=4, condition_quantile=0.05), make(mixing_layers=4, condition_quantile=0.9)
    assert low.condition_threshold < high.condition_threshold
    for data in (low, high):
        for w in data.weights:
            assert float(condition_numbers(w)) <= data.condition_threshold
            assert torch.allclose(w.norm(dim=0), torch.ones(w.shape[1], dtype=w.dtype))
            assert w.abs().max() <= 1
    # the default (cl-ica's main_mlp): the best of 25000 draws
    default = make(condition_quantile=0.0, condition_draws=25000, d=6)
    assert all(float(condition_numbers(w)) <= default.condition_threshold for w in default.weights)
    assert default.condition_threshold < low.condition_threshold


def test_mixing_is_reproducible_from_the_seed():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights))
    assert all(not torch.allclose(u, v) for u, v in zip(a.weights, c.weights))
    z = torch.rand(5, 10)
    assert torch.equal(a.mixing(z), b.mixing(z))


# -- marginals and conditionals -------------------------------------------------------------------------------------


def test_box_samples_stay_inside_the_box():
    data = make(space="box", n_content=3, style_scale=0.3)
    z, z_tilde = pairs(data, 20000)
    for t in (z, z_tilde):
        assert t.min() >= 0 and t.max() <= 1
    assert torch.allclose(z.mean(0), torch.full((10,), 0.5), atol=0.02)
    assert torch.allclose(z.var(0), torch.full((10,), 1 / 12), atol=0.005)
    for marginal, noise in (("normal", "laplace"), ("laplace", "generalized_normal")):
        truncated = make(space="box", marginal=marginal, marginal_scale=1.0, style_noise=noise, style_scale=0.5)
        z, z_tilde = pairs(truncated, 20000)
        assert z.min() >= 0 and z.max() <= 1 and z_tilde.min() >= 0 and z_tilde.max() <= 1
        assert torch.allclose(z.mean(0), torch.full((10,), 0.5), atol=0.02)
        assert (z_tilde != z).all()


@pytest.mark.parametrize("marginal,variance", [("normal", 0.25), ("laplace", 2 * 0.5**2),
                                               ("generalized_normal",
                                                0.5**2 * math.gamma(3 / 3) / math.gamma(1 / 3))])
def test_real_marginals_have_their_moments(marginal, variance):
    data = make(space="real", marginal=marginal, marginal_scale=0.5, marginal_beta=3.0, d=4)
    z, _ = pairs(data, 40000)
    assert z.mean(0).abs().max() < 0.03
    assert torch.allclose(z.var(0), torch.full((4,), variance), rtol=0.06)


@pytest.mark.parametrize("noise,std", [("normal", 0.2), ("laplace", math.sqrt(2) * 0.2),
                                       ("generalized_normal", 0.2 * math.sqrt(math.gamma(3 / 3) / math.gamma(1 / 3)))])
def test_content_is_kept_and_style_spreads_as_configured(noise, std):
    data = make(space="real", marginal="normal", n_content=3, d=8, style_noise=noise, style_scale=0.2)
    assert data.latent_groups == {"content": [0, 1, 2], "style": [3, 4, 5, 6, 7]}
    z, z_tilde = pairs(data, 40000)
    assert torch.equal(z[:, :3], z_tilde[:, :3])
    step = z_tilde[:, 3:] - z[:, 3:]
    assert step.mean(0).abs().max() < 0.01
    assert torch.allclose(step.std(0), torch.full((5,), std), rtol=0.05)


def test_style_change_probability_is_respected():
    data = make(space="real", marginal="normal", n_content=2, d=6, style_change_prob=0.3)
    z, z_tilde = pairs(data, 20000)
    changed = z_tilde != z
    assert not changed[:, :2].any()
    assert abs(float(changed[:, 2:].float().mean()) - 0.3) < 0.01
    box = make(space="box", n_content=2, d=6, style_change_prob=0.6)
    z, z_tilde = pairs(box, 20000)
    assert abs(float((z_tilde != z)[:, 2:].float().mean()) - 0.6) < 0.01
    always = make(space="real", marginal="normal", n_content=2, d=6)
    z, z_tilde = pairs(always, 1000)
    assert (z_tilde != z)[:, 2:].all()


@pytest.mark.parametrize("d,kappa", [(2, 3.0), (3, 5.0), (10, 30.0), (10, 1.0)])
def test_vmf_mean_resultant_length(d, kappa):
    generator = torch.Generator().manual_seed(1)
    mu = torch.nn.functional.normalize(torch.randn(30000, d, generator=generator), dim=1)
    x = sample_vmf(mu, kappa, generator)
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-5)
    cos = (x * mu).sum(1)
    assert abs(float(cos.mean()) - mean_resultant_length(kappa, d)) < 0.01
    # the component orthogonal to mu has no preferred direction
    assert (x - cos[:, None] * mu).mean(0).abs().max() < 0.02


def test_sphere_pairs_keep_content_and_move_style_by_vmf():
    kappa = 20.0
    data = make(space="sphere", d=7, n_content=3, style_noise="vmf", style_scale=kappa)
    z, z_tilde = pairs(data, 20000)
    for t in (z, z_tilde):
        assert torch.allclose(t.norm(dim=1), torch.ones(len(t)), atol=1e-5)
    assert torch.equal(z[:, :3], z_tilde[:, :3])
    assert z.mean(0).abs().max() < 0.02  # uniform on the sphere
    s, s_tilde = (torch.nn.functional.normalize(t[:, 3:], dim=1) for t in (z, z_tilde))
    assert abs(float((s * s_tilde).sum(1).mean()) - mean_resultant_length(kappa, 4)) < 0.01
    # one changing coordinate: the sub-sphere S^0, where the coordinate keeps its sign with prob (1 + tanh k) / 2
    flip = make(space="sphere", d=4, n_content=3, style_noise="vmf", style_scale=0.5)
    z, z_tilde = pairs(flip, 20000)
    assert torch.equal(z_tilde[:, 3].abs(), z[:, 3].abs())
    assert abs(float((z_tilde[:, 3] * z[:, 3]).sign().mean()) - math.tanh(0.5)) < 0.02


def test_sphere_change_probability_and_normal_noise_stay_on_the_sphere():
    data = make(space="sphere", d=6, n_content=1, style_noise="vmf", style_scale=50.0, style_change_prob=0.5)
    z, z_tilde = pairs(data, 20000)
    assert torch.allclose(z_tilde.norm(dim=1), torch.ones(len(z)), atol=1e-5)
    changed = z_tilde != z
    assert not changed[:, 0].any()
    # a row with a single changing coordinate (probability 5 / 2^5) moves on S^0, where kappa = 50 keeps its sign
    assert abs(float(changed[:, 1:].float().mean()) - (2.5 - 5 / 32) / 5) < 0.015
    normal = make(space="sphere", d=6, n_content=2, style_noise="normal", style_scale=0.1)
    z, z_tilde = pairs(normal, 5000)
    assert torch.allclose(z_tilde.norm(dim=1), torch.ones(len(z)), atol=1e-5)
    assert torch.equal(z[:, :2], z_tilde[:, :2])


# -- the epoch stream and the latent interface ------------------------------------------------------------------------


def test_epochs_are_a_function_of_seed_and_epoch():
    a, b = make(seed=2), make(seed=2)
    first, again, second = a.epoch_batches(0), b.epoch_batches(0), a.epoch_batches(1)
    assert len(first) == 3 and first[0].view1.shape == (64, 10) and first[0].labels is None
    for u, v in zip(first, again):
        assert torch.equal(u.view1, v.view1) and torch.equal(u.view2, v.view2)
    assert not torch.allclose(first[0].view1, second[0].view1)
    latents = a.epoch_latents(1)
    for batch, (z, z_tilde) in zip(second, latents):
        assert torch.equal(batch.view1, a.mixing(z)) and torch.equal(batch.view2, a.mixing(z_tilde))
    assert torch.equal(a.epoch_latents(0)[0][0], b.epoch_latents(0)[0][0])  # drawn again after epoch 1
    assert not torch.equal(make(seed=3).epoch_latents(0)[0][0], latents[0][0])


def test_ddp_shares_are_shards_of_the_one_process_epoch():
    data, double = make(seed=5, batch_size=32), make(seed=5, batch_size=64)
    whole = double.epoch_latents(4)
    shares = [data.epoch_latents(4, rank, 2) for rank in (0, 1)]
    for b, (z, _) in enumerate(whole):
        assert torch.equal(shares[0][b][0], z[0::2]) and torch.equal(shares[1][b][0], z[1::2])


def test_latent_probe_data_and_evaluation_inputs():
    data = make(seed=1, n_content=4)
    (x_train, z_train), (x_test, z_test) = data.latent_probe_data(300)
    assert x_train.shape == z_train.shape == x_test.shape == z_test.shape == (300, 10)
    assert torch.equal(x_train, data.mixing(z_train)) and torch.equal(x_test, data.mixing(z_test))
    assert not torch.allclose(z_train, z_test)
    again = data.latent_probe_data(300)
    assert torch.equal(again[0][1], z_train) and torch.equal(again[1][1], z_test)
    epoch = torch.cat([z for z, _ in data.epoch_latents(0)])
    assert not any(torch.allclose(epoch[:150], t[:150]) for t in (z_train, z_test))
    assert data.evaluation_inputs(50).shape == (50, 10) and data.evaluation_inputs(10_000).shape == (128, 10)
    assert data.latent_groups == {"content": [0, 1, 2, 3], "style": [4, 5, 6, 7, 8, 9]}
    assert make().latent_groups == {"style": list(range(10))}
    assert make(n_content=10).latent_groups == {"content": list(range(10))}
    assert data.num_classes is None and Config().provides() == {"vectors", "latents"}


# -- config errors and the CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["data.n_content=11"], "data.n_content=11 is out of range; allowed: 0 to data.d=10"),
    (["data.space=sphere", "data.style_noise=vmf", "data.style_scale=0"],
     "data.style_scale=0.0 (the vMF concentration"),
    (["data.style_noise=vmf"], "data.style_noise=vmf needs data.space=sphere"),
    (["data.space=torus"], "data.space='torus' is not allowed; choose one of: box, sphere, real"),
    (["data.space=real"], "data.marginal='uniform' is not allowed with data.space=real"),
    (["data.style_change_prob=0"], "data.style_change_prob=0.0 is out of range"),
    (["data.mixing=flow"], "data.mixing='flow' is not allowed"),
])
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        load("base", ["data=invertible_mlp", "callbacks=images", *overrides])
    text = str(error.value)
    assert "\n" not in text and text.startswith(message), text


@pytest.mark.parametrize("latents", [["data.space=box"],
                                     ["data.space=sphere", "data.style_noise=vmf", "data.style_scale=10",
                                      "data.style_change_prob=0.5"]])
def test_tiny_fit_through_the_cli(run_cli, tmp_path, latents):
    experiment = tmp_path / "mlp_data.yaml"
    experiment.write_text("defaults:\n  - base\n  - override /data: invertible_mlp\n  - override /callbacks: images\n"
                          "  - _self_\nexperiment: invertible_mlp_tiny\n")
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", experiment, "data.d=4", "data.n_content=1", "data.batch_size=32",
                             "data.steps_per_epoch=2", "data.condition_draws=200", "data.eval_samples=64",
                             "encoder.width=8", "callbacks.spectrum.samples=64", "trainer.max_epochs=2",
                             "trainer.metrics_every_n_epochs=1", "trainer.progress=none", "logger=none",
                             f"run_dir={run_dir}", *latents)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert math.isfinite(summary["metrics"]["train/loss"])
    assert "spectrum/effective_rank" in summary["metrics"]


def test_a_mixing_draw_that_never_meets_its_threshold_is_one_line(monkeypatch):
    import datamodules.invertible_mlp as invertible_mlp
    from ssl_bench.errors import DataError

    monkeypatch.setattr(invertible_mlp, "MAX_REDRAW_ROUNDS", 0)
    with pytest.raises(DataError) as error:
        make()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("no 10x10 mixing matrix out of 0 x ") and message.endswith(
        "; raise data.condition_quantile")
