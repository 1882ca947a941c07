"""Typed run configuration: the chosen parts' own config dataclasses, strict keys, and one-line errors.

The parts (``data``, ``encoder``, ``method``, ``optim`` and every entry of ``callbacks``) are looked up in the
registry by name, and each section is merged into that part's ``Config`` dataclass: a key the part does not have, a
wrong type or a value out of range raises :class:`ConfigError`, which the CLI prints as one line naming the key and
what is allowed (exit code 2). Rules that span parts are capabilities (:data:`CAPABILITIES`), checked in
:meth:`RunConfig.validate`. Importing this module loads neither torch, Lightning nor torchvision.
"""

from __future__ import annotations

import copy
import json
import math
import re
import typing
from collections.abc import Collection
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from ssl_bench import registry
from ssl_bench.errors import ConfigError

__all__ = ["CAPABILITIES", "ensemble_key", "CallbackConfig", "ConfigError", "DataConfig", "EncoderConfig",
           "ClaimCheck", "ClaimConfig", "LoggerConfig", "MethodConfig", "OptimConfig", "PartConfig", "ProfileConfig",
           "ReferenceRow", "RunConfig", "SweepConfig", "TrainerConfig", "check_choice", "check_non_negative",
           "check_positive", "check_range", "to_run_config", "to_yaml"]


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} must be > 0")
    if value == math.inf:
        raise ConfigError(f"{key}={value} must be a finite number > 0")


def check_non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value} must be >= 0")


def check_range(key: str, value: float, low: float, high: float, closed: str = "[]") -> None:
    """``value`` in the interval from ``low`` to ``high``; ``closed`` says which ends belong to it, e.g. ``(]``."""
    inside = (low <= value if closed[0] == "[" else low < value) and (value <= high if closed[1] == "]"
                                                                      else value < high)
    if not inside:
        raise ConfigError(f"{key}={value} is out of range; allowed: {closed[0]}{low}, {high}{closed[1]}")


SEED_RANGE = (0, 2**32 - 1)
"""The seeds Lightning's ``seed_everything`` accepts (numpy's 32-bit unsigned range)."""


def check_seed(key: str, value: int) -> None:
    check_range(key, value, *SEED_RANGE)


CAPABILITIES = {
    "vectors": "vector inputs",
    "images": "image inputs",
    "dictionary": "a ground-truth dictionary (e.g. data.name=sparse_coding)",
    "first_layer_weight": "a first-layer weight matrix (e.g. encoder.name=sparse)",
    "labels": "labelled data",
    "latents": "ground-truth latents (e.g. data.name=sparse_coding)",
    "features": "ground-truth feature directions (e.g. data.name=strong_weak)",
    "pairs": "a fixed set of anchor-positive pairs with its trace matrix (data.name=moons or digits)",
}
"""What parts provide and need, with the words an error uses for each."""


@dataclass
class PartConfig:
    """The base of every registered part's config: its registered ``name`` and its own checks.

    ``needs`` lists the capabilities (:data:`CAPABILITIES`) the part needs from the rest of the run; ``provides``
    what it offers the other parts.
    """

    name: str = ""
    needs: ClassVar[tuple[str, ...]] = ()

    def validate(self, prefix: str) -> None:
        """Check this part's own values; raise :class:`ConfigError` naming ``prefix.key``."""

    def provides(self) -> set[str]:
        return set()

    def required(self) -> tuple[str, ...]:
        """The capabilities this part needs with these values (by default :attr:`needs`)."""
        return self.needs


@dataclass
class DataConfig(PartConfig):
    """A datamodule's config; ``batch_size`` is per process."""

    batch_size: int = 512

    def validate(self, prefix: str) -> None:
        check_positive(f"{prefix}.batch_size", self.batch_size)


@dataclass
class EncoderConfig(PartConfig):
    """A backbone's config; ``output_dim`` is the width of the features it returns."""

    @property
    def output_dim(self) -> int:
        raise NotImplementedError


TRAINABLE = ("all", "first_layer")
"""What a two-layer encoder trains (its ``trainable`` key): every parameter, or the first layer alone with the rest
kept at its initial draw."""


@dataclass
class MethodConfig(PartConfig):
    """A method's config; :meth:`validate_embedding` checks what depends on the encoder's width."""

    def validate_embedding(self, prefix: str, width: int) -> None:
        """Check the keys that depend on the backbone's output ``width``."""


@dataclass
class OptimConfig(PartConfig):
    """Optimizer and learning-rate schedule (the keys every optimizer has).

    ``lr`` is the learning rate at a global batch of 256 when ``scale_lr`` (``lr * global_batch / 256``, as SimCLR
    and solo-learn), the learning rate itself otherwise. ``schedule=warmup_cosine`` warms up linearly over
    ``warmup_epochs`` and follows a half cosine down to ``min_lr`` by the last step; it sets the rate before every
    optimizer step. The online probe has its own learning rate ``probe_lr`` and no weight decay.
    """

    lr: float = 0.005
    weight_decay: float = 0.0
    scale_lr: bool = False
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    probe_lr: float = 0.1

    def validate(self, prefix: str) -> None:
        check_choice(f"{prefix}.schedule", self.schedule, ("constant", "warmup_cosine"))
        for key in ("lr", "probe_lr"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("weight_decay", "warmup_epochs", "min_lr"):
            check_non_negative(f"{prefix}.{key}", getattr(self, key))


@dataclass
class CallbackConfig:
    """A metric callback's config; the callback's name is its key under ``callbacks``."""

    needs: ClassVar[tuple[str, ...]] = ()

    def validate(self, prefix: str) -> None:
        """Check this callback's own values."""

    def required(self) -> tuple[str, ...]:
        """The capabilities this callback needs with these values (by default :attr:`needs`)."""
        return self.needs


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
    channels_last: bool = False  # image models: weights and activations in channels-last memory format
    compile: bool = False  # torch.compile the encoder in place (parameter names, and so checkpoints, unchanged)
    val_every_n_epochs: int = 1
    resume: Optional[str] = None

    def validate(self, prefix: str) -> None:
        check_choice(f"{prefix}.strategy", self.strategy, ("auto", "ddp", "ddp_spawn"))
        check_choice(f"{prefix}.precision", self.precision, ("auto", "32-true", "16-mixed", "bf16-mixed"))
        for key in ("max_epochs", "devices", "threads", "log_every_n_epochs", "metrics_every_n_epochs", "num_nodes",
                    "val_every_n_epochs"):
            check_positive(f"{prefix}.{key}", getattr(self, key))
        check_non_negative(f"{prefix}.checkpoint_every_n_epochs", self.checkpoint_every_n_epochs)
        check_choice(f"{prefix}.accelerator", self.accelerator, ("cpu", "gpu", "auto"))
        check_choice(f"{prefix}.progress", self.progress, ("epochs", "steps", "none"))


@dataclass
class LoggerConfig:
    backend: str = "wandb"
    mode: str = "auto"
    project: str = "ssl-bench"
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0
    """Seconds to wait in all for W&B to answer and start the run before logging offline."""

    def validate(self, prefix: str) -> None:
        check_choice(f"{prefix}.backend", self.backend, ("wandb", "none"))
        check_choice(f"{prefix}.mode", self.mode, ("auto", "online", "offline"))
        check_range(f"{prefix}.init_timeout", self.init_timeout, 0, 600, "(]")


@dataclass
class ReferenceRow:
    """A paper's values for the table row whose grid axes equal ``match`` (axis -> value), by metric."""

    match: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class ProfileConfig:
    """A length at which a study's claims are checked: overrides applied to every run (fewer epochs, samples,
    steps) and the seeds. ``full`` is the config as written; its entry, if any, only says how to run it
    (``ensemble``) and what it is (``note``)."""

    overrides: list[str] = field(default_factory=list)
    seeds: Optional[list[int]] = None
    ensemble: bool = False
    """Train the runs that differ only in seed and data values as ensembles (synthetic data only)."""
    note: str = ""
    """One line: what the shortening changes."""


CHECK_KINDS = ("bound", "ordering", "agreement")
REDUCTIONS = ("final", "max", "min", "first")
"""A run's value of a metric: summary.json's final value, the max or min over its metrics.jsonl records, or the
first of them (where training started, e.g. a warm start's level)."""
OVER_SEEDS = ("mean", "min", "max")
"""How the values of the finished runs that a selector pools become one number."""
RUN_SETS = ("finished", "ended")
"""Which runs a selector pools: the finished ones, or the diverged ones too (``ended``)."""


@dataclass
class ClaimCheck:
    """How a claim is checked over a study's table (:mod:`ssl_bench.study.claims`): ``bound`` (``min`` <= value at
    ``at`` <= ``max``), ``ordering`` (value at ``higher`` >= ``factor`` x value of ``lower_metric`` at ``lower`` +
    ``margin``, the lower side reduced by ``lower_reduce``, so that "ends above where it started" reads one grid
    point twice) or ``agreement`` (|value at ``at`` - ``expected``| <= ``tolerance``; ``expected`` defaults to the
    ``reference`` row of ``at``). A selector maps grid axes to values and pools the finished runs of every grid point
    it matches; ``runs: ended`` pools the diverged ones too, each read at its last finite record (a claim about what
    happens before a divergence the paper predicts)."""

    kind: str = "bound"
    metric: str = ""
    reduce: str = "final"
    over_seeds: str = "mean"
    runs: str = "finished"
    at: dict[str, Any] = field(default_factory=dict)
    higher: dict[str, Any] = field(default_factory=dict)
    lower: dict[str, Any] = field(default_factory=dict)
    lower_metric: Optional[str] = None
    lower_reduce: Optional[str] = None
    min: Optional[float] = None
    max: Optional[float] = None
    factor: float = 1.0
    margin: float = 0.0
    expected: Optional[float] = None
    tolerance: Optional[float] = None

    def validate(self, prefix: str) -> None:
        check_choice(f"{prefix}.kind", self.kind, CHECK_KINDS)
        check_choice(f"{prefix}.reduce", self.reduce, REDUCTIONS)
        if self.lower_reduce is not None:
            check_choice(f"{prefix}.lower_reduce", self.lower_reduce, REDUCTIONS)
        check_choice(f"{prefix}.over_seeds", self.over_seeds, OVER_SEEDS)
        check_choice(f"{prefix}.runs", self.runs, RUN_SETS)
        if not self.metric:
            raise ConfigError(f"{prefix}.metric is missing; name the metric the claim reads, e.g. maxcos/min")
        if self.kind == "bound" and self.min is None and self.max is None:
            raise ConfigError(f"{prefix}: a bound needs min, max or both, e.g. {prefix}.min=0.8")
        if self.kind == "ordering" and not (self.higher and self.lower):
            raise ConfigError(f"{prefix}: an ordering needs the grid points of both sides, e.g. higher: {{model: A}}, "
                              "lower: {model: B}")
        if self.kind == "agreement" and (self.tolerance is None or self.tolerance < 0):
            raise ConfigError(f"{prefix}.tolerance={self.tolerance} must be a number >= 0 for an agreement (the "
                              "paper's own spread where it gives one)")


CLAIM_ID = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@dataclass
class ClaimConfig:
    """One claim of the paper that the study checks: its id (``EXPERIMENT:ID`` in full), where the paper makes it,
    the paper's statement and numbers, the profiles at which the check is meaningful, and the check."""

    id: str = ""
    source: str = ""
    statement: str = ""
    paper: dict[str, float] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=lambda: ["full"])
    check: ClaimCheck = field(default_factory=ClaimCheck)

    def validate(self, prefix: str, profiles: Collection[str]) -> None:
        if not CLAIM_ID.fullmatch(self.id):
            raise ConfigError(f"{prefix}.id={self.id!r} must be lower-case words joined by '-', e.g. cl-beats-ncl")
        for name in ("source", "statement"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{prefix}.{name} is empty; say where the paper makes the claim and what it says")
        if not self.profiles:
            raise ConfigError(f"{prefix}.profiles is empty; name where the check is meaningful, e.g. [full]")
        for name in self.profiles:
            if name not in ("full", *profiles):
                raise ConfigError(f"{prefix}.profiles names '{name}', which sweep.profiles does not define; its "
                                  f"profiles: {', '.join(dict.fromkeys(['full', *profiles]))}")
        self.check.validate(f"{prefix}.check")


@dataclass
class SweepConfig:
    """A grid of named override sets x seeds, the metrics of its table, the paper's values (``reference``), the
    profiles (lengths) it can run at and the paper's claims it checks; see ``ssl_bench.study.sweep`` and
    ``ssl_bench.study.claims``."""

    seeds: list[int] = field(default_factory=lambda: [1])
    grid: Any = None
    metrics: list[str] = field(default_factory=lambda: ["maxcos/max", "maxcos/median", "maxcos/min"])
    reference: list[ReferenceRow] = field(default_factory=list)
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    claims: list[ClaimConfig] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        if not self.seeds:
            raise ConfigError(f"{prefix}.seeds is empty; give at least one seed, e.g. {prefix}.seeds=[1]")
        for index, seed in enumerate(self.seeds):
            check_seed(f"{prefix}.seeds[{index}]", seed)
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if repeated:
            raise ConfigError(f"{prefix}.seeds={self.seeds} repeats seed {repeated[0]}; list each seed once")
        full = self.profiles.get("full")
        if full is not None and (full.overrides or full.seeds is not None):
            raise ConfigError(f"{prefix}.profiles.full is the config as written: it takes no overrides or seeds (only "
                              "ensemble and note); change the config itself instead")
        for name, profile in self.profiles.items():
            if profile.seeds is not None and not profile.seeds:
                raise ConfigError(f"{prefix}.profiles.{name}.seeds is empty; give seeds or leave it out")
        ids = [claim.id for claim in self.claims]
        for index, claim in enumerate(self.claims):
            claim.validate(f"{prefix}.claims[{index}]", self.profiles)
            if claim.id in ids[:index]:
                raise ConfigError(f"{prefix}.claims[{index}].id={claim.id} is used twice; give each claim its own id")


@dataclass
class RunKeys:
    """The run's own top-level keys."""

    experiment: str = "adhoc"
    group: Optional[str] = None
    seed: int = 1
    run_dir: Optional[str] = None

    def validate(self) -> None:
        if not self.experiment.strip():
            raise ConfigError("experiment='' is empty; name the experiment, e.g. experiment=mytest (it names the run "
                              "directory runs/<experiment>/...)")
        check_seed("seed", self.seed)


SCALARS = tuple(f.name for f in fields(RunKeys))
PARTS = {"data": "data", "encoder": "encoder", "method": "method", "optim": "optim"}
"""Config sections that name a registered part: section -> registry group."""
SECTIONS = {"trainer": TrainerConfig, "logger": LoggerConfig, "sweep": SweepConfig}
"""Config sections with one fixed schema."""


@dataclass
class RunConfig(RunKeys):
    """A whole run: the chosen parts' configs and the fixed sections. Build it with :func:`to_run_config`."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: dict[str, CallbackConfig] = field(default_factory=dict)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def resolved_group(self) -> str:
        """The W&B group and table row of this run: ``group``, or the experiment when no sweep set one."""
        return self.group or self.experiment

    def validate(self) -> None:
        """The run's own keys, each part's and section's own checks, then the capabilities that span parts."""
        super().validate()
        for section in (*PARTS, *SECTIONS):
            getattr(self, section).validate(section)
        for name, callback in self.callbacks.items():
            callback.validate(f"callbacks.{name}")
        self.method.validate_embedding("method", self.encoder.output_dim)
        self.check_capabilities()

    def available(self) -> set[str]:
        """The capabilities that the data and the encoder provide."""
        return self.data.provides() | self.encoder.provides()

    def leave_out_unfed(self, optional: Collection[str]) -> None:
        """Drop each callback named in ``optional`` (those only the default callbacks group brought) whose needs
        the data and the encoder do not meet, e.g. max-cosine on data without a dictionary."""
        available = self.available()
        self.callbacks = {name: callback for name, callback in self.callbacks.items()
                          if name not in optional or set(callback.required()) <= available}

    def check_capabilities(self) -> None:
        """Every part's needs are met by what the data and the encoder provide."""
        available = self.available()
        users = [(f"encoder.name={self.encoder.name}", self.encoder, ""),
                 (f"method.name={self.method.name}", self.method, ""),
                 *((f"callbacks.{name}", callback, f"; remove it with ~callbacks.{name}")
                   for name, callback in self.callbacks.items())]
        for who, part, hint in users:
            for need in part.required():
                if need in available:
                    continue
                if need not in part.needs:
                    hint = f"; turn off the {who} option that needs it"
                elif need in ("vectors", "images"):
                    kind = "images" if "images" in available else "vectors"
                    readers = [name for name in registry.names("encoder")
                               if kind in registry.lookup("encoder", name).Config.needs]
                    hint = f"; encoder names for {CAPABILITIES[kind]}: {', '.join(readers)}"
                raise ConfigError(f"{who} needs {CAPABILITIES[need]}, which data.name={self.data.name} with "
                                  f"encoder.name={self.encoder.name} does not provide{hint}")

    def to_container(self) -> dict[str, Any]:
        """The config as plain dicts and lists: exactly the chosen parts' keys."""
        plain: dict[str, Any] = {key: getattr(self, key) for key in SCALARS}
        for section in (*PARTS, "trainer"):
            plain[section] = _plain(getattr(self, section))
        plain["callbacks"] = {name: _plain(callback) for name, callback in self.callbacks.items()}
        for section in ("logger", "sweep"):
            plain[section] = _plain(getattr(self, section))
        return plain


def _plain(value: Any) -> Any:
    """A validated config as plain dicts and lists (what ``OmegaConf.to_container`` of it gives, without building
    its nodes again: a sweep section with a hundred claims took a second at every run's start)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {item.name: _plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _field_type(schema: Any, path: str) -> Any:
    """The declared type at ``path`` (``key.key[0].key``) below the dataclass ``schema``; None if unknown."""
    hint = schema
    for part in re.findall(r"[^.\[\]]+", path):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is typing.Union and len(args) == 1:
            hint = args[0]
        if is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(part)
        elif typing.get_origin(hint) in (list, dict):
            hint = typing.get_args(hint)[-1]
        else:
            return None
    return hint


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


_MERGED: dict[tuple[type, str, str, str], Any] = {}
"""Validated sections by their schema, place and values as JSON: a sweep composes one config per grid point, each
with the same ``sweep`` section (its grid, reference rows and claims), which OmegaConf validates in seconds."""


def _merge(schema: type, values: Any, prefix: str, owner: str) -> Any:
    """``values`` (a mapping) merged into the dataclass ``schema``; unknown keys and wrong types are one line, also
    inside lists and mappings (e.g. ``sweep.seeds[0]='a' has the wrong type; expected int``). A copy of the first
    validation of the same values is returned when there is one."""
    try:
        key = (schema, prefix, owner, json.dumps(values, sort_keys=True))
    except (TypeError, ValueError):
        return _validated(schema, values, prefix, owner)
    if key not in _MERGED:
        if len(_MERGED) >= 256:
            _MERGED.clear()
        _MERGED[key] = _validated(schema, values, prefix, owner)
    return copy.deepcopy(_MERGED[key])


def _validated(schema: type, values: Any, prefix: str, owner: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        example = (f"{prefix}.KEY=VALUE" if not prefix.endswith("]")
                   else "{" + ", ".join(f"{f.name}: ..." for f in fields(schema)) + "}")
        raise ConfigError(f"{prefix}={values!r} must be a mapping of keys, e.g. {example}")

    def dotted(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    for name, hint in typing.get_type_hints(schema).items():
        item = _field_type(schema, f"{name}[0]")
        if typing.get_origin(hint) is list and is_dataclass(item) and isinstance(values.get(name), list):
            for index, row in enumerate(values[name]):  # each row on its own, so that an error names its index
                _merge(item, row, f"{dotted(name)}[{index}]", f"{dotted(name)}[{index}]")
    try:
        merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
        OmegaConf.structured(merged)  # merge converts some values it should refuse, e.g. [1] into a list[str]
        return merged
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = err.full_key or str(err.key)
        parent, _, _ = key.rpartition(".")
        holder = _field_type(schema, parent) if parent else schema
        if is_dataclass(holder):
            allowed = ", ".join(f.name for f in fields(holder))
            where = owner if holder is schema else dotted(parent)
            raise ConfigError(f"{dotted(key)} is not a key of {where}; its keys: {allowed}") from None
        raise ConfigError(f"{dotted(key)}: {str(err).splitlines()[0]}") from None
    except ValidationError as err:
        if not err.full_key:
            raise ConfigError(f"{prefix}: {str(err).splitlines()[0]}") from None
        expected = _field_type(schema, err.full_key)
        if expected is None:
            raise ConfigError(f"{dotted(err.full_key)}={err.value!r}: {str(err).splitlines()[0]}") from None
        raise ConfigError(f"{dotted(err.full_key)}={err.value!r} has the wrong type; expected "
                          f"{_type_name(expected)}") from None


def _part(section: str, values: Any) -> PartConfig:
    names = ", ".join(registry.names(PARTS[section]))
    if not isinstance(values, dict) or "name" not in values:
        raise ConfigError(f"{section}.name is missing; choose one of: {names} (e.g. {section}=NAME)")
    if not isinstance(values["name"], str):
        raise ConfigError(f"{section}.name={values['name']!r} is not a name; choose one of: {names}")
    part = registry.lookup(PARTS[section], values["name"], key=f"{section}.name")
    return _merge(part.Config, values, section, f"{section}={values['name']}")


def _callbacks(values: Any) -> dict[str, CallbackConfig]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"callbacks={values!r} must map callback names to their keys, e.g. callbacks.spectrum={{}}")
    for name in values:
        if name not in registry.names("callback"):
            raise ConfigError(f"callbacks.{name} is not a registered callback; choose from: "
                              f"{', '.join(registry.names('callback'))}")
    return {name: _merge(registry.lookup("callback", name).Config, config, f"callbacks.{name}", f"callbacks.{name}")
            for name, config in values.items()}


TOP_LEVEL = (*SCALARS, *PARTS, *SECTIONS, "callbacks")


def unknown_top_level_key(key: str) -> ConfigError:
    return ConfigError(f"unknown key '{key}'; top-level keys: {', '.join(TOP_LEVEL)}")


def to_run_config(plain: dict[str, Any], default_callbacks: Collection[str] = ()) -> RunConfig:
    """Build the parts' configs from a composed config (plain dicts), leave out the ``default_callbacks`` that the
    data and the encoder cannot feed, and validate the rest; raise :class:`ConfigError` on the first problem."""
    plain = {key: value for key, value in plain.items() if key != "hydra"}
    for key in plain:
        if key not in TOP_LEVEL:
            raise unknown_top_level_key(key)
    keys = _merge(RunKeys, {k: plain[k] for k in SCALARS if k in plain}, "", "the run")
    run = RunConfig(**{section: _part(section, plain.get(section)) for section in PARTS},
                    **{key: getattr(keys, key) for key in SCALARS},
                    **{section: _merge(schema, plain.get(section), section, section)
                       for section, schema in SECTIONS.items()},
                    callbacks=_callbacks(plain.get("callbacks")))
    run.leave_out_unfed(default_callbacks)
    run.validate()
    return run


def to_yaml(run: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(run.to_container()))


def ensemble_key(plain: dict[str, Any]) -> str:
    """What runs of one ensemble share, from a run's config as plain dicts: the method (but its real-valued
    settings, e.g. a temperature), the encoder, the trainer's settings (but ``resume``), the kind of data and its
    batch size. The other settings (data values, seed, optimizer, callbacks, logger) are each member's own."""
    method = {k: v for k, v in plain["method"].items() if not isinstance(v, float)}
    trainer = {k: v for k, v in plain["trainer"].items() if k != "resume"}
    return json.dumps([method, plain["encoder"], trainer, plain["data"]["name"], plain["data"].get("batch_size")],
                      sort_keys=True, default=str)
