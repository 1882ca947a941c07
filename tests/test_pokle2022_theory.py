"""Pokle et al. 2022, Theorems 1-3 and NCL-linear's weight norm: the geometry metrics of
``ssl_bench.callbacks.weight_geometry`` on hand-made matrices with known answers, the losses at the theorems' optima,
the fixed bias of Theorem 3, and one tiny fit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssl_bench.callbacks.weight_geometry import (
    atom_codes,
    cosines,
    geometry,
    identity_distance,
    matching,
    span_residual,
)
from ssl_bench.nets.sparse import SparseEncoder
from ssl_bench.ops.losses import normalized_mse, nt_xent

D = 6


def swapped(d: int, i: int, j: int) -> torch.Tensor:
    """The identity with rows i and j exchanged."""
    order = list(range(d))
    order[i], order[j] = j, i
    return torch.eye(d)[order]


def test_a_signed_permutation_is_a_perfect_match_and_the_nearest_one_is_found():
    w = swapped(D, 0, 3) * torch.tensor([1.0, -1, 1, -1, 1, 1]).unsqueeze(1)
    values = matching(cosines(w, torch.eye(D)))
    assert values == pytest.approx({"best_min": 1.0, "covered": D, "perm_cos": 1.0})
    noisy = w + 0.1 * torch.ones(D, D)
    rows = noisy / noisy.norm(dim=1, keepdim=True)
    expected = sum(abs(rows[i, j].item()) for i, j in enumerate([3, 1, 2, 0, 4, 5])) / D
    assert matching(cosines(noisy, torch.eye(D)))["perm_cos"] == pytest.approx(expected)


def test_two_neurons_on_one_atom_cover_fewer_atoms():
    """Thm. 1 (a)'s bad optima: every neuron is an atom (best_min 1) but two share one, so one atom is missed."""
    w = torch.eye(D)
    w[1] = w[0]
    assert matching(cosines(w, torch.eye(D))) == pytest.approx(
        {"best_min": 1.0, "covered": D - 1, "perm_cos": (D - 1) / D})


def test_a_rectangular_match_pairs_only_as_many_as_the_smaller_side():
    dictionary = torch.linalg.qr(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)))[0]
    w = torch.cat([dictionary.T, dictionary.T[:2], torch.randn(3, 20, generator=torch.Generator().manual_seed(1))])
    values = matching(cosines(w, dictionary))
    assert values["perm_cos"] == pytest.approx(1.0) and values["covered"] == 4 and values["best_min"] < 0.9


def test_identity_distance():
    assert identity_distance(torch.eye(D), torch.eye(D)) == pytest.approx(0.0, abs=1e-12)
    assert identity_distance(3.0 * swapped(D, 0, 1), torch.eye(D)) == pytest.approx(2.0)
    assert identity_distance(torch.eye(D) + torch.ones(D, D), torch.eye(D)) > 1.0


def test_span_residual():
    """Thm. 2: the part of W M outside span{W_0^o M, W_0^t M}, relative to W M."""
    gen = torch.Generator().manual_seed(2)
    dictionary = torch.linalg.qr(torch.randn(12, 5, generator=gen))[0]
    online, target = torch.randn(8, 12, generator=gen), torch.randn(8, 12, generator=gen)
    outside_m = torch.randn(8, 12, generator=gen) @ (torch.eye(12) - dictionary @ dictionary.T)
    inside = 0.3 * online - 2.0 * target + outside_m
    assert span_residual(inside, [online, target], dictionary) == pytest.approx(0.0, abs=1e-6)
    e = torch.zeros(3, 3)
    e[0, 0] = 1.0
    assert span_residual(e + torch.diag(torch.tensor([0.0, 1.0, 0.0])), [e], torch.eye(3)) == pytest.approx(
        1 / math.sqrt(2))
    assert span_residual(online, [target], dictionary) > 0.5


def one_hot_views(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes ``ReLU(W e_j)`` of both unmasked views of every one-hot input (Thm. 1, M = I, no noise)."""
    codes = torch.relu(w @ torch.eye(w.shape[1])).T
    return codes, codes.clone()


def test_theorem1_every_nonnegative_unit_column_matrix_minimises_ncl_but_only_permutations_minimise_cl():
    permutation = swapped(D, 2, 4)
    spread = torch.full((D, D), 1 / math.sqrt(D))
    for w in (permutation, spread):
        assert normalized_mse(*one_hot_views(w)).item() == pytest.approx(0.0, abs=1e-6)
    assert nt_xent(*one_hot_views(permutation), temperature=0.5) < nt_xent(*one_hot_views(spread), temperature=0.5) - 0.5
    assert matching(cosines(one_hot_views(spread)[0], torch.eye(D)))["covered"] == 1


def test_fixed_bias_is_set_and_left_untrained():
    """Thm. 3, Assumption 4: ``encoder.fixed_bias`` fixes b; nothing else changes."""
    config = SparseEncoder.Config(width=4, batch_norm=False, activation="symmetric_relu", fixed_bias=0.5)
    data = type("Data", (), {"input_dim": 4, "latent_dim": 4, "dictionary": torch.eye(4)})()
    encoder = SparseEncoder.from_config(config, data, torch.Generator().manual_seed(0))
    bias = encoder.layers[0].linear.bias
    assert torch.equal(bias, torch.full((4,), 0.5)) and not bias.requires_grad
    assert encoder.first_layer_weight.requires_grad


def test_geometry_reads_codes_in_eval_mode_and_restores_train_mode():
    data = type("Data", (), {"input_dim": 5, "latent_dim": 5, "dictionary": torch.eye(5)})()
    encoder = SparseEncoder.from_config(SparseEncoder.Config(width=5, warm_start=True), data,
                                        torch.Generator().manual_seed(0))
    encoder.train()
    running = encoder.layers[0].norm.running_mean.clone()
    codes = atom_codes(encoder, torch.eye(5))
    assert codes.shape == (5, 5) and encoder.training and torch.equal(encoder.layers[0].norm.running_mean, running)
    values = geometry(encoder, torch.eye(5), [encoder.first_layer_weight.detach().clone()])
    assert values["weights/perm_cos"] == pytest.approx(1.0) and values["weights/span_residual"] == pytest.approx(0.0)
    assert values["weights/norm"] == pytest.approx(math.sqrt(5))


def test_theorem3_tiny_fit_logs_the_geometry_and_keeps_the_warm_start_near_identity(run_cli, tmp_path):
    """A few epochs of ``pokle2022/theorem3``: W stays within 0.4 of I from a close warm start (c = 3), the
    fixed bias stays 0.5 and the span residual against the two initial networks is logged."""
    code, _, err = run_cli("fit", "--config", "pokle2022/theorem3", "encoder.warm_start_c=3", "encoder.weight_norm=row", "data.n=256",
                           "data.batch_size=64", "trainer.max_epochs=4", "callbacks.weight_geometry.every_n_epochs=2",
                           "trainer.checkpoint_every_n_epochs=1", "trainer.progress=none", "logger=none",
                           f"run_dir={tmp_path}")
    assert code == 0, err
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert metrics["weights/identity_distance"] < 0.4  # the warm start: ||Delta||_F ~ 10 x 0.032
    assert metrics["weights/norm"] == pytest.approx(math.sqrt(10), rel=1e-5)
    assert 0.0 < metrics["weights/span_residual"] < 0.5
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(state["method.encoder.layers.0.linear.bias"], torch.full((10,), 0.5))
