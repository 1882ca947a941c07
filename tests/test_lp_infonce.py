"""The l_p InfoNCE of Rusak et al. 2022 (Eq. 4) and the alignment/uniformity split of the InfoNCE losses."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY, error_line

from ssl_bench.ops.losses import cosine_info_nce, lp_info_nce, nt_xent, nt_xent_terms


def numpy_terms(z1: np.ndarray, z2: np.ndarray, tau: np.ndarray, p: float, similarity: str = "lp",
                include_self: bool = False) -> tuple[float, float, float]:
    """Eq. 4 anchor by anchor: ``-log( e^{s(z1_i, z2_i)} / (e^{s(z1_i, z2_i)} + sum_j e^{s(z1_i, z1_j)}) )``."""
    def s(a: np.ndarray, b: np.ndarray) -> float:
        if similarity == "lp":
            return -sum(abs(a[k] - b[k]) ** p / tau[k] for k in range(len(a)))
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        return sum(a[k] * b[k] / tau[k] for k in range(len(a)))

    alignments, uniformities = [], []
    for i in range(len(z1)):
        positive = s(z1[i], z2[i])
        denominator = math.exp(positive)
        for j in range(len(z1)):
            if j != i or include_self:
                denominator += math.exp(s(z1[i], z1[j]))
        alignments.append(-positive)
        uniformities.append(math.log(denominator))
    alignment, uniformity = float(np.mean(alignments)), float(np.mean(uniformities))
    return alignment + uniformity, alignment, uniformity


def pair(batch: int = 7, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.rand(batch, dim, generator=generator, dtype=torch.float64)
    return z1, z1 + 0.3 * torch.randn(batch, dim, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("temperature", [0.5, [0.2, 0.2, 1.0, 1.0]], ids=["scalar", "per_dimension"])
@pytest.mark.parametrize("include_self", [False, True])
def test_lp_info_nce_matches_a_double_loop(p, temperature, include_self):
    z1, z2 = pair()
    tau = np.broadcast_to(np.asarray(temperature, dtype=float), (4,))
    terms = lp_info_nce(z1, z2, torch.tensor(temperature, dtype=torch.float64), p=p, include_self=include_self)
    expected = numpy_terms(z1.numpy(), z2.numpy(), tau, p, include_self=include_self)
    assert [t.item() for t in terms] == pytest.approx(expected, rel=1e-12)
    assert terms.alignment.item() > 0  # a distance: Table 1's box alignment is >= 0
    assert terms.loss.item() == pytest.approx(terms.alignment.item() + terms.uniformity.item(), rel=1e-15)


def test_cosine_info_nce_matches_a_double_loop():
    z1, z2 = pair(dim=3)
    tau = np.array([0.1, 0.5, 0.5])
    terms = cosine_info_nce(z1, z2, torch.tensor(tau))
    assert [t.item() for t in terms] == pytest.approx(numpy_terms(z1.numpy(), z2.numpy(), tau, 2, "cosine"),
                                                      rel=1e-12)


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_lp_gradients_are_finite_even_for_equal_coordinates(p):
    z1 = pair(batch=6, dim=5)[0].float().requires_grad_()
    z2 = z1.detach().clone()
    z2[:, 2:] += 0.1  # the first two coordinates are content: equal within every pair
    z2.requires_grad_()
    terms = lp_info_nce(z1, z2, torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0]), p=p)
    terms.loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert z1.grad.abs().sum() > 0
    for term in (terms.alignment, terms.uniformity):  # each summand is differentiable on its own
        assert term.requires_grad


def test_scaling_content_dimensions_lowers_the_loss_but_not_the_alignment():
    """Rusak et al.'s Corollary 1: with content dimensions (equal within a pair), stretching them leaves the
    alignment term unchanged and spreads the negatives, so a rescaled encoder beats the one that inverts g."""
    z1, z2 = pair(batch=16, dim=4)
    z2[:, 0] = z1[:, 0]
    stretch = torch.tensor([10.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    plain, stretched = lp_info_nce(z1, z2, 1.0), lp_info_nce(z1 * stretch, z2 * stretch, 1.0)
    assert stretched.alignment.item() == pytest.approx(plain.alignment.item(), rel=1e-12)
    assert stretched.loss < plain.loss - 0.5
    # the lower bound of the uniformity: the positive alone, log e^{-alignment_i}
    assert stretched.uniformity.item() > -stretched.alignment.item() - 1e-9


@pytest.mark.parametrize("temperature", [0.3, [0.1, 0.1, 0.5, 0.5, 0.5, 1.0]])
@pytest.mark.parametrize("normalize", [True, False])
def test_nt_xent_terms_sum_to_the_unchanged_nt_xent(temperature, normalize):
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(9, 6, generator=generator), torch.randn(9, 6, generator=generator)
    tau = torch.tensor(temperature)
    terms = nt_xent_terms(z1, z2, tau, normalize)
    assert torch.equal(terms.loss, nt_xent(z1, z2, tau, normalize))
    torch.testing.assert_close(terms.alignment + terms.uniformity, terms.loss)
    # alignment: the mean negative similarity of the 2B positive pairs
    u1 = torch.nn.functional.normalize(z1, dim=1) if normalize else z1
    u2 = torch.nn.functional.normalize(z2, dim=1) if normalize else z2
    torch.testing.assert_close(terms.alignment, -((u1 * u2) / tau).sum(dim=1).mean())


WORLD = 2
TERMS = {
    "lp1": lambda z1, z2: lp_info_nce(z1, z2, torch.tensor([0.5, 0.5, 1.0, 2.0], dtype=torch.float64), p=1.0),
    "lp2_self": lambda z1, z2: lp_info_nce(z1, z2, 0.7, p=2.0, include_self=True),
    "cosine": lambda z1, z2: cosine_info_nce(z1, z2, 0.3),
    "nt_xent": lambda z1, z2: nt_xent_terms(z1, z2, torch.tensor([0.2, 0.2, 0.5, 0.5], dtype=torch.float64)),
}


def terms_and_grads(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    results = {}
    for name, terms_fn in TERMS.items():
        a1, a2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
        terms = terms_fn(a1, a2)
        terms.loss.backward()
        results[name] = (*(t.detach() for t in terms), a1.grad, a2.grad)
    return results


def terms_worker(rank: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * len(z1) // WORLD, (rank + 1) * len(z1) // WORLD)
        torch.save(terms_and_grads(z1[rows], z2[rows]), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_give_the_terms_and_gradients_of_the_global_batch(tmp_path):
    """Under DDP each process's anchors meet the negatives of every process: the mean of the per-process terms is
    the one-process value over the global batch, and DDP's averaged gradients are its gradients."""
    z1, z2 = pair(batch=6, dim=4, seed=3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(terms_worker, args=(port, z1, z2, tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, (*terms, grad1, grad2) in terms_and_grads(z1, z2).items():
        for k, term in enumerate(terms):
            assert np.mean([ranks[r][name][k].item() for r in range(WORLD)]) == pytest.approx(term.item(), abs=1e-12)
        for r in range(WORLD):
            rows = slice(r * 3, (r + 1) * 3)
            torch.testing.assert_close(ranks[r][name][3] / WORLD, grad1[rows], rtol=0, atol=1e-12, msg=name)
            torch.testing.assert_close(ranks[r][name][4] / WORLD, grad2[rows], rtol=0, atol=1e-12, msg=name)


def method_and_batch(*overrides: str):
    from ssl_bench.config.compose import (
        load,  # imported here to keep the spawned workers light
    )
    from ssl_bench.train.build import build_data, build_module

    cfg = load("quickstart", [*TINY, "method=adaptive_infonce", "method.projector=none", *overrides])
    data = build_data(cfg)
    module = build_module(cfg, data)
    [views] = data.epoch_batches(0, 0, 1)[:1]
    return module.method, views


def test_cosine_method_loss_is_nt_xent_and_lp_method_loss_is_lp_info_nce():
    method, views = method_and_batch("method.temperatures=[1.0,0.5]")
    loss, _ = method.training_loss(0, views)
    z1, z2 = method.encoder(views.view1), method.encoder(views.view2)
    assert torch.equal(loss, nt_xent(z1, z2, method.temperatures))

    method, views = method_and_batch("method.similarity=lp", "method.p=1.5", "method.temperatures=[0.5,2.0]",
                                     "method.temperature_groups=[3,5]")
    loss, _ = method.training_loss(0, views)
    z1, z2 = method.encoder(views.view1), method.encoder(views.view2)
    tau = torch.tensor([0.5] * 3 + [2.0] * 5)
    assert torch.equal(loss, lp_info_nce(z1, z2, tau, p=1.5).loss)  # unnormalized: normalize=null means false
    loss, _ = method.training_loss(1, views)
    metrics = method.epoch_metrics()
    assert metrics["train/alignment"] + metrics["train/uniformity"] == pytest.approx(loss.item(), rel=1e-5)
    assert "train/alignment" not in method.epoch_metrics()  # reset after every log


def test_lp_fit_through_the_cli_logs_alignment_and_uniformity(fit_tiny):
    code, _, summary = fit_tiny("method=adaptive_infonce", "method.similarity=lp", "method.projector=none",
                                "method.temperatures=[1.0]")
    assert code == 0
    metrics = summary["metrics"]
    assert metrics["train/alignment"] > 0
    assert metrics["train/alignment"] + metrics["train/uniformity"] == pytest.approx(metrics["train/loss"], rel=1e-5)


@pytest.mark.parametrize(("override", "message"), [
    ("method.p=0", "method.p=0.0 must be > 0"),
    ("method.similarity=l2", "method.similarity='l2' is not allowed; choose one of: cosine, lp"),
])
def test_bad_lp_keys_are_one_line_errors(run_cli, tmp_path, override, message):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={tmp_path}", "method=adaptive_infonce",
                             "method.projector=none", "method.similarity=lp", override)
    assert error_line(code, err, out) == message
