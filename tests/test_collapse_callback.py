"""callbacks.collapse in ssl-bench runs (single runs and ensembles) and the datamodules' evaluation views that feed
LiDAR."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_same_run, error_line

from datamodules.cifar10 import CIFAR10DataModule, write_cifar10_batches
from datamodules.gaussian import GaussianDataModule
from datamodules.invertible_mlp import InvertibleMLPDataModule
from datamodules.moons import MoonsDataModule
from datamodules.sparse_coding import SparseCodingDataModule
from datamodules.strong_weak import StrongWeakDataModule
from ssl_bench.config.compose import load
from ssl_bench.metrics import DIAGNOSTICS
from ssl_bench.train.ensemble import fit_ensemble
from ssl_bench.train.fit import fit

COLLAPSE = ["callbacks.collapse.views=3", "callbacks.collapse.view_samples=32", "trainer.metrics_every_n_epochs=2"]


def last_record(run_dir: Path, key: str) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if key in r][-1]


def test_every_diagnostic_is_logged_and_agrees_with_the_spectrum_callback(fit_tiny):
    """The same quantities through two routes: the collapse callback's effective rank and unscaled std against the
    spectrum callback's ``spectrum/effective_rank`` and ``collapse/std_l2`` (std times sqrt(d))."""
    code, run_dir, summary = fit_tiny(*COLLAPSE)
    assert code == 0 and summary["status"] == "finished"
    record = last_record(run_dir, "collapse/rankme")
    for suffix in ("", "_backbone"):
        for name in (*DIAGNOSTICS, "lidar", "alignment"):
            assert math.isfinite(record[f"collapse/{name}{suffix}"]), (name, suffix)
        assert record[f"collapse/effective_rank{suffix}"] == pytest.approx(record[f"spectrum/effective_rank{suffix}"])
    width = 8
    assert record["collapse/std_backbone"] * math.sqrt(width) == pytest.approx(record["collapse/std_l2_backbone"])
    assert 1 <= record["collapse/rankme"] <= width and 1 <= record["collapse/lidar"] <= width
    assert "readout/knn_acc" not in record  # no labels in sparse coding with symmetric latents


def test_one_hot_latents_give_a_knn_accuracy(fit_tiny):
    code, run_dir, _ = fit_tiny(*COLLAPSE, "data.latent=one_hot", "callbacks.collapse.knn_k=5")
    assert code == 0
    record = last_record(run_dir, "readout/knn_acc")
    assert 0 <= record["readout/knn_acc"] <= 1 and 0 <= record["readout/knn_acc_backbone"] <= 1


def test_views_below_two_are_one_line(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={tmp_path / 'r'}",
                             "callbacks.collapse.views=1")
    assert code == 2
    assert "callbacks.collapse.views=1" in error_line(code, err, out)


def test_an_ensemble_logs_what_its_separate_runs_log(tmp_path):
    overrides = [*TINY, *COLLAPSE, "trainer.max_epochs=4"]
    cfgs = [load("quickstart", [*overrides, f"seed={seed}", f"run_dir={tmp_path / 'ensemble' / str(seed)}"])
            for seed in (1, 2)]
    assert [s["status"] for s in fit_ensemble(cfgs, batching="loop")] == ["finished", "finished"]
    for seed in (1, 2):
        fit(load("quickstart", [*overrides, f"seed={seed}", f"run_dir={tmp_path / 'separate' / str(seed)}"]))
        assert_same_run(tmp_path / "ensemble" / str(seed), tmp_path / "separate" / str(seed))
        assert "collapse/lidar" in last_record(tmp_path / "ensemble" / str(seed), "collapse/lidar")


# ------------------------------------------------------------------------------------------- the datamodules' views


def setup(data):
    data.setup("fit")
    return data


def test_sparse_coding_views_are_the_training_masks_of_the_evaluation_inputs():
    data = setup(SparseCodingDataModule(n=200, p=12, d=4, augmentation="independent", mask_prob=0.25))
    views = data.evaluation_views(50, 5)
    x = data.evaluation_inputs(50)
    assert views.shape == (50, 5, 12)
    kept = views != 0
    assert torch.equal(views[kept], x.unsqueeze(1).expand_as(views)[kept])  # independent masks keep values
    assert 0.65 < kept.float().mean() < 0.85
    assert torch.equal(views, data.evaluation_views(50, 5))  # the same views at every evaluation
    dependent = setup(SparseCodingDataModule(n=200, p=12, d=4, augmentation="dependent")).evaluation_views(50, 4)
    torch.testing.assert_close(dependent[:, 0] + dependent[:, 1], 2 * x)  # 2Dx and 2(I-D)x


def test_invertible_mlp_views_share_the_content_latents():
    config = InvertibleMLPDataModule.Config(d=4, n_content=2, eval_samples=64)
    data = setup(InvertibleMLPDataModule(config, seed=3))
    views = data.evaluation_views(40, 3)
    assert views.shape == (40, 3, 4)
    latents = data.unmixing(views.flatten(0, 1).double()).view(40, 3, 4)
    z = data.evaluation_latents()[:40].double()
    torch.testing.assert_close(latents[:, 0], z, atol=1e-4, rtol=1e-4)  # g(z) first, as training's first view
    torch.testing.assert_close(latents[..., :2], z[:, None, :2].expand(40, 3, 2), atol=1e-4, rtol=1e-4)
    assert (latents[:, 1:, 2:] - z[:, None, 2:]).abs().amax() > 1e-2  # the style latents move


def test_gaussian_views_add_noise_and_pairs_have_only_their_two_views():
    data = setup(GaussianDataModule(GaussianDataModule.Config(), seed=1))
    views = data.evaluation_views(30, 4)
    assert views.shape == (30, 4, data.input_dim)
    assert not torch.equal(views[:, 0], views[:, 1])
    moons = setup(MoonsDataModule(MoonsDataModule.Config(), seed=1))
    pairs = moons.evaluation_views(10, 2)
    assert torch.equal(pairs[:, 0], moons.anchors[:10]) and torch.equal(pairs[:, 1], moons.positives[:10])
    assert moons.evaluation_views(10, 4) is None
    patches = setup(StrongWeakDataModule(StrongWeakDataModule.Config(), seed=1))
    partitions = patches.evaluation_views(6, 2)
    torch.testing.assert_close(partitions.sum(dim=1), patches.evaluation_inputs(6))  # view 2 keeps what 1 drops


def test_cifar10_views_are_batched_augmentations_of_the_test_images(tmp_path):
    root = write_cifar10_batches(tmp_path, 20, 12, seed=0)
    data = setup(CIFAR10DataModule(root=str(root), verify_checksums=False, num_workers=0))
    views = data.evaluation_views(8, 3)
    assert views.shape == (8, 3, 3, 32, 32) and views.dtype == torch.float32
    assert not torch.equal(views[:, 0], views[:, 1])
    assert torch.equal(views, data.evaluation_views(8, 3))
