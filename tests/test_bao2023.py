"""Bao 2023: the L2 loss, the symmetric predictor, the predictor's norms and regimes, and linear SimSiam's claims at
small scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_bench.callbacks.predictor_dynamics import (
    converging_fraction,
    eigenvalue_regime,
    isotropic_view_c,
    parabola_gaps,
    predicted_eigenvalues,
    representation_norms,
    signed_eigenvalues,
)
from ssl_bench.figures import CURVE_SIZE, DPI, draw_eigenvalue_regimes
from ssl_bench.nets.heads import LinearPredictor
from ssl_bench.ops.eigen_dynamics import l2_equilibria
from ssl_bench.ops.losses import half_squared_distance


def test_half_squared_distance_is_eq_1_with_a_stop_gradient():
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = half_squared_distance(p, z)
    assert loss.item() == pytest.approx(0.5 * (5.0 + 25.0) / 2)
    loss.backward()
    assert z.grad is None and torch.equal(p.grad, (p - z).detach() / 2)


def test_symmetric_predictor_stays_symmetric_after_a_step():
    torch.manual_seed(0)
    kept, free = LinearPredictor(4, bias=False, init="symmetric", keep_symmetric=True), LinearPredictor(
        4, bias=False, init="symmetric")
    for head in (kept, free):
        assert torch.equal(head.weight, head.weight.T)  # Assump. 4: drawn symmetric
        optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
        x = torch.randn(16, 4)
        (head(x) * torch.randn(16, 4)).sum().backward()  # an asymmetric gradient
        optimizer.step()
        head.after_optimizer_step()
    assert torch.allclose(kept.weight, kept.weight.T) and not torch.allclose(free.weight, free.weight.T)


def test_norms_and_commutator_on_hand_made_matrices():
    phi = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = phi @ phi.T  # E[Phi x x^T Phi^T] for x ~ N(0, I)
    psi = torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    norms = representation_norms(psi, sigma)
    assert norms["n_phi"] == pytest.approx(phi.norm().item())
    assert norms["n_psi"] == pytest.approx((psi @ phi).norm().item())
    assert norms["n_t"] == pytest.approx(torch.trace(psi @ phi @ phi.T).item())
    assert norms["commutator"] > 0.05
    eigen = torch.linalg.eigh(sigma)
    values = torch.diag(torch.tensor([0.3, -2.0, 1.0], dtype=torch.float64))
    aligned = eigen.eigenvectors @ values @ eigen.eigenvectors.T
    assert representation_norms(aligned, sigma)["commutator"] == pytest.approx(0.0, abs=1e-12)  # Assump. 5
    assert signed_eigenvalues(psi).tolist() == [2.0, -1.0, 0.5]


def test_parabola_gaps_are_s_minus_p_squared_in_the_common_eigenbasis():
    basis = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    p, s = torch.tensor([0.5, -2.0, 1.0, 0.1], dtype=torch.float64), torch.tensor([1.0, 3.0, 0.2, 0.0],
                                                                                   dtype=torch.float64)
    psi, gram = basis @ torch.diag(p) @ basis.T, basis @ torch.diag(s) @ basis.T
    assert torch.allclose(parabola_gaps(psi, gram), torch.tensor([3.0 - 4.0, 0.2 - 1.0, 1.0 - 0.25, -0.01],
                                                                 dtype=torch.float64))  # |p| descending
    assert torch.allclose(parabola_gaps(psi, psi @ psi), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_phi_phi_t_minus_psi_t_psi_decays_at_2_rho_for_a_free_predictor():
    """Eq. 6's mechanism: with weight decay rho, small gradient steps on any loss of the product Psi Phi (here the
    cosine loss with a stop-gradient target) shrink Phi Phi^T - Psi^T Psi by exp(-2 rho t), asymmetric Psi or not."""
    generator = torch.Generator().manual_seed(0)
    phi = (torch.randn(6, 10, dtype=torch.float64, generator=generator) / 10**0.5).requires_grad_()
    psi = (torch.randn(6, 6, dtype=torch.float64, generator=generator) / 6**0.5).requires_grad_()
    x = torch.randn(256, 10, dtype=torch.float64, generator=generator)
    rho, lr, steps = 0.5, 1e-3, 800
    start = (phi @ phi.T - psi.T @ psi).detach()
    for _ in range(steps):
        target = (x + 0.5 * torch.randn(x.shape, dtype=x.dtype, generator=generator)) @ phi.T.detach()
        loss = -torch.nn.functional.cosine_similarity(x @ phi.T @ psi.T, target).mean()
        grads = torch.autograd.grad(loss, (phi, psi))
        with torch.no_grad():
            for weight, grad in zip((phi, psi), grads):
                weight -= lr * (grad + rho * weight)
    end = (phi @ phi.T - psi.T @ psi).detach()
    assert torch.allclose(end, start * (1 - lr * rho) ** (2 * steps), rtol=0, atol=1e-3)  # O(lr^2) per step
    assert not torch.allclose(psi, psi.T, atol=1e-2)


def test_converging_fraction_counts_eigenvalue_moduli_above_p3():
    acute = [(-float("inf"), -1.0, "diverge"), (-1.0, 0.2, "collapse"), (0.2, float("inf"), "converge")]
    p = torch.tensor([0.5, 0.3, 0.1, -0.4], dtype=torch.float64)
    assert converging_fraction(p, acute) == 0.75
    assert converging_fraction(p, [(-float("inf"), -1.0, "diverge"), (-1.0, float("inf"), "collapse")]) == 0.0


def test_c_comes_from_isotropic_gaussian_views_only():
    from datamodules.gaussian import GaussianDataModule
    from datamodules.strong_weak import StrongWeakDataModule

    assert isotropic_view_c(GaussianDataModule(GaussianDataModule.Config(dim=8, noise_std=0.5), 1)) == 1.25
    assert isotropic_view_c(GaussianDataModule(GaussianDataModule.Config(dim=8, noise_from=4), 1)) is None
    assert isotropic_view_c(StrongWeakDataModule(StrongWeakDataModule.Config(), 1)) is None


def test_l2_regimes_and_prediction_follow_eq_8():
    c = 2.0
    assert eigenvalue_regime("l2", 0.2, c, {})[0] == "collapse"  # rho > 1 / (4 c) = 0.125
    regime, spans = eigenvalue_regime("l2", 0.05, c, {})
    assert regime == "stable" and spans[-1][2] == "converge"
    p_plus = l2_equilibria(0.05, c).values.max()
    assert p_plus == pytest.approx((1 + (1 - 4 * 0.05 * c) ** 0.5) / (2 * c))
    predicted = predicted_eigenvalues("l2", torch.tensor([0.9, 0.05], dtype=torch.float64), 0.05, c, {}, 400.0)
    assert predicted[0].item() == pytest.approx(p_plus, rel=1e-6) and abs(predicted[1].item()) < 1e-6


def test_regime_figure(tmp_path):
    records = [{"epoch": e, "eigenvalues_signed": [1.0 / e, -0.5 / e],
                "intervals": [["-inf", -0.5, "diverge"], [-0.5, 0.01 * e, "collapse"], [0.01 * e, "inf", "converge"]]}
               for e in (1, 2, 3)]
    path = tmp_path / "regimes.png"
    assert draw_eigenvalue_regimes(records, path, title="t") is not None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(path.read_bytes()[16:20], "big"), int.from_bytes(path.read_bytes()[20:24], "big")
    assert (width, height) == (CURVE_SIZE[0] * DPI, CURVE_SIZE[1] * DPI)
    assert draw_eigenvalue_regimes([{"epoch": 1}], tmp_path / "none.png") is None


def fit_bao(run_cli, run_dir: Path, *overrides: str) -> tuple[dict, list[dict]]:
    code, _, err = run_cli("fit", "--config", "bao2023/linear", "logger=none", "trainer.progress=none",
                           "~callbacks.spectrum", f"run_dir={run_dir}", *overrides)
    assert code == 0, err[-2000:]
    records = [json.loads(line) for line in (run_dir / "regimes.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), records


def test_l2_loss_collapses_above_the_threshold_and_not_below(run_cli, tmp_path):
    _, records = fit_bao(run_cli, tmp_path / "strong", "method.loss=l2", "optim.weight_decay=0.5",
                         "trainer.max_epochs=20")
    assert {r["regime"] for r in records} == {"collapse"}
    first, last = (abs(r["eigenvalues_signed"][0]) for r in (records[0], records[-1]))
    assert last < first / 10  # on its way to 0: with lr 0.01 the 20 epochs are a gradient-flow time of about 8
    _, records = fit_bao(run_cli, tmp_path / "weak", "method.loss=l2", "optim.weight_decay=0.01",
                         "trainer.max_epochs=20")
    assert {r["regime"] for r in records} == {"stable"} and abs(records[-1]["eigenvalues_signed"][0]) > 0.1


def test_cosine_loss_bifurcates_from_collapse_to_acute(run_cli, tmp_path):
    """rho = 0.2 > 1 / (4 c): the cosine loss starts in Collapse and, as the norms shrink, reaches Acute with its
    leading eigenvalue in the interval that converges to a non-zero root."""
    summary, records = fit_bao(run_cli, tmp_path / "run", "method.loss=cosine", "optim.weight_decay=0.2",
                               "trainer.max_epochs=40")
    regimes = [r["regime"] for r in records]
    assert regimes[0] == "collapse" and regimes[-1] == "acute"
    assert regimes.index("acute") > 1 and set(regimes[regimes.index("acute"):]) == {"acute"}
    last = records[-1]
    p1 = last["eigenvalues_signed"][0]
    assert any(kind == "converge" and float(low) < abs(p1) < float(high) for low, high, kind in last["intervals"])
    n_phi = [r["n_phi"] for r in records]
    assert n_phi[-1] < n_phi[0] / 5  # the norms shrink
    assert summary["metrics"]["predictor/commutator"] < 0.1 and summary["metrics"]["predictor/asymmetry"] < 1e-6
    assert 0 < summary["metrics"]["predictor/ode_error"] < 1


def test_trained_network_approaches_the_parabola_at_2_rho(run_cli, tmp_path):
    """Eq. 6 on the trained network (bao2023/parabola: small constant steps): the gap s_j - p_j^2 decays at the rate
    2 rho in gradient-flow time; a free predictor gets asymmetric, the symmetric one does not."""
    code, _, err = run_cli("fit", "--config", "bao2023/parabola", "logger=none", "trainer.progress=none",
                           "~callbacks.spectrum", "optim.weight_decay=0.5", "trainer.max_epochs=10",
                           "method.predictor_symmetric=false", f"run_dir={tmp_path / 'run'}")
    assert code == 0, err[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "regimes.jsonl").read_text().splitlines()]
    assert "parabola_rate" not in records[0] and records[-1]["parabola_gap"] < 0.6 * records[0]["parabola_gap"]
    assert records[-1]["parabola_rate"] == pytest.approx(2 * 0.5, rel=0.1)
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert metrics["predictor/asymmetry"] > 1e-4 and 0 <= metrics["predictor/converging"] <= 1


@pytest.mark.parametrize("override, message", [
    ("callbacks.predictor_dynamics.norms=false",
     "callbacks.predictor_dynamics.regimes=true needs callbacks.predictor_dynamics.norms=true"),
    ("callbacks.predictor_dynamics.regimes=false callbacks.predictor_dynamics.norms=false "
     + "callbacks.predictor_dynamics.parabola=true",
     "callbacks.predictor_dynamics.parabola=true needs callbacks.predictor_dynamics.norms=true"),
    ("method.loss=mse_bn", "it needs method.loss=cosine or l2 (method.loss=mse_bn)"),
    ("data.noise_from=32", "needs c = 1 + sigma^2 of isotropic Gaussian views, which this data does not define: "
     + "set callbacks.predictor_dynamics.augmentation_c"),
])
def test_regimes_need_norms_and_a_bao_loss(run_cli, tmp_path, override, message):
    code, _, err = run_cli("fit", "--config", "bao2023/linear", "logger=none", *override.split(),
                           f"run_dir={tmp_path / 'r'}")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_regime_images_go_to_wandb(run_cli, tmp_path, monkeypatch):
    """With a W&B logger (offline) every reading adds the image predictor/regimes to the run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, _, err = run_cli("fit", "--config", "bao2023/linear", "trainer.progress=none", "~callbacks.spectrum",
                           "trainer.max_epochs=3", f"run_dir={tmp_path / 'run'}")
    assert code == 0, err[-2000:]
    images = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/images/predictor/regimes_*.png"))
    assert len(images) == 3 and all(image.read_bytes()[:4] == b"\x89PNG" for image in images)
