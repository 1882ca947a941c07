"""Optimizers (SGD, LARS, AdamW) over parameter groups, each registered with its config, and the warmup + cosine
learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ssl_bench.config import (
    ConfigError,
    OptimConfig,
    check_non_negative,
    check_positive,
)
from ssl_bench.registry import lookup, register


@register("optim", "sgd")
class SGD(torch.optim.SGD):
    """torch's SGD with momentum and (coupled) weight decay."""

    elementwise = True
    """Each entry's update depends on that entry alone: one step over stacked tensors is every slice's own step."""

    @dataclass
    class Config(OptimConfig):
        momentum: float = 0.0

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_non_negative(f"{prefix}.momentum", self.momentum)

    @classmethod
    def from_config(cls, config: Config, groups: list[dict[str, Any]], lr: float) -> SGD:
        return cls(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


@register("optim", "adamw")
class AdamW(torch.optim.AdamW):
    """torch's AdamW (decoupled weight decay)."""

    elementwise = True

    @dataclass
    class Config(OptimConfig):
        betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
                raise ConfigError(f"{prefix}.betas={list(self.betas)} must be two values in [0, 1), e.g. "
                                  "[0.9,0.999]")

    @classmethod
    def from_config(cls, config: Config, groups: list[dict[str, Any]], lr: float) -> AdamW:
        return cls(groups, lr=lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


@register("optim", "lars")
class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017, Alg. 1).

    For every parameter ``w`` with gradient ``g`` not excluded by its group's ``lars_exclude`` or (with
    ``exclude_bias_and_norm``) being one-dimensional: ``g <- g + wd w``, then ``g <- eta ||w|| / ||g|| * g`` (the
    trust ratio, capped at 1 with ``clip``, i.e. the local lr never exceeds the global one); excluded parameters get
    neither weight decay nor the trust ratio. Then ``v <- m v + g``, ``w <- w - lr v``.
    """

    elementwise = False  # the trust ratio divides whole-tensor norms

    @dataclass
    class Config(OptimConfig):
        momentum: float = 0.9
        lars_eta: float = 0.02
        lars_clip: bool = True
        exclude_bias_and_norm: bool = True

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_non_negative(f"{prefix}.momentum", self.momentum)
            check_positive(f"{prefix}.lars_eta", self.lars_eta)

    @classmethod
    def from_config(cls, config: Config, groups: list[dict[str, Any]], lr: float) -> LARS:
        return cls(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, eta=config.lars_eta,
                   clip=config.lars_clip, exclude_bias_and_norm=config.exclude_bias_and_norm)

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, clip: bool = True, exclude_bias_and_norm: bool = True) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip,
                                      exclude_bias_and_norm=exclude_bias_and_norm, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                excluded = group["lars_exclude"] or (group["exclude_bias_and_norm"] and w.ndim == 1)
                if not excluded:
                    g = g.add(w, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    if group["clip"]:
                        ratio = ratio.clamp(max=1.0)
                    g = g.mul(ratio)
                if group["momentum"]:
                    state = self.state[w]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(g).detach()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                    g = state["momentum_buffer"]
                w.add_(g, alpha=-group["lr"])
        return loss


def build_optimizer(cfg: OptimConfig, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The optimizer registered as ``cfg.name`` over ``groups``; each group's ``base_lr`` (default ``lr``) is its
    peak."""
    for group in groups:
        group.setdefault("base_lr", lr)
        group["lr"] = group["base_lr"]
    return lookup("optim", cfg.name).from_config(cfg, groups, lr)


def probe_group(probe: nn.Module, cfg: OptimConfig) -> dict[str, Any]:
    """The online probe's parameter group: its own learning rate, no weight decay, outside LARS."""
    return dict(params=list(probe.parameters()), base_lr=cfg.probe_lr, weight_decay=0.0, lars_exclude=True)


def warmup_cosine(progress: float, warmup: float, min_ratio: float = 0.0) -> float:
    """Learning-rate factor at training progress ``progress`` in [0, 1]: ``progress / warmup`` during the warmup
    fraction, then ``r + (1 - r) (1 + cos(pi t)) / 2`` with ``t`` the progress after warmup rescaled to [0, 1] and
    ``r = min_ratio`` (Loshchilov & Hutter 2017; Goyal et al. 2017 for the warmup)."""
    if progress < warmup:
        return progress / warmup
    t = min(1.0, (progress - warmup) / (1.0 - warmup)) if warmup < 1 else 1.0
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_momentum(progress: float, start: float, end: float) -> float:
    """BYOL's target momentum ``tau = end - (end - start) (cos(pi k / K) + 1) / 2`` at progress ``k / K``
    (Grill et al. 2020, Sec. 3.2)."""
    return end - (end - start) * (math.cos(math.pi * min(progress, 1.0)) + 1.0) / 2.0
