"""The eigenvalue dynamics of linear SimSiam with the cosine and the L2 loss (Bao 2023, Eqs. 5-8 and Appendix C).

Representation ``Phi`` (h x d), symmetric linear predictor ``Psi`` (h x h), weight decay ``rho``, inputs
``x ~ N(0, I)``, views ``x', x'' ~ N(x, sigma^2 I)`` and ``c = 1 + sigma^2``. With common eigenvectors,
``Psi = sum_j p_j u_j u_j^T`` and ``Phi Phi^T = sum_j s_j u_j u_j^T``; the norms ``N_Phi = ||Phi||_F``,
``N_Psi = ||Psi Phi||_F`` and ``N_T = tr(Psi Phi Phi^T)`` are parameters of each eigenvalue's ODE (the paper holds them
fixed per epoch). Write ``a = N_T / N_Psi^2``, ``b = 2 / N_Psi^2`` and ``k = rho c N_Phi N_Psi``.

Eq. (5), reconstructed from the gradient flow of the cosine loss with the concentrated norms
``||Phi x''||^2 = c N_Phi^2`` and ``||Psi Phi x'||^2 = c N_Psi^2`` and the Gaussian moment
``E[(x'^T A x'') x' x'^T] = c (tr(A) I + 2 A)`` for ``A = Phi^T Psi Phi``:

    dp/dt = s (1 - a p - b p^2 s) / (c N_Phi N_Psi) - rho p,
    ds/dt = 2 p s (1 - a p - b p^2 s) / (c N_Phi N_Psi) - 2 rho s.

Eq. (6): ``d(s - p^2)/dt = -2 rho (s - p^2)``, so ``s - p^2 = (s_0 - p_0^2) exp(-2 rho t)`` (the invariant parabola).

Eq. (7), the cosine-loss dynamics on the parabola ``s = p^2``:

    dp/dt = (p^2 - a p^3 - b p^6) / (c N_Phi N_Psi) - rho p = p q(p) / (c N_Phi N_Psi),
    q(p) = p - a p^2 - b p^5 - k.

The last term is ``p^6`` (from ``b p^2 s^2``), as in the reconstruction above: it is the form the text describes,
a "sixth-order" ODE with "between two and four" equilibria, an unstable negative root below which the eigenvalue
"diverges", and at ``rho = 0`` two roots besides the saddle at 0 (Appendix C). By Descartes' rule of signs, ``q`` has
exactly one negative root ``p_1`` and zero or two positive roots (counted with multiplicity), so the rate has two or
four equilibria; ``-b p^6`` as the leading term sends every ``p < p_1`` to ``-inf``. A ``p^5`` term would give one
or three equilibria and no divergence, a ``p^4`` term a fourth-order ODE.

Eq. (8), the L2-loss dynamics (Tian, Chen & Ganguli 2021, Eq. 16, no EMA, equal learning rates):
``dp/dt = p^2 (1 - c p) - rho p``, with the non-zero equilibria ``(1 +- sqrt(1 - 4 rho c)) / (2 c)`` when
``rho <= 1 / (4 c)`` and only ``p = 0`` (stable) otherwise.

Regimes of Eq. (7) (Section 5.2, Appendix C), from its equilibria:

- collapse: no stable positive equilibrium; only ``p_1 < 0`` (unstable) and 0 (stable), "two equilibrium points";
- acute: ``p_1 < 0 < p_3 < p_4``, with 0 and ``p_4`` stable and ``p_1``, ``p_3`` unstable; for ``rho > 0`` the slope
  of the rate at 0 is ``-rho < 0``, so 0 is always stable, and ``p_3 = k + a k^2 + O(k^3)`` approaches 0 as ``k``
  shrinks;
- stable: 0 is not stable. This holds exactly when ``k = 0`` (``rho = 0``): ``p_3`` merges with 0 into the saddle
  ``p^2 (1 - a p - b p^4)``, leaving ``p_1``, the saddle 0 and the stable ``p_4``. For ``rho > 0`` it is only
  approached, never attained (Remark 3).

Equilibria are the real roots of the rate's polynomial (``numpy.roots``), stable when the rate's slope there is
negative; a multiple root has slope 0 and is not stable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, TypeVar

import numpy as np
from torch import Tensor

P = TypeVar("P", float, np.ndarray, Tensor)
Regime = Literal["collapse", "acute", "stable"]
Kind = Literal["diverge", "collapse", "converge"]

_IMAG_RTOL = 1e-7  # a root is real when |Im z| <= _IMAG_RTOL |z|


@dataclass(frozen=True)
class Equilibria:
    """The distinct real equilibria in increasing order and the slope ``d(dp/dt)/dp`` of the rate at each."""

    values: np.ndarray
    slopes: np.ndarray

    @property
    def stable(self) -> np.ndarray:
        """Linear stability: the slope is negative."""
        return self.slopes < 0


def cosine_rate(p: P, rho: float, c: float, n_phi: float, n_psi: float, n_t: float) -> P:
    """Eq. (7): ``dp/dt = (p^2 - (N_T / N_Psi^2) p^3 - (2 / N_Psi^2) p^6) / (c N_Phi N_Psi) - rho p``."""
    return (p**2 - n_t / n_psi**2 * p**3 - 2 / n_psi**2 * p**6) / (c * n_phi * n_psi) - rho * p


def cosine_ps_rate(p: P, s: P, rho: float, c: float, n_phi: float, n_psi: float, n_t: float) -> tuple[P, P]:
    """Eq. (5) as reconstructed in the module docstring: ``(dp/dt, ds/dt)`` with ``g = (1 - a p - b p^2 s) /
    (c N_Phi N_Psi)``, ``dp/dt = s g - rho p`` and ``ds/dt = 2 p s g - 2 rho s``."""
    g = (1 - n_t / n_psi**2 * p - 2 / n_psi**2 * p**2 * s) / (c * n_phi * n_psi)
    return s * g - rho * p, 2 * p * s * g - 2 * rho * s


def l2_rate(p: P, rho: float, c: float) -> P:
    """Eq. (8): ``dp/dt = p^2 (1 - c p) - rho p``."""
    return p**2 * (1 - c * p) - rho * p


def _cosine_polynomial(rho: float, c: float, n_phi: float, n_psi: float, n_t: float) -> np.ndarray:
    """Eq. (7)'s coefficients, highest power first: ``[-b, 0, 0, -a, 1, -k, 0] / (c N_Phi N_Psi)``."""
    if rho < 0 or c <= 0 or n_phi <= 0 or n_psi <= 0:
        raise ValueError(f"need rho >= 0 and c, N_Phi, N_Psi > 0, got rho={rho}, c={c}, N_Phi={n_phi}, N_Psi={n_psi}")
    scale = c * n_phi * n_psi
    return np.array([-2 / n_psi**2, 0, 0, -n_t / n_psi**2, 1, -rho * scale, 0]) / scale


def _l2_polynomial(rho: float, c: float) -> np.ndarray:
    """Eq. (8)'s coefficients, highest power first: ``[-c, 1, -rho, 0]``."""
    if rho < 0 or c <= 0:
        raise ValueError(f"need rho >= 0 and c > 0, got rho={rho}, c={c}")
    return np.array([-c, 1.0, -rho, 0.0])


def _equilibria(coefficients: np.ndarray) -> Equilibria:
    roots = np.roots(coefficients)
    values = np.unique(roots[np.abs(roots.imag) <= _IMAG_RTOL * np.abs(roots)].real)
    return Equilibria(values, np.polyval(np.polyder(coefficients), values))


def _intervals(coefficients: np.ndarray) -> list[tuple[float, float, Kind]]:
    values = _equilibria(coefficients).values
    edges = np.concatenate([[-np.inf], values, [np.inf]])
    out: list[tuple[float, float, Kind]] = []
    limits: list[float] = []
    for low, high in pairwise(edges):
        probe = (low + high) / 2 if np.isfinite(low + high) else (
            high - max(1.0, abs(high)) if np.isfinite(high) else low + max(1.0, abs(low)))
        limit = high if np.polyval(coefficients, probe) > 0 else low
        kind: Kind = "diverge" if np.isinf(limit) else "collapse" if limit == 0 else "converge"
        if limits and limits[-1] == limit:
            out[-1] = (out[-1][0], float(high), kind)
        else:
            out.append((float(low), float(high), kind))
            limits.append(limit)
    return out


def cosine_equilibria(rho: float, c: float, n_phi: float, n_psi: float, n_t: float) -> Equilibria:
    """The real equilibria of Eq. (7): 0, the negative root ``p_1`` of ``q`` and zero or two positive roots."""
    return _equilibria(_cosine_polynomial(rho, c, n_phi, n_psi, n_t))


def l2_equilibria(rho: float, c: float) -> Equilibria:
    """The real equilibria of Eq. (8): 0 and, when ``rho <= 1 / (4 c)``, ``(1 +- sqrt(1 - 4 rho c)) / (2 c)``."""
    return _equilibria(_l2_polynomial(rho, c))


def regime(rho: float, c: float, n_phi: float, n_psi: float, n_t: float) -> Regime:
    """Section 5.2's regime of Eq. (7): "collapse" without a stable positive equilibrium, else "acute" when 0 is
    stable (``rho > 0``) and "stable" when it is not (the saddle of ``rho = 0``)."""
    eq = cosine_equilibria(rho, c, n_phi, n_psi, n_t)
    if not np.any(eq.stable & (eq.values > 0)):
        return "collapse"
    return "acute" if eq.stable[eq.values == 0].all() else "stable"


def l2_regime(rho: float, c: float) -> Literal["collapse", "stable"]:
    """Section 5.3: Eq. (8) collapses to 0 from every start when ``rho > 1 / (4 c)``, else has a stable
    ``p_+ = (1 + sqrt(1 - 4 rho c)) / (2 c)``."""
    return "collapse" if rho > 1 / (4 * c) else "stable"


def intervals(rho: float, c: float, n_phi: float, n_psi: float, n_t: float) -> list[tuple[float, float, Kind]]:
    """The open intervals ``(low, high, kind)`` between consecutive equilibria of Eq. (7), over the whole real line
    (``p < p_1`` diverges to ``-inf``, so the paper's regimes involve negative ``p``; clip to ``p >= 0`` for plots of
    ``|p|``), ends ``-inf``/``inf``. The sign of the rate inside an interval says which end a start there flows to:
    "diverge" to an infinite end, "collapse" to 0, "converge" to a non-zero equilibrium. Adjacent intervals that flow
    to the same point are merged, e.g. Acute: ``(-inf, p_1)`` diverge, ``(p_1, p_3)`` collapse, ``(p_3, inf)``
    converge (to ``p_4``)."""
    return _intervals(_cosine_polynomial(rho, c, n_phi, n_psi, n_t))


def l2_intervals(rho: float, c: float) -> list[tuple[float, float, Kind]]:
    """As :func:`intervals` for Eq. (8): ``(-inf, p_-)`` collapse and ``(p_-, inf)`` converge (to ``p_+``), or the
    whole line collapse when ``rho > 1 / (4 c)``."""
    return _intervals(_l2_polynomial(rho, c))


def integrate(rate: Callable[[np.ndarray], np.ndarray], p0: float | np.ndarray, t_end: float,
              steps: int) -> np.ndarray:
    """Classical fixed-step RK4 for the autonomous ``dy/dt = rate(y)``, ``h = t_end / steps``:
    ``y_{n+1} = y_n + h (k_1 + 2 k_2 + 2 k_3 + k_4) / 6`` with ``k_1 = rate(y_n)``, ``k_2 = rate(y_n + h k_1 / 2)``,
    ``k_3 = rate(y_n + h k_2 / 2)``, ``k_4 = rate(y_n + h k_3)``. Returns ``y_0 .. y_steps`` stacked on a new first
    axis (``steps + 1`` rows); a state that blows up becomes non-finite (inf or nan) and stays so."""
    h = t_end / steps
    y = np.asarray(p0, dtype=float)
    out = np.empty((steps + 1, *y.shape))
    out[0] = y
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(1, steps + 1):
            k1 = rate(y)
            k2 = rate(y + h / 2 * k1)
            k3 = rate(y + h / 2 * k2)
            k4 = rate(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            out[n] = y
    return out
