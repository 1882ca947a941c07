"""The fast optimizer step (``backward`` and the torch optimizer called directly, on one device in 32-bit precision)
against Lightning's wrapped step: the same ``global_step``, weights and checkpoints, exact resumes, and DDP on the
wrapped step."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
from conftest import TINY
from lightning.pytorch.core.optimizer import LightningOptimizer
from test_ddp import assert_same_weights, fit_one_and_two

from ssl_bench.config.compose import load
from ssl_bench.train.build import build_data, build_module
from ssl_bench.train.fit import fit

EPOCHS = 3
STEPS_PER_EPOCH = 2  # TINY: n=64 in mini-batches of 32
METHODS = {"simclr": ["method=simclr"], "byol_two_optimizers": ["method=byol"]}  # byol: online and target SGD in turn


class WrapperHook(L.Callback):
    """Implements ``on_after_backward``, which only Lightning's wrapped backward calls, so the module must take the
    wrapped step; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.calls += 1


class GlobalSteps(L.Callback):
    """``trainer.global_step`` at the end of every training epoch."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.append(trainer.global_step)


class FastSteps(L.LightningModule):
    """Manual optimization taking ``SSLModule.update``'s fast step, recording ``trainer.global_step`` around each of
    its three calls."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)
        self.steps: list[tuple[int, int, int]] = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.torch_optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.1)
        return self.torch_optimizer

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        assert optimizer.optimizer is self.torch_optimizer
        self.layer(batch[0]).sum().backward()
        before = self.trainer.global_step
        optimizer._on_before_step()
        ready = self.trainer.global_step
        optimizer.optimizer.step()
        optimizer._on_after_step()
        self.steps.append((before, ready, self.trainer.global_step))


def test_lightning_s_private_step_hooks_count_the_fast_step():
    """The contract of the fast step with the pinned Lightning minor version (``lightning>=2.6,<2.7``): a manual
    optimizer is a ``LightningOptimizer`` whose ``optimizer`` is the torch optimizer and whose ``_on_before_step`` and
    ``_on_after_step`` count one step in ``trainer.global_step`` (when the step completes). A Lightning release that
    renames or changes them fails here."""
    module = FastSteps()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 2)), batch_size=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert module.steps == [(0, 0, 1), (1, 1, 2), (2, 2, 3)]
    assert trainer.global_step == 3


@pytest.fixture
def wrapped_steps(monkeypatch) -> list[int]:
    """One entry per call of ``LightningOptimizer.step`` (the wrapped step) during the test."""
    calls: list[int] = []
    original = LightningOptimizer.step

    def step(self: LightningOptimizer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LightningOptimizer, "step", step)
    return calls


@pytest.fixture
def restored_environment() -> Iterator[None]:
    """Lightning's DDP setup writes MASTER_ADDR, MASTER_PORT and ranks to ``os.environ`` and leaves a process group:
    undo both after the test."""
    saved = dict(os.environ)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def run(run_dir: Path, overrides: list[str], callbacks: list[L.Callback]) -> dict[str, Any]:
    """Fit ``quickstart`` at the tiny settings (SGD with momentum, so that optimizer state matters) into
    ``run_dir``; return its last checkpoint."""
    cfg = load("quickstart", [*TINY, f"trainer.max_epochs={EPOCHS}", "optim.momentum=0.9",
                              f"trainer.checkpoint_every_n_epochs={EPOCHS}", *overrides, f"run_dir={run_dir}"])
    assert fit(cfg, extra_callbacks=callbacks)["status"] == "finished"
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def assert_same_training(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two checkpoints hold the same step count, loop progress, weights and optimizer states, bit for bit."""
    assert a["global_step"] == b["global_step"]
    assert a["loops"] == b["loops"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(a["optimizer_states"]) == len(b["optimizer_states"])
    for x, y in zip(a["optimizer_states"], b["optimizer_states"]):
        assert x["param_groups"] == y["param_groups"]
        assert x["state"].keys() == y["state"].keys()
        for index, state in x["state"].items():
            assert torch.equal(state["momentum_buffer"], y["state"][index]["momentum_buffer"]), index


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS.keys())
def test_the_fast_step_counts_and_trains_as_the_wrapped_step(tmp_path, wrapped_steps, method):
    fast_steps = GlobalSteps()
    fast = run(tmp_path / "fast", method, [fast_steps])
    assert wrapped_steps == []  # one device, 32-true, no hook that needs the wrappers: the fast step
    hook, steps = WrapperHook(), GlobalSteps()
    wrapped = run(tmp_path / "wrapped", method, [hook, steps])
    assert len(wrapped_steps) == hook.calls == EPOCHS * STEPS_PER_EPOCH
    assert fast_steps.steps == steps.steps == [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    assert fast["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert_same_training(fast, wrapped)


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_resumed_on_the_fast_step_equals_one_that_never_stopped(tmp_path, wrapped_steps):
    settings = [*METHODS["byol_two_optimizers"], "optim.momentum=0.9", "trainer.log_every_n_epochs=1",
                "trainer.metrics_every_n_epochs=2", "trainer.checkpoint_every_n_epochs=2"]

    def fit_epochs(run_dir: Path, epochs: int, *extra: str) -> None:
        cfg = load("quickstart", [*TINY, *settings, f"trainer.max_epochs={epochs}", *extra, f"run_dir={run_dir}"])
        assert fit(cfg)["status"] == "finished"

    whole, part = tmp_path / "whole", tmp_path / "part"
    fit_epochs(whole, 4)
    fit_epochs(part, 2)
    fit_epochs(part, 4, "trainer.resume=auto")  # continues from the epoch-2 checkpoint in the same directory
    assert wrapped_steps == []
    last = {run: torch.load(run / "checkpoints" / "last.ckpt", weights_only=False) for run in (whole, part)}
    assert last[whole]["global_step"] == 4 * STEPS_PER_EPOCH
    assert_same_training(last[whole], last[part])
    assert history(part) == history(whole)


def test_ddp_takes_the_wrapped_step_and_trains_as_one_device(tmp_path, wrapped_steps, restored_environment):
    method = METHODS["byol_two_optimizers"]  # DDP with find_unused_parameters: each step uses one of two encoders
    single = run(tmp_path / "single", [*method, "encoder.batch_norm=false"], [])
    assert wrapped_steps == []
    ddp = run(tmp_path / "ddp", [*method, "encoder.batch_norm=false", "trainer.strategy=ddp", "trainer.devices=1"],
              [])
    assert len(wrapped_steps) == EPOCHS * STEPS_PER_EPOCH
    assert ddp["global_step"] == single["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_two_ddp_processes_with_two_optimizers_train_as_one_process(run_cli, tmp_path):
    one, two = fit_one_and_two(run_cli, tmp_path, *METHODS["byol_two_optimizers"], "optim.momentum=0.9",
                               "encoder.batch_norm=false")
    assert_same_weights(one, two)


@pytest.mark.parametrize("trainer_settings,wrapped", [
    ({}, False),
    ({"precision": "bf16-mixed"}, True),
    ({"precision": "64-true"}, True),
    ({"strategy": "ddp", "devices": 2}, True),
    ({"callbacks": [WrapperHook()]}, True),
], ids=["single-32-true", "bf16-mixed", "64-true", "ddp-2", "backward-hook"])
def test_the_wrapped_step_is_taken_wherever_lightning_s_wrappers_do_work(trainer_settings, wrapped):
    cfg = load("quickstart", list(TINY))
    module = build_module(cfg, build_data(cfg))
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False, **trainer_settings)
    assert module.needs_lightning_step() is wrapped
