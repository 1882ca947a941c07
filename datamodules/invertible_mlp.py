"""Latents through an invertible MLP (Zimmermann et al. 2021), with content and style (von Kugelgen et al. 2021).

Data: ``x = g(z)`` with latents ``z`` on the box ``[0, 1]^d``, the sphere ``S^(d-1)`` or ``R^d``, drawn from a marginal
``p(z)``, and a frozen mixing ``g``: one square matrix (``mixing=linear``) or ``L`` bias-free square layers with
LeakyReLU(0.2) between them, ``g(z) = W_L s(... s(W_1 z))``. Each ``W_l`` has entries uniform in (-1, 1), unit-norm
columns, and is drawn again until its condition number is at most a threshold: the ``condition_quantile`` quantile of
the condition numbers of ``condition_draws`` such matrices. ``g^-1(x) = W_1^-1 s^-1(... s^-1(W_L^-1 x))`` exactly.

Positive pairs ``(g(z), g(z~))`` with ``z~ ~ p(z~ | z)``: the first ``n_content`` latents (content) are unchanged; each
style latent changes with probability ``style_change_prob``, perturbed by normal, Laplace or generalized-normal noise of
scale ``style_scale`` (kept inside the box by per-coordinate rejection; on the sphere the changing coordinates are
moved on their sub-sphere of radius ``sqrt(1 - |z_fixed|^2)`` and projected back onto it) or, on the sphere, by a von
Mises-Fisher step of concentration ``kappa = style_scale`` on that sub-sphere. Negatives are the other pairs of the
batch (cl-ica rolls the batch), so every mini-batch is drawn fresh: epoch k is ``steps_per_epoch`` mini-batches drawn
on the device by a generator seeded with (seed, k).

Noise scales: normal ``N(0, s^2)``; Laplace ``p(e) ~ exp(-|e| / s)``; generalized normal ``p(e) ~ exp(-|e / s|^beta)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from datamodules.base import EVALUATION_VIEWS_STREAM, DataModule
from datamodules.epochs import WholeEpochs, epoch_seed, shard
from ssl_bench.batch import Views
from ssl_bench.config import (
    ConfigError,
    DataConfig,
    check_choice,
    check_positive,
    check_range,
)
from ssl_bench.errors import DataError
from ssl_bench.registry import register

SPACES = ("box", "sphere", "real")
MARGINALS = {"box": ("uniform", "normal", "laplace", "generalized_normal"), "sphere": ("uniform",),
             "real": ("normal", "laplace", "generalized_normal")}
NOISES = ("normal", "laplace", "generalized_normal", "vmf")
NEGATIVE_SLOPE = 0.2

STREAM_BASE = 2**60
"""Generator seeds ``2**60 + 4 seed + k`` (k = 0 probe train, 1 probe test, 2 evaluation set, 3 mixing): no epoch
stream (:func:`epoch_seed`, below ``2**53`` for seeds below ``2**32``) starts there."""


def _stream(seed: int, k: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(STREAM_BASE + 4 * seed + k)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling with an explicit generator (torch.distributions cannot take one).


def sample_gamma(shape: float, size: tuple[int, ...], generator: torch.Generator, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """``Gamma(shape, 1)`` by Marsaglia & Tsang (2000); ``shape < 1`` through ``G(a) = G(a + 1) U^(1/a)``."""
    a = shape + 1.0 if shape < 1 else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(size, device=device, dtype=dtype).view(-1)
    todo = torch.arange(out.numel(), device=device)
    while todo.numel():
        x = torch.randn(todo.numel(), generator=generator, device=device, dtype=dtype)
        u = torch.rand(todo.numel(), generator=generator, device=device, dtype=dtype)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if shape < 1:
        u = torch.rand(out.shape, generator=generator, device=device, dtype=dtype)
        out = out * u.pow(1.0 / shape)
    return out.view(size)


def sample_noise(kind: str, scale: float, beta: float, size: tuple[int, ...], generator: torch.Generator,
                 device: torch.device) -> Tensor:
    """Centred noise: ``normal`` (std ``scale``), ``laplace`` (``exp(-|e|/scale)``) or ``generalized_normal``
    (``exp(-|e/scale|^beta)``: ``scale sign G^(1/beta)``, ``G ~ Gamma(1/beta)``)."""
    if kind == "normal":
        return scale * torch.randn(size, generator=generator, device=device)
    if kind == "laplace":
        u = torch.rand(size, generator=generator, device=device) - 0.5
        return -scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())
    if kind == "generalized_normal":
        sign = torch.randint(0, 2, size, generator=generator, device=device).float() * 2 - 1
        return scale * sign * sample_gamma(1.0 / beta, size, generator, device).pow(1.0 / beta)
    raise ValueError(f"unknown noise {kind!r}")


def truncate_to_box(sample: Callable[[tuple[int, ...]], Tensor], centre: Tensor, low: float = 0.0,
                    high: float = 1.0) -> Tensor:
    """``centre + e`` with every coordinate kept in ``[low, high]`` by redrawing its noise ``e = sample(n)`` until
    it lands inside (cl-ica's truncated rejection resampling, per coordinate)."""
    out = (centre + sample(centre.shape)).view(-1)
    flat = centre.reshape(-1)
    todo = ((out < low) | (out > high)).nonzero().flatten()
    while todo.numel():
        redrawn = flat[todo] + sample((todo.numel(),))
        out[todo] = redrawn
        todo = todo[(redrawn < low) | (redrawn > high)]
    return out.view(centre.shape)


def sample_vmf(mean: Tensor, kappa: float, generator: torch.Generator) -> Tensor:
    """von Mises-Fisher samples on ``S^(m-1)`` around the unit rows of ``mean`` (n x m), density
    ``~ exp(kappa mu^T x)``, by Wood (1994): ``w = mu^T x`` from the rejection sampler below, then
    ``x = w mu + sqrt(1 - w^2) v`` with ``v`` uniform on the unit sphere orthogonal to ``mu``. On ``S^0`` (m = 1)
    ``x = mu`` with probability ``e^kappa / (e^kappa + e^-kappa)``, else ``-mu``."""
    n, m = mean.shape
    device = mean.device
    if n == 0:
        return mean.clone()
    if m == 1:
        keep = torch.rand(n, 1, generator=generator, device=device) < 0.5 * (1.0 + math.tanh(kappa))
        return torch.where(keep, mean, -mean)
    dtype = torch.float64
    b = (m - 1) / (2.0 * kappa + math.sqrt(4.0 * kappa**2 + (m - 1) ** 2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + (m - 1) * math.log(1.0 - x0**2)
    w = torch.empty(n, device=device, dtype=dtype)
    todo = torch.arange(n, device=device)
    half = (m - 1) / 2.0
    while todo.numel():
        k = todo.numel()
        g1 = sample_gamma(half, (k,), generator, device, dtype)
        g2 = sample_gamma(half, (k,), generator, device, dtype)
        z = g1 / (g1 + g2)
        cand = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = torch.rand(k, generator=generator, device=device, dtype=dtype)
        ok = kappa * cand + (m - 1) * torch.log(1.0 - x0 * cand) - c >= torch.log(u)
        w[todo[ok]] = cand[ok]
        todo = todo[~ok]
    mu = torch.nn.functional.normalize(mean.to(dtype), dim=1)
    v = torch.randn(n, m, generator=generator, device=device, dtype=dtype)
    for _ in range(2):  # twice: v nearly parallel to mu leaves a small residual that one pass does not orthogonalize
        v = v - (v * mu).sum(1, keepdim=True) * mu
    v = torch.nn.functional.normalize(v, dim=1)
    x = w[:, None] * mu + (1.0 - w[:, None] ** 2).clamp_min(0).sqrt() * v
    return x.to(mean.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The mixing


def column_normalized_uniform(count: int, d: int, generator: torch.Generator) -> Tensor:
    """``count`` matrices d x d with entries uniform in (-1, 1), each column scaled to unit l2 norm (float64)."""
    w = torch.rand(count, d, d, generator=generator, dtype=torch.float64) * 2 - 1
    return w / w.norm(dim=1, keepdim=True)


def condition_numbers(w: Tensor) -> Tensor:
    """``s_max / s_min`` of every matrix in ``w`` (..., d, d)."""
    s = torch.linalg.svdvals(w)
    return s[..., 0] / s[..., -1]


MAX_REDRAW_ROUNDS = 100
"""Rounds of ``condition_draws`` candidates a mixing layer may take before :func:`draw_mixing_weights` gives up."""


def draw_mixing_weights(d: int, layers: int, quantile: float, draws: int,
                        generator: torch.Generator) -> tuple[list[Tensor], float]:
    """``layers`` column-normalized uniform matrices, each redrawn until its condition number is at most the
    threshold: the ``quantile`` of ``draws`` random matrices' condition numbers (sorted, index ``floor(q draws)``)."""
    pool = condition_numbers(column_normalized_uniform(draws, d, generator)).sort().values
    threshold = float(pool[min(int(draws * quantile), draws - 1)])
    weights: list[Tensor] = []
    for _ in range(MAX_REDRAW_ROUNDS):
        if len(weights) == layers:
            break
        candidates = column_normalized_uniform(draws, d, generator)
        fine = (condition_numbers(candidates) <= threshold).nonzero().flatten()
        weights += [candidates[i] for i in fine[: layers - len(weights)].tolist()]
    if len(weights) < layers:
        raise DataError(f"no {d}x{d} mixing matrix out of {MAX_REDRAW_ROUNDS} x {draws} draws reached the condition "
                        f"number {threshold:.4g} (data.condition_quantile={quantile}); raise data.condition_quantile")
    return weights, threshold


@register("data", "invertible_mlp")
class InvertibleMLPDataModule(DataModule):
    """``x = g(z)`` through a frozen invertible MLP; positive pairs share content latents and differ in style.

    Ground truth for metric callbacks: :meth:`mixing` (g), :meth:`unmixing` (g^-1), ``weights``,
    ``latent_groups`` ({"content": [...], "style": [...]}), :meth:`epoch_latents` (the latents of every mini-batch),
    :meth:`latent_probe_data` (independent train and test marginal draws) and :meth:`evaluation_inputs`.
    """

    @dataclass
    class Config(DataConfig):
        """``d`` latents in ``space`` (box [0,1]^d, sphere S^(d-1), real R^d) from ``marginal`` (``marginal_scale``,
        ``marginal_beta``; centred at the box centre or the origin); the first ``n_content`` latents are content;
        the others change with ``style_change_prob`` by ``style_noise`` of scale ``style_scale`` (kappa for vmf);
        ``mixing`` linear (one matrix) or mlp (``mixing_layers``), each matrix's condition number at most the
        ``condition_quantile`` of ``condition_draws`` draws; ``steps_per_epoch`` fresh mini-batches per epoch;
        ``eval_samples`` in the fixed evaluation set."""

        d: int = 10
        space: str = "box"
        marginal: str = "uniform"
        marginal_scale: float = 1.0
        marginal_beta: float = 3.0
        n_content: int = 0
        style_noise: str = "normal"
        style_scale: float = 0.05
        style_beta: float = 3.0
        style_change_prob: float = 1.0
        mixing: str = "mlp"
        mixing_layers: int = 3
        condition_quantile: float = 0.25
        condition_draws: int = 25000
        steps_per_epoch: int = 100
        batch_size: int = 6144
        eval_samples: int = 4096

        def provides(self) -> set[str]:
            return {"vectors", "latents"}

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            for key in ("d", "mixing_layers", "condition_draws", "steps_per_epoch", "eval_samples", "marginal_scale",
                        "marginal_beta", "style_beta"):
                check_positive(f"{prefix}.{key}", getattr(self, key))
            check_choice(f"{prefix}.space", self.space, SPACES)
            allowed = MARGINALS[self.space]
            if self.marginal not in allowed:
                raise ConfigError(f"{prefix}.marginal={self.marginal!r} is not allowed with {prefix}.space="
                                  f"{self.space}; choose one of: {', '.join(allowed)}")
            if self.space == "sphere" and self.d < 2:
                raise ConfigError(f"{prefix}.d={self.d} must be >= 2 with {prefix}.space=sphere")
            if not 0 <= self.n_content <= self.d:
                raise ConfigError(f"{prefix}.n_content={self.n_content} is out of range; allowed: 0 to "
                                  f"{prefix}.d={self.d}")
            check_choice(f"{prefix}.style_noise", self.style_noise, NOISES)
            if self.style_noise == "vmf" and self.space != "sphere":
                raise ConfigError(f"{prefix}.style_noise=vmf needs {prefix}.space=sphere (got {self.space}); "
                                  "use normal, laplace or generalized_normal")
            what = "the vMF concentration kappa" if self.style_noise == "vmf" else "the noise scale"
            if not (self.style_scale > 0 and math.isfinite(self.style_scale)):
                raise ConfigError(f"{prefix}.style_scale={self.style_scale} ({what}) must be a finite number > 0")
            check_range(f"{prefix}.style_change_prob", self.style_change_prob, 0, 1, "(]")
            check_choice(f"{prefix}.mixing", self.mixing, ("linear", "mlp"))
            check_range(f"{prefix}.condition_quantile", self.condition_quantile, 0, 1, "[)")

    num_classes = None

    def __init__(self, config: Config, seed: int) -> None:
        self.config, self.seed = config, seed
        self.device = torch.device("cpu")
        layers = 1 if config.mixing == "linear" else config.mixing_layers
        weights, self.condition_threshold = draw_mixing_weights(config.d, layers, config.condition_quantile,
                                                                config.condition_draws, _stream(seed, 3))
        self.weights = weights
        """The layers' matrices ``W_l`` (float64, d x d): ``h_(l+1) = s(W_l h_l)``."""
        self.inverse_weights = [torch.linalg.inv(w) for w in weights]
        self.latent_groups = {name: indices for name, indices in
                              (("content", list(range(config.n_content))),
                               ("style", list(range(config.n_content, config.d)))) if indices}
        self._generator: torch.Generator | None = None
        self._latents: tuple[int, int, int, list[tuple[Tensor, Tensor]]] | None = None
        self._evaluation: Tensor | None = None

    @classmethod
    def from_config(cls, config: Config, seed: int) -> InvertibleMLPDataModule:
        return cls(config, seed)

    @property
    def input_dim(self) -> int:
        return self.config.d

    @property
    def latent_dim(self) -> int:
        return self.config.d

    def setup(self, stage: str) -> None:
        self.device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.weights = [w.to(self.device) for w in self.weights]
        self.inverse_weights = [w.to(self.device) for w in self.inverse_weights]
        self._generator = torch.Generator(device=self.device)
        self._evaluation = None

    # -- the mixing ---------------------------------------------------------------------------------------------------

    def mixing(self, z: Tensor) -> Tensor:
        """``g(z)`` for rows ``z`` (n x d), in ``z``'s dtype: ``W_l`` then LeakyReLU(0.2) except after the last."""
        h = z
        for i, w in enumerate(self.weights):
            h = h @ w.to(device=h.device, dtype=h.dtype).T
            if i < len(self.weights) - 1:
                h = torch.nn.functional.leaky_relu(h, NEGATIVE_SLOPE)
        return h

    def unmixing(self, x: Tensor) -> Tensor:
        """``g^-1(x)``: ``W_l^-1`` and the inverse LeakyReLU ``h / 0.2`` for ``h < 0``, in reverse order."""
        h = x
        for i in reversed(range(len(self.inverse_weights))):
            if i < len(self.weights) - 1:
                h = torch.where(h < 0, h / NEGATIVE_SLOPE, h)
            h = h @ self.inverse_weights[i].to(device=h.device, dtype=h.dtype).T
        return h

    # -- sampling -----------------------------------------------------------------------------------------------------

    def sample_marginal(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` latents from ``p(z)`` on ``generator``'s device."""
        c, device = self.config, generator.device
        if c.space == "sphere":
            return torch.nn.functional.normalize(torch.randn(n, c.d, generator=generator, device=device), dim=1)
        if c.marginal == "uniform":
            return torch.rand(n, c.d, generator=generator, device=device)

        def noise(size: tuple[int, ...]) -> Tensor:
            return sample_noise(c.marginal, c.marginal_scale, c.marginal_beta, size, generator, device)

        if c.space == "box":
            return truncate_to_box(noise, torch.full((n, c.d), 0.5, device=device))
        return noise((n, c.d))

    def sample_conditional(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """``z~ ~ p(z~ | z)``: content kept, each style latent changing with ``style_change_prob``."""
        c, device = self.config, z.device
        change = torch.zeros_like(z, dtype=torch.bool)
        style = z.shape[1] - c.n_content
        if style == 0:
            return z.clone()
        if c.style_change_prob >= 1:
            change[:, c.n_content:] = True
        else:
            draw = torch.rand(len(z), style, generator=generator, device=device)
            change[:, c.n_content:] = draw < c.style_change_prob

        def noise(size: tuple[int, ...]) -> Tensor:
            return sample_noise(c.style_noise, c.style_scale, c.style_beta, size, generator, device)

        if c.space == "real":
            return torch.where(change, z + noise(z.shape), z)
        if c.space == "box":
            out = z.clone()
            out[change] = truncate_to_box(noise, z[change])
            return out
        # sphere: move the changing coordinates on their sub-sphere of radius r = |z_changing|
        moving = torch.where(change, z, torch.zeros_like(z))
        radius = moving.norm(dim=1, keepdim=True)
        direction = moving / radius.clamp_min(1e-12)
        out = z.clone()
        if c.style_noise == "vmf":
            counts = change.sum(dim=1)
            for m in counts.unique().tolist():
                if m == 0:
                    continue
                rows = (counts == m).nonzero().flatten()
                sub = change[rows]
                mean = direction[rows][sub].view(len(rows), m)
                step = sample_vmf(mean, c.style_scale, generator)
                block = out[rows]
                block[sub] = (step * radius[rows]).flatten()
                out[rows] = block
            return out
        moved = torch.where(change, direction + noise(z.shape), torch.zeros_like(z))
        moved = moved / moved.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius
        return torch.where(change, moved, z)

    def _device_generator(self, seed: int) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device)
        return self._generator.manual_seed(seed)

    def epoch_latents(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[tuple[Tensor, Tensor]]:
        """``(z, z~)`` of every mini-batch of ``epoch`` for process ``rank``: the latents behind
        :meth:`epoch_batches` (kept for the last epoch drawn, otherwise drawn again from (seed, epoch))."""
        if self._latents is not None and self._latents[:3] == (epoch, rank, world_size):
            return self._latents[3]
        c = self.config
        generator = self._device_generator(epoch_seed(self.seed, epoch))
        z = self.sample_marginal(c.steps_per_epoch * c.batch_size * world_size, generator)
        z_tilde = self.sample_conditional(z, generator)
        z, z_tilde = shard(z, rank, world_size), shard(z_tilde, rank, world_size)
        latents = list(zip(z.split(c.batch_size), z_tilde.split(c.batch_size)))
        self._latents = (epoch, rank, world_size, latents)
        return latents

    def epoch_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[Views]:
        """``steps_per_epoch`` mini-batches ``Views(g(z), g(z~))`` of ``batch_size``, a function of (seed, epoch).

        With ``world_size`` processes every process draws the one-process epoch of ``batch_size * world_size`` rows
        per step and takes its :func:`shard`, so the b-th mini-batch of each process is its share of the b-th one.
        """
        return [Views(self.mixing(z), self.mixing(z_tilde)) for z, z_tilde in self.epoch_latents(epoch, rank,
                                                                                                  world_size)]

    def train_dataloader(self) -> WholeEpochs:
        return WholeEpochs(self)

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """The first ``num_samples`` (at most ``eval_samples``) of a fixed set ``g(z)``, ``z`` from the marginal on a
        stream of its own."""
        return self.mixing(self.evaluation_latents()[:num_samples])

    def evaluation_latents(self) -> Tensor:
        """The ``eval_samples`` latents ``z`` behind :meth:`evaluation_inputs` (drawn once)."""
        if self._evaluation is None:
            self._evaluation = self.sample_marginal(self.config.eval_samples, _stream(self.seed, 2, self.device))
        return self._evaluation

    def evaluation_views(self, num_samples: int, views: int) -> Tensor:
        """Views of each of the first ``num_samples`` evaluation latents ``z`` as training pairs them: ``g(z)``
        first, then ``views - 1`` observations ``g(z~)``, ``z~ ~ p(z~ | z)`` drawn independently
        (:meth:`sample_conditional`): ``(n, views, d)``."""
        z = self.evaluation_latents()[:num_samples]
        generator = torch.Generator(device=z.device).manual_seed(self.seed + EVALUATION_VIEWS_STREAM)
        latents = [z, *(self.sample_conditional(z, generator) for _ in range(views - 1))]
        return torch.stack([self.mixing(view) for view in latents], dim=1)

    def latent_probe_data(self, num_samples: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``((x_train, z_train), (x_test, z_test))``: two independent draws of ``num_samples`` latents from the
        marginal and their observations ``x = g(z)``, on generator streams (``2**60 + 4 seed``, ``+ 1``) that no
        training epoch uses."""
        draws = []
        for k in (0, 1):
            z = self.sample_marginal(num_samples, _stream(self.seed, k, self.device))
            draws.append((self.mixing(z), z))
        return draws[0], draws[1]
