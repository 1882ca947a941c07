"""Wen & Li 2022: the strong/weak patch data and its partition views, the patch convolution, SimSiam's
batch-normalised squared distance and predictor learning rate, config errors, and tiny fits of the study's configs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_same_run, error_line

from datamodules.strong_weak import StrongWeakDataModule, partition_views
from ssl_bench.config.compose import load
from ssl_bench.errors import ConfigError
from ssl_bench.methods.simsiam import SimSiam, bn_squared_distance
from ssl_bench.nets.patch_conv import PatchConv
from ssl_bench.study.grid import expand_grid
from ssl_bench.train.ensemble import fit_ensemble
from ssl_bench.train.fit import fit

SMALL = dict(n=4000, num_patches=6, patch_dim=5, feature_patches=2, strong_norm=2.0, weak_norm=0.5, strong_prob=0.7,
             noise_std=0.3, batch_size=1000)


def datamodule(seed: int = 0, **keys: object) -> StrongWeakDataModule:
    return StrongWeakDataModule(StrongWeakDataModule.Config(**{**SMALL, **keys}), seed)


def test_features_are_orthonormal_and_fixed_by_the_seed():
    data = datamodule()
    assert data.features.shape == (2, 5)
    torch.testing.assert_close(data.features @ data.features.T, torch.eye(2))
    assert torch.equal(data.features, datamodule().features)
    assert not torch.equal(data.features, datamodule(seed=1).features)
    assert data.feature_strengths == (2.0, 0.5)


def test_samples_carry_one_feature_with_one_sign_on_the_feature_patches_and_noise_elsewhere():
    data = datamodule()
    x, weak = data.draw(4000, torch.Generator().manual_seed(3))
    assert x.shape == (4000, 6, 5)
    coefficients = x @ data.features.T  # (n, P, 2): <X_p, v_l>
    residual = x - coefficients @ data.features
    carries = residual.norm(dim=2) < 1e-5
    assert (carries.sum(dim=1) == 2).all()
    feature = coefficients[carries].view(4000, 2, 2)
    strength = torch.tensor([2.0, 0.5])[weak]
    own = feature.gather(2, weak.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(2)
    other = feature.gather(2, (1 - weak).view(-1, 1, 1).expand(-1, 2, 1)).squeeze(2)
    torch.testing.assert_close(own.abs(), strength.unsqueeze(1).expand(-1, 2))
    assert (own[:, 0] == own[:, 1]).all()  # one sign per sample
    assert other.abs().max() < 1e-5
    assert abs(weak.float().mean().item() - 0.3) < 0.03
    assert abs((own[:, 0] > 0).float().mean().item() - 0.5) < 0.03
    noise = x[~carries]
    assert abs(noise.std().item() - 0.3) < 0.01 and abs(noise.mean().item()) < 0.01


def test_partition_puts_every_patch_in_exactly_one_view():
    x = torch.randn(500, 7, 3) + 5.0  # no zero patch
    view1, view2 = partition_views(x, torch.Generator().manual_seed(0))
    kept1, kept2 = view1.abs().sum(dim=2) > 0, view2.abs().sum(dim=2) > 0
    assert not (kept1 & kept2).any() and (kept1 | kept2).all()
    assert (kept1.sum(dim=1) == 3).all() and (kept2.sum(dim=1) == 4).all()
    torch.testing.assert_close(view1 + view2, x)
    assert 0.35 < kept1.float().mean(dim=0).min() and kept1.float().mean(dim=0).max() < 0.5  # every patch moves


def test_epochs_are_reproducible_fresh_or_fixed():
    data = datamodule(batch_size=1500)
    first = data.epoch_batches(2)
    assert [len(views.view1) for views in first] == [1500, 1500, 1000]
    assert first[0].view1.shape == (1500, 30)
    assert all(torch.equal(a.view1, b.view1) for a, b in zip(first, data.epoch_batches(2)))
    assert not torch.equal(first[0].view1, data.epoch_batches(3)[0].view1)
    fixed = datamodule(fresh=False, n=50, batch_size=50)
    samples = [torch.cat([(v.view1 + v.view2) for v in fixed.epoch_batches(e)]) for e in (0, 1)]
    assert not torch.equal(samples[0], samples[1])
    assert torch.equal(samples[0].sort(dim=0).values, samples[1].sort(dim=0).values)  # the same set, reshuffled
    fresh = [torch.cat([(v.view1 + v.view2) for v in data.epoch_batches(e)]) for e in (0, 1)]
    assert not torch.equal(fresh[0].sort(dim=0).values, fresh[1].sort(dim=0).values)
    assert data.evaluation_inputs(10).shape == (10, 30)
    torch.testing.assert_close(data.evaluation_inputs(10), data.evaluation_inputs(10))


@pytest.mark.parametrize("activation, act", [("cubic", lambda h: h ** 3), ("relu", torch.relu)])
def test_patch_conv_sums_the_activation_over_patches(activation, act):
    encoder = PatchConv(patch_dim=3, width=2, activation=activation, batch_norm=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]]))
    patches = torch.tensor([[[1.0, 1.0, 0.0], [-2.0, 0.0, 1.0]], [[0.5, 0.0, 3.0], [0.0, 0.0, 0.0]]])
    expected = torch.tensor([[act(torch.tensor(1.0)) + act(torch.tensor(-2.0)), act(torch.tensor(2.0))
                              + act(torch.tensor(-1.0))],
                             [act(torch.tensor(0.5)), act(torch.tensor(-3.0))]])
    torch.testing.assert_close(encoder(patches.flatten(1)), expected)
    assert encoder.first_layer_weight is encoder.weight


def test_patch_conv_batch_normalises_its_outputs():
    data = datamodule()
    encoder = PatchConv.from_config(PatchConv.Config(width=4), data, torch.Generator().manual_seed(0))
    assert encoder.first_layer_weight.shape == (4, 5)
    out = encoder(data.evaluation_inputs(256))
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    with pytest.raises(ConfigError, match="patch_conv needs patch inputs"):
        PatchConv.from_config(PatchConv.Config(), object(), torch.Generator())


def test_bn_squared_distance_is_the_batch_normalised_mse_with_stop_gradient():
    p, z = torch.randn(64, 3, requires_grad=True), torch.randn(64, 3, requires_grad=True)

    def standardise(t):
        return (t - t.mean(0)) / t.var(0, unbiased=False).sqrt()

    loss = bn_squared_distance(p * 3.0 + 1.0, z)
    torch.testing.assert_close(loss, (standardise(p) - standardise(z)).pow(2).sum(1).mean())
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0
    torch.testing.assert_close(bn_squared_distance(p * 1e-4, z * 1e-4), loss, rtol=1e-3, atol=0)  # scale-free


def test_predictor_gets_its_own_learning_rate():
    cfg = load("wen2022/trained_head", ["method.predictor_lr=0.001"])
    method = SimSiam(cfg.method, lambda: torch.nn.Linear(2, 2), 2)
    [groups] = method.parameter_groups()
    assert groups[1]["base_lr"] == 0.001 and "base_lr" not in groups[0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.predictor.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))
    default = SimSiam(SimSiam.Config(), lambda: torch.nn.Linear(2, 2), 2)
    assert default.parameter_groups() == [[dict(params=list(default.parameters()))]]


@pytest.mark.parametrize("override, message", [
    ("data.feature_patches=9", "data.feature_patches=9 must be <= data.num_patches=8"),
    ("data.weak_norm=3.0", "data.weak_norm=3.0 must be <= data.strong_norm=1.0 (v_2 is the weak feature)"),
    ("data.strong_prob=1.5", "data.strong_prob=1.5 is out of range; allowed: [0, 1]"),
    ("data.num_patches=1", "data.num_patches=1 must be >= 2 (the views split the patches)"),
    ("data.noise_std=-0.1", "data.noise_std=-0.1 must be >= 0"),
    ("encoder.activation=tanh", "encoder.activation='tanh' is not allowed; choose one of: cubic, relu"),
    ("method.loss=l1", "method.loss='l1' is not allowed; choose one of: cosine, mse_bn, l2"),
    ("method.predictor_lr=0", "method.predictor_lr=0.0 must be > 0"),
    ("method.loss=cosine", "method.predictor=none is not allowed for method=simsiam; use method.predictor=linear"),
])
def test_bad_values_are_one_line_errors(run_cli, tmp_path, override, message):
    code, out, err = run_cli("fit", "--config", "wen2022/fixed_head", override, f"run_dir={tmp_path / 'run'}")
    assert error_line(code, err, out) == message
    assert not (tmp_path / "run").exists()


def test_patch_conv_on_data_without_patches_is_refused(run_cli, tmp_path, tiny):
    code, out, err = run_cli("fit", "--config", "quickstart", "encoder=patch_conv", *tiny,
                             f"run_dir={tmp_path / 'run'}")
    assert error_line(code, err, out) == ("encoder.name=patch_conv needs patch inputs (data.name=strong_weak), which "
                                          "SparseCodingDataModule does not provide")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("experiment", ["wen2022/trained_head", "wen2022/fixed_head"])
def test_tiny_fit_finishes(run_cli, tmp_path, experiment):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", experiment, "data.n=64", "data.batch_size=32", "trainer.max_epochs=2",
                             "trainer.metrics_every_n_epochs=1", "trainer.progress=none", "logger=none",
                             f"run_dir={run_dir}")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished", summary


@pytest.mark.slow
def test_seed4_trained_head_learns_both_features_and_fixed_head_collapses(run_cli, tmp_path):
    """The study's default run (docs/wen2022.md): with the trained head neuron 1 detects v1 and neuron 2 v2 and the
    off-diagonal rises above 0.3 and falls back below 0.05; with E = I both neurons detect v1."""
    ends = {}
    for experiment in ("wen2022/trained_head", "wen2022/fixed_head"):
        run_dir = tmp_path / experiment
        code, out, err = run_cli("fit", "--config", experiment, "~callbacks.spectrum", "trainer.progress=none",
                                 "logger=none", f"run_dir={run_dir}")
        assert code == 0, err
        ends[experiment] = json.loads((run_dir / "alignment.jsonl").read_text().splitlines()[-1])
        if experiment == "wen2022/trained_head":
            off = [json.loads(line)["offdiag_norm"] for line in (run_dir / "predictor.jsonl").read_text().splitlines()]
            assert max(off) > 0.3 and off[-1] < 0.05, (max(off), off[-1])
    assert ends["wen2022/trained_head"]["detects"] == [1, 2], ends
    assert ends["wen2022/fixed_head"]["detects"] == [1, 1] and ends["wen2022/fixed_head"]["collapsed"], ends


def test_noise_study_pairs_both_heads_at_every_noise_level(run_cli, tmp_path):
    """wen2022/noise: the trained head and E = I at four noise levels with the same 16 seeds, as two ensembles."""
    cfg = load("wen2022/noise", [])
    points = expand_grid(cfg.sweep.grid)
    heads = {}
    for point in points:
        run = load("wen2022/noise", list(point.overrides))
        axes = dict(point.axes)
        assert run.data.noise_std == float(axes["data.noise_std"])
        heads.setdefault(axes["head"], set()).add((run.method.predictor, run.method.predictor_lr))
    assert heads == {"trained": {("identity_frozen_diagonal", 0.05)}, "fixed": {("none", None)}}
    assert len(points) == 8 and cfg.sweep.seeds == list(range(1, 17))
    code, out, err = run_cli("sweep", "--config", "wen2022/noise", "--ensemble", "--dry-run", "--sweep-dir", tmp_path)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("--ensemble: 128 runs to do as 2 ensembles of 64")


def test_an_ensemble_records_the_heads_every_step_readings_as_separate_runs_do(tmp_path):
    """callbacks.predictor_dynamics.every_n_steps reads the head after optimizer steps: ensemble members call it as
    a separate run does, so both write the same predictor.jsonl (and every other history)."""
    overrides = ["data.n=64", "data.batch_size=16", "trainer.max_epochs=3", "trainer.progress=none", "logger=none",
                 "callbacks.predictor_dynamics.every_n_steps=1", "~callbacks.spectrum"]
    cfgs = [load("wen2022/trained_head", [*overrides, f"seed={seed}", f"run_dir={tmp_path / 'ensemble' / str(seed)}"])
            for seed in (1, 2)]
    assert [summary["status"] for summary in fit_ensemble(cfgs)] == ["finished", "finished"]
    for seed in (1, 2):
        fit(load("wen2022/trained_head", [*overrides, f"seed={seed}", f"run_dir={tmp_path / 'separate' / str(seed)}"]))
        assert_same_run(tmp_path / "ensemble" / str(seed), tmp_path / "separate" / str(seed))
        steps = [json.loads(line)["step"] for line in (tmp_path / "ensemble" / str(seed) / "predictor.jsonl").open()]
        assert steps == list(range(1, 13))  # 4 mini-batches an epoch, 3 epochs
