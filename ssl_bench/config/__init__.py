"""Run configuration: the typed schema that every part's config extends, strict merging with one-line errors
(:mod:`ssl_bench.config.schema`), and Hydra composition of config text (:mod:`ssl_bench.config.compose`, imported
on its own so that the schema loads without Hydra)."""

from ssl_bench.config.schema import (
    CAPABILITIES,
    TRAINABLE,
    CallbackConfig,
    ClaimCheck,
    ClaimConfig,
    ConfigError,
    DataConfig,
    EncoderConfig,
    LoggerConfig,
    MethodConfig,
    OptimConfig,
    PartConfig,
    ProfileConfig,
    ReferenceRow,
    RunConfig,
    SweepConfig,
    TrainerConfig,
    check_choice,
    check_non_negative,
    check_positive,
    check_range,
    ensemble_key,
    to_run_config,
    to_yaml,
)

__all__ = ["CAPABILITIES", "CallbackConfig", "ClaimCheck", "ClaimConfig", "ConfigError", "ensemble_key", "DataConfig",
           "EncoderConfig", "LoggerConfig", "MethodConfig", "OptimConfig", "PartConfig", "ProfileConfig",
           "ReferenceRow", "RunConfig", "SweepConfig", "TRAINABLE", "TrainerConfig", "check_choice",
           "check_non_negative", "check_positive", "check_range", "to_run_config", "to_yaml"]
