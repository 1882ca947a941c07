"""Weights & Biases logging that never fails or stalls a run: online when W&B answers, offline otherwise.

``logger.mode``: ``offline`` logs offline; ``online`` and ``auto`` (the default) try W&B once, ``auto`` only when
``WANDB_MODE`` is not ``offline``, ``dryrun`` or ``disabled``. The single online attempt waits at most
``logger.init_timeout`` (T seconds) in all, plus wandb's own second or so of start-up (and, only when wandb's output
is turned on with ``WANDB_SILENT=false``, its account look-up for the "logged in" message, at most 2 x 5 s):

1. without credentials (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or the server's netrc entry written by
   ``wandb login``) the run logs offline at once, and no request is made;
2. the W&B server (``WANDB_BASE_URL``, else wandb's default) must answer an HTTP request within T: a refused
   connection or an unknown host means offline at once, silence means offline after T;
3. ``wandb.init`` then gets the rest of T (at least 1 s) as its ``init_timeout``; if it fails (a stale key, a
   server error, no answer in time), its half-started run is torn down (``wandb.teardown``) and its directory
   removed, and the run logs offline.

An offline run prints one line: why, and the ``wandb sync`` command that uploads it later. Once offline, wandb
stays offline for the rest of the process, and wandb's error reporting is off unless ``WANDB_ERROR_REPORTING`` is
set: both would otherwise make the process wait for the unanswering server at exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ssl_bench.config import LoggerConfig, RunConfig
from ssl_bench.rundir import replace_text, wandb_id_file
from ssl_bench.wandb_server import wandb_answers, wandb_has_credentials

__all__ = ["BoundedWandbLogger", "make_wandb_logger", "start_wandb_run",
           "wandb_run_id"]


def _offline_reason(config: LoggerConfig, base_url: str) -> str | None:
    """Why the run logs offline without trying W&B, or None to try once."""
    if config.mode == "offline":
        return "logger.mode=offline"
    env_mode = os.environ.get("WANDB_MODE", "")
    if config.mode == "auto" and env_mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={env_mode}"
    if not wandb_has_credentials(base_url):
        return f"no W&B credentials for {base_url}: set WANDB_API_KEY or run `wandb login`"
    return None


def start_wandb_run(init: dict[str, Any], config: LoggerConfig, save_dir: Path) -> Any:
    """Start the W&B run (``wandb.init(**init)``, files under ``save_dir / "wandb"``) with at most one online
    attempt, bounded by ``config.init_timeout``; offline when that is impossible or fails (see the module doc)."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # else a failed start reports to the server at exit
    base_url = wandb.setup().settings.base_url
    deadline = time.monotonic() + config.init_timeout
    reason = _offline_reason(config, base_url)
    if reason is None:
        reason = wandb_answers(base_url, config.init_timeout)
    if reason is None:
        wandb_dir = save_dir / "wandb"
        before = set(wandb_dir.glob("run-*"))
        try:
            left = max(deadline - time.monotonic(), 1.0)
            return wandb.init(mode="online", dir=str(save_dir), settings=wandb.Settings(init_timeout=left), **init)
        except Exception as err:  # noqa: BLE001  (whatever stops W&B from starting the run means: log offline)
            reason = f"W&B did not start the run: {next(iter(str(err).splitlines()), '') or type(err).__name__}"
            with contextlib.suppress(Exception, SystemExit):  # a service that ends badly must not end the fit
                wandb.teardown()  # frees the half-started run held by wandb's service process
            for path in set(wandb_dir.glob("run-*")) - before:
                shutil.rmtree(path, ignore_errors=True)
    # offline for the whole process too, so wandb's own usage telemetry does not wait on the server at exit
    wandb.setup(wandb.Settings(mode="offline"))
    run = wandb.init(mode="offline", dir=str(save_dir), **init)
    print(f"ssl-bench: W&B logs offline ({reason}); upload later with: wandb sync {run.settings.sync_dir}",
          file=sys.stderr, flush=True)
    return run


class BoundedWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose run is started by ``start_wandb_run`` (at most one online attempt, bounded
    by ``logger.init_timeout``, else offline) with exactly the given ``wandb.init`` arguments, instead of Lightning's
    own ``wandb.init`` call, which adds ``anonymous=None`` (deprecated: wandb warns about it on every run). As in
    Lightning, the run starts on first use and only on global rank 0 (the other ranks get a no-op experiment). The
    logger holds its run itself (:attr:`run`, :attr:`started`): a copy pickled into a process spawned for DDP
    (``ddp_spawn``) holds none, so the spawned rank-0 process starts the run. The run's id comes from
    :func:`wandb_run_id` when the run starts, so only the process that starts it reads or writes the id file."""

    def __init__(self, init: dict[str, Any], config: LoggerConfig, save_dir: Path, resuming: bool = False) -> None:
        super().__init__(name=init["name"], save_dir=str(save_dir), project=init["project"])
        self._start_args = (init, config, Path(save_dir))
        self._resuming = resuming
        self.run: Any = None
        """The W&B run this logger started; None before its first use and in every process but global rank 0."""

    @property
    def started(self) -> bool:
        """Whether this logger started a W&B run (which :meth:`~ssl_bench.train.session.RunSession.end` then
        finishes)."""
        return self.run is not None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self.run is None:
            init, config, save_dir = self._start_args
            run = start_wandb_run({**init, "id": wandb_run_id(save_dir, self._resuming)}, config, save_dir)
            # as WandbLogger does for the runs it starts: metrics are plotted against the trainer's global step
            run.define_metric("trainer/global_step")
            run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
            self.run = run
        return self.run

    def __getstate__(self) -> dict[str, Any]:
        """The logger without its run (which cannot be pickled), and without starting one as Lightning's does."""
        return {**self.__dict__, "run": None}


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of the run in ``run_dir``, kept in ``run_dir/wandb/id.txt``: a resumed run (a requeued SLURM
    task, ``trainer.resume``) continues the W&B run its checkpoint's run started, so its history stays one run; a
    run started from scratch gets a new id, even in a directory that held another run (which W&B would otherwise
    continue, and whose later steps would hide the new run's)."""
    path = wandb_id_file(run_dir)
    if resuming and path.is_file():
        run_id = path.read_text(encoding="utf-8").strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(6)  # W&B ids are letters and digits
    replace_text(path, run_id + "\n")
    return run_id


def make_wandb_logger(cfg: RunConfig, run_dir: Path, resuming: bool = False, shared_process: bool = False
                      ) -> WandbLogger:
    """The run's W&B logger: files under ``run_dir/wandb``, the run's group, name ``GROUP/seedS``, tags (experiment,
    method, data, ``logger.tags``) and config (``config.yaml``); online or offline as the module doc says. A run
    ``resuming`` from a checkpoint continues its W&B run (same id, ``resume="allow"``: W&B starts it anew if it never
    reached the server; see :func:`wandb_run_id`). With ``shared_process`` the run is one of several that this
    process logs at once (an ensemble's members: ``reinit="create_new"``)."""
    init: dict[str, Any] = dict(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.resolved_group,
                                name=f"{cfg.resolved_group}/seed{cfg.seed}",
                                tags=list(dict.fromkeys([cfg.experiment, cfg.method.name, cfg.data.name,
                                                         *cfg.logger.tags])),
                                config=cfg.to_container(), **({"resume": "allow"} if resuming else {}),
                                **({"reinit": "create_new"} if shared_process else {}))
    return BoundedWandbLogger(init, cfg.logger, run_dir, resuming)
