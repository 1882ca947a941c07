"""Esser et al. 2023 data: fixed anchors with fixed positives (half moons, two digit classes), the whitening, the trace
matrix of the contrastive and non-contrastive losses, the mini-batches, and config and data errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import error_line
from sklearn.datasets import load_digits

from datamodules.digits import DigitsDataModule
from datamodules.epochs import WholeEpochs
from datamodules.moons import MoonsDataModule
from ssl_bench.config.compose import load
from ssl_bench.errors import ConfigError

BASE = ["encoder=mlp", "~callbacks.max_cosine", "logger=none"]
"""Overrides that make ``--config base`` a run on vector data with labels."""


def moons(seed: int = 0, **keys: object) -> MoonsDataModule:
    return MoonsDataModule(MoonsDataModule.Config(**keys), seed)


def digits(seed: int = 0, **keys: object) -> DigitsDataModule:
    return DigitsDataModule(DigitsDataModule.Config(**keys), seed)


def raw_data(make, seed: int = 0, **keys: object) -> torch.Tensor:
    """The unwhitened data matrix D = [anchors; positives] in float64."""
    return make(seed, whiten=False, **keys).inputs.double()


@pytest.mark.parametrize("make", [moons, digits])
def test_whitening_gives_orthonormal_columns_by_one_linear_map_with_noise_in_the_anchors_span(make):
    data = make()
    n, d = data.n, data.inputs.double()
    assert data.inputs.dtype == torch.float32 and data.inputs.shape == (2 * n, data.input_dim)
    torch.testing.assert_close(d.T @ d, torch.eye(data.input_dim, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.equal(data.anchors, data.inputs[:n]) and torch.equal(data.positives, data.inputs[n:])
    raw = raw_data(make)[:n]  # the anchors as drawn; whitened anchors = raw @ w for one w
    w = torch.linalg.lstsq(raw, d[:n]).solution
    torch.testing.assert_close(raw @ w, d[:n], atol=1e-5, rtol=0)
    eps = (d[n:] - d[:n]) @ torch.linalg.pinv(w)  # the positives' noise, back in input space
    basis = torch.linalg.svd(raw, full_matrices=False)[2][: data.input_dim].T
    torch.testing.assert_close(eps @ basis @ basis.T, eps, atol=1e-4, rtol=0)  # inside the anchors' span
    assert eps.pow(2).sum(dim=1).mean().item() == pytest.approx(data.input_dim * 0.1 ** 2, rel=0.15)


def test_input_dim_is_the_numerical_rank_of_the_anchors():
    assert moons().input_dim == 2 and moons(whiten=False).input_dim == 2
    assert digits(whiten=False).input_dim == 64
    rank = torch.linalg.matrix_rank(raw_data(digits)[:300])  # pixels blank on both digits add nothing
    assert digits().input_dim == digits(positive_std=0.0).input_dim == rank < 64


def test_positives_are_anchors_plus_gaussian_noise_of_positive_std():
    data = moons(n=2000, positive_std=0.3, whiten=False)
    eps = data.positives - data.anchors
    assert abs(eps.std().item() - 0.3) < 0.01 and abs(eps.mean().item()) < 0.01
    assert torch.equal(digits(positive_std=0.0, whiten=False).positives, digits(positive_std=0.0, whiten=False).anchors)


def test_moons_labels_are_the_moon_of_each_anchor():
    data = moons(n=300, moon_noise=0.0, whiten=False)
    x, y = data.anchors.double(), data.labels
    assert y.dtype == torch.long and y.bincount().tolist() == [150, 150]
    torch.testing.assert_close(x[y == 0].norm(dim=1), torch.ones(150, dtype=torch.float64))  # the upper moon
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close((x[y == 1] - centre).norm(dim=1), torch.ones(150, dtype=torch.float64))
    assert 0 < y[:150].sum() < 150  # the moons are mixed


def test_digits_are_a_balanced_random_subset_of_the_two_classes():
    data = digits(classes=[3, 8], per_class=40, positive_std=0.0, whiten=False)
    assert data.n == 80 and data.labels.bincount().tolist() == [40, 40] and 0 < data.labels[:40].sum() < 40
    images, targets = load_digits(return_X_y=True)
    for label, digit in enumerate((3, 8)):
        pool = torch.as_tensor(images[targets == digit] / 16, dtype=torch.float32)
        chosen = data.anchors[data.labels == label]
        assert (torch.cdist(chosen, pool).min(dim=1).values == 0).all()  # each anchor is an image of its digit
        assert len(chosen.unique(dim=0)) == 40
    other = digits(seed=1, classes=[3, 8], per_class=40, positive_std=0.0, whiten=False)
    assert not torch.equal(data.anchors.sort(dim=0).values, other.anchors.sort(dim=0).values)  # another subset


def direct_losses(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (1) and (2) for outputs ``f`` (k x 2n): ``sum_i f_i^T (f_{i+1 mod n} - f_i^+)`` and
    ``-sum_i f_i^T f_i^+``."""
    anchor, positive = f[:, :n], f[:, n:]
    contrastive = sum(anchor[:, i] @ (anchor[:, (i + 1) % n] - positive[:, i]) for i in range(n))
    return contrastive, -sum(anchor[:, i] @ positive[:, i] for i in range(n))


@pytest.mark.parametrize("n", [2, 3, 7, 200])
def test_trace_matrix_gives_the_losses_of_the_paper(n):
    data = moons(n=n)
    f = torch.randn(5, 2 * n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    for loss, expected in zip(("contrastive", "non_contrastive"), direct_losses(f, n)):
        c = data.trace_matrix(loss)
        assert c.shape == (2 * n, 2 * n) and c.dtype == torch.float64 and torch.equal(c, c.T)
        torch.testing.assert_close(torch.trace(f @ c @ f.T), expected)
    with pytest.raises(ValueError, match="loss='byol'"):
        data.trace_matrix("byol")


def test_trace_matrix_matches_the_negatives_of_a_full_batch():
    """With f the identity, the contrastive loss of the one mini-batch, its negatives rolled by one, is
    ``tr(X^T C X)``."""
    data = moons(n=9)
    [views] = data.epoch_batches(0)
    a, p = views.view1.double(), views.view2.double()
    batch_loss = (a * (a.roll(-1, dims=0) - p)).sum()
    x = data.inputs.double()
    torch.testing.assert_close(torch.trace(x.T @ data.trace_matrix("contrastive") @ x), batch_loss)


def test_epoch_batches_are_the_fixed_anchors_and_positives():
    data = moons()
    [views] = data.epoch_batches(0)
    assert torch.equal(views.view1, data.anchors) and torch.equal(views.view2, data.positives)
    assert views.labels is None
    [again] = next(iter(data.train_dataloader()))
    assert isinstance(data.train_dataloader(), WholeEpochs) and torch.equal(again.view1, data.anchors)
    small = moons(batch_size=64)
    batches = small.epoch_batches(5)
    assert [len(v.view1) for v in batches] == [64, 64, 64, 8]
    assert torch.equal(torch.cat([v.view1 for v in batches]), small.anchors)
    assert torch.equal(torch.cat([v.view2 for v in batches]), small.positives)
    [shard] = data.epoch_batches(0, rank=1, world_size=2)
    assert torch.equal(shard.view1, data.anchors[1::2]) and torch.equal(shard.view2, data.positives[1::2])


@pytest.mark.parametrize("make", [moons, digits])
def test_the_seed_fixes_everything(make):
    first, same, other = make(seed=4), make(seed=4), make(seed=5)
    assert torch.equal(first.inputs, same.inputs) and torch.equal(first.labels, same.labels)
    assert first.input_dim == other.input_dim and not torch.equal(first.inputs, other.inputs)
    assert not torch.equal(first.labels, other.labels)


def test_readout_and_evaluation_sets():
    data = moons()
    train, test = data.readout_dataloaders(64)
    (x_train, y_train), (x_test, y_test) = ([torch.cat(parts) for parts in zip(*loader)] for loader in (train, test))
    assert len(x_train) == 160 and len(x_test) == 40
    assert torch.equal(torch.cat([x_train, x_test]), data.anchors)
    assert torch.equal(torch.cat([y_train, y_test]), data.labels)
    assert torch.equal(data.evaluation_inputs(10), data.anchors[:10])
    assert data.num_classes == 2 and not data.labelled_batches


def test_setup_moves_the_data_to_the_trainer_device():
    data = moons(n=5)
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    data.setup("fit")
    assert {t.device.type for t in (data.inputs, data.anchors, data.positives, data.labels)} == {"meta"}
    assert data.trace_matrix("contrastive").device.type == "meta"
    assert data.epoch_batches(0)[0].view1.device.type == "meta"


@pytest.mark.parametrize("overrides, message", [
    (["data=moons", "data.positive_std=-0.1"], "data.positive_std=-0.1 must be >= 0"),
    (["data=moons", "data.n=1"], "data.n=1 must be >= 2 (the negative of an anchor is another anchor)"),
    (["data=moons", "data.moon_noise=-1"], "data.moon_noise=-1.0 must be >= 0"),
    (["data=moons", "data.batch_size=0"], "data.batch_size=0 must be > 0"),
    (["data=digits", "data.classes=[3,3]"], "data.classes=[3, 3] must be two distinct digits, e.g. [0, 1]"),
    (["data=digits", "data.classes=[1,2,3]"], "data.classes=[1, 2, 3] must be two distinct digits, e.g. [0, 1]"),
    (["data=digits", "data.classes=[0,10]"], "data.classes[1]=10 is out of range; allowed: [0, 9]"),
    (["data=digits", "data.per_class=0"], "data.per_class=0 must be > 0"),
    (["data=digits", "data.source=emnist"], "data.source='emnist' is not allowed; choose one of: sklearn, mnist"),
])
def test_bad_config_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        load("base", [*BASE, *overrides])
    assert str(error.value) == message


def test_defaults_load_and_provide_labels():
    for name, n in (("moons", 200), ("digits", 300)):
        cfg = load("base", [*BASE, f"data={name}"])
        assert cfg.data.batch_size == n and cfg.data.provides() == {"vectors", "labels", "pairs"}


def test_too_many_images_per_class_is_one_line(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "base", *BASE, "data=digits", "data.per_class=179",
                             f"run_dir={tmp_path / 'run'}")
    assert error_line(code, err, out) == ("data.per_class=179 is more than the 178 images of digit 0 in "
                                          "data.source=sklearn; set data.per_class to at most 178")
    assert not (tmp_path / "run").exists()


def test_missing_mnist_is_one_line_naming_where_it_looked(run_cli, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    code, out, err = run_cli("fit", "--config", "base", *BASE, "data=digits", "data.source=mnist",
                             f"data.root={root}", f"run_dir={tmp_path / 'run'}")
    line = error_line(code, err, out)
    assert line.startswith(f"MNIST not found: torchvision looked in {root / 'MNIST' / 'raw'} (data.root={root}); ")
    assert "data.source=sklearn" in line and "put MNIST there" in line
    assert not (tmp_path / "run").exists()


def test_mnist_pixels_scale_to_one(tmp_path):
    """A stand-in MNIST in torchvision's raw format: 784 pixels / 255, two classes of the requested size."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 50), ("t10k", 10)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(np.array([2051, count, 28, 28], ">i4").tobytes()
                                                         + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(np.array([2049, count], ">i4").tobytes() + labels.tobytes())
    data = digits(source="mnist", root=str(tmp_path), classes=[2, 7], per_class=5, positive_std=0.0, whiten=False)
    assert data.input_dim == 784 and data.labels.bincount().tolist() == [5, 5]
    assert data.anchors.max() <= 1.0 and data.anchors.max() > 0.9
    with pytest.raises(ConfigError,
                       match=r"data.per_class=6 is more than the 5 images of digit 2 in data.source=mnist"):
        digits(source="mnist", root=str(tmp_path), classes=[2, 7], per_class=6)
