"""Esser et al. 2023, Lemma 1 and Remark 3: the empirical NTK of the outputs (ssl_bench.ops.ntk, callbacks.ntk) and
the fixed projector of the two-layer network (encoder.trainable=first_layer)."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_bench.callbacks.ntk import OutputNTK
from ssl_bench.config.compose import load
from ssl_bench.nets.two_layer import TwoLayer
from ssl_bench.ops.ntk import cross_output_ratio, diagonal_spread, kernel_drift, output_ntk
from ssl_bench.train.build import build_run

TINY = ["data.n=32", "data.batch_size=32", "trainer.progress=none", "logger=none"]


def network(width: int, activation: str, init: str = "gaussian", seed: int = 0, constraint: str = "none",
            input_dim: int = 3, output_dim: int = 2) -> TwoLayer:
    encoder = TwoLayer(input_dim, width, output_dim, activation, constraint)
    encoder.initialize(init, torch.Generator().manual_seed(seed))
    return encoder


def per_output_gradients(model: TwoLayer, x: torch.Tensor) -> torch.Tensor:
    """d f_i(x_a) / d theta by one backward pass per output and point: (n, k, P)."""
    model = model.double()
    rows = []
    for point in x.double():
        output = model(point[None])[0]
        rows.append(torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(o, list(model.parameters()),
                                                                                     retain_graph=True)])
                                 for o in output]))
    return torch.stack(rows)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_output_ntk_equals_inner_products_of_per_output_gradients(activation):
    model, x = network(7, activation), torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    gradients = per_output_gradients(model, x)
    expected = torch.einsum("aip,bjp->ijab", gradients, gradients)
    assert torch.allclose(output_ntk(model, x), expected, atol=1e-12)


def test_output_ntk_of_v_sigma_w_x_matches_its_closed_form():
    """Theta_ij(x, x') = 1{i = j} sigma(W x) . sigma(W x') + (x . x') sum_l V_il V_jl sigma'(w_l x) sigma'(w_l x'):
    the V-part is block-diagonal for any weights; only the W-part couples two outputs."""
    model, x = network(9, "tanh", seed=3).double(), torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    x = x.double()
    w, v = model.W.detach(), model.V.detach()
    hidden, slope = torch.tanh(x @ w.T), 1 - torch.tanh(x @ w.T) ** 2
    v_part = torch.eye(2, dtype=torch.float64)[:, :, None, None] * (hidden @ hidden.T)
    w_part = torch.einsum("ab,il,jl,al,bl->ijab", x @ x.T, v, v, slope, slope)
    assert torch.allclose(output_ntk(model, x), v_part + w_part, atol=1e-12)


def test_a_linear_network_with_orthonormal_rows_has_no_cross_blocks():
    """Lemma 1 for a linear model: with V V^T = I the cross blocks (x . x') V_i . V_j vanish and every output's
    own kernel is the same (up to the float32 rounding of the drawn weights)."""
    model, x = network(50, "linear", init="orthogonal"), torch.randn(20, 3, dtype=torch.float64)
    ntk = output_ntk(model, x)
    assert cross_output_ratio(ntk) < 1e-7 and diagonal_spread(ntk) < 1e-7
    assert cross_output_ratio(output_ntk(network(50, "tanh", init="orthogonal"), x)) > 1e-4


def test_ratios_of_a_kernel_built_from_known_blocks():
    """Theta_00 = K, Theta_11 = 2K, Theta_01 = Theta_10 = K / 2: cross ratio sqrt(2 / 4 / 5), spread 1/3."""
    k = torch.randn(6, 6, dtype=torch.float64)
    k = k @ k.T
    ntk = torch.stack([torch.stack([k, k / 2]), torch.stack([k / 2, 2 * k])])
    assert cross_output_ratio(ntk) == pytest.approx((0.5 / 5) ** 0.5)
    assert diagonal_spread(ntk) == pytest.approx(1 / 3)
    assert kernel_drift(3 * ntk, ntk) == pytest.approx(2.0)


def test_relu_cross_blocks_fall_with_the_width():
    """The cross blocks of V ReLU(W x) are a sum of L random terms of size 1/L: about L^(-1/2), so 100x the width
    gives far smaller ratios (averaged over 5 draws)."""
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))

    def mean_ratio(width: int) -> float:
        return sum(cross_output_ratio(output_ntk(network(width, "relu", init="orthogonal", seed=s), x))
                   for s in range(5)) / 5

    narrow, wide = mean_ratio(10), mean_ratio(1000)
    assert narrow > 4 * wide, (narrow, wide)


def test_the_callback_logs_lemma_1_and_the_drift(run_cli, tmp_path):
    code, _, err = run_cli("fit", "--config", "esser2023/ntk", *TINY, "encoder.activation=linear",
                           "encoder.width=20", "trainer.max_epochs=4", "trainer.metrics_every_n_epochs=2",
                           f"run_dir={tmp_path}")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    drifts = [r["ntk/drift"] for r in records if "ntk/drift" in r]
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert metrics["ntk/init_cross_ratio"] < 1e-6 and metrics["ntk/init_diagonal_spread"] < 1e-6
    assert len(drifts) == 2 and 0 < drifts[0] < drifts[1] and metrics["ntk/cross_ratio"] > 0


def test_the_callback_keeps_its_initial_kernel_across_a_resume():
    callback = OutputNTK(OutputNTK.Config())
    callback.initial = torch.eye(3)
    restored = OutputNTK(OutputNTK.Config())
    restored.load_state_dict(callback.state_dict())
    assert torch.equal(restored.initial, torch.eye(3))


def test_the_callback_refuses_a_jacobian_too_large_to_build(run_cli, tmp_path):
    code, _, err = run_cli("fit", "--config", "esser2023/ntk", *TINY, "encoder.width=100000",
                           f"run_dir={tmp_path}")
    assert code == 2 and "callbacks.ntk" in err and len(err.strip().splitlines()) == 1, err


def test_a_fixed_projector_stays_at_its_draw_and_does_not_prevent_collapse(run_cli, tmp_path):
    """Remark 3 through the CLI: V (encoder.trainable=first_layer) never moves, W does, and the outputs collapse
    inside W's Frobenius ball; an ensemble member trains as the single run does."""
    overrides = [*TINY, "trainer.max_epochs=600", "optim.lr=0.05", "trainer.checkpoint_every_n_epochs=600"]
    code, _, err = run_cli("fit", "--config", "esser2023/fixed_projector", *overrides, "seed=2",
                           f"run_dir={tmp_path / 'one'}")
    assert code == 0, err
    initial = build_run(load("esser2023/fixed_projector", [*overrides, "seed=2"])).module.state_dict()
    trained = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)["state_dict"]
    assert torch.equal(trained["method.encoder.V"], initial["method.encoder.V"])
    assert not torch.equal(trained["method.encoder.W"], initial["method.encoder.W"])
    code, _, err = run_cli("fit", "--config", "esser2023/fixed_projector", *overrides, "--seeds", "2,3",
                           f"run_dir={tmp_path / 'ensemble'}")
    assert code == 0, err
    single, member = (json.loads((run_dir / "summary.json").read_text())["metrics"]
                      for run_dir in (tmp_path / "one", tmp_path / "ensemble" / "seed2"))
    assert single["dynamics/effective_rank"] < 1.01
    assert member["dynamics/effective_rank"] == pytest.approx(single["dynamics/effective_rank"], abs=1e-5)
