"""The five methods on CIFAR-format data and on sparse-coding data, heads, optimizers, schedules and resume."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY
from torch import nn

from datamodules.cifar10 import write_cifar10_batches
from ssl_bench.config import ConfigError, RunConfig
from ssl_bench.config.compose import load
from ssl_bench.nets.heads import LinearPredictor, PredictorKeys, ProjectorKeys
from ssl_bench.optim import LARS, cosine_momentum, warmup_cosine
from ssl_bench.train.build import build_data, build_module
from ssl_bench.train.fit import fit

CIFAR_TINY = ["data.verify_checksums=false", "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=1",
              "trainer.precision=32-true", "trainer.accelerator=cpu", "trainer.threads=1", "trainer.progress=none",
              "trainer.checkpoint_every_n_epochs=0", "logger=none", "callbacks.spectrum.samples=16",
              "callbacks.readout.epochs=3"]
# Small heads, for the methods that have them (keys are strict: a method without a predictor has no predictor keys).
CIFAR_HEADS = {
    "cifar10/simclr": ["method.projector_hidden_dim=32", "method.projector_dim=16"],
    "cifar10/simsiam": ["method.projector_hidden_dim=32", "method.projector_dim=16", "method.predictor_hidden_dim=16"],
    "cifar10/byol": ["method.projector_hidden_dim=32", "method.projector_dim=16", "method.predictor_hidden_dim=16"],
    "cifar10/directclr": ["method.directclr_dim=64"],
    "cifar10/vicreg": ["method.projector_hidden_dim=32", "method.projector_dim=16"],
    "cifar10/barlow_twins": ["method.projector_hidden_dim=32", "method.projector_dim=16"],
    "rusak2022/table2_cifar10": ["encoder=resnet18", "method.projector_hidden_dim=32", "method.projector_dim=16",
                                 "method.temperatures=[1.0,0.7]"],
    "bao2023/cifar10_resnet18": [],
    "wen2022/cifar10_simsiam": ["method.projector_hidden_dim=32", "method.projector_dim=16"],
}
CIFAR_METRICS = ["readout/online_acc", "readout/backbone_acc", "readout/projector_acc", "spectrum/effective_rank",
                 "spectrum/rank", "collapse/std_l2", "spectrum/effective_rank_backbone", "train/loss"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar10_batches(tmp_path_factory.mktemp("cifar"), n_train=16, n_test=8, seed=1)


@pytest.mark.parametrize("config", list(CIFAR_HEADS))
def test_every_method_fits_on_cifar_format_data_and_reports_readout_and_spectrum(config, cifar_root, run_cli,
                                                                                  tmp_path):
    code, out, err = run_cli("fit", "--config", config, f"data.root={cifar_root}", *CIFAR_TINY, *CIFAR_HEADS[config],
                             f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished"
    for key in CIFAR_METRICS:
        assert key in summary["metrics"], key
        assert math.isfinite(summary["metrics"][key]), key
    for key in ("readout/online_acc", "readout/backbone_acc", "readout/projector_acc"):
        assert 0.0 <= summary["metrics"][key] <= 1.0
    assert (tmp_path / "run" / "spectra.jsonl").is_file()
    if config == "wen2022/cifar10_simsiam":  # the 16 x 16 head starts at the identity; its off-diagonal moves
        assert 0.0 < summary["metrics"]["predictor/offdiag_norm"] < 1.0


@pytest.mark.parametrize("method", [["method=directclr", "method.directclr_dim=5"],
                                    ["method=adaptive_infonce", "method.temperatures=[1.0,0.5]"],
                                    ["method=adaptive_infonce", "method.normalize=false", "method.standardize=true",
                                     "method.learn_temperature=true", "method.temperatures=[1.0,0.7]"],
                                    ["method=byol", "method.target_update=ema", "method.predictor=identity"],
                                    ["method=simsiam", "method.predictor=identity_frozen_diagonal"],
                                    ["method=simclr", "method.projector=mlp", "method.projector_hidden_dim=16",
                                     "optim=lars", "optim.lr=0.1"],
                                    ["method=vicreg"], ["method=vicreg", "method.projector=none"],
                                    ["method=barlow_twins"], ["method=barlow_twins", "method.projector=none"],
                                    ["method=vicreg", "optim=lars", "optim.lr=0.1"]])
def test_every_method_runs_on_sparse_coding_data_through_config_alone(method, fit_tiny):
    code, _, summary = fit_tiny(*method)
    assert code == 0
    assert summary["status"] == "finished"
    for key in ("maxcos/max", "spectrum/effective_rank", "collapse/std_l2", "train/loss"):
        assert math.isfinite(summary["metrics"][key]), key


def test_directclr_dimension_beyond_the_backbone_is_one_clear_error(run_cli, tmp_path):
    # TINY's encoder has width 8
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "method=directclr", "method.directclr_dim=9",
                             f"run_dir={tmp_path / 'run'}")
    assert code == 2
    assert err.strip().splitlines() == ["ssl-bench: error: method.directclr_dim=9 must be in [1, 8] (the backbone's "
                                        "output width)"]
    assert not (tmp_path / "run").exists()
    assert load("quickstart", [*TINY, "method=directclr", "method.directclr_dim=8"]).method.directclr_dim == 8


# ------------------------------------------------------------------------------------------------ heads


def predictor(kind: str, dim: int, hidden_dim: int, init: str = "default") -> nn.Module:
    return PredictorKeys(predictor=kind, predictor_hidden_dim=hidden_dim, predictor_init=init).make_predictor(dim)


def projector(kind: str, width: int, hidden_dim: int, dim: int | None, layers: int = 2,
              output_bn: bool = False) -> nn.Module:
    keys = ProjectorKeys(projector=kind, projector_hidden_dim=hidden_dim, projector_dim=dim, projector_layers=layers,
                         projector_output_bn=output_bn)
    return keys.make_projector(width)


def test_identity_predictors_and_frozen_diagonal():
    head = predictor("identity", 4, 8)
    assert isinstance(head, LinearPredictor) and head.linear.bias is None
    torch.testing.assert_close(head.weight, torch.eye(4))
    frozen = predictor("identity_frozen_diagonal", 4, 8)
    assert frozen.linear.bias is None
    optimizer = torch.optim.SGD(frozen.parameters(), lr=0.5)
    x = torch.randn(16, 4)
    for _ in range(3):
        optimizer.zero_grad()
        frozen(x).pow(2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(frozen.weight.diagonal(), torch.ones(4))
    off_diagonal = frozen.weight - torch.diag(frozen.weight.diagonal())
    assert off_diagonal.abs().max() > 0  # the off-diagonal is trained
    torch.testing.assert_close(frozen(x), x @ frozen.weight.T)


def test_symmetric_bias_free_predictor_and_kinds():
    torch.manual_seed(0)
    head = predictor("linear_nobias", 64, 8, init="symmetric")
    torch.testing.assert_close(head.weight, head.weight.T)
    assert head.linear.bias is None
    assert head.weight.std().item() == pytest.approx(math.sqrt(0.5 / 64), rel=0.1)  # (A + A^T) / 2, A ~ N(0, 1/h)
    assert isinstance(predictor("linear", 4, 8), nn.Linear) and isinstance(predictor("none", 4, 8), nn.Identity)
    symmetric = predictor("linear", 16, 8, init="symmetric")
    torch.testing.assert_close(symmetric.weight, symmetric.weight.T)
    assert symmetric.linear.bias is not None
    mlp = predictor("mlp", 6, 10)
    assert mlp(torch.randn(5, 6)).shape == (5, 6)
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [10, 6]


def test_projectors():
    assert isinstance(projector("none", 8, 16, None), nn.Identity)
    assert projector("linear", 8, 16, None)(torch.randn(3, 8)).shape == (3, 8)
    three = projector("mlp", 8, 16, 4, layers=3, output_bn=True)
    assert [type(m).__name__ for m in three].count("Linear") == 3
    out = three(torch.randn(32, 8))
    assert out.shape == (32, 4)
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)  # affine-free output BN


# ------------------------------------------------------------------------------------------------ optimizers


def test_lars_step_matches_the_formula_and_excludes_biases():
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(3))
    w.grad, b.grad = torch.randn(3, 4), torch.randn(3)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    lr, wd, eta = 0.5, 0.1, 0.02
    LARS([w, b], lr=lr, momentum=0.9, weight_decay=wd, eta=eta, clip=True).step()
    g = gw + wd * w0
    ratio = min(1.0, eta * w0.norm().item() / g.norm().item())
    torch.testing.assert_close(w.detach(), w0 - lr * ratio * g)
    torch.testing.assert_close(b.detach(), b0 - lr * gb)  # no weight decay, no trust ratio


def test_lars_without_clipping_can_exceed_the_global_rate():
    w = nn.Parameter(torch.ones(4))
    w.grad = torch.full((4,), 1e-4)
    LARS([{"params": [w]}], lr=1.0, momentum=0.0, eta=1.0, clip=False, exclude_bias_and_norm=False).step()
    # trust ratio ||w|| / ||g|| = 1e4, so the step is g * 1e4 = 1 per entry
    torch.testing.assert_close(w.detach(), torch.zeros(4))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1, min_ratio=0.2) == pytest.approx(0.2)
    values = [warmup_cosine(t / 100, 0.1) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_momentum():
    assert cosine_momentum(0.0, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_momentum(0.5, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_momentum(1.0, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.3, 0.9, 0.9) == pytest.approx(0.9)


def sparse_cfg(*overrides: str) -> RunConfig:
    return load("quickstart", [*TINY, *overrides])


def test_learning_rate_scales_with_the_global_batch():
    cfg = sparse_cfg("optim.scale_lr=true", "optim.lr=0.4", "data.batch_size=64")
    module = build_module(cfg, build_data(cfg))
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert module.peak_lr() == pytest.approx(0.4 * 64 / 256)
    [optimizer] = module.configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_adaptive_temperatures_expand_to_their_groups():
    cfg = sparse_cfg("method=adaptive_infonce", "method.projector=none", "method.temperatures=[1.0,0.5]",
                     "method.temperature_groups=[3,5]")
    module = build_module(cfg, build_data(cfg))
    torch.testing.assert_close(module.method.temperatures, torch.tensor([1.0] * 3 + [0.5] * 5))
    # groups that do not cover the embedding (width 8) are refused when the config is loaded
    with pytest.raises(ConfigError, match=r"temperature_groups=\[3, 3\] sums to 6 but the embedding has 8"):
        sparse_cfg("method=adaptive_infonce", "method.projector=none", "method.temperatures=[1.0,0.5]",
                   "method.temperature_groups=[3,3]")
    with pytest.raises(ConfigError, match="does not split into 3 equal groups"):
        sparse_cfg("method=adaptive_infonce", "method.projector=none", "method.temperatures=[1.0,0.5,0.2]")


# ------------------------------------------------------------------------------------------------ resume


class StopAfter(L.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_byol_momentum_and_lr_schedules_continue_exactly_after_a_resume(tmp_path):
    settings = ["method=byol", "method.target_update=ema", "method.predictor=linear", "method.ema_momentum=0.9",
                "method.ema_momentum_end=1.0", "optim.schedule=warmup_cosine", "optim.warmup_epochs=1",
                "optim.momentum=0.9", "trainer.max_epochs=4", "trainer.checkpoint_every_n_epochs=1",
                "data.batch_size=16"]
    whole = sparse_cfg(*settings, f"run_dir={tmp_path / 'whole'}")
    fit(whole)
    first = sparse_cfg(*settings, f"run_dir={tmp_path / 'first'}")
    fit(first, extra_callbacks=[StopAfter(2)])
    assert torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    resumed = sparse_cfg(*settings, f"run_dir={tmp_path / 'resumed'}",
                         f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    summary = fit(resumed)
    expected, got = final_state(tmp_path / "whole"), final_state(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["metrics"]["train/ema_momentum"] == whole_summary["metrics"]["train/ema_momentum"]
    # the schedule moved: the last step's momentum is close to 1, well above the start
    assert 0.99 < summary["metrics"]["train/ema_momentum"] < 1.0
    # a run that forgets the schedule's position (a fresh 2-epoch fit from the checkpointed weights) differs
    stopped = final_state(tmp_path / "first")
    targets = [k for k in expected if k.startswith("method.target.")]
    assert targets and any(not torch.equal(stopped[k], expected[k]) for k in targets)


def test_a_missing_cifar_folder_is_one_clear_error(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", f"data.root={tmp_path / 'none'}", *CIFAR_TINY,
                             f"run_dir={tmp_path / 'run'}")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("ssl-bench: error: CIFAR-10 not found") and str(tmp_path / "none") in line
    assert "data.download=true" in line


def test_step_progress_bar_shows_batches_and_logged_scalars(cifar_root, run_cli, tmp_path, monkeypatch):
    overrides = [o for o in CIFAR_TINY if not o.startswith("trainer.progress")]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the batch bar is for terminals
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", f"data.root={cifar_root}", *overrides,
                             "trainer.progress=steps", "method.projector_dim=16", f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    bar = out + err
    assert "Epoch 0: 100%" in bar and "2/2" in bar  # 16 images, batch 8
    assert "train/loss=" in bar and "v_num" not in bar
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # a log file gets the bar over epochs
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", f"data.root={cifar_root}", *overrides,
                             "trainer.progress=steps", "method.projector_dim=16", f"run_dir={tmp_path / 'log'}")
    assert code == 0, err
    assert "fit: 100%" in out + err and "Epoch 0" not in out + err
