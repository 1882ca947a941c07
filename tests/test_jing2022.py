"""Jing et al. 2022, the toy tasks of the official code: the configs carry case_1.py's and case_2.py's settings, and
shortened fits show each case's collapse (strong noise; two linear layers against one)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ssl_bench.callbacks.weight_alignment import alignment_matrix, block_alignment
from ssl_bench.config.compose import load
from ssl_bench.study.grid import expand_grid

QUIET = ["trainer.progress=none", "logger=none"]


def fit(run_cli, run_dir: Path, config: str, *overrides: str) -> tuple[dict[str, float], list[float]]:
    """The final metrics of a fit and its last embedding spectrum (descending)."""
    code, _, err = run_cli("fit", "--config", config, *overrides, *QUIET, f"run_dir={run_dir}")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished", summary
    last = json.loads((run_dir / "spectra.jsonl").read_text().splitlines()[-1])
    return summary["metrics"], last["projector"]


def test_case1_config_has_the_official_settings():
    cfg = load("jing2022/toy_case1", [])
    data = cfg.data
    assert (data.name, data.dim, data.noise_from, data.noise_std, data.fresh) == ("gaussian", 16, 8, 1.5, False)
    assert data.n // data.batch_size * cfg.trainer.max_epochs == 10_000 and data.batch_size == 128
    assert (cfg.encoder.name, cfg.encoder.widths, cfg.encoder.output_dim, cfg.encoder.activation, cfg.encoder.bias) == (
        "mlp", [], 16, "linear", True)
    method = cfg.method
    assert (method.name, method.temperature, method.temperatures, method.normalizes, method.projector) == (
        "adaptive_infonce", 0.1, None, False, "none")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.schedule) == (
        "sgd", 0.001, 0.0, 0.0, "constant")
    assert list(cfg.callbacks) == ["spectrum"] and cfg.callbacks["spectrum"].samples == 1000
    assert cfg.trainer.metrics_every_n_epochs == 5
    assert cfg.sweep.metrics == ["spectrum/effective_rank", "spectrum/rank"]
    noise = [dict(p.axes)["data.noise_std"] for p in expand_grid(cfg.sweep.grid)]
    assert noise == ["0.01", "0.5", "1.0", "1.5", "2.0", "3.0", "5.0"]


def test_case2_config_has_the_official_settings_and_compares_one_and_two_layers():
    cfg = load("jing2022/toy_case2", [])
    data = cfg.data
    assert (data.dim, data.noise_from, data.noise_std, data.fresh) == (16, 0, 0.001, False)
    assert data.n // data.batch_size * cfg.trainer.max_epochs == 10_000 and data.batch_size == 128
    encoder = cfg.encoder
    assert (encoder.name, encoder.width, encoder.layers, encoder.bias, encoder.batch_norm, encoder.activation) == (
        "sparse", 16, 2, False, False, "linear")
    assert encoder.init_std == 0.02
    assert (cfg.method.name, cfg.method.temperature, cfg.method.normalizes) == ("adaptive_infonce", 0.1, False)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.0, 0.0)
    assert cfg.callbacks["spectrum"].weights and cfg.trainer.metrics_every_n_epochs == 1
    assert cfg.callbacks["weight_alignment"].block == 12
    points = {p.label: p for p in expand_grid(cfg.sweep.grid)}
    assert sorted(points) == ["model=one-layer,encoder.init_std=0.02", "model=one-layer,encoder.init_std=0.0625",
                              "model=two-layer,encoder.init_std=0.02", "model=two-layer,encoder.init_std=0.0625"]
    one = load("jing2022/toy_case2", list(points["model=one-layer,encoder.init_std=0.02"].overrides))
    assert (one.encoder.layers, one.encoder.init_std) == (1, 0.02) and "weight_alignment" not in one.callbacks


def test_strong_noise_on_half_the_coordinates_collapses_that_half(run_cli, tmp_path):
    """200 steps of case 1 (the full run is 10,000): with sigma = 5 the spectrum drops by more than 5x after the 8th
    singular value (about 11x over seeds 1-3; effective rank about 8.2), with sigma = 0.01 it stays spread (no such
    drop, effective rank about 13)."""
    short = ["data.n=1280", "trainer.max_epochs=20", "trainer.metrics_every_n_epochs=20"]
    weak, weak_spectrum = fit(run_cli, tmp_path / "weak", "jing2022/toy_case1", *short, "data.noise_std=0.01")
    strong, strong_spectrum = fit(run_cli, tmp_path / "strong", "jing2022/toy_case1", *short, "data.noise_std=5.0")
    assert weak["spectrum/effective_rank"] > 12 and weak["spectrum/rank"] == 16, weak
    assert strong["spectrum/effective_rank"] < 9, strong
    assert strong_spectrum[8] < 0.2 * strong_spectrum[7] and weak_spectrum[8] > 0.5 * weak_spectrum[7]


def test_two_linear_layers_keep_small_directions_small_where_one_layer_recovers_them(run_cli, tmp_path):
    """50 steps of case 2 from the same N(0, 0.02^2) init: one layer already spans all 16 directions (effective rank
    14.7-15.2 over seeds 1-3), the two-layer product still has singular values below 1e-3 of its largest (effective
    rank 4.9-7.2), and so does W1. The full 10,000 steps keep 4 of them collapsed (docs/jing2022.md); at this length
    the test shows their lag, the start of that collapse."""
    short = ["data.n=1280", "trainer.max_epochs=5", "trainer.metrics_every_n_epochs=5"]
    one, _ = fit(run_cli, tmp_path / "one", "jing2022/toy_case2", *short, "encoder.layers=1", "~callbacks.weight_alignment")
    two, _ = fit(run_cli, tmp_path / "two", "jing2022/toy_case2", *short, "encoder.layers=2")
    assert one["spectrum/effective_rank"] > 13 and one["spectrum/rank"] == 16, one
    assert two["spectrum/effective_rank"] < 8 and two["spectrum/rank"] < 16, two
    assert two["spectrum/weight_effective_rank"] < one["spectrum/weight_effective_rank"]


def orthogonal(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def test_alignment_matrix_is_v2_transposed_u1_in_descending_order():
    """W2 = U2 S2 V2^T whose right singular vectors are W1's left ones: |A| = I; the same vectors with W2's singular
    values in the other order: the anti-diagonal; rotated inside the top 12: A is block-diagonal, not diagonal."""
    u1, v1, u2 = orthogonal(16, 1), orthogonal(16, 2), orthogonal(16, 3)
    s = torch.linspace(1.0, 0.1, 16, dtype=torch.float64)
    w1 = u1 @ torch.diag(s) @ v1.T
    assert torch.allclose(alignment_matrix(w1, u2 @ torch.diag(s) @ u1.T).abs(), torch.eye(16, dtype=torch.float64))
    flipped = alignment_matrix(w1, u2 @ torch.diag(s.flip(0)) @ u1.T).abs()
    assert torch.allclose(flipped, torch.eye(16, dtype=torch.float64).flip(0))
    rotation = torch.block_diag(orthogonal(12, 4), torch.eye(4, dtype=torch.float64))
    rotated = alignment_matrix(w1, u2 @ torch.diag(s) @ (u1 @ rotation).T)
    assert block_alignment(rotated, 12) == pytest.approx(1.0) and rotated.diagonal().abs().mean() < 0.6
    random = alignment_matrix(w1, orthogonal(16, 5) @ torch.diag(s) @ orthogonal(16, 6).T)
    assert random.diagonal().abs().mean() < 0.4 and block_alignment(random, 12) < 0.9
    assert block_alignment(random, 12) == pytest.approx(
        1 - (random[:12, 12:].square().sum() / 12).item())  # rows of an orthogonal matrix have unit norm
    assert math.isclose(block_alignment(torch.eye(4), 2), 1.0)


def test_two_layers_align_their_weights_as_they_train(run_cli, tmp_path):
    """400 steps of case 2: W2's top-12 input subspace turns towards W1's top-12 output subspace (seed 1: from 0.80
    after 80 steps to 0.89; 1.000 at 10,000 steps), and |V2^T U1| is recorded every evaluation."""
    metrics, _ = fit(run_cli, tmp_path / "two", "jing2022/toy_case2", "data.n=1280", "trainer.max_epochs=40",
                     "trainer.metrics_every_n_epochs=8")
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    blocks = [r["weight_alignment/block"] for r in records if "weight_alignment/block" in r]
    assert len(blocks) == 5 and blocks[-1] > blocks[0] + 0.05, blocks
    assert 0 < metrics["weight_alignment/diagonal"] <= 1 and 0 < metrics["weight_alignment/tail_diagonal"] <= 1
    lines = (tmp_path / "two" / "weight_alignment.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert len(lines) == 5 and last["step"] == 400 and len(last["abs_alignment"]) == 16 and len(last["w2"]) == 16


def test_weight_alignment_needs_two_stacked_weight_matrices(run_cli, tmp_path):
    code, _, err = run_cli("fit", "--config", "jing2022/toy_case2", "encoder.layers=1", *QUIET,
                           f"run_dir={tmp_path / 'run'}")
    assert code == 2 and "~callbacks.weight_alignment" in err and len(err.strip().splitlines()) == 1, err
