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
    names = [n for n in available_configs()[0] if n.startswith("rusak2022/") and n != "rusak2022/table2_cifar10"]
    assert names == ["rusak2022/linear", "rusak2022/nonlinear_box", "rusak2022/nonlinear_sphere", "rusak2022/table1"]
    for name in names:
        cfg = load(name, [])
        assert list(cfg.sweep.seeds) == [1, 2, 3] and cfg.sweep.metrics, name
        assert cfg.data.name == "invertible_mlp" and cfg.method.name == "adaptive_infonce", name
    linear = load("rusak2022/linear", [])
    assert (linear.data.d, linear.data.mixing, linear.encoder.bias, linear.callbacks["spectrum"].weights) == (
        8, "linear", False, True)
    points = {p.axes[1][1]: p for p in expand_grid(linear.sweep.grid) if p.axes[0][1] == "box"}
    assert sorted(points) == ["dc0", "dc1", "dc1-tau", "dc2", "dc2-tau", "dc4", "dc4-tau"]
    tau = load("rusak2022/linear", list(points["dc2-tau"].overrides))
    assert (tau.data.n_content, tau.method.temperature_groups) == (2, [2, 6])
    table1 = load("rusak2022/table1", [])
    assert table1.encoder.name == "inverse"
    values = {row.match["space"]: row.values for row in table1.sweep.reference}
    assert values["box"] == {"train/alignment": 0.23, "train/uniformity": 0.66, "train/loss": 0.89}
    assert values["sphere"] == {"train/alignment": -0.97, "train/uniformity": 9.29, "train/loss": 8.32}
    sphere = [p for p in expand_grid(table1.sweep.grid) if dict(p.axes)["space"] == "sphere"][0]
    trained = load("rusak2022/table1", list(sphere.overrides))
    assert (trained.encoder.name, trained.encoder.output, trained.data.style_noise) == ("mlp", "sphere", "vmf")
