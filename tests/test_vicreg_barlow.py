"""VICReg and Barlow Twins: the losses against lightly and plain loops, a collapsed batch, the methods and their
configs, and the sparse-coding data by config alone (DDP: tests/test_ddp.py; ensembles: tests/test_ensemble.py;
the CIFAR-10 recipes: tests/test_methods.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, error_line
from lightly.loss import BarlowTwinsLoss, VICRegLoss
from torch import nn

from ssl_bench.config.compose import load
from ssl_bench.methods.barlow_twins import BarlowTwins
from ssl_bench.methods.vicreg import VICReg
from ssl_bench.ops.losses import barlow_twins_loss, vicreg_loss

SHAPES = [(8, 5), (32, 16), (6, 20), (16, 64)]
"""(N, d): fewer dimensions than samples, and more (d > N)."""
VICREG_COEFFICIENTS = [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)]
LAMBDAS = [5e-3, 0.2]


def embeddings(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated views with dimensions of different scales and means."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=generator, dtype=torch.float64)
    scale = torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    z1 = (base + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)) * scale + 1.0
    z2 = (base + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)) * scale - 0.5
    return z1.to(dtype), z2.to(dtype)


def value_and_grads(loss_fn, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a1, a2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    loss = loss_fn(a1, a2)
    g1, g2 = torch.autograd.grad(loss, (a1, a2))
    return loss.detach(), g1, g2


def assert_relative(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> None:
    """``ours`` within ``rtol`` of ``theirs``, elementwise, or relative to the largest entry for entries near 0."""
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------------------------------------ against lightly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"N{n}-d{d}" for n, d in SHAPES])
@pytest.mark.parametrize("coefficients", VICREG_COEFFICIENTS, ids=["paper", "other"])
def test_vicreg_equals_lightly_in_value_and_gradients(shape, dtype, coefficients):
    z1, z2 = embeddings(*shape, dtype)
    sim, std, cov = coefficients
    ours = value_and_grads(lambda a, b: vicreg_loss(a, b, sim, std, cov), z1, z2)
    theirs = value_and_grads(VICRegLoss(lambda_param=sim, mu_param=std, nu_param=cov), z1, z2)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        assert_relative(a, b)
    assert ours[1].abs().max() > 1e-3 and ours[2].abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"N{n}-d{d}" for n, d in SHAPES])
@pytest.mark.parametrize("lambda_offdiag", LAMBDAS)
def test_barlow_twins_equals_lightly_in_value_and_gradients(shape, dtype, lambda_offdiag):
    z1, z2 = embeddings(*shape, dtype)
    ours = value_and_grads(lambda a, b: barlow_twins_loss(a, b, lambda_offdiag), z1, z2)
    theirs = value_and_grads(BarlowTwinsLoss(lambda_param=lambda_offdiag), z1, z2)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        assert_relative(a, b)
    assert ours[1].abs().max() > 1e-3 and ours[2].abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ plain loops


def vicreg_reference(z1: np.ndarray, z2: np.ndarray, sim: float, std: float, cov: float, eps: float) -> float:
    """Bardes et al. 2022, Eqs. (1)-(6), one sample and one dimension at a time (variance averaged over the two
    branches, as the official code)."""
    n, d = z1.shape
    invariance = sum((z1[k, j] - z2[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    variance = covariance = 0.0
    for z in (z1, z2):
        mean = [sum(z[k, j] for k in range(n)) / n for j in range(d)]
        for i in range(d):
            var = sum((z[k, i] - mean[i]) ** 2 for k in range(n)) / (n - 1)
            variance += max(0.0, 1.0 - math.sqrt(var + eps)) / d / 2
            for j in range(d):
                if i != j:
                    c_ij = sum((z[k, i] - mean[i]) * (z[k, j] - mean[j]) for k in range(n)) / (n - 1)
                    covariance += c_ij ** 2 / d
    return sim * invariance + std * variance + cov * covariance


def barlow_reference(z1: np.ndarray, z2: np.ndarray, lambda_offdiag: float, eps: float = 1e-5) -> float:
    """Zbontar et al. 2021, Eqs. (1)-(2) with the batch-normalised (biased variance + eps) dimensions."""
    n, d = z1.shape

    def standardized(z: np.ndarray) -> list[list[float]]:
        columns = []
        for j in range(d):
            mean = sum(z[k, j] for k in range(n)) / n
            var = sum((z[k, j] - mean) ** 2 for k in range(n)) / n
            columns.append([(z[k, j] - mean) / math.sqrt(var + eps) for k in range(n)])
        return columns

    a, b = standardized(z1), standardized(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1.0 - c_ij) ** 2 if i == j else lambda_offdiag * c_ij ** 2
    return loss


@pytest.mark.parametrize("shape", [(7, 4), (5, 9)], ids=["N7-d4", "N5-d9"])
def test_both_losses_equal_plain_loops(shape):
    z1, z2 = embeddings(*shape, torch.float64, seed=3)
    a, b = z1.numpy(), z2.numpy()
    for sim, std, cov in VICREG_COEFFICIENTS:
        assert vicreg_loss(z1, z2, sim, std, cov).item() == pytest.approx(
            vicreg_reference(a, b, sim, std, cov, 1e-4), rel=1e-10)
    # shrunk views so that some dimensions' std falls below 1 and others not: both sides of the hinge
    assert vicreg_loss(0.4 * z1, 0.4 * z2, eps=1e-3).item() == pytest.approx(
        vicreg_reference(0.4 * a, 0.4 * b, 25.0, 25.0, 1.0, 1e-3), rel=1e-10)
    for lambda_offdiag in LAMBDAS:
        assert barlow_twins_loss(z1, z2, lambda_offdiag).item() == pytest.approx(
            barlow_reference(a, b, lambda_offdiag), rel=1e-10)


def test_gradients_equal_finite_differences():
    z1, z2 = (z.requires_grad_() for z in embeddings(6, 4, torch.float64, seed=5))
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(0.5 * a, 0.5 * b, 2.0, 3.0, 1.5), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, 0.1), (z1, z2))


def test_coefficients_may_be_tensors():
    z1, z2 = embeddings(8, 5, torch.float32)
    tensors = [torch.tensor(v) for v in (1.0, 3.0, 0.5)]
    assert vicreg_loss(z1, z2, *tensors).item() == pytest.approx(vicreg_loss(z1, z2, 1.0, 3.0, 0.5).item(), rel=1e-6)
    assert barlow_twins_loss(z1, z2, torch.tensor(0.2)).item() == pytest.approx(
        barlow_twins_loss(z1, z2, 0.2).item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_under_mixed_precision_the_losses_are_computed_in_float32(dtype):
    z1, z2 = (z.to(dtype) for z in embeddings(32, 48, torch.float32))
    for loss_fn in (vicreg_loss, barlow_twins_loss):
        a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(a1, a2)
        loss.backward()
        assert loss.dtype == torch.float32 and a1.grad.dtype == dtype
        expected = value_and_grads(loss_fn, z1.float(), z2.float())
        assert loss.item() == pytest.approx(expected[0].item(), rel=1e-6)
        assert_relative(a1.grad.float(), expected[1], rtol=1e-2)  # the gradient rounded to 16 bits


# ------------------------------------------------------------------------------------------------ collapse


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_collapsed_batch_gives_the_known_values_and_finite_gradients(dtype):
    n, d = 16, 6
    row = torch.linspace(-1.0, 2.0, d, dtype=dtype)
    z = row.expand(n, d).clone()
    # VICReg: no invariance or covariance; each branch's std is sqrt(eps), so the variance term is std_coeff (1 - 0.01)
    loss, g1, g2 = value_and_grads(vicreg_loss, z, z)
    assert loss.item() == pytest.approx(25.0 * (1 - math.sqrt(1e-4)), rel=1e-6)
    assert loss.item() == pytest.approx(VICRegLoss()(z, z).item(), rel=1e-6)
    # Barlow Twins: the standardised outputs are 0, so C = 0 and every diagonal term is 1
    b_loss, b1, b2 = value_and_grads(barlow_twins_loss, z, z)
    assert b_loss.item() == pytest.approx(d, rel=1e-6)
    assert b_loss.item() == pytest.approx(BarlowTwinsLoss()(z, z).item(), rel=1e-6)
    for grad in (g1, g2, b1, b2):
        assert torch.isfinite(grad).all()
    # one view collapsed, the other not: still finite, and the collapsed view's variance term pushes it apart
    other = embeddings(n, d, dtype)[0]
    for loss_fn in (vicreg_loss, barlow_twins_loss):
        _, g1, g2 = value_and_grads(loss_fn, z, other)
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all() and g1.abs().max() > 0


# ------------------------------------------------------------------------------------------------ methods


def test_the_parts_defaults_are_the_papers():
    vicreg, barlow = VICReg.Config(), BarlowTwins.Config()
    for config in (vicreg, barlow):
        assert (config.projector, config.projector_hidden_dim, config.projector_dim, config.projector_layers) == (
            "mlp", 8192, 8192, 3)
    assert (vicreg.sim_coeff, vicreg.std_coeff, vicreg.cov_coeff, vicreg.eps) == (25.0, 25.0, 1.0, 1e-4)
    assert (barlow.lambda_offdiag, barlow.scale_loss, barlow.eps) == (5e-3, 1.0, 1e-5)


@pytest.mark.parametrize("method, loss_fn", [
    (["method=vicreg", "method.sim_coeff=2.0", "method.std_coeff=3.0", "method.cov_coeff=0.5"],
     lambda a, b: vicreg_loss(a, b, 2.0, 3.0, 0.5)),
    (["method=barlow_twins", "method.lambda_offdiag=0.1", "method.scale_loss=0.5"],
     lambda a, b: 0.5 * barlow_twins_loss(a, b, 0.1)),
], ids=["vicreg", "barlow_twins"])
def test_a_method_is_its_loss_on_the_expanders_outputs(method, loss_fn):
    from ssl_bench.batch import Views
    from ssl_bench.train.build import build_data, build_module

    cfg = load("quickstart", [*TINY, *method, "method.projector_hidden_dim=12", "method.projector_dim=10"])
    model = build_module(cfg, build_data(cfg)).method
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    norms = [m for m in model.projector if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 12), (12, 12), (12, 10)] and len(norms) == 2
    x1, x2 = torch.randn(32, 12), torch.randn(32, 12)
    loss, features = model.training_loss(0, Views(x1, x2))
    torch.testing.assert_close(features, model.encoder(x1))
    expected = loss_fn(model.projector(model.encoder(x1)), model.projector(model.encoder(x2)))
    torch.testing.assert_close(loss, expected)
    assert model.representations(x1)["projector"].shape == (32, 10)


@pytest.mark.parametrize("override, message", [
    ("method.sim_coeff=-1", "method.sim_coeff=-1.0 is out of range; allowed: [0, inf)"),
    ("method.cov_coeff=inf", "method.cov_coeff=inf is out of range; allowed: [0, inf)"),
    ("method.eps=0", "method.eps=0.0 must be > 0"),
    ("method.projector_layers=0", "method.projector_layers=0 must be > 0"),
    ("method.lambda_offdiag=0.1", "method.lambda_offdiag is not a key of method=vicreg; its keys: name, projector, "
     "projector_hidden_dim, projector_dim, projector_layers, projector_output_bn, sim_coeff, std_coeff, cov_coeff, "
     "eps"),
])
def test_bad_vicreg_keys_are_one_line(run_cli, tmp_path, override, message):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "method=vicreg", override,
                             f"run_dir={tmp_path / 'never'}")
    assert error_line(code, err, out) == message
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("override, message", [
    ("method.lambda_offdiag=-0.1", "method.lambda_offdiag=-0.1 is out of range; allowed: [0, inf)"),
    ("method.scale_loss=0", "method.scale_loss=0.0 is out of range; allowed: (0, inf)"),
    ("method.eps=-1", "method.eps=-1.0 must be > 0"),
    ("method.sim_coeff=1", "method.sim_coeff is not a key of method=barlow_twins; its keys: name, projector, "
     "projector_hidden_dim, projector_dim, projector_layers, projector_output_bn, lambda_offdiag, scale_loss, eps"),
])
def test_bad_barlow_twins_keys_are_one_line(run_cli, tmp_path, override, message):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "method=barlow_twins", override,
                             f"run_dir={tmp_path / 'never'}")
    assert error_line(code, err, out) == message


def test_all_vicreg_weights_zero_is_refused(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "method=vicreg", "method.sim_coeff=0",
                             "method.std_coeff=0", "method.cov_coeff=0", f"run_dir={tmp_path / 'never'}")
    assert error_line(code, err, out) == "method.sim_coeff, std_coeff and cov_coeff are all 0; the loss would be 0"


