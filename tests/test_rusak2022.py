"""Rusak et al. 2022 studies: the frozen f = g^-1 encoder, `ssl-bench evaluate` (Table 1's terms) and the configs."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import error_line

from datamodules.invertible_mlp import InvertibleMLPDataModule
from ssl_bench.config import ConfigError
from ssl_bench.config.compose import available_configs, load
from ssl_bench.nets.inverse import InverseEncoder
from ssl_bench.ops.losses import cosine_info_nce, lp_info_nce
from ssl_bench.study.grid import expand_grid
from ssl_bench.train.evaluate import EVALUATION_STREAM, evaluate, info_nce_terms

SMALL = ["data.condition_draws=200"]  # g's condition-number pool: 200 draws instead of 25,000


def small_data(**keys: object) -> InvertibleMLPDataModule:
    config = InvertibleMLPDataModule.Config(d=5, n_content=2, condition_draws=200, batch_size=64, **keys)
    config.name = "invertible_mlp"
    return InvertibleMLPDataModule(config, seed=3)


@pytest.mark.parametrize("space", ["box", "sphere"])
def test_inverse_encoder_recovers_the_latents_of_g(space):
    data = small_data(space=space)
    z = data.sample_marginal(500, torch.Generator().manual_seed(0)).double()
    encoder = InverseEncoder.from_config(InverseEncoder.Config(output_dim=5), data, torch.Generator())
    assert list(encoder.parameters()) == []
    x = data.mixing(z)
    assert (x - z).abs().max() > 0.1  # g is not the identity
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), z, atol=1e-10, rtol=0)
    [output] = encoder.eval().layer_outputs(x)
    torch.testing.assert_close(output, z, atol=1e-10, rtol=0)
    assert encoder.output_dim == 5
    with pytest.raises(ConfigError, match="^encoder.name=inverse .f = g.-1. has nothing to train"):
        encoder.train()(x)  # a training step: refused in one line rather than failing in backward


def test_inverse_encoder_refuses_another_width_and_data_without_unmixing():
    data = small_data()
    with pytest.raises(ConfigError) as err:
        InverseEncoder.from_config(InverseEncoder.Config(output_dim=10), data, torch.Generator())
    assert str(err.value) == ("encoder.output_dim=10 must equal the latent dimension of data.name=invertible_mlp (5) "
                              "for encoder.name=inverse; set encoder.output_dim=5")
    sparse = SimpleNamespace(config=SimpleNamespace(name="sparse_coding"), latent_dim=5)
    with pytest.raises(ConfigError) as err:
        InverseEncoder.from_config(InverseEncoder.Config(output_dim=5), sparse, torch.Generator())
    assert str(err.value) == ("encoder.name=inverse needs data with an exact inverse of its mixing (unmixing), which "
                              "data.name=sparse_coding does not have; use data.name=invertible_mlp")


def test_inverse_width_error_is_one_cli_line(run_cli):
    code, out, err = run_cli("evaluate", "--config", "rusak2022/table1", "data.d=4", *SMALL, "--samples", "50")
    assert error_line(code, err, out).startswith("encoder.output_dim=10 must equal the latent dimension")


@pytest.mark.parametrize("similarity", ["lp", "cosine"])
def test_blockwise_terms_equal_the_single_call(similarity):
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(70, 4, generator=generator, dtype=torch.float64), torch.randn(70, 4, dtype=torch.float64)
    tau = torch.tensor([0.5, 0.5, 1.0, 2.0], dtype=torch.float64)
    direct = lp_info_nce(z1, z2, tau, p=1.5) if similarity == "lp" else cosine_info_nce(z1, z2, tau)
    blocks = info_nce_terms(z1, z2, similarity, tau, p=1.5, normalize=similarity == "cosine", block=16)
    for a, b in zip(direct, blocks):
        torch.testing.assert_close(a, b)


def test_evaluate_inverse_on_the_box_has_the_latent_alignment():
    """With f = g^-1 the embeddings are the latents: alignment = mean ||z - z~||^2 / tau (tau = 1), the style
    noise only (content is shared), and loss = alignment + uniformity."""
    cfg = load("rusak2022/table1", [*SMALL, "data.d=5", "encoder.output_dim=5", "seed=2"])
    result = evaluate(cfg, samples=400, block=128)
    draw = torch.Generator().manual_seed(EVALUATION_STREAM + 2)
    data = InvertibleMLPDataModule(cfg.data, seed=2)
    z = data.sample_marginal(400, draw)
    z_tilde = data.sample_conditional(z, draw)
    assert torch.equal(z[:, :2], z_tilde[:, :2])
    expected = (z - z_tilde).pow(2).sum(dim=1).mean().item()
    assert result["alignment"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert 0 < result["alignment"] < 3 * 0.05**2 * 1.5  # three style latents with sigma 0.05
    assert result["loss"] == pytest.approx(result["alignment"] + result["uniformity"], rel=1e-6)
    assert result["uniformity"] < math.log(400)


def test_evaluate_trained_mlp_on_the_sphere_is_finite(run_cli):
    code, out, err = run_cli("evaluate", "--config", "rusak2022/table1", *SMALL, "encoder=mlp", "encoder.widths=[2]",
                             "data.space=sphere", "data.style_noise=vmf", "method.similarity=cosine",
                             "--samples", "300")
    assert code == 0, err
    result = json.loads(out)
    assert all(math.isfinite(result[k]) for k in ("alignment", "uniformity", "loss"))
    assert result["loss"] == pytest.approx(result["alignment"] + result["uniformity"], rel=1e-6)
    assert -1 <= result["alignment"] <= 1  # -cos / tau with tau = 1
    assert (result["space"], result["similarity"], result["encoder"]) == ("sphere", "cosine", "mlp")
    assert err.startswith("encoder=mlp on sphere (seed 1, 300 pairs, cosine): alignment ")


def test_evaluate_reads_the_encoder_from_a_checkpoint(tmp_path):
    """A checkpoint whose encoder maps everything to 0: every similarity is 0, so alignment 0 and uniformity
    log N (the positive and N - 1 negatives, each exp 0)."""
    from ssl_bench.registry import lookup

    overrides = [*SMALL, "encoder=mlp", "encoder.widths=[3]", "encoder.output_dim=10"]
    cfg = load("rusak2022/table1", overrides)
    data = InvertibleMLPDataModule(cfg.data, seed=1)
    encoder = lookup("encoder", "mlp")
    method = lookup("method", "adaptive_infonce").from_config(
        cfg.method, lambda: encoder.from_config(cfg.encoder, data, torch.Generator()), 10)
    state = {f"method.{k}": torch.zeros_like(v) if "encoder" in k else v for k, v in method.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "last.ckpt")
    result = evaluate(load("rusak2022/table1", [*overrides, f"trainer.resume={tmp_path / 'last.ckpt'}"]), samples=50)
    assert result["alignment"] == 0 and result["uniformity"] == pytest.approx(math.log(50))
    torch.save({"state_dict": {"method.encoder.other": torch.zeros(1)}, "global_step": 1}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="holds another model"):
        evaluate(load("rusak2022/table1", [*overrides, f"trainer.resume={tmp_path / 'other.ckpt'}"]), samples=50)


def test_evaluate_refuses_other_methods(run_cli):
    code, out, err = run_cli("evaluate", "--config", "quickstart", "--samples", "10")
    assert error_line(code, err, out).startswith("evaluate computes the InfoNCE of method.name=adaptive_infonce")


def test_every_rusak2022_config_loads_with_seeds_and_the_papers_table1():
    names = [n for n in available_configs()[0] if n.startswith("rusak2022/")
             and n not in ("rusak2022/table2_cifar10", "rusak2022/linear_regularised")]
    assert names == ["rusak2022/gradient_spectrum", "rusak2022/linear", "rusak2022/nonlinear_box",
                     "rusak2022/nonlinear_sphere", "rusak2022/regularised", "rusak2022/table1"]
    for name in names:
        cfg = load(name, [])
        assert list(cfg.sweep.seeds) == [1, 2, 3] and cfg.sweep.metrics, name
        assert cfg.data.name == "invertible_mlp" and cfg.method.name == "adaptive_infonce", name
    linear = load("rusak2022/linear", [])
    assert (linear.data.d, linear.data.mixing, linear.encoder.bias, linear.callbacks["spectrum"].weights) == (
        8, "linear", False, True)
    points = {p.axes[1][1]: p for p in expand_grid(linear.sweep.grid) if p.axes[0][1] == "box"}
    assert sorted(points) == ["dc0", "dc1", "dc1-tau", "dc2", "dc2-tau", "dc4", "dc4-tau"]
    tau = {dict(p.axes)["tau_c"]: p for p in expand_grid(linear.sweep.grid) if dict(p.axes)["setting"] == "dc2-tau"}
    assert sorted(tau) == ["0.01", "0.03", "0.1", "0.3"]
    smallest = load("rusak2022/linear", list(tau["0.01"].overrides))
    assert (smallest.data.n_content, smallest.method.temperature_groups, smallest.method.temperatures) == (
        2, [2, 6], [0.01, 1.0])
    table1 = load("rusak2022/table1", [])
    assert table1.encoder.name == "inverse"
    values = {row.match["space"]: row.values for row in table1.sweep.reference}
    assert values["box"] == {"train/alignment": 0.23, "train/uniformity": 0.66, "train/loss": 0.89}
    assert values["sphere"] == {"train/alignment": -0.97, "train/uniformity": 9.29, "train/loss": 8.32}
    sphere = [p for p in expand_grid(table1.sweep.grid) if dict(p.axes)["space"] == "sphere"][0]
    trained = load("rusak2022/table1", list(sphere.overrides))
    assert (trained.encoder.name, trained.encoder.output, trained.data.style_noise) == ("mlp", "sphere", "vmf")


# -- the gradient spectrum (App. C, Lemmas 6-7, Prop. 2; App. D.3, Prop. 5) ------------------------------------------


def gradient_case(tmp_path, weight: str, batch_size: int | None = None, content: int = 2):
    """The gradient-spectrum callback on a linear g (d = 8) and f = W x with ``W = A^-1`` ("inverse"), ``W = D A^-1``
    with ``D`` keeping the content latents only ("collapsed": Prop. 4's optimum) or a NaN ``W`` ("diverged"): the
    logged scalars, the data and the method."""
    from ssl_bench.callbacks.gradient_spectrum import GradientSpectrum
    from ssl_bench.registry import lookup

    cfg = load("rusak2022/gradient_spectrum", [*SMALL, "data.batch_size=256", f"data.n_content={content}"])
    data = InvertibleMLPDataModule(cfg.data, seed=1)
    encoder = lookup("encoder", cfg.encoder.name)
    method = lookup("method", "adaptive_infonce").from_config(
        cfg.method, lambda: encoder.from_config(cfg.encoder, data, torch.Generator()), 8)
    keep = {"inverse": torch.ones(8), "collapsed": (torch.arange(8) < content).double() * 5,
            "diverged": torch.full((8,), float("nan"))}[weight]
    with torch.no_grad():
        method.encoder.first_layer_weight.copy_((keep[:, None] * data.inverse_weights[0]).float())
    callback = GradientSpectrum(GradientSpectrum.Config(batch_size=batch_size), 1)
    callback.check(data, method, cfg.optim)
    logged: dict[str, float] = {}
    trainer = SimpleNamespace(datamodule=data, current_epoch=0, max_epochs=1, global_step=0, is_global_zero=True,
                              default_root_dir=str(tmp_path))
    module = SimpleNamespace(method=method, device=torch.device("cpu"),
                             log=lambda name, value, **_: logged.__setitem__(name, value))
    callback.setup(trainer, module, "fit")
    callback.on_train_epoch_end(trainer, module)
    return logged, data, method


def test_largest_gap_counts_the_values_above_the_widest_relative_gap():
    from ssl_bench.callbacks.gradient_spectrum import largest_gap

    assert largest_gap(torch.tensor([10.0, 9.0, 1.0, 0.9])) == 2
    assert largest_gap(torch.tensor([5.0, 0.5, 0.4, 0.3])) == 1
    assert largest_gap(torch.tensor([3.0, 2.0, 0.0, 0.0])) == 2  # a rank-2 spectrum
    assert largest_gap(torch.tensor([0.0, 0.0])) == 0 and largest_gap(torch.tensor([1.0])) == 0


def test_latent_gradient_is_the_gradient_of_w_in_latent_coordinates():
    """For f = W x and x = A z, Gamma = sum_i dL/du_i z_i^T equals dL/dW A^-T (the coordinates of Eq. 15)."""
    from ssl_bench.callbacks.gradient_spectrum import latent_gradient

    generator = torch.Generator().manual_seed(0)
    a, w = torch.randn(4, 4, generator=generator, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64,
                                                                                  generator=generator)
    z1, z2 = torch.rand(32, 4, generator=generator, dtype=torch.float64), torch.rand(32, 4, dtype=torch.float64,
                                                                                   generator=generator)
    w.requires_grad_()
    u1, u2 = z1 @ a.T @ w.T, z2 @ a.T @ w.T
    grads = torch.autograd.grad(lp_info_nce(u1, u2, 1.0).loss, [u1, u2, w])
    torch.testing.assert_close(latent_gradient(grads[:2], (z1, z2)), grads[2] @ torch.linalg.inv(a).T)


def test_content_energy_shares_and_ratio():
    from ssl_bench.callbacks.gradient_spectrum import content_energy

    gamma = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # column energies 9, 0, 2
    out = content_energy(gamma, {"content": [0], "style": [1, 2]})
    assert out["content_share"] == pytest.approx(9 / 11) and out["content_ratio"] == pytest.approx(9 / 1)
    assert "content_ratio" not in content_energy(gamma, {"content": [0, 1, 2]})


def test_collapsed_optimum_has_gradient_rank_at_most_dc(tmp_path):
    """Prop. 5: at f = D g^-1 with rank(D) = d_c the gradient passes through D (Eq. 22) and has rank d_c; the
    uncollapsed g^-1 has a full-rank gradient."""
    collapsed, _, method = gradient_case(tmp_path, "collapsed")
    assert collapsed["grad/output_rank"] == 2 and collapsed["grad/weight_rank"] == 2
    assert all(p.grad is None for p in method.parameters())  # the callback leaves the optimizer's gradients alone
    inverse, _, _ = gradient_case(tmp_path, "inverse")
    assert inverse["grad/output_rank"] == 8 and inverse["grad/weight_rank"] == 8
    records = [json.loads(line) for line in (tmp_path / "gradient_spectra.jsonl").read_text().splitlines()]
    assert [len(r["weight"]) for r in records] == [8, 8] and len(records[0]["latent"]) == 8


def test_collapsed_gradient_lies_in_the_content_columns(tmp_path):
    """Lemma 7 / Prop. 2 at the collapsed optimum: the gradient is a function of the content latents, so the style
    columns of Gamma hold only their sample correlation with it, and the spectrum's largest gap falls after d_c."""
    logged, _, _ = gradient_case(tmp_path, "collapsed", content=3)
    assert logged["grad/content_share"] > 0.9 and logged["grad/content_ratio"] > 10
    assert logged["grad/latent_gap_rank"] == 3


def test_few_pairs_give_a_rank_deficient_gradient(tmp_path):
    """Lemma 6: the gradient of W from B pairs is a sum of 2B outer products that sum to 0 (a translation-invariant
    similarity), so its rank is at most 2B - 1 < d = 8 for B = 2."""
    two, _, _ = gradient_case(tmp_path, "inverse", batch_size=2)
    many, _, _ = gradient_case(tmp_path, "inverse", batch_size=256)
    assert two["grad/weight_rank"] <= 3 and many["grad/weight_rank"] == 8
    assert many["grad/weight_effective_rank"] > two["grad/weight_effective_rank"] + 2


def test_a_diverged_encoder_logs_nan_and_records_nothing(tmp_path):
    logged, _, _ = gradient_case(tmp_path, "diverged")
    assert len(logged) == 8 and all(math.isnan(value) for value in logged.values())
    assert not (tmp_path / "gradient_spectra.jsonl").exists()


def test_gradient_spectrum_refuses_a_method_without_loss_terms():
    from ssl_bench.callbacks.gradient_spectrum import GradientSpectrum

    method = SimpleNamespace(encoder=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="needs a method with loss_terms"):
        GradientSpectrum(GradientSpectrum.Config(), 1).check(small_data(), method, None)


@pytest.mark.parametrize("name", ["rusak2022/gradient_spectrum", "rusak2022/linear", "rusak2022/nonlinear_box",
                                  "rusak2022/nonlinear_sphere", "rusak2022/table1"])
def test_configs_train_as_cl_ica_main_mlp(name):
    """cl-ica's main_mlp.py: n_steps 100001 x more_unsupervised 3 = 300,003 steps at batch 6144, Adam lr 1e-4; where
    f is an MLP, its encoders.get_mlp: hidden widths 10n, 50n x 4, 10n (n = 10) and LeakyReLU slope 0.01."""
    cfg = load(name, [])
    assert cfg.data.steps_per_epoch * cfg.trainer.max_epochs == 300_003
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (6144, 1e-4, 0.0)
    points = expand_grid(cfg.sweep.grid)
    trained = load(name, list(points[0].overrides))
    if trained.encoder.name == "mlp" and trained.encoder.widths:
        widths = [w * trained.data.d for w in trained.encoder.widths]
        assert (widths, trained.encoder.negative_slope) == ([100, 500, 500, 500, 500, 100], 0.01)
    if name.startswith("rusak2022/nonlinear"):
        assert {dict(p.axes)["tau_c"] for p in points} == {"equal", "0.3", "0.1", "0.03", "0.01"}
        paper_text = load(name, ["encoder.widths=[1,1,1,1,1,1]", "encoder.negative_slope=0.2"]).encoder
        assert (paper_text.widths, paper_text.negative_slope) == ([1, 1, 1, 1, 1, 1], 0.2)
