"""Max-cosine (Eq. 12) against direct computations and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.sparse_coding import make_dictionary
from ssl_bench.ops.metrics import max_cosine


def reference(weight: np.ndarray, dictionary: np.ndarray, absolute: bool = True) -> dict[str, float]:
    m, d = weight.shape[0], dictionary.shape[1]
    per_atom = []
    for j in range(d):
        col = dictionary[:, j]
        best = -np.inf
        for i in range(m):
            row = weight[i]
            c = row @ col / (np.linalg.norm(row) * np.linalg.norm(col))
            best = max(best, abs(c) if absolute else c)
        per_atom.append(best)
    s = sorted(per_atom)
    median = s[d // 2] if d % 2 else (s[d // 2 - 1] + s[d // 2]) / 2
    return {"max": s[-1], "median": median, "min": s[0]}


def orthonormal(p, d, seed=0):
    return make_dictionary(p, d, "orthonormal", torch.Generator().manual_seed(seed))


def test_perfect_recovery_gives_ones():
    m = orthonormal(12, 5)
    got = max_cosine(m.T, m)
    for key in ("max", "median", "min"):
        assert got[key] == pytest.approx(1.0, abs=1e-6)


def test_signed_option():
    m = orthonormal(12, 5)
    assert max_cosine(m.T, m, absolute=False)["min"] == pytest.approx(1.0, abs=1e-6)
    assert max_cosine(-m.T, m, absolute=True)["min"] == pytest.approx(1.0, abs=1e-6)
    # a single anti-aligned neuron per atom: the signed max-cosine is -1
    one = orthonormal(12, 1)
    signed = max_cosine(-one.T, one, absolute=False)
    for key in ("max", "median", "min"):
        assert signed[key] == pytest.approx(-1.0, abs=1e-6)
    # with W = -M^T and d > 1 every atom's best neuron is an orthogonal one (cosine 0), not its own (-1)
    signed = max_cosine(-m.T, m, absolute=False)
    for key in ("max", "median", "min"):
        assert signed[key] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("m,p,d", [(7, 5, 4), (9, 6, 5), (3, 8, 6), (1, 4, 1)])
@pytest.mark.parametrize("absolute", [True, False])
def test_random_case_matches_numpy(m, p, d, absolute):
    rng = np.random.default_rng(m * 31 + p * 7 + d)
    weight, dictionary = rng.normal(size=(m, p)), rng.normal(size=(p, d))
    got = max_cosine(torch.from_numpy(weight).float(), torch.from_numpy(dictionary).float(), absolute)
    expected = reference(weight, dictionary, absolute)
    for key in ("max", "median", "min"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6)


def test_even_count_median_is_mean_of_middle_two():
    # two atoms, one neuron per atom direction with chosen cosines 0.2 and 0.8
    dictionary = torch.eye(3, 2, dtype=torch.float64)
    a, b = 0.2, 0.8
    weight = torch.tensor([[a, 0.0, np.sqrt(1 - a * a)], [0.0, b, np.sqrt(1 - b * b)]], dtype=torch.float64)
    got = max_cosine(weight, dictionary)
    assert got["median"] == pytest.approx((a + b) / 2)
    assert got["max"] == pytest.approx(b) and got["min"] == pytest.approx(a)


def test_invariances():
    rng = np.random.default_rng(11)
    weight = torch.from_numpy(rng.normal(size=(8, 6)))
    dictionary = torch.from_numpy(rng.normal(size=(6, 4)))
    base = max_cosine(weight, dictionary)
    perm = torch.from_numpy(rng.permutation(8))
    scales = torch.from_numpy(rng.uniform(0.1, 10, size=(8, 1)) * rng.choice([-1.0, 1.0], size=(8, 1)))
    col_scales = torch.from_numpy(rng.uniform(0.1, 10, size=(1, 4)))
    for variant in (max_cosine(weight[perm], dictionary), max_cosine(weight * scales, dictionary),
                    max_cosine(weight, dictionary * col_scales)):
        for key in base:
            assert variant[key] == pytest.approx(base[key], abs=1e-12)
    # the signed version is not invariant to negative scaling, but it is to positive scaling
    signed = max_cosine(weight, dictionary, absolute=False)
    pos = max_cosine(weight * scales.abs(), dictionary, absolute=False)
    for key in signed:
        assert pos[key] == pytest.approx(signed[key], abs=1e-12)


def test_values_are_bounded_and_ordered():
    rng = np.random.default_rng(12)
    got = max_cosine(torch.from_numpy(rng.normal(size=(20, 10))), torch.from_numpy(rng.normal(size=(10, 7))))
    assert 0 <= got["min"] <= got["median"] <= got["max"] <= 1


def test_extra_neurons_can_only_increase():
    rng = np.random.default_rng(13)
    weight, dictionary = torch.from_numpy(rng.normal(size=(5, 6))), torch.from_numpy(rng.normal(size=(6, 3)))
    more = torch.cat([weight, torch.from_numpy(rng.normal(size=(4, 6)))])
    a, b = max_cosine(weight, dictionary), max_cosine(more, dictionary)
    assert all(b[k] >= a[k] - 1e-12 for k in a)


@pytest.mark.parametrize("weight_shape,dict_shape", [((5, 6), (7, 3)), ((6,), (6, 3)), ((5, 6), (6,)),
                                                      ((2, 5, 6), (6, 3)), ((5, 6), (6, 3, 1))])
def test_shape_errors(weight_shape, dict_shape):
    with pytest.raises(ValueError):
        max_cosine(torch.randn(weight_shape), torch.randn(dict_shape))
