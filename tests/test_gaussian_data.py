"""Gaussian inputs with (partial) additive Gaussian noise views (Bao 2023, DirectCLR's toy cases): view statistics,
the noise mask, reproducible epochs, config errors and a tiny linear SimSiam fit."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.gaussian import GaussianDataModule
from ssl_bench.config.compose import load
from ssl_bench.errors import ConfigError

GAUSSIAN = ["data=gaussian", "encoder=linear", "method=simsiam", "~callbacks.max_cosine", "logger=none"]


def datamodule(seed: int = 0, **keys: object) -> GaussianDataModule:
    return GaussianDataModule(GaussianDataModule.Config(**keys), seed)


def epoch(data: GaussianDataModule, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches = data.epoch_batches(index)
    return torch.cat([b.view1 for b in batches]), torch.cat([b.view2 for b in batches])


def test_views_have_unit_data_variance_plus_noise_on_the_noisy_coordinates_only():
    data = datamodule(dim=6, n=20000, noise_std=2.0, noise_from=2, batch_size=3000)
    batches = data.epoch_batches(0)
    assert [len(b.view1) for b in batches] == [3000] * 6 + [2000]
    assert all(b.view1.shape == b.view2.shape == (len(b.view1), 6) and b.labels is None for b in batches)
    view1, view2 = epoch(data, 0)
    both = torch.cat([view1, view2])
    torch.testing.assert_close(both.mean(0), torch.zeros(6), atol=0.05, rtol=0)
    torch.testing.assert_close(both.var(0), torch.tensor([1.0, 1.0, 5.0, 5.0, 5.0, 5.0]), atol=0, rtol=0.05)
    difference = view1 - view2
    assert (difference[:, :2] == 0).all()
    torch.testing.assert_close(difference[:, 2:].var(0), torch.full((4,), 8.0), atol=0, rtol=0.05)
    torch.testing.assert_close(data.augmentation_covariance, torch.diag(torch.tensor([0.0, 0, 4, 4, 4, 4])))


@pytest.mark.parametrize("noise_from, mask", [(0, [1.0] * 8), (4, [0.0] * 4 + [1.0] * 4), (7, [0.0] * 7 + [1.0])])
def test_noise_from_sets_the_noisy_coordinates(noise_from, mask):
    cfg = load("base", [*GAUSSIAN, "data.dim=8", f"data.noise_from={noise_from}", "data.noise_std=0.5"])
    data = GaussianDataModule.from_config(cfg.data, cfg.seed)
    assert data.input_dim == 8 and data.noise_std == 0.5
    assert torch.equal(data.noise_mask, torch.tensor(mask))
    torch.testing.assert_close(data.augmentation_covariance, 0.25 * torch.diag(torch.tensor(mask)))


def test_epochs_are_reproducible_fresh_or_fixed():
    data = datamodule(dim=4, n=300, noise_std=0.5, noise_from=1, batch_size=128)
    first = epoch(data, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(data, 2)))
    assert not torch.equal(first[0], epoch(data, 3)[0])
    assert not torch.equal(first[0], epoch(datamodule(seed=1, dim=4, n=300, noise_std=0.5, noise_from=1), 2)[0])
    fresh = [epoch(data, e)[0][:, 0].sort().values for e in (0, 1)]
    assert not torch.equal(*fresh)
    fixed = datamodule(dim=4, n=300, noise_std=0.5, noise_from=1, fresh=False, batch_size=128)
    views = [epoch(fixed, e)[0] for e in (0, 1)]
    assert not torch.equal(views[0][:, 0], views[1][:, 0])  # reshuffled ...
    rows = [v[v[:, 0].argsort()] for v in views]
    assert torch.equal(rows[0][:, 0], rows[1][:, 0])  # ... the same samples (the clean coordinate) ...
    assert not torch.equal(rows[0][:, 1:], rows[1][:, 1:])  # ... with fresh noise


def test_processes_take_their_share_of_the_epoch():
    data = datamodule(dim=3, n=101, batch_size=25)
    whole = data.epoch_batches(1)
    shares = [data.epoch_batches(1, rank, 2) for rank in (0, 1)]
    assert [len(b.view1) for b in shares[0]] == [25, 25]
    full = torch.cat([b.view1 for b in whole])[:100]
    torch.testing.assert_close(torch.cat([b.view1 for b in shares[1]]), full[1::2])


def test_evaluation_inputs_are_clean_fixed_held_out_samples():
    data = datamodule(dim=5, n=64, noise_std=3.0)
    x = data.evaluation_inputs(4000)
    assert x.shape == (4000, 5)
    assert torch.equal(x, data.evaluation_inputs(4000))
    torch.testing.assert_close(x.var(0), torch.ones(5), atol=0, rtol=0.1)
    assert not torch.equal(x[:64], epoch(data, 0)[0][:64])


@pytest.mark.parametrize("override, message", [
    ("data.noise_from=8", "data.noise_from=8 must be in [0, data.dim=8) (noise on coordinates noise_from..dim-1)"),
    ("data.noise_from=-1", "data.noise_from=-1 must be in [0, data.dim=8) (noise on coordinates noise_from..dim-1)"),
    ("data.noise_std=-0.1", "data.noise_std=-0.1 must be >= 0"),
    ("data.dim=0", "data.dim=0 must be > 0"),
    ("data.n=0", "data.n=0 must be > 0"),
    ("data.batch_size=0", "data.batch_size=0 must be > 0"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as error:
        load("base", [*GAUSSIAN, "data.dim=8", override])
    assert str(error.value) == message


def test_unknown_key_is_a_one_line_error():
    with pytest.raises(ConfigError, match="^data.noise_on is not a key of data=gaussian; its keys: .*noise_from"):
        load("base", [*GAUSSIAN, "+data.noise_on=last_half"])


def test_tiny_linear_simsiam_fit_finishes(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "base", *GAUSSIAN, "data.n=256", "data.dim=8", "data.batch_size=128",
                             "data.noise_from=4", "encoder.width=8", "trainer.max_epochs=2",
                             "trainer.metrics_every_n_epochs=1", "trainer.progress=none", f"run_dir={run_dir}")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2, summary
    assert summary["metrics"]["spectrum/rank"] == 8.0, summary
