"""Esser et al. 2023: the two-layer network's constraints, the dot-product losses, the output dynamics of Theorems 2-3
against gradient descent, and the callbacks that follow them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run

from datamodules.digits import DigitsDataModule
from datamodules.moons import MoonsDataModule
from ssl_bench.batch import Views
from ssl_bench.callbacks.linear_gap import output_gap
from ssl_bench.callbacks.output_dynamics import svm_accuracy
from ssl_bench.nets.two_layer import (
    TwoLayer,
    horizontal,
    nearest_semi_orthogonal,
    semi_orthogonal,
)
from ssl_bench.ops.losses import contrastive_dot, non_contrastive_dot, trace_loss
from ssl_bench.ops.trace_dynamics import (
    bottom_eigenspace_share,
    euler_step,
    gradient_step,
    output_velocity,
    projected_trace_matrix,
)


def network(input_dim: int, width: int, output_dim: int, activation: str = "linear",
            constraint: str = "orthogonal", seed: int = 0) -> TwoLayer:
    encoder = TwoLayer(input_dim, width, output_dim, activation, constraint).double()
    encoder.initialize("orthogonal", torch.Generator().manual_seed(seed))
    return encoder


@pytest.mark.parametrize("make, width, k", [
    (lambda: MoonsDataModule(MoonsDataModule.Config(n=20, batch_size=20), 0), 8, 2),
    (lambda: DigitsDataModule(DigitsDataModule.Config(per_class=30, batch_size=60), 0), 60, 3),
], ids=["moons", "digits"])
def test_theorem_2_velocity_is_the_finite_difference_of_the_constrained_gradient_step(make, width, k):
    """(F after one constrained gradient step of size h - F) / h -> Eq. (9)'s right-hand side with C~ = P C P, with an
    error of order h; with C itself (the data are not square) it is wrong."""
    data = make()
    inputs, c = data.inputs.double(), data.trace_matrix("contrastive")
    projected = projected_trace_matrix(c, inputs)
    errors = []
    for h in (1e-3, 1e-4):
        encoder = network(data.input_dim, width, k)
        f0 = encoder(inputs).T.detach()
        gradient_step(encoder, inputs, c, h)
        difference = (encoder(inputs).T.detach() - f0) / h
        errors.append(((difference - output_velocity(f0, projected)).norm() / difference.norm()).item())
        assert ((difference - output_velocity(f0, c)).norm() / difference.norm()).item() > 0.5
    assert errors[0] < 1e-2 and errors[1] < errors[0] / 5


def test_without_the_grassmann_gradient_the_projected_step_follows_other_dynamics():
    """The projection alone (Stiefel, Euclidean metric) is not the paper's flow: the horizontal gradient matters."""
    data = DigitsDataModule(DigitsDataModule.Config(per_class=30, batch_size=60), 0)
    inputs, c = data.inputs.double(), data.trace_matrix("contrastive")
    encoder = network(data.input_dim, 60, 3, constraint="none")
    f0 = encoder(inputs).T.detach()
    encoder.zero_grad()
    trace_loss(encoder(inputs).T, c).backward()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.copy_(nearest_semi_orthogonal(parameter - 1e-5 * parameter.grad))
    difference = (encoder(inputs).T.detach() - f0) / 1e-5
    velocity = output_velocity(f0, projected_trace_matrix(c, inputs))
    assert ((difference - velocity).norm() / difference.norm()).item() > 0.05


@pytest.mark.parametrize("width, input_dim, output_dim", [(16, 4, 2), (3, 6, 2), (5, 5, 7)])
def test_projections_land_on_the_constraint_sets(width, input_dim, output_dim):
    encoder = network(input_dim, width, output_dim)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    encoder.after_optimizer_step()
    for weight in (encoder.W.detach(), encoder.V.detach()):
        gram = weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T
        torch.testing.assert_close(gram, torch.eye(len(gram), dtype=gram.dtype), atol=1e-10, rtol=0)
    frobenius = network(input_dim, width, output_dim, constraint="frobenius")
    radii = frobenius.radii.clone()
    with torch.no_grad():
        frobenius.W.mul_(3.0)
        frobenius.V.mul_(0.5)
    frobenius.after_optimizer_step()
    assert frobenius.W.norm().item() == pytest.approx(radii[0].item())  # scaled back onto the ball
    assert frobenius.V.norm().item() == pytest.approx(0.5 * radii[1].item())  # inside it: unchanged


def test_semi_orthogonal_draws_are_orthonormal_along_the_shorter_side_and_random():
    generator = torch.Generator().manual_seed(0)
    tall, wide = semi_orthogonal(7, 3, generator), semi_orthogonal(3, 7, generator)
    torch.testing.assert_close(tall.T @ tall, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(wide @ wide.T, torch.eye(3), atol=1e-6, rtol=0)
    assert not torch.allclose(tall, semi_orthogonal(7, 3, generator))


def test_horizontal_keeps_the_value_and_projects_the_gradient():
    tall = nearest_semi_orthogonal(torch.randn(6, 2, dtype=torch.float64)).requires_grad_()
    target = torch.randn(6, 2, dtype=torch.float64)
    out = horizontal(tall)
    assert torch.equal(out.detach(), tall.detach())
    (out * target).sum().backward()
    torch.testing.assert_close(tall.grad, target - tall.detach() @ (tall.detach().T @ target))
    assert (tall.detach().T @ tall.grad).abs().max() < 1e-12  # no component along the column space


def test_scaled_loss_is_invariant_to_the_weights_scale():
    encoder = network(3, 8, 2, activation="tanh", constraint="scaled")
    x = torch.randn(10, 3, dtype=torch.float64)
    before = encoder(x)
    with torch.no_grad():
        encoder.W.mul_(5.0)
        encoder.V.mul_(0.2)
    torch.testing.assert_close(encoder(x), before)


def test_dot_product_losses_are_the_trace_loss_of_the_datas_pairs():
    """The method's negatives (the next anchor of the batch) are the pairs of the datamodule's trace matrix."""
    from ssl_bench.methods.dot_product import DotProduct

    data = MoonsDataModule(MoonsDataModule.Config(n=12, batch_size=12), 0)
    inputs = data.inputs.double()
    encoder = network(data.input_dim, 5, 2, activation="tanh")
    f = encoder(inputs)
    anchor, positive = f[: data.n], f[data.n:]
    assert contrastive_dot(anchor, positive, anchor.roll(-1, 0)).item() == pytest.approx(
        trace_loss(f.T, data.trace_matrix("contrastive")).item())
    assert non_contrastive_dot(anchor, positive).item() == pytest.approx(
        trace_loss(f.T, data.trace_matrix("non_contrastive")).item())
    for loss in ("contrastive", "non_contrastive"):
        method = DotProduct(DotProduct.Config(loss=loss), lambda: encoder, 2)
        value, features = method.training_loss(0, Views(data.anchors.double(), data.positives.double()))
        assert value.item() == pytest.approx(trace_loss(f.T, data.trace_matrix(loss)).item())
        assert torch.equal(features, anchor)


def test_theorem_3_positive_definite_c_sends_f_to_zero():
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    c = q @ torch.diag(torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)) @ q.T
    f = torch.randn(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    for _ in range(3000):
        f = euler_step(f, c, 0.01)
    assert f.norm().item() < 1e-6


def test_theorem_3_a_negative_eigenvalue_sends_f_to_its_unit_eigenvector():
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    c = q @ torch.diag(torch.tensor([-1.0, -0.4, 0.5, 1.0, 2.0], dtype=torch.float64)) @ q.T
    f = torch.randn(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    assert bottom_eigenspace_share(f, torch.linalg.eigh(c).eigenvectors) < 0.9
    for _ in range(3000):
        f = euler_step(f, c, 0.01)
    assert abs((f @ q[:, 0]).item()) == pytest.approx(1.0, abs=1e-6) and f.norm().item() == pytest.approx(1.0)
    assert bottom_eigenspace_share(f, torch.linalg.eigh(c).eigenvectors) == pytest.approx(1.0)


def test_output_gap_and_svm_accuracy():
    linear = torch.ones(4, 2)
    assert output_gap(linear + torch.tensor([[3.0, 4.0]] + [[0.0, 0.0]] * 3), linear) == pytest.approx(
        (2.5, 5.0 / 8 ** 0.5))
    labels = torch.arange(40) % 2
    separable = torch.stack([labels.float() * 2 - 1 + 0.1 * torch.randn(40), torch.randn(40)], dim=1)
    assert svm_accuracy(separable, labels, 30) == 1.0


def fit_esser(run_cli, run_dir: Path, config: str, *overrides: str) -> tuple[dict, list[dict]]:
    code, _, err = run_cli("fit", "--config", config, "logger=none", "trainer.progress=none",
                           f"run_dir={run_dir}", *overrides)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@pytest.mark.parametrize("constraint, epochs, collapsed", [
    ("none", 140, True),  # its outputs blow up a few epochs later (a non-finite loss at epoch 146)
    ("frobenius", 300, True), ("orthogonal", 300, False), ("scaled", 300, False)])
def test_collapse_study_unconstrained_and_frobenius_collapse_orthogonal_keeps_k(run_cli, tmp_path, constraint,
                                                                                epochs, collapsed):
    summary, _ = fit_esser(run_cli, tmp_path / "run", "esser2023/collapse", f"encoder.constraint={constraint}",
                           f"trainer.max_epochs={epochs}")
    rank = summary["metrics"]["dynamics/effective_rank"]
    assert summary["status"] == "finished"
    assert (rank < 1.1) if collapsed else (rank > 1.99), rank


def test_gradient_descent_tracks_the_output_dynamics(run_cli, tmp_path):
    summary, records = fit_esser(run_cli, tmp_path / "run", "esser2023/dynamics_vs_gd", "trainer.max_epochs=60",
                                 "data.per_class=60", "data.batch_size=120", "encoder.width=64")
    metrics = summary["metrics"]
    assert summary["status"] == "finished"
    gaps = [r["dynamics/ode_gap"] for r in records if "dynamics/ode_gap" in r]
    assert len(gaps) == 6 and max(gaps) < 1e-2
    assert metrics["dynamics/loss"] == pytest.approx(metrics["dynamics/ode_loss"], rel=1e-2)
    assert metrics["dynamics/svm_acc"] == metrics["dynamics/ode_svm_acc"]
    lines = (tmp_path / "run" / "dynamics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [10, 20, 30, 40, 50, 60]


def test_linear_twin_of_a_linear_network_stays_identical_and_tanh_approaches_it_with_width(run_cli, tmp_path):
    """With a linear activation the twin is the network itself, trained by the same steps: the gap stays exactly 0.
    At initialisation tanh's absolute gap shrinks as the width grows (Theorem 1; seed 1: 160x from width 10 to 400),
    ReLU's too but slowly (6x), while ReLU's relative gap stays of order one (0.55 and 0.85); sigmoid's grows."""
    summary, _ = fit_esser(run_cli, tmp_path / "linear", "esser2023/width", "encoder.activation=linear",
                           "trainer.max_epochs=20")
    assert summary["metrics"]["linear_gap/relative"] < 1e-6 and summary["metrics"]["linear_gap/init_relative"] == 0
    rms, relative = {}, {}
    for activation in ("tanh", "relu", "sigmoid"):
        for width in (10, 400):
            summary, _ = fit_esser(run_cli, tmp_path / f"{activation}{width}", "esser2023/width",
                                   "trainer.max_epochs=5", f"encoder.activation={activation}", f"encoder.width={width}")
            rms[activation, width] = summary["metrics"]["linear_gap/init_rms"]
            relative[activation, width] = summary["metrics"]["linear_gap/init_relative"]
    tanh_falls, relu_falls = (rms[activation, 10] / rms[activation, 400] for activation in ("tanh", "relu"))
    assert tanh_falls > 50 and 2 < relu_falls < tanh_falls / 5 and relative["relu", 400] > 0.3
    assert rms["sigmoid", 400] > rms["sigmoid", 10] / 2
    assert relative["tanh", 400] < relative["tanh", 10] / 5 and relative["sigmoid", 400] > relative["sigmoid", 10]


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=50", "needs gradient descent on the whole set: set data.batch_size >= 300"),
    ("optim.momentum=0.9", "needs plain gradient steps"),
])
def test_following_the_dynamics_needs_gradient_descent(run_cli, tmp_path, override, message):
    code, _, err = run_cli("fit", "--config", "esser2023/dynamics_vs_gd", "logger=none", override,
                           f"run_dir={tmp_path / 'run'}")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_an_ensemble_of_constrained_networks_equals_their_separate_runs(tmp_path, batching):
    """The Grassmann gradient (a reparametrisation) and the SVD projections after every step work on an ensemble's
    stacked weights as on one network's: seeds and learning rates in one process end as their separate runs."""
    from ssl_bench.config.compose import load
    from ssl_bench.train.ensemble import fit_ensemble
    from ssl_bench.train.fit import fit

    members = [["seed=1", "optim.lr=0.01"], ["seed=2", "optim.lr=0.02"]]
    base = ["encoder.constraint=orthogonal", "trainer.max_epochs=30", "logger=none", "trainer.progress=none"]
    cfgs = [load("esser2023/collapse", [*base, *m, f"run_dir={tmp_path / f'ensemble{k}'}"])
            for k, m in enumerate(members)]
    assert [s["status"] for s in fit_ensemble(cfgs, batching=batching)] == ["finished", "finished"]
    for k, m in enumerate(members):
        separate = fit(load("esser2023/collapse", [*base, *m, f"run_dir={tmp_path / f'separate{k}'}"]))
        assert separate["status"] == "finished"
        assert_same_run(tmp_path / f"ensemble{k}", tmp_path / f"separate{k}")


@pytest.mark.parametrize("model, epochs", [("VICReg", 1000), ("BarlowTwins", 100)])
def test_the_regularised_losses_keep_both_dimensions_without_a_constraint(run_cli, tmp_path, model, epochs):
    """esser2023/regularised: on the unconstrained network that the dot-product losses collapse (Prop. 1), VICReg
    spreads the outputs over both dimensions within about 800 epochs and Barlow Twins at once."""
    method = "vicreg" if model == "VICReg" else "barlow_twins"
    summary, _ = fit_esser(run_cli, tmp_path / "run", "esser2023/regularised", f"method={method}",
                           "method.projector=none", "encoder.constraint=none", f"trainer.max_epochs={epochs}")
    assert summary["status"] == "finished" and summary["metrics"]["spectrum/effective_rank"] > 1.8, summary
