"""InfoNCE with a temperature per embedding dimension or group of dimensions, cosine or l_p (Rusak et al. 2022)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import ConfigError, MethodConfig, check_choice, check_positive
from ssl_bench.methods.base import Method
from ssl_bench.nets.heads import ProjectorKeys
from ssl_bench.ops.losses import InfoNCETerms, lp_info_nce, nt_xent_terms, standardize
from ssl_bench.registry import register


@register("method", "adaptive_infonce")
class AdaptiveInfoNCE(Method):
    """NT-Xent with ``s_ij = sum_k u_ik u_jk / tau_k`` (Rusak et al. 2022, Sec. 3: different ``tau`` for content and
    style; Sec. 4.2 on CIFAR-10: ``tau = 1`` on one half of the dimensions and ``0.7`` on the other).

    ``temperatures`` holds one value per group; ``groups`` their sizes (None: equal contiguous groups). With
    ``learn_temperature`` the groups' ``log tau`` are trained with the network. ``u`` is ``n(z)`` (l2-normalized) when
    ``normalize``, else ``z``; ``standardize`` first maps every dimension to zero mean and unit variance over the
    batch (:func:`ssl_bench.ops.losses.standardize`), the "w/o normalization" rows of Rusak et al.'s Table 2.
    ``temperatures=null`` uses the single ``temperature``.

    ``similarity=lp`` uses the l_p InfoNCE of the box and R^d latents instead (:func:`ssl_bench.ops.losses.lp_info_nce`,
    Rusak et al. 2022, Eq. 4; Zimmermann et al. 2021): ``s(a, b) = -sum_k |a_k - b_k|^p / tau_k``, anchors ``view1``,
    positives ``view2``, negatives the other anchors; ``p`` is read only by lp. ``normalize=null`` means true for
    cosine and false for lp; an explicit ``normalize=true`` with lp measures l_p distances between l2-normalized
    embeddings (``standardize`` applies before either similarity). The rows of
    Rusak et al.'s setting put ``tau_c`` on the first ``n_content`` dimensions and ``tau_s`` on the rest:
    ``temperatures=[tau_c, tau_s]``, ``temperature_groups=[n_content, m - n_content]``.

    Logged per epoch (means over the steps since the last log): ``train/alignment`` and ``train/uniformity``, the
    summands of the loss (:class:`ssl_bench.ops.losses.InfoNCETerms`), and the temperatures.
    """

    @dataclass
    class Config(ProjectorKeys, MethodConfig):
        temperature: float = 1.0
        temperatures: Optional[list[float]] = None
        temperature_groups: Optional[list[int]] = None
        learn_temperature: bool = False
        normalize: Optional[bool] = None
        standardize: bool = False
        similarity: str = "cosine"
        p: float = 2.0

        @property
        def group_temperatures(self) -> list[float]:
            return list(self.temperatures) if self.temperatures is not None else [self.temperature]

        @property
        def normalizes(self) -> bool:
            """Whether embeddings are l2-normalized: ``normalize``, or by default only for the cosine similarity."""
            return self.similarity == "cosine" if self.normalize is None else self.normalize

        def validate(self, prefix: str) -> None:
            self.validate_projector(prefix)
            check_choice(f"{prefix}.similarity", self.similarity, ("cosine", "lp"))
            check_positive(f"{prefix}.p", self.p)
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

    batchable = False  # it sums the loss's terms across steps, and the groups' sizes set the temperatures' shape

    def __init__(self, config: Config, make_encoder: Callable[[], nn.Module], width: int) -> None:
        super().__init__(config, make_encoder, projector=config.make_projector(width))
        groups = config.groups(config.embedding_dim(width))
        self.register_buffer("group_sizes", torch.tensor(groups), persistent=False)
        self.log_temperatures = nn.Parameter(torch.tensor(config.group_temperatures).log(),
                                             requires_grad=config.learn_temperature)
        self.normalize, self.standardize = config.normalizes, config.standardize
        self.similarity, self.p = config.similarity, config.p
        self._term_sums: Tensor | None = None
        self._term_steps = 0

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
        terms = self.loss_terms(z1, z2)
        summands = torch.stack([terms.alignment, terms.uniformity]).detach()
        self._term_sums = summands if self._term_sums is None else self._term_sums + summands
        self._term_steps += 1
        return terms.loss, f1

    def loss_terms(self, z1: Tensor, z2: Tensor) -> InfoNCETerms:
        """The loss of the embeddings ``z1``, ``z2`` (after standardization) with its alignment and uniformity."""
        if self.similarity == "lp":
            if self.normalize:
                z1, z2 = nn.functional.normalize(z1, dim=1), nn.functional.normalize(z2, dim=1)
            return lp_info_nce(z1, z2, self.temperatures, p=self.p)
        return nt_xent_terms(z1, z2, self.temperatures, normalize=self.normalize)

    def epoch_metrics(self) -> dict[str, float | Tensor]:
        metrics: dict[str, float | Tensor] = {f"train/temperature_{k}": tau
                                              for k, tau in enumerate(self.log_temperatures.detach().exp())}
        if self._term_sums is not None:
            alignment, uniformity = (self._term_sums / self._term_steps).unbind()
            metrics.update({"train/alignment": alignment, "train/uniformity": uniformity})
            self._term_sums, self._term_steps = None, 0
        return metrics
