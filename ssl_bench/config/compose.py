"""Config text -> validated :class:`RunConfig`: Hydra composition over ``configs/`` (an experiment name or a YAML
file of one's own, plus override syntax), with every YAML, Hydra and OmegaConf error turned into one line naming
what is wrong and how to fix it. The only module that knows Hydra."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

from ssl_bench import registry
from ssl_bench.config.schema import (
    PARTS,
    RunConfig,
    to_run_config,
    unknown_top_level_key,
)
from ssl_bench.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIG_GROUPS = ("data", "encoder", "method", "optim", "trainer", "callbacks", "logger")
CONFIG_SECTIONS = (*CONFIG_GROUPS, "sweep")


def available_configs() -> tuple[list[str], dict[str, list[str]]]:
    """Experiment configs (everything outside the groups, but ``base``) and the options of each group."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"no config directory at {CONFIG_DIR}; install ssl-bench from a clone with "
                          "`pip install -e .`")
    experiments = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml")
                         if p.parts[len(CONFIG_DIR.parts)] not in CONFIG_GROUPS and p.stem != "base")
    groups = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in CONFIG_GROUPS}
    return experiments, groups


def configs_help() -> str:
    experiments, groups = available_configs()
    lines = ["experiment configs (--config NAME):", *(f"  {name}" for name in experiments), "",
             "config groups (override with GROUP=OPTION, keys with GROUP.KEY=VALUE):"]
    lines += [f"  {group}: {', '.join(options)}" for group, options in groups.items()]
    return "\n".join(lines)


def section_override(override: str) -> str:
    """``section.key=value`` becomes ``++section.key=value`` (set or add), so keys that a YAML file leaves at their
    default can be set too; the chosen part's schema then refuses keys it does not have. Anything else is passed to
    Hydra unchanged."""
    key, sep, _ = override.partition("=")
    if not sep or "." not in key or key.startswith(("+", "~")) or key.split(".")[0] not in CONFIG_SECTIONS:
        return override
    return f"++{override}"


PATH_KEYS = ("run_dir", "trainer.resume", "data.root")
"""Keys whose values are paths."""


def hydra_quoted(value: str) -> str:
    """A Hydra override value that may hold ``=``, ``,``, brackets or spaces, in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_paths(overrides: list[str]) -> list[str]:
    """The overrides with each path (:data:`PATH_KEYS`) that Hydra's grammar cannot read as it stands quoted for it,
    so that a sweep's run directory such as ``run_dir=runs/t1/tau=equal/seed1`` needs no quotes on the command
    line; every other override unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, quoted = OverridesParser.create(), []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+") in PATH_KEYS:
            try:
                parser.parse_override(override)
            except HydraException:
                override = f"{key}={hydra_quoted(value)}"
        quoted.append(override)
    return quoted


def check_override_syntax(overrides: list[str]) -> None:
    """Each override is ``KEY=VALUE`` (or ``~KEY``) in Hydra's grammar, and one that picks a config group names an
    option; raise a one-line :class:`ConfigError` naming the first that is not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep and not override.startswith("~"):
            raise ConfigError(f"override '{override}' has no '='; write KEY=VALUE, e.g. {key}=VALUE")
        if not key:
            raise ConfigError(f"override '{override}' has no key; write KEY=VALUE, e.g. seed={value or 1}")
        try:
            parsed = parser.parse_override(override)
        except HydraException as err:
            detail = str(err).strip().splitlines()[0]
            raise ConfigError(f"cannot read the override '{override}' ({detail}); write KEY=VALUE with a dotted KEY "
                              "such as data.n, and quote a VALUE that holds = , [ ] { } or spaces: KEY='...'") from None
        group, option = parsed.key_or_group, parsed.value()
        names = option if isinstance(option, list) else [option]
        if group in CONFIG_GROUPS and not parsed.is_delete() and not all(isinstance(n, str) and n for n in names):
            options = ", ".join(available_configs()[1][group])
            raise ConfigError(f"{override} does not name a config of group {group}; choose one of: {options}")


def yaml_error(err: Exception) -> ConfigError:
    """A YAML parser's error as one line: the file, line and column, the problem and the fix."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:
        return ConfigError(f"invalid YAML: {str(err).strip().splitlines()[0]}; fix the file")
    where = f"{mark.name} at line {mark.line + 1}, column {mark.column + 1}"
    context, at = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and at is not None and (at.line, at.column) != (mark.line, mark.column):
        problem += f" ({context} at line {at.line + 1}, column {at.column + 1})"
    try:
        line = Path(mark.name).read_text(encoding="utf-8").splitlines()[mark.line]
    except (OSError, IndexError, UnicodeDecodeError):
        line = ""
    tab = "\\t" in problem or "\t" in line[: len(line) - len(line.lstrip())]
    fix = "indent with spaces, YAML does not allow tabs there" if tab else "fix the file there"
    return ConfigError(f"invalid YAML in {where}: {problem}; {fix}")


def read_yaml_file(path: Path) -> dict[str, Any]:
    """The mapping in the user's YAML file ``path`` (``--config path.yaml``); one line for a file that is not one."""
    import yaml

    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; give a .yaml file or an experiment name "
                          "(`ssl-bench --help` lists them)")
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist; give the path of a .yaml file or an experiment name "
                          "(`ssl-bench --help` lists them)")
    if path.suffix != ".yaml":
        raise ConfigError(f"--config {path} is not a .yaml file (Hydra reads only that suffix); rename it to "
                          f"{path.with_suffix('.yaml').name}")
    try:
        with path.open(encoding="utf-8") as stream:
            content = yaml.safe_load(stream)
    except yaml.YAMLError as err:
        raise yaml_error(err) from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not a UTF-8 text file; give a YAML file") from None
    except OSError as err:
        raise ConfigError(f"--config {path} cannot be read ({err.strerror}); give a YAML file you can read") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"--config {path} holds a {type(content).__name__}, not a mapping of keys; start it with "
                          "`defaults: [base, _self_]` and set keys below it, e.g. `seed: 3`")
    if content is not None and not isinstance(content.get("defaults", []), list):
        raise ConfigError(f"defaults in {path} must be a list; write `defaults: [base, _self_]`")
    return content or {}


def has_base(content: dict[str, Any]) -> bool:
    """Whether a YAML file's defaults list starts from ``base`` (and so has every config group)."""
    defaults = content.get("defaults")
    return isinstance(defaults, list) and any(item in ("base", "/base") for item in defaults)


NEEDS_BASE = "needs a defaults list starting with base: begin {path} with `defaults: [base, _self_]`"


def composition_error(err: Exception, overrides: list[str], user_yaml: Path | None) -> ConfigError:
    """Hydra's or OmegaConf's error while composing, as one line that names what the user typed and the fix."""
    message = str(err).strip().splitlines()[0]
    typed = {o.partition("=")[0].lstrip("+~"): o for o in overrides}
    missing = re.search(r"Could not find '([^/']+)/([^']*)'", message)
    if missing and missing[1] in CONFIG_GROUPS:
        group, option = missing[1], missing[2]
        options = ", ".join(available_configs()[1][group])
        return ConfigError(f"{group}={option} is not a config of group {group}; choose one of: {options}")
    if missing:
        return ConfigError(f"{message} (no config group {missing[1]}); the config groups are: "
                           f"{', '.join(CONFIG_GROUPS)}")
    if re.search(r"Could not load '[^']+'", message):
        return ConfigError(f"{message.rstrip('.')}: no such config; a defaults list names base and GROUP: OPTION "
                           "entries, e.g. `defaults: [base, _self_]`")
    unknown = re.match(r"Could not override '([^'.]+)'", message)
    if unknown:
        key = unknown[1]
        if user_yaml is not None and not has_base(read_yaml_file(user_yaml)):
            if key in CONFIG_GROUPS:
                what = f"{typed.get(key, key)} selects a config of group {key}, which"
            else:
                what = f"{typed.get(key, key)} sets a key of base, so {user_yaml.name}"
            return ConfigError(f"{what} {NEEDS_BASE.format(path=user_yaml)}")

        return unknown_top_level_key(key)
    dotted = re.match(r"Could not override '([^']+)'", message)
    if dotted:
        return ConfigError(f"{typed.get(dotted[1], dotted[1])} sets {dotted[1]}, which is not a key of the config; "
                           "drop the override")
    present = re.search(r"An item is already at '([^']+)'", message)
    if present:
        key = present[1]
        return ConfigError(f"{typed.get(key, '+' + key)} adds a key that is already set; drop the '+': "
                           f"{typed.get(key, key).lstrip('+')}")
    absent = re.search(r"Could not delete from config\. '([^']+)' does not exist", message)
    if absent:
        return ConfigError(f"~{absent[1]} deletes a key that is not in the config; drop the override")
    key = getattr(err, "full_key", None)
    if key and "nterpolation" in type(err).__name__:
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", message).strip('"')
        return ConfigError(f"{typed.get(key, key)} cannot be resolved: {reason}; refer to a key that exists, e.g. "
                           f"{key}=${{seed}}, or give a plain value")
    return ConfigError(f"{key}: {message}" if key else message)


def hydra_compose(config_dir: Path, name: str, hydra_overrides: list[str], overrides: list[str],
                  user_yaml: Path | None) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Hydra's composition of config ``name`` in ``config_dir``: the config as plain dicts and lists, and the option
    each config group got; every error as one :class:`ConfigError` line."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=name, overrides=hydra_overrides, return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        plain = OmegaConf.to_container(cfg, resolve=True)
    except yaml.YAMLError as err:
        raise yaml_error(err) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err, overrides, user_yaml) from None
    except ValueError as err:  # Hydra's checks of a defaults list
        raise ConfigError(f"{str(err).strip().splitlines()[0]}; write the defaults list as names, e.g. "
                          "`defaults: [base, {override /method: byol}, _self_]`") from None
    finally:
        GlobalHydra.instance().clear()
    return plain, {group: choices.get(group) for group in CONFIG_GROUPS}


class Composed(NamedTuple):
    """A composed config as plain dicts and lists, and the callbacks that only base's default option of group
    ``callbacks`` brought (:func:`default_callbacks`)."""

    plain: dict[str, Any]
    default_callbacks: frozenset[str]


class ConfigSource(NamedTuple):
    """Where Hydra reads a config from: the directory and name it composes, the directories it searches after that
    one, the config file's own content, and the user's YAML file (``None`` for an experiment under configs/)."""

    config_dir: Path
    name: str
    search: tuple[Path, ...]
    content: dict[str, Any]
    user_yaml: Path | None

    @property
    def file(self) -> Path:
        return self.user_yaml or CONFIG_DIR / f"{self.name}.yaml"


def config_source(config: str) -> ConfigSource:
    """The :class:`ConfigSource` of ``config``: a name under configs/ or a path to a YAML file of one's own."""
    path = Path(config)
    experiment = (CONFIG_DIR / f"{config}.yaml").is_file()
    if config and (path.suffix in (".yaml", ".yml") or (path.exists() and not experiment)):
        return ConfigSource(path.resolve().parent, path.stem, (CONFIG_DIR,), read_yaml_file(path), path)
    if experiment and config.split("/")[0] not in CONFIG_GROUPS:
        return ConfigSource(CONFIG_DIR, config, (), read_yaml_file(CONFIG_DIR / f"{config}.yaml"), None)
    experiments, _ = available_configs()
    raise ConfigError(f"unknown config '{config}'; choose one of: {', '.join(experiments)} (or a path to a .yaml)")


def compose_source(source: ConfigSource, overrides: list[str]) -> Composed:
    """Compose ``source`` with Hydra ``overrides``; a part whose ``name`` was changed without its group is composed
    with the group option of that name (:func:`switched_parts`)."""
    overrides = quote_paths(overrides)
    check_override_syntax(overrides)
    hydra_overrides = [section_override(o) for o in overrides]
    if source.search:
        hydra_overrides.insert(0, f"hydra.searchpath=[{','.join(f'file://{d}' for d in source.search)}]")
    user_yaml, content = source.user_yaml, source.content
    plain, choices = hydra_compose(source.config_dir, source.name, hydra_overrides, overrides, user_yaml)
    picked = picked_groups(content, overrides)
    switches = switched_parts(plain, choices, picked)
    if switches:
        plain, choices = hydra_compose(source.config_dir, source.name, [*hydra_overrides, *switches], overrides,
                                       user_yaml)
    if user_yaml is not None and not has_base(content):
        unset = [section for section in ("data", "encoder", "method", "optim") if section not in plain]
        if unset:
            raise ConfigError(f"{user_yaml} sets no {unset[0]}: it {NEEDS_BASE.format(path=user_yaml)}, or set "
                              f"{', '.join(f'{s}.name' for s in unset)} in it")
    if plain.get("experiment", "adhoc") == "adhoc":
        plain["experiment"] = source.name
    return Composed(plain, default_callbacks(plain, choices, picked, content.get("callbacks"), overrides))


def without_top_level_key(text: str, key: str) -> str:
    """YAML ``text`` less the block of top-level ``key``: its line and every following line that is blank, a
    comment or indented, so that every other line is kept as written."""
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line[:1] not in ("", " ", "\t", "\n", "\r", "#"):
            inside = line.startswith(f"{key}:")
        if not inside:
            kept.append(line)
    return "".join(kept)


def group_option(group: str, option: str) -> dict[str, Any]:
    """The keys of ``configs/GROUP/OPTION.yaml``, with those of the options its defaults list names beneath its own;
    empty for an option that is not there."""
    import yaml

    path = CONFIG_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return {}
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    inherited: dict[str, Any] = {}
    for parent in content.pop("defaults", None) or []:
        if isinstance(parent, str) and parent != "_self_":
            inherited.update(group_option(group, parent))
    return {**inherited, **content}


def base_choice(group: str) -> str | None:
    """The option of ``group`` that base.yaml's defaults list picks."""
    import yaml

    defaults = yaml.safe_load((CONFIG_DIR / "base.yaml").read_text(encoding="utf-8"))["defaults"]
    return next((item[group] for item in defaults if isinstance(item, dict) and group in item), None)


def picked_groups(content: dict[str, Any], overrides: list[str]) -> set[str]:
    """The config groups whose option the run's own config file (its defaults list) or the command line
    (``GROUP=OPTION``) picks, rather than base."""
    keys = {override.partition("=")[0].lstrip("+~") for override in overrides}
    for item in content.get("defaults") or []:
        if isinstance(item, dict):
            keys |= {str(key).removeprefix("override").strip().lstrip("/") for key in item}
    return keys & set(CONFIG_GROUPS)


def switched_parts(plain: dict[str, Any], choices: dict[str, str | None], picked: set[str]) -> list[str]:
    """``GROUP=OPTION`` for each part whose ``name`` names another part than its group option does (``data.name:
    invertible_mlp`` under base's ``data: sparse_coding``) and keeps keys of that option which the named part does
    not have, where this is unambiguous: no config file or override picked the group, and one option of the group is
    that part (the one named like it first). Otherwise such stray keys raise one line that teaches the switch."""
    switches = []
    for section, registry_group in PARTS.items():
        values, choice = plain.get(section), choices.get(section)
        name = values.get("name") if isinstance(values, dict) else None
        option = group_option(section, choice) if choice else {}
        if name == option.get("name") or name not in registry.names(registry_group):
            continue
        keys = {f.name for f in fields(registry.lookup(registry_group, name).Config)}
        stray = [key for key in values if key not in keys and key in option]
        if not stray:
            continue
        options = [o for o in available_configs()[1][section] if group_option(section, o).get("name") == name]
        target = name if name in options else options[0] if len(options) == 1 else None
        if target and section not in picked:
            switches.append(f"{section}={target}")
            continue
        origin = "the default group" if choice == base_choice(section) else "the group"
        fix = target or "OPTION"
        message = (f"{section}.name={name} keeps {', '.join(f'{section}.{key}' for key in stray)} from {origin} "
                   f"{section}={choice}, which {f'{section}={target}' if target else f'{section}.name={name}'} does "
                   f"not have; a part is switched in the defaults list with `- override /{section}: {fix}` (or "
                   f"{section}={fix} on the command line), not by its name")
        if not target:
            message += (f"; OPTION is one of: {', '.join(options)}" if options else
                        f"; no option of group {section} is {name}, so write `- override /{section}: null` and "
                        f"set its keys under {section}")
        raise ConfigError(message)
    return switches


def default_callbacks(plain: dict[str, Any], choices: dict[str, str | None], picked: set[str],
                      own_section: Any, overrides: list[str]) -> frozenset[str]:
    """The callbacks that only base's default option of group ``callbacks`` brings: not when a config file or the
    command line picks the group (``callbacks=default``), and less each callback that the config file's own
    ``callbacks`` section names, that an override sets (``callbacks.NAME.KEY=VALUE``) or whose keys differ from
    the group file's. :func:`ssl_bench.config.to_run_config` leaves out those whose needs are not met."""
    choice = choices.get("callbacks")
    if "callbacks" in picked or choice is None or choice != base_choice("callbacks"):
        return frozenset()
    group = group_option("callbacks", choice)
    composed = plain.get("callbacks") or {}
    asked = {key.split(".")[1] for key in (o.partition("=")[0].lstrip("+~") for o in overrides)
             if key.startswith("callbacks.")}
    asked |= set(own_section) if isinstance(own_section, dict) else set()
    return frozenset(name for name in group if name in composed and name not in asked
                     and composed[name] == (group[name] or {}))


def load(config: str, overrides: list[str], sweep: bool = True) -> RunConfig:
    """The validated :class:`ssl_bench.config.RunConfig` of ``config`` with ``overrides``; ``sweep=False`` leaves
    the ``sweep`` section (grid, claims) out, at its defaults: what one run needs, without validating a large study's
    claims once per grid point."""
    return load_source(config_source(config), overrides, sweep)


def load_source(source: ConfigSource, overrides: list[str], sweep: bool = True) -> RunConfig:
    """:func:`load` of a config whose :class:`ConfigSource` was already read."""
    composed = compose_source(source, overrides)
    plain = composed.plain if sweep else {key: value for key, value in composed.plain.items() if key != "sweep"}
    return to_run_config(plain, composed.default_callbacks)


@contextmanager
def run_loader(config: str) -> Iterator[Callable[[list[str]], RunConfig]]:
    """``load(config, overrides, sweep=False)`` for many lists of overrides (a sweep's grid points). A study's
    ``sweep`` section (grid, reference rows, claims) is most of its YAML, which Hydra would parse and build again
    for every point; the points are composed from a copy of the config file without it, in a temporary directory
    that Hydra reads first (the config's own directories are searched after it). A file whose copy would read
    differently is composed as it is."""
    import yaml

    source = config_source(config)
    text = source.file.read_text(encoding="utf-8")
    stripped = without_top_level_key(text, "sweep")
    try:
        same = (yaml.safe_load(stripped) or {}) == {k: v for k, v in source.content.items() if k != "sweep"}
    except yaml.YAMLError:
        same = False
    if stripped == text or not same:
        yield lambda overrides: load_source(source, overrides, sweep=False)
        return
    with tempfile.TemporaryDirectory(prefix="ssl-bench-config-") as directory:
        copy = Path(directory) / f"{source.name}.yaml"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(stripped, encoding="utf-8")
        sweepless = source._replace(config_dir=Path(directory), search=(source.config_dir, *source.search))
        yield lambda overrides: load_source(sweepless, overrides, sweep=False)
