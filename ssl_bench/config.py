"""Typed run configuration: dataclass schemas, validation and one-line errors.

A composed Hydra config is merged into :class:`RunConfig`; a wrong key, type or range raises
:class:`ConfigError`, which the CLI prints as one line naming the key and what is allowed (exit code 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from datamodules.cifar10 import VIEWS
from datamodules.sparse_coding import fixed_count_sizes
from ssl_bench.nets.resnet import RESNETS
from ssl_bench.nets.sparse import ACTIVATIONS


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and what is allowed."""


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} must be > 0")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value} must be >= 0")


DATASETS = ("sparse_coding", "cifar10")


@dataclass
class DataConfig:
    """The datamodule: ``sparse_coding`` (seed 000, Eq. 1: ``x = M z + e`` with masking augmentation, Eqs. 2-3) or
    ``cifar10`` (torchvision's CIFAR-10 with two-view augmentations). ``batch_size`` is per process; each key below
    the common ones belongs to the dataset named in its comment block."""

    name: str = "sparse_coding"
    batch_size: int = 512
    # sparse_coding
    n: int = 3000
    p: int = 50
    d: int = 10
    sparsity: float = 0.1
    latent: str = "symmetric"
    sampler: str = "fixed_count"
    dictionary: str = "orthonormal"
    noise_std: Optional[float] = None
    augmentation: str = "dependent"
    mask_prob: float = 0.5
    drop_last: bool = False
    # cifar10
    root: str = "data/cifar10"
    download: bool = False
    verify_checksums: bool = True
    num_workers: int = 4
    views: str = "simclr"
    crop_min_scale: float = 0.08

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.name", self.name, DATASETS)
        _non_negative(f"{prefix}.num_workers", self.num_workers)
        _choice(f"{prefix}.views", self.views, tuple(VIEWS))
        if not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"{prefix}.crop_min_scale={self.crop_min_scale} is out of range; allowed: (0, 1]")
        for key in ("n", "p", "d", "batch_size"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        if not 0 < self.sparsity <= 1:
            raise ConfigError(f"{prefix}.sparsity={self.sparsity} is out of range; allowed: 0 < sparsity <= 1")
        if not 0 <= self.mask_prob < 1:
            raise ConfigError(f"{prefix}.mask_prob={self.mask_prob} is out of range; allowed: 0 <= mask_prob < 1")
        _choice(f"{prefix}.latent", self.latent, ("symmetric", "binary", "one_hot"))
        _choice(f"{prefix}.sampler", self.sampler, ("fixed_count", "bernoulli"))
        _choice(f"{prefix}.dictionary", self.dictionary, ("orthonormal", "identity"))
        _choice(f"{prefix}.augmentation", self.augmentation, ("dependent", "independent"))
        if self.dictionary == "identity" and self.p != self.d:
            raise ConfigError(f"{prefix}.dictionary=identity needs p == d (got p={self.p}, d={self.d})")
        if self.dictionary == "orthonormal" and self.p < self.d:
            raise ConfigError(f"{prefix}.p={self.p} must be >= {prefix}.d={self.d} for an orthonormal dictionary")
        if self.noise_std is not None:
            _non_negative(f"{prefix}.noise_std", self.noise_std)
        non_zero = sum(fixed_count_sizes(self.d, self.sparsity))
        if self.sampler == "fixed_count" and self.latent != "one_hot" and non_zero > self.d:
            raise ConfigError(f"{prefix}.sparsity={self.sparsity} needs {non_zero} non-zero latents per sample with "
                              f"the fixed_count sampler but {prefix}.d={self.d}; raise d or use sampler=bernoulli")

    @property
    def resolved_noise_std(self) -> float:
        """The noise level; the official code's default is ``sqrt(ln d) / d``."""
        return math.sqrt(math.log(self.d)) / self.d if self.noise_std is None else self.noise_std


@dataclass
class EncoderConfig:
    """The backbone: ``sparse``, the one- or two-layer encoder of seed 000 (Sec. 4 and Eq. 14; the keys up to
    ``weight_norm``), or a torchvision ResNet (``resnet18`` | ``resnet50``) with the CIFAR stem (3x3 stride-1 conv, no
    max-pool) when ``cifar_stem``."""

    name: str = "sparse"
    cifar_stem: bool = True
    width: int = 50
    layers: int = 1
    batch_norm: bool = True
    activation: str = "symmetric_relu"
    bias: bool = True
    bias_init: str = "default"
    init_std: Optional[float] = None
    warm_start: bool = False
    warm_start_noise: Optional[float] = None
    warm_start_c: Optional[float] = None
    weight_norm: str = "none"

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.name", self.name, ("sparse", *RESNETS))
        _positive(f"{prefix}.width", self.width)
        if self.layers not in (1, 2):
            raise ConfigError(f"{prefix}.layers={self.layers} is not allowed; choose one of: 1, 2")
        _choice(f"{prefix}.activation", self.activation, ACTIVATIONS)
        _choice(f"{prefix}.bias_init", self.bias_init, ("default", "zero"))
        _choice(f"{prefix}.weight_norm", self.weight_norm, ("none", "row", "column"))
        if self.init_std is not None:
            _positive(f"{prefix}.init_std", self.init_std)
        if self.warm_start_noise is not None and self.warm_start_c is not None:
            raise ConfigError(f"{prefix}.warm_start_noise and {prefix}.warm_start_c are exclusive; set one of them")
        if self.warm_start_noise is not None:
            _non_negative(f"{prefix}.warm_start_noise", self.warm_start_noise)


METHODS = ("simclr", "simsiam", "byol", "directclr", "adaptive_infonce")
PROJECTORS = ("none", "linear", "mlp")
PREDICTORS = ("none", "linear", "linear_nobias", "identity", "identity_frozen_diagonal", "mlp")


@dataclass
class MethodConfig:
    """Self-supervised objective and heads.

    Heads: ``projector`` none | linear | mlp (``projector_layers`` Linear-BN-ReLU blocks of ``projector_hidden_dim``
    then a Linear to ``projector_dim``, null = the backbone's width; ``projector_output_bn`` adds SimSiam's final
    BN). ``predictor`` none | linear | linear_nobias | identity (identity-initialised, no bias; seed 001) |
    identity_frozen_diagonal (only the off-diagonal is trained; seed 001) | mlp (Linear-BN-ReLU-Linear through
    ``predictor_hidden_dim``); ``predictor_init=symmetric`` draws a linear head ``N(0, 1/h)`` and symmetrises it
    (seed 003, Assump. 4).
    """

    name: str = "simclr"
    temperature: float = 0.05
    projector: str = "none"
    projector_hidden_dim: int = 2048
    projector_dim: Optional[int] = None
    projector_layers: int = 2
    projector_output_bn: bool = False
    predictor: str = "none"
    predictor_hidden_dim: int = 512
    predictor_init: str = "default"
    target_update: str = "alternate"
    ema_momentum: float = 0.99
    ema_momentum_end: Optional[float] = None
    directclr_dim: int = 360
    temperatures: Optional[list[float]] = None
    temperature_groups: Optional[list[int]] = None
    learn_temperature: bool = False
    normalize: bool = True
    standardize: bool = False

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.name", self.name, METHODS)
        _positive(f"{prefix}.temperature", self.temperature)
        _choice(f"{prefix}.projector", self.projector, PROJECTORS)
        _choice(f"{prefix}.predictor", self.predictor, PREDICTORS)
        _choice(f"{prefix}.predictor_init", self.predictor_init, ("default", "symmetric"))
        _choice(f"{prefix}.target_update", self.target_update, ("alternate", "ema"))
        for key in ("projector_hidden_dim", "projector_layers", "predictor_hidden_dim", "directclr_dim"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        if self.projector_dim is not None:
            _positive(f"{prefix}.projector_dim", self.projector_dim)
        for key in ("ema_momentum", "ema_momentum_end"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{prefix}.{key}={value} is out of range; allowed: [0, 1]")
        if self.name == "simsiam" and self.predictor == "none":
            raise ConfigError(f"{prefix}.predictor=none is not allowed for simsiam; use {prefix}.predictor=linear")
        if self.name == "directclr" and (self.projector != "none" or self.predictor != "none"):
            raise ConfigError(f"{prefix}.name=directclr trains without heads; set {prefix}.projector=none and "
                              f"{prefix}.predictor=none")
        if self.name in ("simclr", "directclr", "adaptive_infonce") and self.predictor != "none":
            raise ConfigError(f"{prefix}.predictor={self.predictor} is only used by simsiam and byol; set "
                              f"{prefix}.predictor=none")
        if self.name == "byol" and self.target_update == "alternate" and self.projector != "none":
            raise ConfigError(f"{prefix}.projector={self.projector} needs {prefix}.target_update=ema; the alternating "
                              "updates of seed 000 have no projector")
        if self.predictor_init == "symmetric" and self.predictor not in ("linear", "linear_nobias"):
            raise ConfigError(f"{prefix}.predictor_init=symmetric needs {prefix}.predictor=linear or linear_nobias")
        if self.temperatures is not None:
            if not self.temperatures:
                raise ConfigError(f"{prefix}.temperatures is empty; give one value per group, e.g. [1.0,0.7]")
            for value in self.temperatures:
                _positive(f"{prefix}.temperatures", value)
        if self.temperature_groups is not None:
            if self.temperatures is None or len(self.temperature_groups) != len(self.temperatures):
                raise ConfigError(f"{prefix}.temperature_groups needs one size per entry of {prefix}.temperatures")
            for size in self.temperature_groups:
                _positive(f"{prefix}.temperature_groups", size)


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    ``lr`` is the learning rate at a global batch of 256 when ``scale_lr`` (``lr * global_batch / 256``, as SimCLR
    and solo-learn), the learning rate itself otherwise. ``schedule=warmup_cosine`` warms up linearly over
    ``warmup_epochs`` and follows a half cosine down to ``min_lr`` by the last step; it sets the rate before every
    optimizer step. LARS (You et al. 2017) excludes biases and normalisation parameters from both the trust ratio
    and weight decay (``exclude_bias_and_norm``). The online probe has its own learning rate and no weight decay.
    """

    name: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.0
    weight_decay: float = 0.0
    scale_lr: bool = False
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    lars_eta: float = 0.02
    lars_clip: bool = True
    exclude_bias_and_norm: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    probe_lr: float = 0.1

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.name", self.name, ("sgd", "lars", "adamw"))
        _choice(f"{prefix}.schedule", self.schedule, ("constant", "warmup_cosine"))
        for key in ("lr", "lars_eta", "probe_lr"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("momentum", "weight_decay", "warmup_epochs", "min_lr"):
            _non_negative(f"{prefix}.{key}", getattr(self, key))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{prefix}.betas={list(self.betas)} must be two values in [0, 1), e.g. [0.9,0.999]")


@dataclass
class TrainerConfig:
    max_epochs: int = 8000
    accelerator: str = "cpu"
    devices: int = 1
    threads: int = 1
    deterministic: bool = True
    progress: str = "epochs"
    log_every_n_epochs: int = 10
    metrics_every_n_epochs: int = 100
    checkpoint_every_n_epochs: int = 0
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    precision: str = "32-true"  # auto: 16-mixed on a GPU, 32-true on a CPU (where bf16 autocast is slow)
    val_every_n_epochs: int = 1
    resume: Optional[str] = None

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.strategy", self.strategy, ("auto", "ddp", "ddp_spawn"))
        _choice(f"{prefix}.precision", self.precision, ("auto", "32-true", "16-mixed", "bf16-mixed"))
        for key in ("max_epochs", "devices", "threads", "log_every_n_epochs", "metrics_every_n_epochs", "num_nodes",
                    "val_every_n_epochs"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        _non_negative(f"{prefix}.checkpoint_every_n_epochs", self.checkpoint_every_n_epochs)
        _choice(f"{prefix}.accelerator", self.accelerator, ("cpu", "gpu", "auto"))
        _choice(f"{prefix}.progress", self.progress, ("epochs", "steps", "none"))


@dataclass
class CallbacksConfig:
    """Metric callbacks; each reads the datamodule's ground truth and a small model interface."""

    max_cosine: bool = True
    max_cosine_signed: bool = False
    spectrum: bool = True
    spectrum_samples: int = 2048
    spectrum_tolerance: float = 1e-4
    readout: bool = True
    readout_epochs: int = 100
    readout_batch_size: int = 512

    def validate(self, prefix: str) -> None:
        for key in ("spectrum_samples", "spectrum_tolerance", "readout_epochs", "readout_batch_size"):
            _positive(f"{prefix}.{key}", getattr(self, key))


@dataclass
class LoggerConfig:
    backend: str = "wandb"
    mode: str = "auto"
    project: str = "ssl-bench"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.backend", self.backend, ("wandb", "none"))
        _choice(f"{prefix}.mode", self.mode, ("auto", "online", "offline"))


@dataclass
class SweepConfig:
    """A grid of named override sets x seeds; see ``ssl_bench.sweep``."""

    seeds: list[int] = field(default_factory=lambda: [1])
    grid: Any = None
    metrics: list[str] = field(default_factory=lambda: ["maxcos/max", "maxcos/median", "maxcos/min"])
    reference: Any = None

    def validate(self, prefix: str) -> None:
        if not self.seeds:
            raise ConfigError(f"{prefix}.seeds is empty; give at least one seed, e.g. {prefix}.seeds=[1]")


@dataclass
class RunConfig:
    experiment: str = "adhoc"
    group: Optional[str] = None
    seed: int = 1
    run_dir: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def resolved_group(self) -> str:
        """The W&B group and table row of this run: ``group``, or the experiment when no sweep set one."""
        return self.group or self.experiment

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        images = self.data.name == "cifar10"
        if images != (self.encoder.name in RESNETS):
            allowed = ", ".join(RESNETS) if images else "sparse (e.g. encoder=basic)"
            raise ConfigError(f"encoder.name={self.encoder.name} cannot read data.name={self.data.name}; use "
                              f"encoder {allowed}")


def _schema_node(key: str) -> Any:
    node: Any = OmegaConf.structured(RunConfig)
    for part in filter(None, key.split(".")):
        node = node[part]
    return node


def has_key(key: str) -> bool:
    """Whether the dotted ``key`` names a field of :class:`RunConfig`."""
    try:
        _schema_node(key)
    except (KeyError, AttributeError, ConfigKeyError):
        return False
    return True


def unknown_key_error(key: str) -> ConfigError:
    """The error for a key the schema does not have, listing the keys allowed beside it."""
    parent = key.rpartition(".")[0]
    try:
        allowed = ", ".join(map(str, _schema_node(parent).keys()))
    except (KeyError, AttributeError, ConfigKeyError):
        return ConfigError(f"unknown key '{key}'; top-level keys: {', '.join(RunConfig.__dataclass_fields__)}")
    return ConfigError(f"unknown key '{key}'; allowed keys{' of ' + parent if parent else ''}: {allowed}")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Merge a composed config into the schema and validate it; raise :class:`ConfigError` on the first problem."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(plain, dict):
        plain.pop("hydra", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), plain)
    except ConfigKeyError as err:
        raise unknown_key_error(err.full_key or str(err.key)) from None
    except ValidationError as err:
        if err.full_key is None or err.value is None:
            raise ConfigError(str(err).splitlines()[0]) from None
        parent, _, leaf = err.full_key.rpartition(".")
        expected = _schema_node(parent)._get_node(leaf)._metadata.ref_type
        name = getattr(expected, "__name__", str(expected).replace("typing.", ""))
        raise ConfigError(f"{err.full_key}={err.value!r} has the wrong type; expected {name}") from None
    run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    run.validate()
    return run


def to_yaml(run: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(run))
