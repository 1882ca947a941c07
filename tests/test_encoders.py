"""Sparse encoders (activations, init, warm start, weight normalization) and the methods' update rules."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import pytest
import torch
from conftest import error_line
from torch import nn

from datamodules.sparse_coding import make_dictionary
from ssl_bench.batch import Views
from ssl_bench.config import RunConfig
from ssl_bench.config.compose import load
from ssl_bench.nets.sparse import SparseEncoder, SparseLayer, warm_start_noise
from ssl_bench.ops.losses import negative_cosine, normalized_mse, nt_xent
from ssl_bench.train.build import build_data, build_module
from ssl_bench.train.lightning_module import DataModuleAdapter, SSLModule


def relu(x):
    return np.maximum(x, 0.0)


def batch_norm(h: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Training-mode batch norm: batch mean and biased batch variance."""
    return (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + eps) * gamma + beta


def make_layer(activation: str, batch_norm_: bool, bias: bool = True, seed: int = 0) -> SparseLayer:
    torch.manual_seed(seed)
    layer = SparseLayer(6, 5, batch_norm_, activation, bias).double()
    with torch.no_grad():
        if bias:  # a mix of positive and negative thresholds, large enough to zero some outputs
            layer.linear.bias.copy_(torch.tensor([0.5, -0.3, 1.0, 0.0, 0.2], dtype=torch.float64))
        if batch_norm_:
            layer.norm.weight.copy_(torch.tensor([1.0, 0.5, 2.0, 1.5, 0.8], dtype=torch.float64))
            layer.norm.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3, -0.1], dtype=torch.float64))
    return layer.train()


def layer_arrays(layer: SparseLayer):
    w = layer.linear.weight.detach().numpy()
    b = layer.linear.bias.detach().numpy() if layer.linear.bias is not None else None
    if isinstance(layer.norm, nn.BatchNorm1d):
        g, beta = layer.norm.weight.detach().numpy(), layer.norm.bias.detach().numpy()
        return w, b, (lambda h: batch_norm(h, g, beta))
    return w, b, (lambda h: h)


@pytest.mark.parametrize("bn", [False, True])
def test_symmetric_relu_is_eq14(bn):
    layer = make_layer("symmetric_relu", bn)
    a = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w, b, norm = layer_arrays(layer)
    h = norm(a.numpy() @ w.T)
    expected = relu(h - b) - relu(-h - b)
    np.testing.assert_allclose(layer(a).detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    # for b >= 0 it is the soft threshold: zero on [-b, b], |h| - b outside, with the sign of h
    soft = np.sign(h) * np.maximum(np.abs(h) - np.maximum(b, 0), 0)
    cols = b >= 0
    np.testing.assert_allclose(expected[:, cols], soft[:, cols], atol=1e-12)
    assert (expected[:, 2] == 0).any()  # b = 1 zeroes some outputs


@pytest.mark.parametrize("bn", [False, True])
def test_symmetric_relu_official(bn):
    layer = make_layer("symmetric_relu_official", bn)
    a = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w, b, norm = layer_arrays(layer)
    y = norm(a.numpy() @ w.T + b)
    expected = relu(y) - relu(2 * b - y)
    np.testing.assert_allclose(layer(a).detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_symmetric_relu_official_without_bn_is_eq14_with_negated_threshold():
    official = make_layer("symmetric_relu_official", False)
    eq14 = make_layer("symmetric_relu", False)
    with torch.no_grad():
        eq14.linear.bias.copy_(-official.linear.bias)
    a = torch.randn(30, 6, dtype=torch.float64)
    torch.testing.assert_close(official(a), eq14(a))


@pytest.mark.parametrize("activation", ["relu", "linear"])
@pytest.mark.parametrize("bn", [False, True])
def test_relu_and_linear_activations(activation, bn):
    layer = make_layer(activation, bn)
    a = torch.randn(30, 6, dtype=torch.float64)
    w, b, norm = layer_arrays(layer)
    h = norm(a.numpy() @ w.T) + b
    expected = relu(h) if activation == "relu" else h
    np.testing.assert_allclose(layer(a).detach().numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["symmetric_relu", "symmetric_relu_official", "linear"])
def test_no_bias_symmetric_activations_are_linear(activation):
    layer = make_layer(activation, False, bias=False)
    a = torch.randn(10, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(a), a @ layer.linear.weight.T)


def test_unknown_activation_raises():
    with pytest.raises(ValueError):
        SparseLayer(3, 3, False, "tanh", True)


@pytest.mark.parametrize("encoder, offered", [
    ("linear", "linear, relu, symmetric_relu, symmetric_relu_official"),
    ("linear_nobias", "leaky_relu, relu, linear"),
    ("two_layer", "linear, tanh, relu, sigmoid"),
])
def test_the_identity_is_linear_in_every_encoder(run_cli, encoder, offered):
    """One name for the identity: every encoder that offers it calls it ``linear``; ``none`` is refused in one line
    that names the encoder's activations."""
    code, _, err = run_cli("fit", "--config", "quickstart", f"encoder={encoder}", "--print-config")
    assert code == 0, err
    code, _, err = run_cli("fit", "--config", "quickstart", f"encoder={encoder}", "encoder.activation=none",
                             "--print-config")
    assert error_line(code, err) == f"encoder.activation='none' is not allowed; choose one of: {offered}"


def test_two_layer_encoder_composes_layers():
    enc = SparseEncoder(6, 4, layers=2, batch_norm=False, activation="symmetric_relu_official").double()
    a = torch.randn(8, 6, dtype=torch.float64)
    torch.testing.assert_close(enc(a), enc.layers[1](enc.layers[0](a)))
    assert enc.first_layer_weight is enc.layers[0].linear.weight
    assert enc.first_layer_weight.shape == (4, 6)
    assert enc(a).shape == (8, 4)


# ---------------------------------------------------------------------------------------------------------- init


@pytest.mark.parametrize("p,width,d", [(100, 200, 10), (50, 400, 5)])
def test_default_init_std(p, width, d):
    enc = SparseEncoder(p, width, layers=2)
    enc.initialize(torch.Generator().manual_seed(0), None, d, zero_bias=False)
    w1, w2 = enc.layers[0].linear.weight, enc.layers[1].linear.weight
    assert w1.std().item() == pytest.approx(math.sqrt(1 / (p * d)), rel=0.03)
    assert abs(w1.mean().item()) < 0.03 * math.sqrt(1 / (p * d))
    assert w2.std().item() == pytest.approx(math.sqrt(1 / (width * d)), rel=0.03)
    # biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    b1 = enc.layers[0].linear.bias
    assert b1.abs().max().item() <= 1 / math.sqrt(p) and b1.abs().sum() > 0


def test_explicit_init_std_zero_bias_and_reproducibility():
    a, b = SparseEncoder(80, 250), SparseEncoder(80, 250)
    a.initialize(torch.Generator().manual_seed(4), 0.3, 10, zero_bias=True)
    b.initialize(torch.Generator().manual_seed(4), 0.3, 10, zero_bias=True)
    assert a.first_layer_weight.std().item() == pytest.approx(0.3, rel=0.03)
    assert torch.all(a.layers[0].linear.bias == 0)
    assert torch.equal(a.first_layer_weight, b.first_layer_weight)


# ---------------------------------------------------------------------------------------------------- warm start


def dictionary(p, d, seed=0):
    return make_dictionary(p, d, "orthonormal", torch.Generator().manual_seed(seed))


def test_warm_start_without_noise_rows_are_columns():
    m = dictionary(20, 5)
    enc = SparseEncoder(20, 30)  # m > d: columns drawn with replacement
    enc.warm_start(m, 0.0, torch.Generator().manual_seed(1))
    w = enc.first_layer_weight.detach()
    diffs = (w[:, None, :] - m.T[None, :, :]).abs().amax(dim=2)  # (rows, columns)
    assert torch.all(diffs.min(dim=1).values == 0)
    used = diffs.argmin(dim=1)
    assert len(set(used.tolist())) > 1  # not all the same column


def test_warm_start_first_columns_when_width_at_most_d():
    m = dictionary(20, 8)
    enc = SparseEncoder(20, 5)
    enc.warm_start(m, 0.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(enc.first_layer_weight.detach(), m[:, :5].T)


@pytest.mark.parametrize("sigma", [0.01, 0.1])
def test_warm_start_noise_std(sigma):
    p, d = 400, 20
    m = dictionary(p, d)
    enc = SparseEncoder(p, d)  # m == d: rows are the columns in order, plus noise
    enc.warm_start(m, sigma, torch.Generator().manual_seed(2))
    noise = (enc.first_layer_weight.detach() - m.T).numpy()
    assert noise.std() == pytest.approx(sigma, rel=0.03)
    assert abs(noise.mean()) < 0.05 * sigma


def test_warm_start_noise_with_replacement_columns():
    p, d, width, sigma = 300, 6, 40, 0.02
    m = dictionary(p, d)
    enc = SparseEncoder(p, width)
    enc.warm_start(m, sigma, torch.Generator().manual_seed(3))
    w = enc.first_layer_weight.detach()
    nearest = (w @ m).abs().argmax(dim=1)
    noise = (w - m[:, nearest].T).numpy()
    assert noise.std() == pytest.approx(sigma, rel=0.05)


def test_warm_start_noise_level():
    assert warm_start_noise(50, 0.3, None) == 0.3
    assert warm_start_noise(50, None, 1) == pytest.approx(50 ** -0.5)
    assert warm_start_noise(50, None, 2) == pytest.approx(1 / 50)
    assert warm_start_noise(50, None, None) == 0.0


def test_build_module_warm_start_matches_dictionary():
    cfg = load("quickstart", ["data.n=32", "data.batch_size=32", "data.p=12", "data.d=4", "encoder.width=4",
                              "encoder.warm_start=true", "encoder.warm_start_noise=0.0"])
    data = build_data(cfg)
    module = build_module(cfg, data)
    torch.testing.assert_close(module.method.encoder.first_layer_weight.detach(), data.dictionary.T)


# ------------------------------------------------------------------------------------------- weight normalization


@pytest.mark.parametrize("mode,dim", [("row", 1), ("column", 0)])
def test_weight_normalization(mode, dim):
    enc = SparseEncoder(7, 5, layers=2)
    with torch.no_grad():
        enc.first_layer_weight.mul_(3.7)
    second = enc.layers[1].linear.weight.detach().clone()
    enc.normalize_weights(mode)
    norms = enc.first_layer_weight.detach().norm(dim=dim)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert torch.equal(enc.layers[1].linear.weight.detach(), second)  # only the first layer


def test_weight_normalization_none_is_identity():
    enc = SparseEncoder(7, 5)
    before = enc.first_layer_weight.detach().clone()
    enc.normalize_weights("none")
    assert torch.equal(enc.first_layer_weight.detach(), before)


# ------------------------------------------------------------------------------------------------- method updates


def tiny_cfg(method: str = "byol", n: int = 64, batch: int = 32, *overrides: str, **method_keys) -> RunConfig:
    """Plain SGD (no momentum, no weight decay, constant rate) with a large rate, so that every update visibly moves
    the parameters."""
    cfg = load("quickstart", ["seed=3", f"data.n={n}", "data.p=12", "data.d=4", f"data.batch_size={batch}",
                              "data.sparsity=0.5", "encoder.width=6", f"method={method}", "optim=sgd", "optim.lr=0.5",
                              "trainer.log_every_n_epochs=1", *overrides,
                              *(f"method.{key}={value}" for key, value in method_keys.items())])
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.schedule) == ("sgd", 0, 0, "constant")
    return cfg


def build(cfg: RunConfig) -> tuple[object, SSLModule]:
    data = build_data(cfg)
    return data, build_module(cfg, data)


def tiny_trainer(max_epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def record_updates(module: SSLModule):
    """Wrap ``module.update``: keep (index, view 1, view 2, copies of the method's submodules before, copies after,
    loss) of every call."""
    calls = []
    original = module.update

    def update(index, views, progress):
        before = copy.deepcopy(dict(module.method.named_children()))
        loss = original(index, views, progress)
        after = copy.deepcopy(dict(module.method.named_children()))
        calls.append((index, views.view1.clone(), views.view2.clone(), before, after, loss))
        return loss

    module.update = update
    return calls


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = params(a), params(b)
    return all(torch.equal(pa[k], pb[k]) for k in pa)


def sgd_expected(trained: list[nn.Module], loss_fn, lr: float) -> list[dict[str, torch.Tensor]]:
    """Plain SGD step of ``loss_fn()`` on copies of the ``trained`` modules; their new parameters."""
    for module in trained:
        module.zero_grad(set_to_none=True)
    loss_fn().backward()
    out = []
    with torch.no_grad():
        for module in trained:
            out.append({k: (v - lr * v.grad if v.grad is not None else v).detach().clone()
                        for k, v in module.named_parameters()})
    return out


def assert_params_equal(module: nn.Module, expected: dict[str, torch.Tensor]):
    got = params(module)
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_byol_alternate_updates_online_on_even_and_target_on_odd_minibatches():
    # 3 mini-batches per epoch, 2 epochs: indices 0,1,2,0,1,2 -> online, target, online, online, target, online
    cfg = tiny_cfg("byol", 96, 32, predictor="linear", target_update="alternate")
    dm, module = build(cfg)
    method = module.method
    assert not same(method.encoder, method.target)  # independently initialized
    calls = record_updates(module)
    tiny_trainer(2).fit(module, datamodule=DataModuleAdapter(dm))
    assert [c[0] for c in calls] == [0, 1, 2, 0, 1, 2]
    lr = cfg.optim.lr
    for index, v1, v2, before, after, loss in calls:
        # even index: the online encoder learns on view 1 against the target on view 2; odd index: the reverse
        trained_key, other_key = ("encoder", "target") if index % 2 == 0 else ("target", "encoder")
        trained_view, other_view = (v1, v2) if index % 2 == 0 else (v2, v1)
        trained, other, head = before[trained_key], before[other_key], before["predictor"]
        assert same(after[other_key], before[other_key])
        assert not same(after[trained_key], before[trained_key])

        def loss_fn():
            with torch.no_grad():
                reference = other(other_view)
            return normalized_mse(head(trained(trained_view)), reference)

        new_trained, new_head = sgd_expected([trained, head], loss_fn, lr)
        assert_params_equal(after[trained_key], new_trained)
        # the predictor is trained on both steps
        assert_params_equal(after["predictor"], new_head)
        assert not same(after["predictor"], before["predictor"])
    # the views are the epoch's mini-batches
    for epoch in (0, 1):
        batches = dm.epoch_batches(epoch)
        assert len(batches) == 3 and all(isinstance(views, Views) for views in batches)
        for i, views in enumerate(batches):
            torch.testing.assert_close(calls[3 * epoch + i][1], views.view1)
            torch.testing.assert_close(calls[3 * epoch + i][2], views.view2)


def test_byol_ema_target_follows_online():
    mu = 0.9
    cfg = tiny_cfg("byol", predictor="none", target_update="ema", ema_momentum=mu)
    dm, module = build(cfg)
    method = module.method
    assert same(method.encoder, method.target)  # the target starts as a copy
    assert not any(p.requires_grad for p in method.target.parameters())
    calls = record_updates(module)
    tiny_trainer(1).fit(module, datamodule=DataModuleAdapter(dm))
    assert [c[0] for c in calls] == [0, 1]
    for index, v1, v2, before, after, loss in calls:
        online, target = before["encoder"], before["target"]

        def loss_fn():
            with torch.no_grad():
                r1, r2 = target(v1), target(v2)
            return normalized_mse(online(v1), r2) + normalized_mse(online(v2), r1)

        (new_online,) = sgd_expected([online], loss_fn, cfg.optim.lr)
        assert_params_equal(after["encoder"], new_online)
        old_target = params(before["target"])
        expected_target = {k: mu * old_target[k] + (1 - mu) * new_online[k] for k in old_target}
        assert_params_equal(after["target"], expected_target)


def test_simclr_update_is_sgd_on_nt_xent():
    cfg = tiny_cfg("simclr", projector="linear", temperature=0.5)
    dm, module = build(cfg)
    calls = record_updates(module)
    tiny_trainer(1).fit(module, datamodule=DataModuleAdapter(dm))
    assert len(calls) == 2
    for index, v1, v2, before, after, loss in calls:
        enc, proj = before["encoder"], before["projector"]
        expected = sgd_expected([enc, proj], lambda: nt_xent(proj(enc(v1)), proj(enc(v2)), 0.5), cfg.optim.lr)
        assert_params_equal(after["encoder"], expected[0])
        assert_params_equal(after["projector"], expected[1])


def test_simsiam_update_is_sgd_on_symmetric_negative_cosine():
    cfg = tiny_cfg("simsiam", predictor="linear")
    dm, module = build(cfg)
    calls = record_updates(module)
    tiny_trainer(1).fit(module, datamodule=DataModuleAdapter(dm))
    assert len(calls) == 2
    for index, v1, v2, before, after, loss in calls:
        enc, pred = before["encoder"], before["predictor"]

        def loss_fn():
            z1, z2 = enc(v1), enc(v2)
            return 0.5 * (negative_cosine(pred(z1), z2) + negative_cosine(pred(z2), z1))

        expected = sgd_expected([enc, pred], loss_fn, cfg.optim.lr)
        assert_params_equal(after["encoder"], expected[0])
        assert_params_equal(after["predictor"], expected[1])


@pytest.mark.parametrize("mode,dim", [("row", 1), ("column", 0)])
def test_weight_norm_is_kept_after_every_step(mode, dim):
    cfg = tiny_cfg("byol", 64, 32, f"encoder.weight_norm={mode}", target_update="alternate")
    dm, module = build(cfg)
    calls = record_updates(module)
    tiny_trainer(2).fit(module, datamodule=DataModuleAdapter(dm))
    assert len(calls) == 4
    for *_, after, _loss in calls:
        for name in ("encoder", "target"):
            norms = after[name].first_layer_weight.detach().norm(dim=dim)
            torch.testing.assert_close(norms, torch.ones_like(norms))
