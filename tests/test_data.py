"""Statistics of the sparse-coding datamodule (x = M z + e) and its masking augmentations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY

from datamodules.sparse_coding import (
    SparseCodingDataModule,
    make_dictionary,
    mask_views,
    sample_latents,
)
from ssl_bench.batch import Views
from ssl_bench.config import ConfigError
from ssl_bench.config.compose import load
from ssl_bench.train.build import build_data

SparseConfig = SparseCodingDataModule.Config


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------- dictionary


@pytest.mark.parametrize("p,d", [(50, 10), (12, 4), (20, 20), (7, 1)])
def test_orthonormal_dictionary_has_orthonormal_columns(p, d):
    m = make_dictionary(p, d, "orthonormal", gen(3))
    assert m.shape == (p, d)
    np.testing.assert_allclose((m.T @ m).numpy(), np.eye(d), atol=1e-5)


def test_orthonormal_dictionary_depends_on_generator_and_is_reproducible():
    a, b, c = (make_dictionary(20, 5, "orthonormal", gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_identity_dictionary():
    m = make_dictionary(6, 6, "identity", gen())
    assert torch.equal(m, torch.eye(6))
    dm = SparseCodingDataModule(n=100, p=6, d=6, dictionary="identity", noise_std=0.0, seed=0)
    assert torch.equal(dm.dictionary, torch.eye(6))
    # with M = I and no noise the inputs are the latents themselves
    assert torch.equal(dm.inputs, dm.latents)


def test_datamodule_dictionary_is_orthonormal():
    dm = SparseCodingDataModule(n=10, p=30, d=7, seed=5)
    np.testing.assert_allclose((dm.dictionary.T @ dm.dictionary).numpy(), np.eye(7), atol=1e-5)
    assert (dm.input_dim, dm.latent_dim) == (30, 7)


# ------------------------------------------------------------------------------------------- fixed-count sampler

# (d, sparsity) -> numbers of -1 and +1 entries per row, worked out by hand from the official code
# (ashwinipokle/contrastive_landscape, data_model/gen_sparse_coding_data.py, gen_z): the first ceil(d s / 2)
# coordinates are -1 and the coordinates up to max(ceil(d s), ceil(d s / 2) + 1) are +1, then each row is permuted.
FIXED_COUNTS = {
    (10, 0.1): (1, 1),   # d s = 1: one -1, and the "+1" rule adds one +1
    (10, 0.2): (1, 1),   # d s = 2: the same latents as s = 0.1 (configs/pokle2022/table2.yaml)
    (10, 0.3): (2, 1),   # d s = 3: ceil(1.5) = 2 minus ones, 3 non-zero in all
    (10, 0.5): (3, 2),
    (10, 1.0): (5, 5),
    (50, 0.1): (3, 2),
    (20, 0.25): (3, 2),
    (4, 0.2): (1, 1),    # d s = 0.8 still gives one of each
    (7, 1.0): (4, 3),
    (3, 0.9): (2, 1),
    (2, 1.0): (1, 1),
}


@pytest.mark.parametrize("d,s", list(FIXED_COUNTS))
def test_fixed_count_rows_have_the_official_counts(d, s):
    n_neg, n_pos = FIXED_COUNTS[d, s]
    n = 2000
    z = sample_latents(n, d, s, "symmetric", "fixed_count", gen(1))
    assert z.shape == (n, d)
    assert set(z.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.all((z == -1).sum(dim=1) == n_neg)
    assert torch.all((z == 1).sum(dim=1) == n_pos)
    # the chosen coordinates are uniform over the d positions
    freq = (z != 0).float().mean(dim=0).numpy()
    np.testing.assert_allclose(freq, (n_neg + n_pos) / d, atol=0.05)
    np.testing.assert_allclose((z == -1).float().mean(dim=0).numpy(), n_neg / d, atol=0.05)

    zb = sample_latents(n, d, s, "binary", "fixed_count", gen(1))
    assert set(zb.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(zb.sum(dim=1) == n_neg + n_pos)


@pytest.mark.parametrize("s", [0.1, 0.5, 1.0])
def test_fixed_count_that_does_not_fit_in_d_is_a_config_error(s):
    # d = 1 needs one -1 and one +1: two non-zero latents in one coordinate
    with pytest.raises(ConfigError, match=r"data\.sparsity=.* needs 2 non-zero latents .* data\.d=1"):
        load("quickstart", [*TINY, "data.d=1", f"data.sparsity={s}"])
    with pytest.raises(ValueError, match="coordinates"):
        sample_latents(5, 1, s, "symmetric", "fixed_count", gen(1))
    # the Bernoulli sampler and one-hot latents have no such limit
    assert load("quickstart", [*TINY, "data.d=1", f"data.sparsity={s}", "data.sampler=bernoulli"]).data.d == 1
    assert load("quickstart", [*TINY, "data.d=1", f"data.sparsity={s}", "data.latent=one_hot"]).data.d == 1


# --------------------------------------------------------------------------------------------- bernoulli sampler


@pytest.mark.parametrize("d,s", [(10, 0.1), (10, 0.3), (5, 0.2)])
def test_bernoulli_symmetric_statistics(d, s):
    n = 40_000
    z = sample_latents(n, d, s, "symmetric", "bernoulli", gen(2)).numpy()
    assert set(np.unique(z)) <= {-1.0, 0.0, 1.0}
    counts = (z != 0).sum(axis=1)
    assert counts.min() >= 1  # all-zero rows are redrawn
    # conditioned on a non-zero row, the count is Binomial(d, s) given >= 1
    p0 = (1 - s) ** d
    expected_rate = s / (1 - p0)
    assert abs((z != 0).mean() - expected_rate) < 0.01
    for k in (1, 2):
        pk = math.comb(d, k) * s ** k * (1 - s) ** (d - k) / (1 - p0)
        assert abs((counts == k).mean() - pk) < 0.015
    # the signs are balanced, per coordinate as well as overall
    nonzero = z[z != 0]
    assert abs((nonzero > 0).mean() - 0.5) < 0.015
    assert np.abs((z == 1).mean(axis=0) - (z == -1).mean(axis=0)).max() < 0.02


def test_bernoulli_binary_latents():
    d, s, n = 10, 0.2, 20_000
    z = sample_latents(n, d, s, "binary", "bernoulli", gen(4)).numpy()
    assert set(np.unique(z)) <= {0.0, 1.0}
    assert z.sum(axis=1).min() >= 1
    assert abs(z.mean() - s / (1 - (1 - s) ** d)) < 0.01


def test_bernoulli_tiny_sparsity_still_has_no_zero_rows():
    z = sample_latents(500, 3, 0.01, "symmetric", "bernoulli", gen(0))
    assert torch.all(z.abs().sum(dim=1) >= 1)


@pytest.mark.parametrize("sampler", ["fixed_count", "bernoulli"])
def test_one_hot_latents(sampler):
    d, n = 7, 3000
    z = sample_latents(n, d, 0.3, "one_hot", sampler, gen(5))
    assert z.shape == (n, d)
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(z.sum(dim=1) == 1)
    freq = z.mean(dim=0).numpy()
    np.testing.assert_allclose(freq, 1 / d, atol=0.03)


# ------------------------------------------------------------------------------------------------------- noise


def test_noise_level_explicit():
    sigma = 0.3
    dm = SparseCodingDataModule(n=4000, p=20, d=5, sparsity=0.4, noise_std=sigma, seed=1)
    residual = (dm.inputs - dm.latents @ dm.dictionary.T).numpy()
    assert abs(residual.std() - sigma) < 0.02 * sigma
    assert abs(residual.mean()) < 0.01


def test_no_noise_means_x_equals_mz():
    dm = SparseCodingDataModule(n=500, p=20, d=5, noise_std=0.0, seed=1)
    torch.testing.assert_close(dm.inputs, dm.latents @ dm.dictionary.T)


@pytest.mark.parametrize("d", [2, 4, 10, 20])
def test_default_noise_std_is_sqrt_ln_d_over_d(d):
    assert SparseConfig(d=d).resolved_noise_std == pytest.approx(math.sqrt(math.log(d)) / d)
    assert SparseConfig(d=d, noise_std=0.0).resolved_noise_std == 0.0
    assert SparseConfig(d=d, noise_std=0.7).resolved_noise_std == 0.7


def test_default_noise_reaches_the_data():
    cfg = load("quickstart", ["data.n=4000", "data.p=30", "data.d=10"])
    assert cfg.data.noise_std is None
    dm = build_data(cfg)
    assert isinstance(dm, SparseCodingDataModule)
    residual = (dm.inputs - dm.latents @ dm.dictionary.T).numpy()
    expected = math.sqrt(math.log(10)) / 10
    assert abs(residual.std() - expected) < 0.02 * expected


# ------------------------------------------------------------------------------------------------------- masks


def _dense_x(n=4000, p=25):
    x = torch.randn(n, p, generator=gen(9))
    return x + torch.sign(x) * 0.1  # no exact zeros


@pytest.mark.parametrize("mask_prob", [0.0, 0.1, 0.5, 0.9])
def test_independent_masks(mask_prob):
    x = _dense_x()
    v1, v2 = mask_views(x, "independent", mask_prob, gen(1))
    keep = 1 - mask_prob
    for v in (v1, v2):
        ratio = v / x
        assert set(ratio.unique().tolist()) <= {0.0, 1.0}  # D x with D in {0,1}: no rescaling
        assert abs((ratio == 1).float().mean().item() - keep) < 0.01
    both = ((v1 != 0) & (v2 != 0)).float().mean().item()
    assert abs(both - keep ** 2) < 0.01  # the two masks are independent
    if mask_prob == 0.0:
        assert torch.equal(v1, x) and torch.equal(v2, x)


@pytest.mark.parametrize("mask_prob", [0.0, 0.25, 0.5, 0.9])
def test_dependent_masks(mask_prob):
    x = _dense_x()
    v1, v2 = mask_views(x, "dependent", mask_prob, gen(2))
    torch.testing.assert_close(v1 + v2, 2 * x)
    assert torch.all(v1 * v2 == 0)
    ratio = v1 / x
    assert set(ratio.unique().tolist()) <= {0.0, 2.0}
    assert abs((ratio == 2).float().mean().item() - (1 - mask_prob)) < 0.01


def test_epoch_views_are_masks_of_a_permutation_of_the_inputs():
    dm = SparseCodingDataModule(n=300, p=12, d=4, sparsity=0.5, noise_std=0.05, augmentation="dependent",
                                batch_size=64, seed=3)
    batches = dm.epoch_batches(0)
    assert all(isinstance(views, Views) and views.labels is None for views in batches)
    x = torch.cat([(views.view1 + views.view2) / 2 for views in batches])
    assert x.shape == dm.inputs.shape
    dist = torch.cdist(x.double(), dm.inputs.double())
    match = dist.argmin(dim=1)
    assert torch.all(dist.min(dim=1).values < 1e-5)
    assert sorted(match.tolist()) == list(range(300))  # each input exactly once
    assert not torch.equal(match, torch.arange(300))  # and shuffled


# ------------------------------------------------------------------------------------------------ epoch batches


def _flat(batches):
    return torch.cat([torch.cat([views.view1, views.view2], dim=1) for views in batches])


def test_epoch_batches_deterministic_per_seed_and_epoch():
    kwargs = dict(n=200, p=12, d=4, augmentation="independent", batch_size=50)
    a = SparseCodingDataModule(seed=7, **kwargs)
    b = SparseCodingDataModule(seed=7, **kwargs)
    assert torch.equal(_flat(a.epoch_batches(3)), _flat(a.epoch_batches(3)))
    assert torch.equal(_flat(a.epoch_batches(3)), _flat(b.epoch_batches(3)))
    # order of calls does not matter (resumes are exact)
    b.epoch_batches(10)
    assert torch.equal(_flat(a.epoch_batches(4)), _flat(b.epoch_batches(4)))
    assert not torch.equal(_flat(a.epoch_batches(3)), _flat(a.epoch_batches(4)))
    c = SparseCodingDataModule(seed=8, **kwargs)
    assert not torch.equal(_flat(a.epoch_batches(3)), _flat(c.epoch_batches(3)))


@pytest.mark.parametrize("n,batch,drop_last,sizes", [
    (3000, 512, False, [512] * 5 + [440]),
    (3000, 512, True, [512] * 5),
    (1024, 512, False, [512, 512]),
    (1024, 512, True, [512, 512]),
    (64, 32, True, [32, 32]),
    (100, 30, False, [30, 30, 30, 10]),
])
def test_batch_splitting_and_drop_last(n, batch, drop_last, sizes):
    dm = SparseCodingDataModule(n=n, p=12, d=4, batch_size=batch, drop_last=drop_last, seed=0)
    batches = dm.epoch_batches(0)
    assert [views.view1.shape[0] for views in batches] == sizes
    assert [views.view2.shape[0] for views in batches] == sizes
    assert all(views.view1.shape[1] == 12 and views.view2.shape[1] == 12 for views in batches)


def test_datamodule_seed_controls_everything():
    a = SparseCodingDataModule(n=50, p=12, d=4, noise_std=0.1, seed=1)
    b = SparseCodingDataModule(n=50, p=12, d=4, noise_std=0.1, seed=1)
    c = SparseCodingDataModule(n=50, p=12, d=4, noise_std=0.1, seed=2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.dictionary, b.dictionary)
    assert not torch.equal(a.inputs, c.inputs)


def test_fixed_count_sparsity_01_and_02_draw_the_same_data_at_d10():
    """Under the official sampler the Table 2 rows at sparsity 0.1 and 0.2 are the same runs."""
    low = SparseCodingDataModule(n=200, p=20, d=10, sparsity=0.1, noise_std=0.1, seed=3)
    high = SparseCodingDataModule(n=200, p=20, d=10, sparsity=0.2, noise_std=0.1, seed=3)
    for dm in (low, high):  # one -1 and one +1 per sample at both sparsities
        assert torch.all((dm.latents == -1).sum(dim=1) == 1) and torch.all((dm.latents == 1).sum(dim=1) == 1)
    torch.testing.assert_close(low.latents, high.latents, rtol=0, atol=0)
    torch.testing.assert_close(low.inputs, high.inputs, rtol=0, atol=0)
    assert not torch.equal(low.latents, SparseCodingDataModule(n=200, p=20, d=10, sparsity=0.3, noise_std=0.1,
                                                               seed=3).latents)
