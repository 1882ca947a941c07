"""The registry from outside the package: a toy method and a toy per-step callback, registered by this test module,
run through the CLI like the built-in parts; their keys are strict; a name is registered once."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from ssl_bench import registry
from ssl_bench.batch import StepInfo, Views
from ssl_bench.callbacks.base import Callback
from ssl_bench.config import CallbackConfig, ConfigError, MethodConfig, check_positive
from ssl_bench.methods.base import Method
from ssl_bench.ops.losses import nt_xent

BUILT: list[Any] = []
"""Every toy method and callback that a run built, in order."""


class ToyMethod(Method):
    """``L = scale * nt_xent(f(a1), f(a2), temperature)``, no heads; keeps every loss it returns."""

    @dataclass
    class Config(MethodConfig):
        temperature: float = 0.5
        scale: float = 1.0

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.temperature", self.temperature)
            check_positive(f"{prefix}.scale", self.scale)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder)
        self.losses: list[Tensor] = []
        BUILT.append(self)

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        loss = self.config.scale * nt_xent(f1, f2, self.config.temperature)
        self.losses.append(loss.detach().clone())
        return loss, f1


class StepLog(Callback):
    """Keeps every ``every``-th optimizer step and the epochs that ended."""

    @dataclass
    class Config(CallbackConfig):
        every: int = 1

        def validate(self, prefix: str) -> None:
            check_positive(f"{prefix}.every", self.every)

    def __init__(self, config: Config, every_n_epochs: int = 1) -> None:
        super().__init__(config, every_n_epochs)
        self.steps: list[StepInfo] = []
        self.epochs_ended: list[int] = []
        BUILT.append(self)

    def on_optimizer_step(self, trainer: Any, module: Any, step: StepInfo) -> None:
        if step.index % self.config.every == 0:
            self.steps.append(step)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.epochs_ended.append(trainer.current_epoch)


@pytest.fixture
def toy_parts():
    """Register the toy method and callback as ``toy`` for one test; remove them afterwards."""
    registry.load_builtin_parts()
    registry.register("method", "toy")(ToyMethod)
    registry.register("callback", "toy")(StepLog)
    BUILT.clear()
    yield BUILT
    registry._PARTS["method"].pop("toy", None)
    registry._PARTS["callback"].pop("toy", None)
    BUILT.clear()


@pytest.fixture
def toy_config(tmp_path) -> Path:
    """An experiment YAML beside its own ``method/toy.yaml``; configs/ is on Hydra's search path."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "toy.yaml").write_text("name: toy\ntemperature: 0.5\nscale: 1.0\n")
    path = tmp_path / "toy_experiment.yaml"
    path.write_text("defaults:\n  - base\n  - override /method: toy\n  - _self_\nmethod:\n  temperature: 0.2\n")
    return path


def built(kind: type) -> list[Any]:
    return [part for part in BUILT if isinstance(part, kind)]


def test_toy_method_and_step_callback_run_through_the_cli(toy_parts, toy_config, fit_tiny):
    code, run_dir, summary = fit_tiny("callbacks.toy.every=1", config=str(toy_config))
    assert code == 0
    assert summary["status"] == "finished" and summary["experiment"] == "toy_experiment"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["method"] == {"name": "toy", "temperature": 0.2, "scale": 1.0}
    assert config["callbacks"]["toy"] == {"every": 1}

    [method], [callback] = built(ToyMethod), built(StepLog)
    # n=64, batch 32, 3 epochs: two mini-batches (optimizer steps) per epoch
    steps = callback.steps
    assert [s.index for s in steps] == list(range(6))
    assert [s.epoch for s in steps] == [0, 0, 1, 1, 2, 2]
    assert [s.index_in_batch for s in steps] == [0, 1] * 3
    assert [s.optimizer for s in steps] == [0] * 6
    assert callback.epochs_ended == [0, 1, 2]
    assert len(method.losses) == 6
    for step, loss in zip(steps, method.losses):
        assert not step.loss.requires_grad and math.isfinite(step.loss.item())
        assert torch.equal(step.loss, loss)
    # the logged loss is the mean of the losses the method returned (train/loss is logged at the last epoch here)
    assert summary["metrics"]["train/loss"] == pytest.approx(torch.stack(method.losses).mean().item(), rel=1e-6)
    assert 0.0 <= summary["metrics"]["maxcos/min"] <= summary["metrics"]["maxcos/max"] <= 1.0


def test_toy_keys_change_what_runs(toy_parts, toy_config, fit_tiny):
    """``method.scale`` scales the toy's loss (the first step sees the same weights and batch, so its loss doubles);
    ``callbacks.toy.every=2`` keeps every second step."""
    code, _, _ = fit_tiny("+callbacks.toy={}", "seed=3", config=str(toy_config))
    assert code == 0
    code, _, _ = fit_tiny("callbacks.toy.every=2", "method.scale=2", "seed=3", config=str(toy_config))
    assert code == 0
    (one, two), (log_one, log_two) = built(ToyMethod), built(StepLog)
    assert two.losses[0].item() == pytest.approx(2 * one.losses[0].item(), rel=1e-6)
    assert [s.index for s in log_one.steps] == list(range(6))
    assert [s.index for s in log_two.steps] == [0, 2, 4]
    assert [s.loss.item() for s in log_two.steps] == [two.losses[i].item() for i in (0, 2, 4)]


def test_step_hook_sees_both_optimizers_of_alternating_byol(toy_parts, fit_tiny):
    code, _, summary = fit_tiny("method=byol", "method.target_update=alternate", "callbacks.toy.every=1")
    assert code == 0 and summary["status"] == "finished"
    [callback] = built(StepLog)
    assert [s.index for s in callback.steps] == list(range(6))
    assert [s.optimizer for s in callback.steps] == [0, 1] * 3
    assert all(math.isfinite(s.loss.item()) for s in callback.steps)


def test_toy_keys_are_strict_and_checked(toy_parts, toy_config, run_cli, tmp_path):
    def error(*overrides: str) -> str:
        code, out, err = run_cli("fit", "--config", toy_config, *overrides, f"run_dir={tmp_path / 'never'}")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err.strip().removeprefix("ssl-bench: error: ")

    assert error("method.ema_momentum=0.5") == ("method.ema_momentum is not a key of method=toy; its keys: name, "
                                                "temperature, scale")
    assert error("callbacks.toy.steps=3") == "callbacks.toy.steps is not a key of callbacks.toy; its keys: every"
    assert error("method.scale=0") == "method.scale=0.0 must be > 0"
    assert error("method.name=nope") == ("method.name='nope' is not registered; choose one of: adaptive_infonce, "
                                         "barlow_twins, byol, directclr, dot_product, simclr, simsiam, toy, vicreg")
    assert not (tmp_path / "never").exists()
    assert BUILT == []  # nothing was built


def test_a_name_is_registered_once(toy_parts):
    assert registry.register("method", "toy")(ToyMethod) is ToyMethod  # the same class again is fine

    class OtherToy(ToyMethod):
        pass

    with pytest.raises(ValueError, match="method 'toy' is registered twice: .*ToyMethod and .*OtherToy"):
        registry.register("method", "toy")(OtherToy)
    assert registry.lookup("method", "toy") is ToyMethod
    with pytest.raises(ValueError, match="unknown registry group 'methods'"):
        registry.register("methods", "toy")


def test_builtin_parts_are_registered():
    assert {"simclr", "simsiam", "byol", "directclr", "adaptive_infonce"} <= set(registry.names("method"))
    assert {"max_cosine", "spectrum", "readout"} <= set(registry.names("callback"))
    assert {"sparse_coding", "cifar10"} <= set(registry.names("data"))
    assert {"sparse", "resnet18", "resnet50"} <= set(registry.names("encoder"))
    assert {"sgd", "adamw", "lars"} <= set(registry.names("optim"))
    assert "toy" not in registry.names("method")  # the toy parts live only inside their tests
    with pytest.raises(ConfigError, match="data.name='nope' is not registered; choose one of: .*sparse_coding"):
        registry.lookup("data", "nope")
