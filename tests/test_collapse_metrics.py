"""Label-free collapse diagnostics against independent numpy/scipy computations, lightly's kNN and planted cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.spatial.distance
import scipy.special
import torch
from lightly.utils.benchmarking import knn_predict

from ssl_bench.ops.collapse import (
    alignment,
    alpha_req,
    knn_accuracy,
    lidar,
    mcc,
    nesum,
    rankme,
    stable_rank,
    uniformity,
    wasserstein_uniformity,
)

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # gpu: deselected by default, run with -m gpu


def approx(value: float):
    return pytest.approx(value, rel=1e-5, abs=1e-12)


def sample(kind: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Embeddings as float64 numpy values exactly representable in ``dtype``, and as a tensor of ``dtype``.
    ``gaussian``: standard normal; ``structured``: anisotropic (scales over three decades), correlated, offset."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape)
    if kind == "structured":
        d = shape[-1]
        z = (z * np.logspace(0, -3, d)) @ rng.normal(size=(d, d)) + 3.0 + rng.normal(size=d)
    tensor = torch.from_numpy(z).to(dtype)
    return tensor.double().numpy(), tensor


def collapsed(n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    row = torch.from_numpy(np.random.default_rng(1).normal(size=d)).to(dtype)
    return row.expand(n, d).clone()


# --- independent references ---------------------------------------------------------------------------------------

def entropy_rank(values: np.ndarray, eps: float) -> float:
    if values.sum() == 0:
        return 0.0
    p = values / values.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def ref_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    return entropy_rank(np.linalg.svd(z, compute_uv=False), eps)


def ref_alpha_req(z: np.ndarray) -> dict[str, float]:
    lam = np.sort(np.linalg.eigvalsh(np.atleast_2d(np.cov(z, rowvar=False))))[::-1]
    m = min(int(np.count_nonzero(lam > 1e-10 * lam[0])), len(z) - 1) if lam[0] > 0 else 0
    m = m - m // 10 if m >= 10 else m
    if m < 3:
        return {"alpha": math.nan, "fit_r2": math.nan}
    log_k, log_lam = np.log(np.arange(1, m + 1)), np.log(lam[:m])
    slope, _ = np.polyfit(log_k, log_lam, 1)
    return {"alpha": -slope, "fit_r2": np.corrcoef(log_k, log_lam)[0, 1] ** 2}


def ref_lidar(z: np.ndarray, delta: float = 1e-4, eps: float = 1e-8) -> float:
    n, q, d = z.shape
    class_means = z.mean(axis=1)
    grand = class_means.mean(axis=0)
    between = sum(np.outer(m - grand, m - grand) for m in class_means) / (n - 1)
    within = sum(np.outer(z[i, j] - class_means[i], z[i, j] - class_means[i]) for i in range(n) for j in range(q))
    within = within / (n * (q - 1)) + delta * np.eye(d)
    # eig(S_w^-1/2 S_b S_w^-1/2) = eig(S_w^-1 S_b): the generalized symmetric eigenproblem S_b v = lambda S_w v
    lam = np.clip(scipy.linalg.eigh(between, within, eigvals_only=True), 0, None)
    return entropy_rank(lam, eps)


def ref_stable_rank(z: np.ndarray) -> float:
    return float(np.linalg.norm(z, "fro") ** 2 / np.linalg.norm(z, 2) ** 2)


def ref_nesum(z: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(np.atleast_2d(np.cov(z, rowvar=False)))
    return float(lam.sum() / lam.max())


def unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def ref_alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = 2) -> float:
    return float(np.mean(np.linalg.norm(unit_rows(z1) - unit_rows(z2), axis=1) ** alpha))


def ref_uniformity(z: np.ndarray, t: float = 2) -> float:
    squared = scipy.spatial.distance.pdist(unit_rows(z), "sqeuclidean")
    return float(scipy.special.logsumexp(-t * squared) - np.log(len(squared)))


def ref_wasserstein(z: np.ndarray) -> float:
    u = unit_rows(z)
    mu, sigma = u.mean(axis=0), np.atleast_2d(np.cov(u, rowvar=False, bias=True))
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(sigma), 0, None)).sum()
    return float(np.sqrt(max(mu @ mu + 1 + np.trace(sigma) - 2 / np.sqrt(u.shape[1]) * root_trace, 0.0)))


def ref_knn_predictions(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, k: int, t: float) -> np.ndarray:
    bank, queries, classes = unit_rows(train), unit_rows(test), int(train_y.max()) + 1
    k = min(k, len(bank))
    predictions = []
    for query in queries:
        similarity = bank @ query
        nearest = np.argsort(-similarity)[:k]
        predictions.append(np.argmax(np.bincount(train_y[nearest], np.exp(similarity[nearest] / t), classes)))
    return np.array(predictions)


def ref_mcc(z: np.ndarray, latents: np.ndarray) -> float:
    dz = z.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(z, latents, rowvar=False)
    block = np.nan_to_num(np.abs(full[:dz, dz:]), nan=0.0)
    rows, cols = scipy.optimize.linear_sum_assignment(-block)
    return float(block[rows, cols].mean())


# --- agreement with the references ----------------------------------------------------------------------------------

SHAPES = [(200, 12), (6, 20), (40, 40)]  # N > d, N < d, N = d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gaussian", "structured"])
@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_metrics_match_numpy(shape, kind, dtype):
    z_np, z = sample(kind, shape, dtype)
    assert rankme(z) == approx(ref_rankme(z_np))
    assert rankme(z, eps=1e-3) == approx(ref_rankme(z_np, eps=1e-3))
    assert stable_rank(z) == approx(ref_stable_rank(z_np))
    assert nesum(z) == approx(ref_nesum(z_np))
    got, want = alpha_req(z), ref_alpha_req(z_np)
    assert got["alpha"] == approx(want["alpha"])
    assert got["fit_r2"] == approx(want["fit_r2"])
    assert all(isinstance(value, float) for value in (rankme(z), stable_rank(z), nesum(z), *got.values()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gaussian", "structured"])
@pytest.mark.parametrize("shape", SHAPES)
def test_hypersphere_metrics_match_numpy(shape, kind, dtype):
    z1_np, z1 = sample(kind, shape, dtype, seed=0)
    z2_np, z2 = sample(kind, shape, dtype, seed=1)
    assert alignment(z1, z2) == approx(ref_alignment(z1_np, z2_np))
    assert alignment(z1, z2, alpha=1) == approx(ref_alignment(z1_np, z2_np, alpha=1))
    assert uniformity(z1) == approx(ref_uniformity(z1_np))
    assert uniformity(z1, t=5) == approx(ref_uniformity(z1_np, t=5))
    assert wasserstein_uniformity(z1) == approx(ref_wasserstein(z1_np))


def test_uniformity_blocks_match_numpy():
    z_np, z = sample("gaussian", (2100, 3), torch.float64)  # three blocks of 1024 rows
    assert uniformity(z) == approx(ref_uniformity(z_np))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gaussian", "structured"])
@pytest.mark.parametrize("shape", [(30, 4, 8), (5, 3, 12), (10, 2, 10)])  # n > d, n < d, n = d
def test_lidar_matches_numpy(shape, kind, dtype):
    z_np, z = sample(kind, shape, dtype)
    assert lidar(z) == approx(ref_lidar(z_np))
    assert lidar(z, delta=1e-2, eps=1e-5) == approx(ref_lidar(z_np, delta=1e-2, eps=1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dz,dl", [(4, 4), (6, 3), (3, 6)])
def test_mcc_matches_numpy(dz, dl, dtype):
    latents_np, latents = sample("gaussian", (300, dl), dtype, seed=2)
    rng = np.random.default_rng(3)
    mixed = latents_np @ rng.normal(size=(dl, dz)) + 0.5 * rng.normal(size=(300, dz))
    z = torch.from_numpy(mixed).to(dtype)
    assert mcc(z, latents) == approx(ref_mcc(z.double().numpy(), latents_np))


# --- structured cases -----------------------------------------------------------------------------------------------

def planted(alpha: float, d: int, seed: int = 0) -> np.ndarray:
    """20,000 samples of N(0, diag(k^-alpha)), k = 1..d, in a random rotation."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(20_000, d)) * np.arange(1, d + 1) ** (-alpha / 2)) @ rotation.T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("d", [64, 8])  # d = 8: all 8 ranks, below 10 none is dropped
def test_alpha_req_recovers_a_planted_power_law(alpha, d):
    z = planted(alpha, d)
    got = alpha_req(torch.from_numpy(z))
    assert abs(got["alpha"] - alpha) < 0.05
    assert got["fit_r2"] > 0.99
    assert alpha_req(torch.from_numpy(z).float())["alpha"] == approx(ref_alpha_req(z.astype(np.float32))["alpha"])


def test_alpha_req_window_adapts_to_rank_and_samples():
    rng = np.random.default_rng(4)
    spectrum = np.arange(1, 5) ** -1.0
    low_rank = (rng.normal(size=(5000, 4)) * np.sqrt(spectrum)) @ rng.normal(size=(4, 16))
    got = alpha_req(torch.from_numpy(low_rank))  # 4 ranks above the floor, the other 12 eigenvalues are rounding
    assert got == pytest.approx(ref_alpha_req(low_rank), rel=1e-5) and not math.isnan(got["alpha"])
    two = rng.normal(size=(100, 2)) @ rng.normal(size=(2, 16))
    assert all(math.isnan(value) for value in alpha_req(torch.from_numpy(two)).values())
    few = rng.normal(size=(3, 16))  # N - 1 = 2 ranks
    assert all(math.isnan(value) for value in alpha_req(torch.from_numpy(few)).values())


@pytest.mark.parametrize("dtype", DTYPES)
def test_complete_collapse(dtype):
    z = collapsed(50, 8, dtype)
    assert rankme(z) == pytest.approx(1.0, abs=1e-4)
    assert rankme(z) == pytest.approx(ref_rankme(z.double().numpy()), rel=1e-5)
    assert all(math.isnan(value) for value in alpha_req(z).values())
    assert stable_rank(z) == pytest.approx(1.0, rel=1e-9)
    assert nesum(z) == 0.0
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_uniformity(z) == pytest.approx(math.sqrt(2), rel=1e-9)
    assert mcc(z, torch.from_numpy(np.random.default_rng(0).normal(size=(50, 3)))) == 0.0
    assert lidar(collapsed(60, 8, dtype).reshape(20, 3, 8)) == 0.0
    noise = torch.randn(20, 3, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    views = collapsed(20, 8, dtype).unsqueeze(1) + 0.1 * noise
    assert 0.0 < lidar(views) < 8  # class means differ only by the views' noise


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_zero_embeddings(dtype):
    z = torch.zeros(10, 4, dtype=dtype)
    assert rankme(z) == 0.0
    assert stable_rank(z) == 0.0
    assert nesum(z) == 0.0
    assert lidar(z.reshape(5, 2, 4)) == 0.0
    assert all(math.isnan(value) for value in alpha_req(z).values())


def test_rank_deficiency():
    rng = np.random.default_rng(5)
    left, _ = np.linalg.qr(rng.normal(size=(60, 3)))
    right, _ = np.linalg.qr(rng.normal(size=(12, 3)))
    flat = torch.from_numpy(left @ right.T)  # three equal singular values
    assert rankme(flat) == pytest.approx(3.0, rel=1e-4)
    assert stable_rank(flat) == pytest.approx(3.0, rel=1e-9)
    low_np = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 12))
    low = torch.from_numpy(low_np)
    assert rankme(low) == approx(ref_rankme(low_np)) and rankme(low) < 3 + 1e-3
    assert stable_rank(low) == approx(ref_stable_rank(low_np)) and stable_rank(low) <= 3
    assert nesum(low) == approx(ref_nesum(low_np)) and nesum(low) <= 3
    views_np = rng.normal(size=(12, 4, 2)) @ rng.normal(size=(2, 9))  # singular within-class scatter: delta I
    assert lidar(torch.from_numpy(views_np)) == approx(ref_lidar(views_np))


def test_whitened_and_uniform_embeddings():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 8))
    x = x - x.mean(axis=0)
    white = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    assert nesum(torch.from_numpy(white)) == pytest.approx(8.0, rel=1e-9)
    sphere = torch.from_numpy(rng.normal(size=(20_000, 8)))
    assert wasserstein_uniformity(sphere) < 0.05
    assert uniformity(sphere[:2000]) < uniformity(torch.from_numpy(rng.normal(size=(2000, 8)) + 3.0))


def test_mcc_structured_cases():
    rng = np.random.default_rng(7)
    latents = rng.uniform(-1, 1, size=(2000, 5))
    permuted = latents[:, [3, 0, 4, 1, 2]] * np.array([2.0, -0.5, 3.0, -1.0, 10.0]) + rng.normal(size=5)
    assert mcc(torch.from_numpy(permuted), torch.from_numpy(latents)) == pytest.approx(1.0, rel=1e-9)
    extra = np.concatenate([rng.normal(size=(2000, 3)), permuted], axis=1)  # d_z > d_l: the noise columns go unmatched
    assert mcc(torch.from_numpy(extra), torch.from_numpy(latents)) == pytest.approx(1.0, rel=1e-9)
    noise = rng.normal(size=(20_000, 5))
    assert mcc(torch.from_numpy(noise), torch.from_numpy(rng.uniform(size=(20_000, 5)))) < 0.03
    constant = np.concatenate([np.full((2000, 1), 3.0), permuted[:, 1:]], axis=1)
    assert mcc(torch.from_numpy(constant), torch.from_numpy(latents)) == pytest.approx(0.8, rel=1e-9)


# --- kNN against lightly --------------------------------------------------------------------------------------------

def knn_data(dtype: torch.dtype, classes: int = 5, seed: int = 8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    train_y, test_y = rng.integers(0, classes, 300), rng.integers(0, classes, 120)
    train = torch.from_numpy(centres[train_y] + 1.5 * rng.normal(size=(300, 16))).to(dtype)
    test = torch.from_numpy(centres[test_y] + 1.5 * rng.normal(size=(120, 16))).to(dtype)
    return train, torch.from_numpy(train_y), test, torch.from_numpy(test_y), classes


def lightly_predictions(train, train_y, test, classes, k, t):
    normalize = torch.nn.functional.normalize
    ranked = knn_predict(normalize(test, dim=1), normalize(train, dim=1).T, train_y, classes, min(k, len(train)), t)
    return ranked[:, 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,t", [(1, 0.1), (20, 0.07), (200, 0.1), (1000, 0.5)])  # k = 1000 is capped at 300
def test_knn_matches_lightly_and_numpy(k, t, dtype):
    train, train_y, test, test_y, classes = knn_data(dtype)
    predictions = lightly_predictions(train, train_y, test, classes, k, t)
    reference = ref_knn_predictions(train.double().numpy(), train_y.numpy(), test.double().numpy(), k, t)
    assert np.array_equal(predictions.numpy(), reference)
    accuracy = knn_accuracy(train, train_y, test, test_y, k=k, temperature=t)
    assert accuracy == (predictions == test_y).double().mean().item()
    assert 0.4 < accuracy < 1.0
    assert knn_accuracy(train, train_y, test, predictions, k=k, temperature=t) == 1.0  # the same prediction everywhere


def test_knn_chunks_and_default_k():
    train, train_y, test, test_y, classes = knn_data(torch.float64, classes=3, seed=9)
    test = test.repeat(10, 1)  # 1200 test rows: two chunks
    predictions = lightly_predictions(train, train_y, test, classes, 200, 0.1)
    assert knn_accuracy(train, train_y, test, predictions) == 1.0
    assert knn_accuracy(train, train_y, test, test_y.repeat(10)) == (predictions == test_y.repeat(10)).double().mean()


# --- devices --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_inputs_device(device):
    z_np, z = sample("structured", (64, 8), torch.float32)
    z = z.to(device)
    assert rankme(z) == approx(ref_rankme(z_np))
    assert alpha_req(z)["alpha"] == approx(ref_alpha_req(z_np)["alpha"])
    assert nesum(z) == approx(ref_nesum(z_np))
    assert stable_rank(z) == approx(ref_stable_rank(z_np))
    assert uniformity(z) == approx(ref_uniformity(z_np))
    assert wasserstein_uniformity(z) == approx(ref_wasserstein(z_np))
    assert alignment(z, z.flip(0)) == approx(ref_alignment(z_np, z_np[::-1]))
    assert lidar(z.reshape(16, 4, 8)) == approx(ref_lidar(z_np.reshape(16, 4, 8)))
    assert mcc(z, z[:, :3] * 2) == pytest.approx(1.0, rel=1e-9)
    labels = torch.arange(64, device=device) % 4
    assert knn_accuracy(z, labels, z, labels, k=1) == 1.0


# --- bad input ------------------------------------------------------------------------------------------------------

def calls(z: torch.Tensor) -> dict[str, tuple]:
    """Every function with ``z`` (16 x 4) in each embedding argument: ``name -> (function, arguments, argument)``."""
    y = torch.arange(16) % 2
    return {
        "rankme": (rankme, (z,), "z"), "alpha_req": (alpha_req, (z,), "z"), "stable_rank": (stable_rank, (z,), "z"),
        "nesum": (nesum, (z,), "z"), "uniformity": (uniformity, (z,), "z"),
        "wasserstein_uniformity": (wasserstein_uniformity, (z,), "z"), "lidar": (lidar, (z.reshape(8, 2, 4),), "z"),
        "alignment_z1": (alignment, (z, torch.ones(16, 4)), "z1"),
        "alignment_z2": (alignment, (torch.ones(16, 4), z), "z2"),
        "knn_train": (knn_accuracy, (z, y, torch.ones(16, 4), y), "train_z"),
        "knn_test": (knn_accuracy, (torch.ones(16, 4), y, z, y), "test_z"),
        "mcc_z": (mcc, (z, torch.ones(16, 4)), "z"), "mcc_latents": (mcc, (torch.ones(16, 4), z), "latents"),
    }


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("case", list(calls(torch.zeros(16, 4))))
def test_non_finite_input_is_refused(case, value):
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    z[3, 1] = z[7, 2] = value
    function, arguments, name = calls(z)[case]
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or inf values \(2 of 64 entries\)") as error:
        function(*arguments)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("call,message", [
    (lambda: rankme(torch.ones(5)), r"z must be a floating-point N x d tensor .*got shape \(5,\)"),
    (lambda: nesum(torch.ones(1, 5)), r"z must be .* at least 2 rows.*got shape \(1, 5\)"),
    (lambda: stable_rank(torch.ones(4, 3, dtype=torch.int64)), r"z must be a floating-point .*torch.int64"),
    (lambda: uniformity(torch.ones(4, 0)), r"d >= 1; got shape \(4, 0\)"),
    (lambda: lidar(torch.ones(4, 3)), r"z must be a floating-point n x q x d tensor"),
    (lambda: lidar(torch.ones(1, 3, 2)), r"at least 2 rows and d >= 1; got shape \(1, 3, 2\)"),
    (lambda: lidar(torch.ones(4, 1, 2)), r"q >= 2 views.*got shape \(4, 1, 2\)"),
    (lambda: alignment(torch.ones(4, 3), torch.ones(5, 3)), r"z1 and z2 must have the same shape"),
    (lambda: mcc(torch.ones(4, 3), torch.ones(5, 3)), r"z and latents must have the same number of rows"),
    (lambda: knn_accuracy(torch.ones(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(2, 2),
                          torch.zeros(2, dtype=torch.long)), r"train_z and test_z must have the same d"),
    (lambda: knn_accuracy(torch.ones(4, 3), torch.zeros(3, dtype=torch.long), torch.ones(2, 3),
                          torch.zeros(2, dtype=torch.long)), r"train_y must be 4 non-negative integer labels"),
    (lambda: knn_accuracy(torch.ones(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(2, 3),
                          torch.zeros(2)), r"test_y must be 2 non-negative integer labels"),
    (lambda: knn_accuracy(torch.ones(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(2, 3),
                          torch.zeros(2, dtype=torch.long), k=0), r"k must be >= 1"),
])
def test_bad_shapes_and_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
