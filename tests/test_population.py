"""VICReg and Barlow Twins of a linear encoder on Gaussian views in closed form (ssl_bench.ops.population) and the
callback that compares training with it (callbacks.population, configs/bao2023/regularised)."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_bench.ops.losses import barlow_twins_loss, vicreg_loss
from ssl_bench.ops.population import (
    barlow_twins_optimum,
    barlow_twins_population_loss,
    isotropic_noise_std,
    row_cosines,
    vicreg_optimal_std,
    vicreg_optimum,
    vicreg_population_loss,
)

TINY = ["data.n=512", "data.batch_size=256", "data.dim=8", "encoder.width=4", "trainer.max_epochs=3",
        "trainer.metrics_every_n_epochs=1", "trainer.progress=none", "logger=none"]


def views(weight: torch.Tensor, noise: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, weight.shape[1], generator=generator, dtype=torch.float64)
    root = torch.linalg.cholesky(noise)
    e1, e2 = (torch.randn(n, weight.shape[1], generator=generator, dtype=torch.float64) @ root.T for _ in range(2))
    return (x + e1) @ weight.T, (x + e2) @ weight.T


@pytest.mark.parametrize("noise_std", [0.5, 1.0, 2.0])
def test_population_losses_are_the_limit_of_the_batch_losses(noise_std):
    """On 400,000 samples the batch losses of ops/losses.py (the ones training uses) are within a few per mille of
    the closed forms, for a random A and an anisotropic noise covariance."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 8, generator=generator, dtype=torch.float64) * 0.4
    noise = torch.diag(noise_std ** 2 * torch.linspace(0.5, 1.5, 8, dtype=torch.float64))
    z1, z2 = views(weight, noise, 400_000, seed=1)
    assert vicreg_loss(z1, z2).item() == pytest.approx(vicreg_population_loss(weight, noise).item(), rel=5e-3)
    assert barlow_twins_loss(z1, z2).item() == pytest.approx(barlow_twins_population_loss(weight, noise).item(),
                                                             rel=5e-3)


@pytest.mark.parametrize("noise_std, optimal", [(1.0, 0.5), (0.5, 1.0)])
def test_orthogonal_rows_of_the_optimal_norm_reach_vicregs_optimum(noise_std, optimal):
    """Inside the hinge (sigma = 1, s* = 0.5) and at its corner (sigma = 0.5, s* = 1): orthogonal rows of variance
    s*^2 - eps attain the optimum; longer or shorter rows, or two rows turned towards each other, do not."""
    k, d = 6, 10
    rows = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64))[0].T
    weight = rows * ((optimal ** 2 - 1e-4) / (1 + noise_std ** 2)) ** 0.5
    noise = noise_std ** 2 * torch.eye(d, dtype=torch.float64)
    turned = weight.clone()
    turned[1] = (weight[0] + weight[1]) / 2 ** 0.5
    assert vicreg_optimal_std(noise_std) == optimal
    assert vicreg_population_loss(weight, noise).item() == pytest.approx(vicreg_optimum(noise_std), abs=1e-12)
    for other in (weight * 1.05, weight * 0.95, turned):
        assert vicreg_population_loss(other, noise).item() > vicreg_optimum(noise_std) + 1e-4


def test_the_optimal_std_is_the_hinges_corner_under_weak_noise():
    """s* = min(1, (1 + s^2) / (4 s^2)) at lambda = mu: 1 for s^2 <= 1/3, below it beyond."""
    assert vicreg_optimal_std(0.5) == 1.0 and vicreg_optimal_std(3 ** -0.5) == pytest.approx(1.0)
    assert vicreg_optimal_std(2.0) == pytest.approx(5 / 16)
    assert vicreg_optimal_std(1.0, sim_coeff=25, std_coeff=50) == 1.0


@pytest.mark.parametrize("loss, optimum", [
    (vicreg_population_loss, lambda s, k: vicreg_optimum(s)),
    (barlow_twins_population_loss, barlow_twins_optimum)])
@pytest.mark.parametrize("noise_std", [0.7, 1.0, 2.0])
def test_no_weight_found_by_optimisation_beats_the_closed_form_optimum(loss, optimum, noise_std):
    """L-BFGS on the population loss from 3 random starts never goes below the closed form and gets within 1e-3
    of it (an independent check of the minimisation argument, for k = 3 of d = 5)."""
    k, d = 3, 5
    noise = noise_std ** 2 * torch.eye(d, dtype=torch.float64)
    best = float("inf")
    for seed in range(3):
        weight = (torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5)
        weight.requires_grad_(True)
        optimizer = torch.optim.LBFGS([weight], max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = loss(weight, noise)
            value.backward()
            return value

        optimizer.step(closure)
        best = min(best, loss(weight, noise).item())
    assert best >= optimum(noise_std, k) - 1e-9
    assert best == pytest.approx(optimum(noise_std, k), abs=1e-3)


def test_row_cosines_of_orthogonal_and_collapsed_rows():
    rows = torch.eye(4)[:3]
    assert row_cosines(rows) == (0.0, 0.0)
    rms, largest = row_cosines(torch.stack([rows[0], rows[1], -2 * rows[0]]))
    assert largest == pytest.approx(1.0) and rms == pytest.approx((2 / 6) ** 0.5)


def test_only_a_multiple_of_the_identity_is_isotropic():
    assert isotropic_noise_std(4 * torch.eye(3)) == 2.0
    assert isotropic_noise_std(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) is None


@pytest.mark.parametrize("method", ["vicreg", "barlow_twins"])
def test_the_callback_logs_the_closed_form_beside_training(run_cli, tmp_path, method):
    code, _, err = run_cli("fit", "--config", "bao2023/regularised", f"method={method}", "method.projector=none",
                           *TINY, f"run_dir={tmp_path}")
    assert code == 0, err
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    expected = vicreg_optimum(1.0) if method == "vicreg" else barlow_twins_optimum(1.0, 4)
    assert metrics["population/optimum"] == pytest.approx(expected)
    assert metrics["population/excess"] == pytest.approx(metrics["population/loss"] - expected, abs=1e-5)
    assert metrics["population/excess"] > -1e-6 and 0 <= metrics["population/rms_row_cos"] <= 1
    assert ("population/optimal_std" in metrics) == (method == "vicreg")


@pytest.mark.parametrize("override, message", [
    ("method=simclr", "method=vicreg or barlow_twins"),
    ("method.projector=mlp", "method.projector=none"),
    ("data.noise_from=2", "data.noise_from=0"),
    ("encoder=basic", "linear encoder without bias"),
    ("encoder.bias=true", "linear encoder without bias"),
    ("encoder.width=16", "needs width <= data.dim"),
])
def test_the_callback_refuses_settings_without_a_closed_form(run_cli, tmp_path, override, message):
    code, _, err = run_cli("fit", "--config", "bao2023/regularised", *TINY, override, f"run_dir={tmp_path}")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
