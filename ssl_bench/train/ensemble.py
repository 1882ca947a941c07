"""Many runs as one model: the members of an ensemble train together, each exactly as its own run would.

A member is a whole run (its config, datamodule, :class:`~ssl_bench.train.lightning_module.SSLModule`, optimizers, run
directory, loggers and metric callbacks), built by the code that builds a separate run. The members' parameters and
buffers are stacked into tensors with a leading member dimension, and every member's own tensors become views of its
slice. A mini-batch is then one backward pass for all members, of either ``torch.func.vmap`` of
:meth:`SSLModule.objective` over (stacked parameters, stacked buffers, stacked views) through
``torch.func.functional_call`` (batch norm keeps per-member statistics and running averages), or the members' objectives
one after another (see :class:`Ensemble`). Each member's optimizers step its own parameters (so learning rates, weight
decay, LARS norms and optimizer state stay its own), or, under vmap with one elementwise optimizer setting, one
optimizer steps the stacked tensors; the method's post-step work (weight normalisation, a target network's EMA) runs per
member. Each member draws its own epochs from its datamodule (its seed, sparsity, masking) and logs to its own run
directory and W&B run, so tables, reports and dashboards read an ensemble's runs like any others.

Which runs train together: :func:`ssl_bench.config.ensemble_key` and :func:`shape_signature`. A member whose loss stops
being finite is marked ``diverged`` at that step and stops stepping; the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from ssl_bench.batch import Views
from ssl_bench.config import ConfigError, RunConfig, ensemble_key
from ssl_bench.optim import build_optimizer
from ssl_bench.registry import lookup
from ssl_bench.rundir import json_value
from ssl_bench.train.build import build_run, check_environment, on_gpu
from ssl_bench.train.lightning_module import SSLModule, logged_value
from ssl_bench.train.memory import release_free_heap
from ssl_bench.train.session import (
    Interrupted,
    RunSession,
    resolve_run_dir,
    stop_on_signals,
)


class MemberStrategyContext:
    """A member's :class:`~ssl_bench.callbacks.base.StrategyContext`: one process on the ensemble's device."""

    def __init__(self, device: torch.device) -> None:
        self.root_device = device

    def barrier(self, name: str | None = None) -> None:
        """One process: nothing to wait for."""


class MemberRunContext:
    """A member's :class:`~ssl_bench.callbacks.base.RunContext`, the trainer its datamodule and callbacks see: the
    epoch (``current_epoch``, ``max_epochs``), the member's own optimizer steps (``global_step``), its loggers and
    run directory (``default_root_dir``), its datamodule, and one process (rank 0 of 1); for its
    :class:`SSLModule` also one training batch per epoch (``num_training_batches``)."""

    is_global_zero = True
    global_rank = 0
    world_size = 1
    num_training_batches = 1

    def __init__(self, cfg: RunConfig, datamodule: Any, loggers: list[Any], run_dir: Path,
                 device: torch.device) -> None:
        self.max_epochs = cfg.trainer.max_epochs
        self.current_epoch = 0
        self.global_step = 0
        self.datamodule, self.loggers, self.default_root_dir = datamodule, loggers, str(run_dir)
        self.strategy = MemberStrategyContext(device)


class MemberModuleContext:
    """A member's :class:`~ssl_bench.callbacks.base.ModuleContext`, the module its callbacks see: its ``method``,
    ``optim`` settings and ``device``, and ``log``, which keeps the value for the member's epoch record."""

    def __init__(self, module: SSLModule, device: torch.device) -> None:
        self.method, self.optim, self.device = module.method, module.optim, device
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: Tensor | float, **options: Any) -> None:
        self.logged[name] = logged_value(value)


class Member:
    """One run of an ensemble: built exactly as :func:`ssl_bench.train.fit.fit` builds it (seeded the same way), with
    its config (``cfg``, and ``plain``: as plain dicts), run directory, loggers and callbacks."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg, self.plain = cfg, cfg.to_container()
        self.run_dir = resolve_run_dir(cfg)
        run = build_run(cfg)
        self.data, self.module = run.data, run.module.to(device)
        self.loggers: list[Any] = []
        self.trainer = MemberRunContext(cfg, self.data, self.loggers, self.run_dir, device)
        self.module.trainer = self.trainer
        self.view = MemberModuleContext(self.module, device)
        self.callbacks = [adapter.callback for adapter in run.callbacks]
        self.optimizers: list[torch.optim.Optimizer] = []
        self.data.trainer = self.trainer
        self.data.setup("fit")

    def start(self) -> None:
        """Write the run directory's ``config.yaml``, open the loggers and build the optimizers (after the
        parameters became views of the ensemble's stacked tensors)."""
        self.session = RunSession(self.cfg, self.run_dir, shared_process=True)
        self.loggers.extend(self.session.loggers)
        self.optimizers = self.module.configure_optimizers()
        self.module.batch_optimizers = self.optimizers
        self.module.use_step_hooks(self.callbacks)
        for callback in self.callbacks:
            callback.setup(self.trainer, self.view, "fit")
        for callback in self.callbacks:
            callback.on_train_start(self.trainer, self.view)

    def end_epoch(self) -> None:
        """The epoch's record, as Lightning writes it for a run: the callbacks' values and the module's epoch
        scalars, with the epoch's index, at the optimizer steps the member has taken (``global_step``)."""
        for callback in self.callbacks:
            callback.on_train_epoch_end(self.trainer, self.view)
        scalars = {**self.view.logged, **{k: logged_value(v) for k, v in self.module.epoch_scalars().items()}}
        self.view.logged.clear()
        if scalars:
            for logger in self.loggers:
                logger.log_metrics({**scalars, "epoch": float(self.trainer.current_epoch)},
                                   step=self.trainer.global_step)

    def end(self, status: str, epochs: int, **ending: Any) -> dict[str, Any]:
        """Run the callbacks' end-of-training work when the run finished, then write ``summary.json`` (``epochs``:
        the epochs completed, as Lightning counts them) and close the loggers."""
        if status == "finished":
            for callback in self.callbacks:
                callback.on_train_end(self.trainer, self.view)
        return self.session.end(status, epochs, ending)


def shape_signature(member: Member) -> tuple[Any, ...]:
    """The shapes that must agree to stack members: every parameter and buffer, and the mini-batches of epoch 0."""
    tensors = [*member.module.named_parameters(), *member.module.named_buffers()]
    batches = member.data.epoch_batches(0)
    return (tuple((name, tuple(t.shape), t.dtype) for name, t in tensors),
            tuple((tuple(v.view1.shape), tuple(v.view2.shape), v.labels is None) for v in batches))


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return module.get_submodule(path), leaf


class Ensemble:
    """Members whose tensors are views of stacked parameters and buffers, and their objective: one batched
    computation (``vmap``, the default on a GPU), or the members' objectives one after another into one backward
    pass (``vmap=False``, the default on a CPU, where a batched computation is no faster than the separate ones and
    ``vmap``'s batching rules cost more than they save)."""

    def __init__(self, members: list[Member], vmap: bool) -> None:
        self.members, self.vmap = members, vmap
        self.template = members[0].module
        modules = [m.module for m in members]
        self.params = {name: nn.Parameter(torch.stack([dict(m.named_parameters())[name].detach() for m in modules]),
                                          requires_grad=p.requires_grad)
                       for name, p in self.template.named_parameters()}
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in modules])
                        for name, _ in self.template.named_buffers()}
        persistent = set(self.template.state_dict(keep_vars=True))
        for k, module in enumerate(modules):
            for name, param in module.named_parameters():
                param.data = self.params[name].data[k]
            for name in self.buffers:
                owner, leaf = _owner(module, name)
                owner.register_buffer(leaf, self.buffers[name][k], persistent=name in persistent)
        self._member_params = {name: [module.get_parameter(name) for module in modules] for name in self.params}
        self._leaves = list(self.params.values()) if vmap else [p for m in modules for p in m.parameters()]
        """The tensors that backward writes gradients to: the stacked parameters, or in a loop the members'."""
        self._wrapped = _Objective(self.template)
        for member in members:
            member.start()
        self.shared = self._shared_optimizers()

    def _shared_optimizers(self) -> list[torch.optim.Optimizer] | None:
        """Under vmap, when every member's optimizers are the same elementwise ones (SGD, AdamW) with the same
        settings: those optimizers over the stacked parameters, whose one step is every member's step; else None
        (each member steps its own)."""
        optims = [json.dumps(m.plain["optim"], sort_keys=True, default=str) for m in self.members]
        first = self.members[0].optimizers
        if not self.vmap or len(set(optims)) > 1 or not all(getattr(o, "elementwise", False) for o in first):
            return None
        name_of = {id(p): name for name, p in self.template.named_parameters()}
        template = self.template
        shared = [build_optimizer(template.optim, [{**group, "params": [self.params[name_of[id(p)]]
                                                                       for p in group["params"]]} for group in groups],
                                  template.peak_lr()) for groups in template.optimizer_groups()]
        for member in self.members:
            member.module.batch_optimizers = shared
        return shared

    def step(self, index: int, progress: float, active: list[int]) -> None:
        """The optimizer step of mini-batch ``index`` at training ``progress``: the shared optimizer's over the
        stacked parameters, or each ``active`` member's own, after setting its learning rate."""
        optimizer_index = self.template.method.optimizer_index(index)
        if self.shared is not None:
            self.template.schedule_lr(self.shared[optimizer_index], progress)
            self.shared[optimizer_index].step()
            return
        for k in active:
            module, optimizer = self.members[k].module, self.members[k].optimizers[optimizer_index]
            module.schedule_lr(optimizer, progress)
            optimizer.step()

    def _member_objective(self, params: dict[str, Tensor], buffers: dict[str, Tensor], index: int, view1: Tensor,
                          view2: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        return functional_call(self._wrapped, ({f"module.{k}": v for k, v in params.items()},
                                               {f"module.{k}": v for k, v in buffers.items()}),
                               (index, Views(view1, view2, labels)))

    def backward(self, index: int, batches: list[Views], active: list[int]) -> Tensor:
        """Every member's loss of mini-batch ``index`` (``batches[k]`` is member k's), and the gradients of the
        totals of the ``active`` members with a finite loss in their parameters' ``grad`` (None where a parameter
        took no part in the step, as in a separate run, so its optimizer leaves it alone)."""
        for param in self._leaves:
            param.grad = None
        if self.vmap:
            losses, totals = self._batched_objective(index, stack_views(batches))
        else:
            losses, totals = (torch.stack(t) for t in zip(*(m.module.objective(index, views)
                                                             for m, views in zip(self.members, batches))))
        mask = torch.zeros(len(self.members), dtype=torch.bool, device=totals.device)
        mask[active] = True
        torch.where(mask & torch.isfinite(losses), totals, torch.zeros_like(totals)).sum().backward()
        if self.vmap and self.shared is None:
            for name, stacked in self.params.items():
                for k, param in enumerate(self._member_params[name]):
                    param.grad = None if stacked.grad is None else stacked.grad[k]
        return losses.detach()

    def _batched_objective(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        in_dims = (0, 0, None, 0, 0, None if views.labels is None else 0)
        return vmap(self._member_objective, in_dims=in_dims)(self.params, self.buffers, index, views.view1,
                                                             views.view2, views.labels)


class _Objective(nn.Module):
    """:meth:`SSLModule.objective` as a module's forward, the form ``functional_call`` calls."""

    def __init__(self, module: SSLModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        return self.module.objective(index, views)


def stack_views(batches: list[Views]) -> Views:
    """One mini-batch of every member, stacked along a new leading member dimension."""
    labels = [v.labels for v in batches]
    return Views(torch.stack([v.view1 for v in batches]), torch.stack([v.view2 for v in batches]),
                 None if labels[0] is None else torch.stack(labels))


def ensemble_device(cfg: RunConfig) -> torch.device:
    """The one device an ensemble trains on; a one-line :class:`ConfigError` for settings an ensemble cannot
    follow (several processes, 16-bit precision, data that streams from a DataLoader)."""
    t = cfg.trainer
    if not hasattr(lookup("data", cfg.data.name), "epoch_batches"):
        raise ConfigError(f"data.name={cfg.data.name} streams batches from a DataLoader; an ensemble trains synthetic "
                          "data drawn a whole epoch at a time (sparse_coding, invertible_mlp); train it without "
                          "--seeds / --ensemble")
    if t.devices * t.num_nodes > 1 or t.strategy != "auto":
        raise ConfigError(f"an ensemble trains in one process on one device (got trainer.devices={t.devices}, "
                          f"trainer.num_nodes={t.num_nodes}, trainer.strategy={t.strategy}); set trainer.devices=1 "
                          "trainer.num_nodes=1 trainer.strategy=auto, or train without --seeds / --ensemble")
    if check_environment(cfg) != "32-true":
        raise ConfigError(f"an ensemble trains in 32-bit precision (trainer.precision={t.precision} resolves to "
                          "mixed precision here); set trainer.precision=32-true, or train without --seeds / --ensemble")
    return torch.device("cuda" if on_gpu(cfg) else "cpu")


def uses_vmap(batching: str, member: Member) -> bool:
    """Whether ``batching`` (``vmap``, ``loop`` or ``auto``) batches ``member``'s ensemble with vmap: ``auto`` does
    on a GPU for a method that is ``batchable``; ``vmap`` with one that is not is a one-line :class:`ConfigError`."""
    method = member.module.method
    if batching == "vmap" and not method.batchable:
        raise ConfigError(f"method.name={member.cfg.method.name} cannot be batched with vmap (its training loss is "
                          "not a function of parameters and views alone); use batching=loop")
    return batching == "vmap" or (batching == "auto" and member.view.device.type == "cuda" and method.batchable)


def fit_ensemble(cfgs: list[RunConfig], batching: str = "auto") -> list[dict[str, Any]]:
    """Train the runs ``cfgs`` as ensembles, grouped by :func:`ssl_bench.config.ensemble_key` and
    :func:`shape_signature` (and with vmap by the method's config but the values it holds in buffers, such as SimCLR's
    temperature, since vmap runs the first member's code for all), one ensemble after another; return their summaries in
    the order of ``cfgs``.

    Every member's run directory ends as :func:`ssl_bench.train.fit.fit` would leave it, without checkpoints: its
    summary says ``finished``, ``diverged`` (at the step where its loss stopped being finite) or ``interrupted``
    (SIGINT, SIGTERM, or SIGUSR1 at the end of an epoch; ``resume`` is None: the run starts again from scratch) or
    ``failed``. ``batching``: ``vmap``, ``loop`` or ``auto`` (vmap on a GPU, loop on a CPU; see :class:`Ensemble`)."""
    groups: dict[Any, list[int]] = {}
    devices = [ensemble_device(cfg) for cfg in cfgs]  # every config checked before anything is built or written
    members: list[Member] = []
    for i, (cfg, device) in enumerate(zip(cfgs, devices)):
        member = Member(cfg, device)
        members.append(member)
        plain = member.plain
        batched = uses_vmap(batching, member)
        buffers = dict(member.module.method.named_buffers())  # a value held in a buffer is each member's own
        method = json.dumps({k: v for k, v in plain["method"].items() if k not in buffers}, sort_keys=True) \
            if batched else None  # vmap runs the first member's code
        groups.setdefault((ensemble_key(plain), shape_signature(member), method), []).append(i)
    summaries: dict[int, dict[str, Any]] = {}
    for indices in groups.values():
        for i, summary in zip(indices, train([members[i] for i in indices], batching)):
            summaries[i] = summary
    return [summaries[i] for i in range(len(cfgs))]


def train(members: list[Member], batching: str = "auto") -> list[dict[str, Any]]:
    """Train ``members`` (one ensemble: same key and shapes) to the end; return their summaries."""
    cfg = members[0].cfg
    torch.set_num_threads(cfg.trainer.threads)
    if cfg.trainer.deterministic:  # as Lightning's Trainer(deterministic=True) does
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    stop_requests: list[int] = []
    summaries: dict[int, dict[str, Any]] = {}
    active, completed = list(range(len(members))), 0
    bar = tqdm(total=cfg.trainer.max_epochs, desc=f"ensemble of {len(members)}", unit="epoch", dynamic_ncols=True,
               file=sys.stdout, mininterval=0.5, disable=cfg.trainer.progress == "none")
    try:
        ensemble = Ensemble(members, vmap=uses_vmap(batching, members[0]))
        with stop_on_signals(lambda signum, frame: stop_requests.append(signum)):
            for epoch in range(cfg.trainer.max_epochs):
                for member in members:
                    member.trainer.current_epoch = epoch
                active = train_epoch(ensemble, epoch, active, summaries)
                completed = epoch + 1  # counted before its records, so no summary leaves out an epoch it logged
                for k in active:
                    members[k].end_epoch()
                release_free_heap()
                bar.update(1)
                if not active:
                    break
                if stop_requests and completed < cfg.trainer.max_epochs:
                    raise Interrupted(signal.SIGUSR1)
        for k in active:
            summaries[k] = members[k].end("finished", completed)
    except Interrupted as err:
        for k in active:
            summaries[k] = members[k].end("interrupted", completed, signal=err.signal, resume=None)
    except BaseException:
        for k in active:
            if k not in summaries and members[k].loggers:  # started: its run directory exists
                summaries[k] = members[k].end("failed", completed)
        raise
    finally:
        bar.close()
    return [summaries[k] for k in range(len(members))]


def train_epoch(ensemble: Ensemble, epoch: int, active: list[int], summaries: dict[int, dict[str, Any]]
                ) -> list[int]:
    """One epoch of every member: each draws its epoch, then every mini-batch is one batched objective, one
    backward pass and each active member's own optimizer step. Returns the members still active (a member whose
    loss is not finite ends ``diverged`` before that step, as a separate run would)."""
    members = ensemble.members
    batches = [m.data.epoch_batches(epoch) for m in members]
    count = len(batches[0])
    for index in range(count):
        progress = ensemble.template.progress(0, index, count)
        losses = ensemble.backward(index, [b[index] for b in batches], active)
        finite = torch.isfinite(losses).tolist()
        for k in [k for k in active if not finite[k]]:
            member = members[k]
            step = dict(epoch=epoch, step=member.trainer.global_step, loss=json_value(float(losses[k])))
            summaries[k] = member.end("diverged", epoch, diverged=step)
        active = [k for k in active if finite[k]]
        if not active:
            break
        ensemble.step(index, progress, active)
        for k in active:
            member = members[k]
            member.trainer.global_step += 1
            member.module.after_step(index, progress, losses[k])
    return active
