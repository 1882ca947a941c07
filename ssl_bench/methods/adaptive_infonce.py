"""InfoNCE with a temperature per embedding dimension or group of dimensions (Rusak et al. 2022, seed 004)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.config import ConfigError
from ssl_bench.losses import nt_xent, standardize
from ssl_bench.methods.base import SSLMethod


class AdaptiveInfoNCE(SSLMethod):
    """NT-Xent with ``s_ij = sum_k u_ik u_jk / tau_k`` (seed 004, Sec. 3: different ``tau`` for content and style;
    Sec. 4.2 on CIFAR-10: ``tau = 1`` on one half of the dimensions and ``0.7`` on the other).

    ``temperatures`` holds one value per group; ``groups`` their sizes (None: equal contiguous groups). With
    ``learn_temperature`` the groups' ``log tau`` are trained with the network. ``u`` is ``n(z)`` (l2-normalised) when
    ``normalize``, else ``z``; ``standardize`` first maps every dimension to zero mean and unit variance over the
    batch (:func:`ssl_bench.losses.standardize`), the "w/o normalisation" rows of seed 004's Table 2.
    """

    def __init__(self, *args, embedding_dim: int, temperatures: list[float], groups: list[int] | None = None,
                 learn_temperature: bool = False, normalize: bool = True, standardize: bool = False,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if groups is None:
            if embedding_dim % len(temperatures):
                raise ConfigError(f"the embedding width {embedding_dim} does not split into {len(temperatures)} "
                                  "equal groups; set method.temperature_groups")
            groups = [embedding_dim // len(temperatures)] * len(temperatures)
        if sum(groups) != embedding_dim:
            raise ConfigError(f"method.temperature_groups={groups} sums to {sum(groups)} but the embedding has "
                              f"{embedding_dim} dimensions")
        self.register_buffer("group_sizes", torch.tensor(groups), persistent=False)
        self.log_temperatures = nn.Parameter(torch.tensor(temperatures).log(), requires_grad=learn_temperature)
        self.normalize, self.standardize = normalize, standardize

    @property
    def temperatures(self) -> Tensor:
        """Per-dimension temperatures ``tau_k`` (m)."""
        return self.log_temperatures.exp().repeat_interleave(self.group_sizes)

    def parameter_groups(self) -> list[list[dict[str, Any]]]:
        """The temperatures get no weight decay and no LARS scaling."""
        [groups] = super().parameter_groups()
        groups[0]["params"] = [p for p in groups[0]["params"] if p is not self.log_temperatures]
        return [groups + [dict(params=[self.log_temperatures], weight_decay=0.0, lars_exclude=True)]]

    def training_loss(self, index: int, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        f1, f2 = self.encoder(view1), self.encoder(view2)
        z1, z2 = self.projector(f1), self.projector(f2)
        if self.standardize:
            z1, z2 = standardize(z1), standardize(z2)
        return nt_xent(z1, z2, self.temperatures, normalize=self.normalize), f1

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for k, tau in enumerate(self.log_temperatures.detach().exp()):
            self.log(f"train/temperature_{k}", tau)
