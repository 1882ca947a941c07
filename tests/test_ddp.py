"""DDP: gathered losses and 2-process fits equal one process over the global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, TINY
from torch import Tensor

from ssl_bench.ops.losses import barlow_twins_loss, info_nce, nt_xent, standardize, vicreg_loss

WORLD = 2
DIM = 5
TAU_PER_DIM = torch.linspace(0.1, 0.6, DIM, dtype=torch.float64)

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "nt_xent": lambda z1, z2: nt_xent(z1, z2, 0.2),
    "nt_xent_unnormalized": lambda z1, z2: nt_xent(z1, z2, 2.0, normalize=False),
    "nt_xent_tau_per_dim": lambda z1, z2: nt_xent(z1, z2, TAU_PER_DIM),
    "nt_xent_tau_per_dim_unnormalized": lambda z1, z2: nt_xent(z1, z2, 4 * TAU_PER_DIM, normalize=False),
    "info_nce": lambda z1, z2: info_nce(z1, z2, 0.3),
    "nt_xent_standardized": lambda z1, z2: nt_xent(standardize(z1), standardize(z2), TAU_PER_DIM),
    # batch statistics of the gathered global batch; VICReg's invariance is a mean over the local samples
    "vicreg": lambda z1, z2: vicreg_loss(z1, z2),
    "vicreg_shrunk": lambda z1, z2: vicreg_loss(0.3 * z1, 0.3 * z2, 2.0, 5.0, 3.0),  # every std below 1: hinge active
    "barlow_twins": lambda z1, z2: barlow_twins_loss(z1, z2),
    "barlow_twins_lambda": lambda z1, z2: barlow_twins_loss(z1, z2, 0.3),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses_and_grads(z1: Tensor, z2: Tensor) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Every loss in ``LOSSES`` on (z1, z2), with its gradients w.r.t. z1 and z2."""
    results = {}
    for name, loss_fn in LOSSES.items():
        a1, a2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
        loss = loss_fn(a1, a2)
        loss.backward()
        results[name] = (loss.detach(), a1.grad, a2.grad)
    return results


def loss_worker(rank: int, port: int, z1: Tensor, z2: Tensor, out: Path) -> None:
    """Process ``rank`` of ``WORLD``: losses and gradients on its contiguous shard of the global batch."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        shard = z1.shape[0] // WORLD
        rows = slice(rank * shard, (rank + 1) * shard)
        torch.save(losses_and_grads(z1[rows], z2[rows]), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_losses_and_gradients_equal_one_process_over_the_global_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(2 * 3, DIM, generator=generator, dtype=torch.float64) for _ in range(2))
    mp.spawn(loss_worker, args=(free_port(), z1, z2, tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    shard = z1.shape[0] // WORLD
    for name, (loss, grad1, grad2) in losses_and_grads(z1, z2).items():
        assert torch.stack([ranks[r][name][0] for r in range(WORLD)]).mean().item() == pytest.approx(
            loss.item(), abs=1e-10), name
        # all_gather's backward sums every process's contribution, so a process's local gradient is that of the
        # sum of the per-process losses; DDP's average over processes divides it by WORLD (the mean loss).
        for r in range(WORLD):
            rows = slice(r * shard, (r + 1) * shard)
            _, local1, local2 = ranks[r][name]
            torch.testing.assert_close(local1 / WORLD, grad1[rows], rtol=0, atol=1e-10, msg=name)
            torch.testing.assert_close(local2 / WORLD, grad2[rows], rtol=0, atol=1e-10, msg=name)
        assert grad1.abs().max() > 1e-3 and grad2.abs().max() > 1e-3, name


# ------------------------------------------------------------------------------------------------------------ fits

EPOCHS = 3
GLOBAL_BATCH = 32


def fit_args(devices: int, overrides: list[str], run_dir: Path) -> list[str]:
    """``fit --config quickstart`` on ``devices`` processes, global batch ``GLOBAL_BATCH``, a checkpoint at the end."""
    ddp = ["trainer.strategy=ddp"] if devices > 1 else []
    return ["fit", "--config", "quickstart", *TINY, f"data.batch_size={GLOBAL_BATCH // devices}",
            f"trainer.max_epochs={EPOCHS}", f"trainer.checkpoint_every_n_epochs={EPOCHS}", "trainer.accelerator=cpu",
            f"trainer.devices={devices}", *ddp, *overrides, f"run_dir={run_dir}"]


def last_weights(run_dir: Path) -> dict[str, Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def fit_one_and_two(run_cli, tmp_path: Path, *overrides: str, two: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Final state dicts of the same fit on one process (in this one) and on two (a subprocess, plus ``two``)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("SSL_BENCH_RUN_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", *fit_args(2, [*overrides, *two], two_dir)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, _, err = run_cli(*fit_args(1, list(overrides), one_dir))
    assert code == 0, err[-3000:]
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return last_weights(one_dir), last_weights(two_dir)


def logged(run_dir: Path, key: str) -> list[float]:
    """Every value of ``key`` in the run's ``metrics.jsonl``, in order."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record[key] for record in records if key in record]


def initial_weights(*overrides: str) -> dict[str, Tensor]:
    """The state dict ``fit`` starts from (imports here keep the spawned loss workers light)."""
    import lightning as L

    from ssl_bench.config.compose import load
    from ssl_bench.train.build import build_data, build_module

    cfg = load("quickstart", [*TINY, *overrides])
    L.seed_everything(cfg.seed, verbose=False)
    return build_module(cfg, build_data(cfg)).state_dict()


def max_differences(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    assert a.keys() == b.keys()
    return {key: (a[key].double() - b[key].double()).abs().max().item() for key in a}


def assert_same_weights(one: dict[str, Tensor], two: dict[str, Tensor], tolerance: float = 1e-5) -> None:
    assert one.keys() == two.keys()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=tolerance, atol=tolerance, msg=key)


@pytest.mark.parametrize("method", [
    ["method=simclr"],
    pytest.param(["method=byol", "method.target_update=ema", "method.predictor=linear"], marks=pytest.mark.slow),
    # without the expander's batch norm, which CPU processes cannot synchronise; slow: the gathered losses' values
    # and gradients are checked on two processes in the default suite (test_gathered_losses_...)
    pytest.param(["method=vicreg", "method.projector=none"], marks=pytest.mark.slow),
    pytest.param(["method=barlow_twins", "method.projector=none"], marks=pytest.mark.slow),
], ids=["simclr", "byol_ema", "vicreg", "barlow_twins"])
def test_two_processes_train_the_same_weights_as_one(run_cli, tmp_path, method):
    one, two = fit_one_and_two(run_cli, tmp_path, *method, "encoder.batch_norm=false")
    assert_same_weights(one, two)
    # train/loss: each process's loss over its shard, averaged over the processes, is the one process's loss
    one_losses, two_losses = (logged(tmp_path / name, "train/loss") for name in ("one", "two"))
    assert len(one_losses) == len(two_losses) > 0
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    moved = max_differences(one, initial_weights(*method, "encoder.batch_norm=false"))
    assert moved["method.encoder.layers.0.linear.weight"] > 1e-3, moved


def test_batch_norm_without_sync_makes_two_processes_differ(run_cli, tmp_path):
    one, two = fit_one_and_two(run_cli, tmp_path, "method=simclr", "encoder.batch_norm=true",
                               two=("trainer.sync_batchnorm=false",))
    assert "method.encoder.layers.0.norm.running_mean" in one
    differences = max_differences(one, two)
    assert differences["method.encoder.layers.0.linear.weight"] > 1e-3, differences


@pytest.mark.gpu
def test_sync_batch_norm_on_two_gpus_trains_the_same_weights_as_one(run_cli, tmp_path):
    one, two = fit_one_and_two(run_cli, tmp_path, "method=simclr", "encoder.batch_norm=true", "trainer.accelerator=gpu",
                               two=("trainer.sync_batchnorm=true",))
    assert "method.encoder.layers.0.norm.running_mean" in one
    assert_same_weights(one, two, tolerance=1e-4)


def test_sync_batch_norm_on_cpu_processes_is_a_config_error(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "trainer.devices=2", "trainer.strategy=ddp",
                             "trainer.sync_batchnorm=true", f"run_dir={tmp_path / 'run'}")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("ssl-bench: error: trainer.sync_batchnorm=true needs GPUs")
    assert not (tmp_path / "run").exists()
