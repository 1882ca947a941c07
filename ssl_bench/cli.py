"""``ssl-bench fit|sweep|report``: compose Hydra configs, validate them, run.

Start-up is light: ``--help`` reads only the config folder, and composing and checking a config imports the
registered parts' files (torch) but neither Lightning nor torchvision; those load when a run starts.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_bench.errors import ConfigError, UserError

if TYPE_CHECKING:
    from ssl_bench.config import RunConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("data", "encoder", "method", "optim", "trainer", "callbacks", "logger")
SECTIONS = (*GROUPS, "sweep")


def available_configs() -> tuple[list[str], dict[str, list[str]]]:
    """Experiment configs (everything outside the groups, but ``base``) and the options of each group."""
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"no config directory at {CONFIG_DIR}; install ssl-bench from a clone with "
                          "`pip install -e .`")
    experiments = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml")
                         if p.parts[len(CONFIG_DIR.parts)] not in GROUPS and p.stem != "base")
    groups = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in GROUPS}
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
    if not sep or "." not in key or key.startswith(("+", "~")) or key.split(".")[0] not in SECTIONS:
        return override
    return f"++{override}"


def compose_config(config: str, overrides: list[str]) -> dict[str, Any]:
    """Compose ``config`` (a name under configs/ or a path to a YAML file) with Hydra ``overrides``; the result as
    plain dicts and lists."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = [section_override(o) for o in overrides]
    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        config_dir, name = path.resolve().parent, path.stem
        overrides = [f"hydra.searchpath=[file://{CONFIG_DIR}]", *overrides]
    elif (CONFIG_DIR / f"{config}.yaml").is_file() and config.split("/")[0] not in GROUPS:
        config_dir, name = CONFIG_DIR, config
    else:
        experiments, _ = available_configs()
        raise ConfigError(f"unknown config '{config}'; choose one of: {', '.join(experiments)} (or a path to a .yaml)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
        plain = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0]
        missing = re.search(r"Could not find '([^/']+)/([^']+)'", message)
        if missing and missing[1] in GROUPS:
            group, option = missing[1], missing[2]
            options = ", ".join(available_configs()[1][group])
            raise ConfigError(f"{group}={option} is not a config of group {group}; choose one of: {options}") from None
        unknown = re.match(r"Could not override '([^'.]+)'", message)
        if unknown:
            from ssl_bench.config import unknown_top_level_key

            raise unknown_top_level_key(unknown[1]) from None
        raise ConfigError(message) from None
    finally:
        GlobalHydra.instance().clear()
    if plain.get("experiment", "adhoc") == "adhoc":
        plain["experiment"] = name if config_dir == CONFIG_DIR else path.stem
    return plain


def load(config: str, overrides: list[str]) -> RunConfig:
    """The validated :class:`ssl_bench.config.RunConfig` of ``config`` with ``overrides``."""
    from ssl_bench.config import to_run_config

    return to_run_config(compose_config(config, overrides))


def _parser() -> argparse.ArgumentParser:
    help_text = configs_help()
    parser = argparse.ArgumentParser(prog="ssl-bench", description="Collapse studies of self-supervised learning.",
                                     epilog=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{fit,sweep,report}")
    for command, text in (("fit", "train one run"), ("sweep", "run an experiment's grid x seeds, print its table")):
        sub = commands.add_parser(command, help=text, description=text, epilog=help_text,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--config", required=True, help="experiment config name or path to a YAML file")
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.sparsity=0.2 seed=3 method=byol")
        if command == "sweep":
            sub.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
            sub.add_argument("--sweep-dir", type=Path, default=None, help="where the runs go (default runs/sweeps/...)")
            sub.add_argument("--print-config", action="store_true", help="list the runs without starting them")
            sub.add_argument("--force", action="store_true",
                             help="run every run again, replacing those in --sweep-dir even if made with other settings")
        if command == "fit":
            sub.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    text = ("print the table of a finished or partial sweep directory: per grid point, the runs that finished (the "
            "others counted as diverged, failed, interrupted or missing) and the mean ± std of their final metrics")
    report = commands.add_parser("report", help="print the table of a finished or partial sweep directory",
                                 description=text)
    report.add_argument("sweep_dir", type=Path, help="a directory that `ssl-bench sweep` wrote (with a sweep.json)")
    return parser


def report_ending(summary: dict[str, Any], config: str, overrides: list[str]) -> int:
    """Print how the run ended and return the exit code: 0 finished, 1 diverged, 128 + the signal's number when
    interrupted (130 for SIGINT, 143 for SIGTERM)."""
    metrics, run_dir, status = summary["metrics"], summary["run_dir"], summary["status"]
    if status == "finished" and "maxcos/min" in metrics:
        print(f"max-cosine max/median/min: {metrics['maxcos/max']:.3f} / {metrics['maxcos/median']:.3f} / "
              f"{metrics['maxcos/min']:.3f}")
    print(f"run directory: {run_dir}")
    if status == "diverged":
        at = summary["diverged"]
        print(f"ssl-bench: diverged: non-finite loss ({at['loss']}) at epoch {at['epoch']}, step {at['step']}; the run "
              "stopped there (lower optim.lr, or check the data)", file=sys.stderr)
        return 1
    if status == "interrupted":
        if summary["resume"] is None:
            how = "no checkpoint to resume from (trainer.checkpoint_every_n_epochs=N keeps one)"
        else:
            kept = [o for o in overrides if o.partition("=")[0].lstrip("+") not in ("run_dir", "trainer.resume")]
            command = shlex.join(["ssl-bench", "fit", "--config", config, *kept, f"run_dir={run_dir}",
                                  "trainer.resume=auto"])
            how = f"resume from {summary['resume']} with: {command}"
        print(f"ssl-bench: interrupted by {summary['signal']} at epoch {summary['epochs']}; {how}", file=sys.stderr)
        return 128 + signal.Signals[summary["signal"]].value
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        parser = _parser()
        args, extra = parser.parse_known_args(argv)
        if any(arg.startswith("-") for arg in extra) or (extra and args.command == "report"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        if args.command == "report":
            from ssl_bench.sweep import report

            print(report(args.sweep_dir))
            return 0
        cfg = load(args.config, args.overrides)
        if args.command == "fit":
            if args.print_config:
                from ssl_bench.config import to_yaml

                print(to_yaml(cfg))
                return 0
            from ssl_bench.run import fit

            summary = fit(cfg)
            if summary is None:  # a DDP process other than global rank 0, which writes and prints the summary
                return 0
            return report_ending(summary, args.config, args.overrides)
        from ssl_bench.sweep import run_sweep

        return run_sweep(args.config, cfg, args.overrides, jobs=args.jobs, sweep_dir=args.sweep_dir,
                         dry_run=args.print_config, force=args.force)
    except UserError as err:
        print(f"ssl-bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
