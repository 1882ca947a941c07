"""BYOL-style non-contrastive learning with an online and a target network (Grill et al. 2020; Pokle et al. 2022,
Eqs. 4-5)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ssl_bench.batch import Views
from ssl_bench.config import ConfigError, MethodConfig, check_choice, check_range
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import PredictorKeys, ProjectorKeys
from ssl_bench.ops.losses import normalized_mse
from ssl_bench.optim import cosine_momentum
from ssl_bench.registry import register


@register("method", "byol")
class BYOL(Method):
    """Online ``g_o(f_o)``, target ``g_t(f_t)``, optional predictor ``h``; loss ``2 - 2 cos`` (Pokle et al. 2022,
    Eq. 4).

    ``target_update``:

    - ``ema`` (BYOL): the target starts as a copy of the online network and follows
      ``theta_t <- tau theta_t + (1 - tau) theta_o`` after every optimizer step, with ``tau`` rising from
      ``ema_momentum`` to ``ema_momentum_end`` on a cosine over training (Grill et al. 2020, Sec. 3.2; constant
      when ``ema_momentum_end`` is None). The schedule is a function of the training progress, so it continues
      exactly after a resume. The loss is symmetrised over the two views.
    - ``alternate`` (Pokle et al. 2022): ``f_t`` is initialized independently and trained by its own SGD; mini-batches
      alternate, starting each epoch with the online step ``normalized_mse(h(f_o(a1)), sg(f_t(a2)))`` and then the
      target step ``normalized_mse(h(f_t(a2)), sg(f_o(a1)))``. The predictor, if any, acts on the branch being
      updated and is trained on both steps, as in the official code (the text's Eq. 5 puts it on the online branch).
    """

    @dataclass
    class Config(ProjectorKeys, PredictorKeys, MethodConfig):
        target_update: str = "alternate"
        ema_momentum: float = 0.99
        ema_momentum_end: Optional[float] = None

        def validate(self, prefix: str) -> None:
            self.validate_projector(prefix)
            self.validate_predictor(prefix)
            check_choice(f"{prefix}.target_update", self.target_update, ("alternate", "ema"))
            for key in ("ema_momentum", "ema_momentum_end"):
                if getattr(self, key) is not None:
                    check_range(f"{prefix}.{key}", getattr(self, key), 0, 1)
            if self.target_update == "alternate" and self.projector != "none":
                raise ConfigError(f"{prefix}.projector={self.projector} needs {prefix}.target_update=ema; the "
                                  "alternating updates of Pokle et al. 2022 have no projector")

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        projector = config.make_projector(width)
        super().__init__(config, make_encoder, projector=projector,
                         predictor=config.make_predictor(config.embedding_dim(width)))
        self.target_update, self.ema_momentum = config.target_update, config.ema_momentum
        self.find_unused_parameters = self.target_update == "alternate"
        self.ema_momentum_end = self.ema_momentum if config.ema_momentum_end is None else config.ema_momentum_end
        self.target = make_encoder() if self.target_update == "alternate" else copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        if self.target_update == "ema":
            self.target.requires_grad_(False)
            self.target_projector.requires_grad_(False)
        self.momentum = self.ema_momentum

    def online_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.projector.parameters(), *self.predictor.parameters()]

    def parameter_groups(self) -> list[list[dict[str, Any]]]:
        if self.target_update == "ema":
            return [[dict(params=self.online_parameters())]]
        heads = list(self.predictor.parameters())
        return [[dict(params=self.online_parameters())], [dict(params=[*self.target.parameters(), *heads])]]

    def optimizer_index(self, index: int) -> int:
        return index % 2 if self.target_update == "alternate" else 0

    def _pair_loss(self, trained: nn.Module, other: nn.Module, trained_view: Tensor, other_view: Tensor,
                   trained_head: nn.Module, other_head: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """The loss of ``trained`` against ``sg(other)``, and both encoders' features."""
        with torch.no_grad():
            other_features = other(other_view)
        features = trained(trained_view)
        loss = normalized_mse(self.predictor(trained_head(features)), other_head(other_features))
        return loss, features, other_features

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        view1, view2 = views.view1, views.view2
        if self.target_update == "alternate" and index % 2 == 1:
            loss, _, online_features = self._pair_loss(self.target, self.encoder, view2, view1,
                                                       self.target_projector, self.projector)
            return loss, online_features
        loss, features, _ = self._pair_loss(self.encoder, self.target, view1, view2, self.projector,
                                            self.target_projector)
        if self.target_update == "alternate":
            return loss, features
        mirrored, _, _ = self._pair_loss(self.encoder, self.target, view2, view1, self.projector,
                                         self.target_projector)
        return loss + mirrored, features

    def after_optimizer_step(self, index: int, progress: float) -> None:
        super().after_optimizer_step(index, progress)
        if self.target_update != "ema":
            return
        self.momentum = cosine_momentum(progress, self.ema_momentum, self.ema_momentum_end)
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        target = [*self.target.parameters(), *self.target_projector.parameters()]
        get_ema_multi_avg_fn(self.momentum)(target, online, None)

    def epoch_metrics(self) -> dict[str, float | Tensor]:
        return {"train/ema_momentum": self.momentum} if self.target_update == "ema" else {}
