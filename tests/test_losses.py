"""Losses against direct numpy implementations; stop-gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_bench.ops.losses import (
    info_nce,
    negative_cosine,
    normalized_mse,
    nt_xent,
    standardize,
)


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, tau, normalize: bool = True) -> float:
    """Loop over the 2B anchors: -log(exp(s_{i,i+}) / sum_{j != i} exp(s_ij)), averaged; ``s_ij`` is
    ``sum_k u_ik u_jk / tau_k`` for a vector ``tau``."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    u = z / np.linalg.norm(z, axis=1, keepdims=True) if normalize else z
    tau = np.broadcast_to(np.asarray(tau, dtype=np.float64), (z.shape[1],))
    n, b = len(u), len(z1)
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        sims = {j: float(np.sum(u[i] * u[j] / tau)) for j in range(n) if j != i}
        denom = sum(np.exp(s) for s in sims.values())
        total += -(sims[partner] - np.log(denom))
    return total / n


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)])


@pytest.mark.parametrize("batch,dim", [(1, 3), (2, 4), (3, 5), (8, 6), (17, 3)])
@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_nt_xent_matches_reference(batch, dim, tau):
    rng = np.random.default_rng(batch * 100 + dim)
    z1, z2 = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    expected = nt_xent_reference(z1, z2, tau)
    got64 = nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), tau).item()
    got32 = nt_xent(torch.from_numpy(z1).float(), torch.from_numpy(z2).float(), tau).item()
    assert got64 == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert got32 == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_nt_xent_single_pair_is_zero_and_perfect_alignment_is_low():
    z = torch.randn(1, 4, dtype=torch.float64)
    # B = 1: the partner is the only other view, so the softmax is certain
    assert nt_xent(z, 2 * z, 0.5).item() == pytest.approx(0.0, abs=1e-12)
    # views equal to one-hot codes of distinct classes: positives aligned, negatives orthogonal
    e = torch.eye(4, dtype=torch.float64)
    tau = 0.1
    expected = -np.log(np.exp(1 / tau) / (np.exp(1 / tau) + 6 * np.exp(0.0)))
    assert nt_xent(e, e, tau).item() == pytest.approx(expected, rel=1e-12)


def test_nt_xent_invariances():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    base = nt_xent(z1, z2, 0.2)
    scale = torch.rand(5, 1, dtype=torch.float64) + 0.5
    torch.testing.assert_close(nt_xent(z1 * scale, z2 * scale.flip(0), 0.2), base)  # row scaling
    perm = torch.randperm(5)
    torch.testing.assert_close(nt_xent(z1[perm], z2[perm], 0.2), base)  # reorder the pairs
    torch.testing.assert_close(nt_xent(z2, z1, 0.2), base)  # swap the views


def test_nt_xent_gradcheck():
    torch.manual_seed(1)
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2), eps=1e-6, atol=1e-6)


def test_nt_xent_gradient_matches_reference_finite_differences():
    rng = np.random.default_rng(7)
    z1, z2, tau = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), 0.25
    t1, t2 = torch.tensor(z1, requires_grad=True), torch.tensor(z2, requires_grad=True)
    nt_xent(t1, t2, tau).backward()
    eps = 1e-6
    for arr, grad, which in ((z1, t1.grad, 0), (z2, t2.grad, 1)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = (plus, z2) if which == 0 else (z1, plus)
            args_m = (minus, z2) if which == 0 else (z1, minus)
            num[idx] = (nt_xent_reference(*args_p, tau) - nt_xent_reference(*args_m, tau)) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), num, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ normalized MSE


def test_normalized_mse_value():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = normalized_mse(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(2 - 2 * cos_rows(a, b).mean(), rel=1e-12)
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert got == pytest.approx(((na - nb) ** 2).sum(axis=1).mean(), rel=1e-12)
    assert normalized_mse(torch.from_numpy(a), torch.from_numpy(3 * a)).item() == pytest.approx(0.0, abs=1e-12)
    assert normalized_mse(torch.from_numpy(a), torch.from_numpy(-a)).item() == pytest.approx(4.0, rel=1e-12)


@pytest.mark.parametrize("loss", [normalized_mse, negative_cosine])
def test_loss_stops_gradient_to_its_second_argument(loss):
    torch.manual_seed(2)
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss(a, b).backward()
    assert b.grad is None
    assert a.grad is not None and a.grad.abs().sum() > 0
    # the gradient to the first argument is that of the loss with a constant second argument
    a2 = a.detach().clone().requires_grad_(True)
    loss(a2, b.detach()).backward()
    torch.testing.assert_close(a.grad, a2.grad)
    assert torch.autograd.gradcheck(lambda x: loss(x, b.detach()), (a.detach().clone().requires_grad_(),))


def test_normalized_mse_target_only_loss_has_no_graph():
    b = torch.randn(4, 3, requires_grad=True)
    loss = normalized_mse(torch.randn(4, 3), b)
    assert not loss.requires_grad


# ----------------------------------------------------------------------------------------------- negative cosine


def test_negative_cosine_value():
    rng = np.random.default_rng(4)
    p, z = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    got = negative_cosine(torch.from_numpy(p), torch.from_numpy(z)).item()
    assert got == pytest.approx(-cos_rows(p, z).mean(), rel=1e-12)
    assert negative_cosine(torch.from_numpy(p), torch.from_numpy(2 * p)).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("normalize", [True, False])
def test_nt_xent_with_a_temperature_per_dimension_matches_reference(normalize):
    rng = np.random.default_rng(7)
    z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    tau = np.array([1.0, 1.0, 0.7, 0.7])
    expected = nt_xent_reference(z1, z2, tau, normalize)
    got = nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), torch.from_numpy(tau), normalize=normalize).item()
    assert got == pytest.approx(expected, rel=1e-10)
    # one shared value is the scalar loss
    same = nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), torch.full((4,), 0.3, dtype=torch.float64))
    assert same.item() == pytest.approx(nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), 0.3).item(), rel=1e-12)


def info_nce_reference(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """(l(z1, z2) + l(z2, z1)) / 2 with l(a, b) = -mean_i log(exp(a_i.b_i/tau) / sum_j exp(a_i.b_j/tau))."""
    def one_way(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        total = 0.0
        for i in range(len(a)):
            logits = [float(a[i] @ b[j]) / tau for j in range(len(b))]
            total += -(logits[i] - np.log(np.sum(np.exp(logits))))
        return total / len(a)
    return 0.5 * (one_way(z1, z2) + one_way(z2, z1))


@pytest.mark.parametrize("batch,dim,tau", [(1, 3, 0.5), (4, 5, 0.1), (9, 2, 1.0)])
def test_info_nce_matches_reference(batch, dim, tau):
    rng = np.random.default_rng(batch + 10 * dim)
    z1, z2 = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    got = info_nce(torch.from_numpy(z1), torch.from_numpy(z2), tau).item()
    assert got == pytest.approx(info_nce_reference(z1, z2, tau), rel=1e-10, abs=1e-12)


def test_info_nce_is_b_way_not_2b_way():
    # identical one-hot views: info_nce has B - 1 negatives per anchor, nt_xent 2B - 2
    e, tau = torch.eye(4, dtype=torch.float64), 0.1
    assert info_nce(e, e, tau).item() == pytest.approx(-np.log(np.exp(10) / (np.exp(10) + 3)), rel=1e-12)
    assert info_nce(e, e, tau).item() < nt_xent(e, e, tau).item()


def test_info_nce_gradcheck():
    torch.manual_seed(1)
    z1 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.3), (z1, z2))


def test_standardize_gives_zero_mean_unit_variance_scaled_by_root_dim():
    z = torch.randn(200, 8, dtype=torch.float64) * torch.arange(1, 9) + 5.0
    u = standardize(z)
    torch.testing.assert_close(u.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(u.var(0, unbiased=False) * 8, torch.ones(8, dtype=torch.float64), atol=1e-4, rtol=0)
    assert (u.pow(2).sum(1).mean().item()) == pytest.approx(1.0, rel=1e-4)
