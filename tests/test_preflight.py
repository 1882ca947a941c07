"""The build step's preflight and the run context: an ensemble refuses a late check before any member writes, the
callbacks and datamodules read of the trainer and module only what :class:`RunContext` and :class:`ModuleContext`
state, and Lightning's objects and the ensemble's views both provide all of it."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, TINY, error_line

from ssl_bench.callbacks.base import ModuleContext, RunContext, StrategyContext
from ssl_bench.config import ConfigError
from ssl_bench.config.compose import load
from ssl_bench.train.build import build_run
from ssl_bench.train.ensemble import Member, fit_ensemble

BAO = ["logger=none", "trainer.progress=none", "~callbacks.spectrum", "data.dim=8", "data.n=128",
       "data.batch_size=64", "encoder.width=4", "callbacks.predictor_dynamics.samples=128", "trainer.max_epochs=1"]
"""A tiny bao2023/linear run (its predictor_dynamics callback reads the views' noise)."""


def protocol_members(protocol: type) -> set[str]:
    """The attributes and methods a protocol declares."""
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_an_ensemble_refuses_a_late_check_before_any_member_writes(tmp_path):
    """The second member's noise on part of the coordinates has no c = 1 + sigma^2 for the regimes: refused while
    the members are built, so that neither member leaves a run directory (a failed summary) behind."""
    cfgs = [load("bao2023/linear", [*BAO, f"seed={k}", *extra, f"run_dir={tmp_path / f'member{k}'}"])
            for k, extra in enumerate([[], ["data.noise_from=4"]])]
    with pytest.raises(ConfigError, match="^callbacks.predictor_dynamics.regimes=true needs c = 1"):
        fit_ensemble(cfgs, batching="loop")
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def trainer_and_module_reads(path: Path) -> set[str]:
    """The attributes the file at ``path`` reads of a trainer (``trainer.X``, ``self.trainer.X``, and
    ``trainer.strategy.X`` as ``strategy.X``) and of a hook's ``module`` argument (``module.X``)."""
    reads = set()
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef):
            continue
        arguments = {a.arg for a in function.args.args}
        for node in ast.walk(function):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id == "trainer" or \
                    isinstance(owner, ast.Attribute) and owner.attr == "trainer" and isinstance(owner.value, ast.Name):
                reads.add(f"trainer.{node.attr}")
            elif isinstance(owner, ast.Attribute) and owner.attr == "strategy" and \
                    ast.unparse(owner.value) in ("trainer", "self.trainer"):
                reads.add(f"strategy.{node.attr}")
            elif isinstance(owner, ast.Name) and owner.id == "module" and "module" in arguments:
                reads.add(f"module.{node.attr}")
    return reads


def test_callbacks_and_datamodules_read_only_the_run_context():
    """Every attribute a callback or datamodule reads of the trainer, its strategy or the module is one that the
    protocols declare: what an ensemble member's views must provide."""
    files = [*(REPO / "ssl_bench" / "callbacks").glob("*.py"), *(REPO / "datamodules").glob("*.py"),
             *(REPO / "ssl_bench" / "ops").glob("*.py")]
    reads = set().union(*(trainer_and_module_reads(path) for path in files))
    declared = {f"{prefix}.{name}" for prefix, protocol in [("trainer", RunContext), ("strategy", StrategyContext),
                                                            ("module", ModuleContext)]
                for name in protocol_members(protocol)}
    assert {"trainer.current_epoch", "trainer.datamodule", "strategy.root_device", "module.log"} <= reads
    assert reads <= declared, sorted(reads - declared)


def test_lightning_and_the_ensemble_views_provide_every_attribute_of_the_run_context(tmp_path):
    cfg = load("quickstart", [*TINY, f"run_dir={tmp_path / 'run'}"])
    member = Member(cfg, torch.device("cpu"))
    run = build_run(cfg)
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, default_root_dir=tmp_path)
    views = [(member.trainer, RunContext), (member.trainer.strategy, StrategyContext), (member.view, ModuleContext),
             (trainer, RunContext), (trainer.strategy, StrategyContext), (run.module, ModuleContext)]
    for view, protocol in views:
        missing = sorted(name for name in protocol_members(protocol) if not hasattr(view, name))
        assert not missing, (type(view).__name__, missing)
        assert isinstance(view, protocol)
    assert not any(tmp_path.iterdir())  # building writes nothing


def test_evaluate_with_resume_auto_needs_a_checkpoint_in_the_run_directory(run_cli, tmp_path):
    code, out, err = run_cli("evaluate", "--config", "rusak2022/table1", "trainer.resume=auto",
                             f"run_dir={tmp_path}", "--samples", "50")
    assert error_line(code, err, out).startswith(f"trainer.resume=auto finds no checkpoints/last.ckpt in "
                                                 f"run_dir={tmp_path}")
