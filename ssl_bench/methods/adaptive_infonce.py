"""InfoNCE with a temperature per embedding dimension or group of dimensions (Rusak et al. 2022)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ssl_bench.config import ConfigError, MethodConfig, check_positive
from ssl_bench.losses import nt_xent, standardize
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import ProjectorKeys
from ssl_bench.registry import register
from ssl_bench.views import Views


@register("method", "adaptive_infonce")
class AdaptiveInfoNCE(Method):
    """NT-Xent with ``s_ij = sum_k u_ik u_jk / tau_k`` (Rusak et al. 2022, Sec. 3: different ``tau`` for content and
    style; Sec. 4.2 on CIFAR-10: ``tau = 1`` on one half of the dimensions and ``0.7`` on the other).

    ``temperatures`` holds one value per group; ``groups`` their sizes (None: equal contiguous groups). With
    ``learn_temperature`` the groups' ``log tau`` are trained with the network. ``u`` is ``n(z)`` (l2-normalized) when
    ``normalize``, else ``z``; ``standardize`` first maps every dimension to zero mean and unit variance over the
    batch (:func:`ssl_bench.losses.standardize`), the "w/o normalization" rows of Rusak et al.'s Table 2.
    ``temperatures=null`` uses the single ``temperature``.
    """

    @dataclass
    class Config(ProjectorKeys, MethodConfig):
        temperature: float = 1.0
        temperatures: Optional[list[float]] = None
        temperature_groups: Optional[list[int]] = None
        learn_temperature: bool = False
        normalize: bool = True
        standardize: bool = False

        @property
        def group_temperatures(self) -> list[float]:
            return list(self.temperatures) if self.temperatures is not None else [self.temperature]

        def validate(self, prefix: str) -> None:
            self.validate_projector(prefix)
            check_positive(f"{prefix}.temperature", self.temperature)
            if self.temperatures is not None:
                if not self.temperatures:
                    raise ConfigError(f"{prefix}.temperatures is empty; give one value per group, e.g. [1.0,0.7]")
                for value in self.temperatures:
                    check_positive(f"{prefix}.temperatures", value)
            if self.temperature_groups is not None:
                if self.temperatures is None or len(self.temperature_groups) != len(self.temperatures):
                    raise ConfigError(f"{prefix}.temperature_groups needs one size per entry of "
                                      f"{prefix}.temperatures")
                for size in self.temperature_groups:
                    check_positive(f"{prefix}.temperature_groups", size)

        def validate_embedding(self, prefix: str, width: int) -> None:
            self.groups(self.embedding_dim(width), prefix)

        def groups(self, embedding_dim: int, prefix: str = "method") -> list[int]:
            """The sizes of the temperature groups: ``temperature_groups``, or equal contiguous groups."""
            count = len(self.group_temperatures)
            if self.temperature_groups is None:
                if embedding_dim % count:
                    raise ConfigError(f"the embedding width {embedding_dim} does not split into {count} equal "
                                      f"groups; set {prefix}.temperature_groups")
                return [embedding_dim // count] * count
            if sum(self.temperature_groups) != embedding_dim:
                raise ConfigError(f"{prefix}.temperature_groups={list(self.temperature_groups)} sums to "
                                  f"{sum(self.temperature_groups)} but the embedding has {embedding_dim} dimensions")
            return list(self.temperature_groups)

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder, projector=config.make_projector(width))
        groups = config.groups(config.embedding_dim(width))
        self.register_buffer("group_sizes", torch.tensor(groups), persistent=False)
        self.log_temperatures = nn.Parameter(torch.tensor(config.group_temperatures).log(),
                                             requires_grad=config.learn_temperature)
        self.normalize, self.standardize = config.normalize, config.standardize

    @property
    def temperatures(self) -> Tensor:
        """Per-dimension temperatures ``tau_k`` (m)."""
        return self.log_temperatures.exp().repeat_interleave(self.group_sizes)

    def parameter_groups(self) -> list[list[dict[str, Any]]]:
        """The temperatures get no weight decay and no LARS scaling."""
        [groups] = super().parameter_groups()
        groups[0]["params"] = [p for p in groups[0]["params"] if p is not self.log_temperatures]
        return [groups + [dict(params=[self.log_temperatures], weight_decay=0.0, lars_exclude=True)]]

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(views.view1), self.encoder(views.view2)
        z1, z2 = self.projector(f1), self.projector(f2)
        if self.standardize:
            z1, z2 = standardize(z1), standardize(z2)
        return nt_xent(z1, z2, self.temperatures, normalize=self.normalize), f1

    def epoch_metrics(self) -> dict[str, float | Tensor]:
        return {f"train/temperature_{k}": tau for k, tau in enumerate(self.log_temperatures.detach().exp())}
