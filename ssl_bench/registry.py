"""Every swappable part of a run, by group and name: datamodules, encoders, methods, heads, optimizers, callbacks.

A part is one file. Its class carries its config dataclass as ``Config`` and registers itself where it is defined::

    @register("method", "simclr")
    class SimCLR(Method):
        @dataclass
        class Config(MethodConfig):
            temperature: float = 0.05

Building goes through :func:`lookup`; an unknown name is one :class:`ConfigError` line listing the names registered in
that group. Each group's package imports its part files explicitly in its ``__init__`` (see :data:`PACKAGES`), and
none of them imports Lightning or torchvision at module level, so composing and checking a config stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from ssl_bench.errors import ConfigError

GROUPS = ("data", "encoder", "method", "projector", "predictor", "optim", "callback")
"""The registry's groups; ``projector`` and ``predictor`` are heads, built inside a method."""

PACKAGES = ("datamodules", "ssl_bench.nets", "ssl_bench.methods", "ssl_bench.optim", "ssl_bench.callbacks")
"""The packages whose ``__init__`` imports (and so registers) the built-in parts."""

_PARTS: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
T = TypeVar("T")


def register(group: str, *names: str) -> Callable[[T], T]:
    """Class (or function) decorator: file the part under ``group`` as each of ``names``."""
    if group not in _PARTS:
        raise ValueError(f"unknown registry group {group!r}; groups: {', '.join(GROUPS)}")

    def decorate(part: T) -> T:
        for name in names:
            known = _PARTS[group].get(name)
            if known is not None and known is not part and _qualname(known) != _qualname(part):
                raise ValueError(f"{group} '{name}' is registered twice: {_qualname(known)} and {_qualname(part)}")
            _PARTS[group][name] = part
        return part

    return decorate


def _qualname(part: Any) -> str:
    return f"{part.__module__}.{part.__qualname__}"


def load_builtin_parts() -> None:
    """Import the packages of :data:`PACKAGES`, whose ``__init__`` files register every built-in part."""
    for package in PACKAGES:
        importlib.import_module(package)


def names(group: str) -> list[str]:
    """The registered names of ``group``, sorted."""
    load_builtin_parts()
    return sorted(_PARTS[group])


def lookup(group: str, name: str, key: str | None = None) -> Any:
    """The part registered as ``group``/``name``; an unknown name raises a one-line :class:`ConfigError` naming
    ``key`` (default ``group.name``) and the registered names."""
    load_builtin_parts()
    if name not in _PARTS[group]:
        raise ConfigError(f"{key or group + '.name'}={name!r} is not registered; choose one of: "
                          f"{', '.join(sorted(_PARTS[group]))}")
    return _PARTS[group][name]
