"""Weights & Biases logging that never fails a run: online when it can be, offline otherwise."""

from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L

from ssl_bench.config import RunConfig


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(cfg: RunConfig, run_dir: Path) -> L.pytorch.loggers.Logger:
    """W&B online when credentials exist (``logger.mode=auto``), offline otherwise or when going online fails."""
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    online = cfg.logger.mode == "online" or (cfg.logger.mode == "auto" and wandb_has_credentials()
                                             and os.environ.get("WANDB_MODE") != "offline")
    kwargs: dict[str, Any] = dict(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.resolved_group,
                                  name=f"{cfg.resolved_group}/seed{cfg.seed}",
                                  tags=list(dict.fromkeys([cfg.experiment, cfg.method.name, cfg.data.name,
                                                           *cfg.logger.tags])),
                                  save_dir=str(run_dir), config=cfg.to_container())
    if online:
        try:
            logger = WandbLogger(offline=False, **kwargs)
            logger.experiment  # noqa: B018  (starts the run now, so a network failure falls back below)
            return logger
        except Exception as err:  # noqa: BLE001  (any failure to reach W&B means: log offline instead)
            warnings.warn(f"W&B online logging failed ({err}); logging offline to {run_dir / 'wandb'}")
    return WandbLogger(offline=True, **kwargs)
