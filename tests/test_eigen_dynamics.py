"""Bao 2023: the cosine- and L2-loss eigenvalue dynamics (Eqs. 5-8), their equilibria, regimes and basins."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.optimize import approx_fprime

from ssl_bench.ops.eigen_dynamics import (
    cosine_equilibria,
    cosine_ps_rate,
    cosine_rate,
    integrate,
    intervals,
    l2_equilibria,
    l2_intervals,
    l2_rate,
    l2_regime,
    regime,
)

# (rho, c, N_Phi, N_Psi, N_T): strong decay with large norms, then the same decay once the norms have shrunk.
COLLAPSE = (0.1, 1.2, 3.0, 3.0, 5.0)
ACUTE = (0.2, 1.0, 1.0, 1.0, 0.5)
STABLE = (0.0, 1.2, 2.0, 1.5, 0.7)


def test_l2_equilibria_closed_form() -> None:
    rho, c = 0.1, 1.5
    eq = l2_equilibria(rho, c)
    root = np.sqrt(1 - 4 * rho * c)
    np.testing.assert_allclose(eq.values, [0, (1 - root) / (2 * c), (1 + root) / (2 * c)], atol=1e-12)
    assert eq.stable.tolist() == [True, False, True]
    np.testing.assert_allclose(l2_rate(eq.values, rho, c), 0, atol=1e-12)
    assert l2_regime(rho, c) == "stable"

    above = l2_equilibria(1.01 / (4 * c), c)
    assert above.values.tolist() == [0.0] and above.stable.tolist() == [True]
    assert l2_regime(1.01 / (4 * c), c) == "collapse"


@pytest.mark.parametrize(("params", "count", "stable", "name"), [
    (COLLAPSE, 2, [False, True], "collapse"),
    (ACUTE, 4, [False, True, False, True], "acute"),
    (STABLE, 3, [False, False, True], "stable"),
])
def test_cosine_equilibria_and_regime(params: tuple[float, ...], count: int, stable: list[bool], name: str) -> None:
    eq = cosine_equilibria(*params)
    assert len(eq.values) == count and eq.values[0] < 0 and 0 in eq.values
    assert eq.stable.tolist() == stable
    assert regime(*params) == name
    np.testing.assert_allclose(cosine_rate(eq.values, *params), 0, atol=1e-12)
    numeric = [approx_fprime([v], lambda p: cosine_rate(p[0], *params), 1e-7)[0] for v in eq.values]
    np.testing.assert_allclose(eq.slopes, numeric, atol=1e-5)


def test_cosine_closed_forms() -> None:
    """rho = 0, N_T = 0 (Appendix C): p^2 (1 - 2 p^4 / N_Psi^2) gives a saddle at 0 and +-(N_Psi^2 / 2)^(1/4); for small
    k = rho c N_Phi N_Psi the unstable root next to 0 is k + a k^2 + O(k^3)."""
    n_psi = 1.5
    np.testing.assert_allclose(cosine_equilibria(0.0, 1.2, 2.0, n_psi, 0.0).values,
                               [-(n_psi**2 / 2) ** 0.25, 0, (n_psi**2 / 2) ** 0.25], atol=1e-12)
    rho, c, n_phi, n_t = 1e-5, 1.2, 2.0, 0.7
    k, a = rho * c * n_phi * n_psi, n_t / n_psi**2
    np.testing.assert_allclose(cosine_equilibria(rho, c, n_phi, n_psi, n_t).values[2], k + a * k**2, rtol=1e-8)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rho >= 0"):
        cosine_equilibria(-0.1, 1.0, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="c > 0"):
        l2_equilibria(0.1, 0.0)


def test_torch_input() -> None:
    p = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(cosine_rate(torch.from_numpy(p), *ACUTE).numpy(), cosine_rate(p, *ACUTE))
    np.testing.assert_allclose(l2_rate(torch.from_numpy(p), 0.1, 1.5).numpy(), l2_rate(p, 0.1, 1.5))


@pytest.mark.parametrize(("params", "kinds"), [
    (COLLAPSE, ["diverge", "collapse"]),
    (ACUTE, ["diverge", "collapse", "converge"]),
    (STABLE, ["diverge", "collapse", "converge"]),
])
def test_intervals_partition_the_line(params: tuple[float, ...], kinds: list[str]) -> None:
    found = intervals(*params)
    assert [kind for *_, kind in found] == kinds
    assert found[0][0] == -np.inf and found[-1][1] == np.inf
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in pairwise(found))
    assert set(cosine_equilibria(*params).values) >= {low for low, *_ in found[1:]}


def starts(low: float, high: float) -> np.ndarray:
    """Points inside ``(low, high)``; a half-line is cut one unit beyond 0 or its finite end, whichever is further."""
    if np.isinf(low) and np.isinf(high):
        return np.array([-2.0, -0.5, 0.5, 2.0])
    if np.isinf(low):
        return np.linspace(min(high, 0) - 1, high, 5)[:-1]
    if np.isinf(high):
        return np.linspace(low, max(low, 0) + 1, 5)[1:]
    return np.linspace(low, high, 11)[1:-1]


@pytest.mark.parametrize(("rate", "params", "found", "stable_roots"), [
    (cosine_rate, COLLAPSE, intervals(*COLLAPSE), []),
    (cosine_rate, ACUTE, intervals(*ACUTE), [cosine_equilibria(*ACUTE).values[-1]]),
    (l2_rate, (0.1, 1.5), l2_intervals(0.1, 1.5), [l2_equilibria(0.1, 1.5).values[-1]]),
    (l2_rate, (0.2, 1.5), l2_intervals(0.2, 1.5), []),
])
def test_intervals_agree_with_rk4(rate: Callable[..., np.ndarray], params: tuple[float, ...],
                                  found: list[tuple[float, float, str]], stable_roots: list[float]) -> None:
    points = [starts(low, high) for low, high, _ in found]
    finals = np.split(integrate(lambda p: rate(p, *params), np.concatenate(points), 300.0, 6000)[-1],
                      np.cumsum([len(x) for x in points])[:-1])
    for (low, high, kind), final in zip(found, finals):
        if kind == "diverge":
            assert np.all(~np.isfinite(final) | (np.abs(final) > 1e6))
        elif kind == "collapse":
            np.testing.assert_allclose(final, 0, atol=1e-6)
        else:
            target = [r for r in stable_roots if low <= r <= high]
            assert len(target) == 1
            np.testing.assert_allclose(final, target[0], rtol=1e-8)


def test_rk4_matches_exp() -> None:
    t = np.linspace(0, 5, 101)
    path = integrate(lambda p: -p, np.array([1.0, 2.0]), 5.0, 100)
    np.testing.assert_allclose(path, np.exp(-t)[:, None] * [1.0, 2.0], atol=2e-7)
    coarse = abs(integrate(lambda p: -p, 1.0, 5.0, 50)[-1] - np.exp(-5))
    fine = abs(integrate(lambda p: -p, 1.0, 5.0, 100)[-1] - np.exp(-5))
    assert 14 < coarse / fine < 18  # fourth order


def test_ps_system_converges_to_parabola() -> None:
    """Eq. (6): s - p^2 = (s_0 - p_0^2) exp(-2 rho t); on s = p^2, Eq. (5) is Eq. (7)."""
    rho, params = ACUTE[0], ACUTE[1:]
    p = np.linspace(-0.5, 1.5, 9)
    np.testing.assert_allclose(cosine_ps_rate(p, p**2, rho, *params)[0], cosine_rate(p, rho, *params), atol=1e-15)

    y0 = np.array([[0.3, 0.8, -0.4, 1.0], [0.5, 0.1, 0.6, 1.5]])
    t_end, steps = 10.0, 10_000
    path = integrate(lambda y: np.stack(cosine_ps_rate(y[0], y[1], rho, *params)), y0, t_end, steps)
    t = np.linspace(0, t_end, steps + 1)[:, None]
    np.testing.assert_allclose(path[:, 1] - path[:, 0] ** 2, (y0[1] - y0[0] ** 2) * np.exp(-2 * rho * t), atol=1e-9)
