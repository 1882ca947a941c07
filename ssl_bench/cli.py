"""``ssl-bench fit|sweep|report|reproduce|evaluate|dashboard``: compose Hydra configs, validate them, run.

Start-up is light: ``--help`` reads only the config folder, and composing and checking a config imports the
registered parts' files (torch) but neither Lightning nor torchvision; those load when a run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_bench.config.compose import configs_help, load
from ssl_bench.errors import UserError

if TYPE_CHECKING:
    from ssl_bench.config import RunConfig

SLURM_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--partition", "P", str, "partition"),
    ("--gpus-per-task", "G", int, "GPUs per run on each node, one process each (default 0: one CPU process)"),
    ("--cpus-per-task", "C", int, "CPUs per process (default 1)"),
    ("--mem", "M", str, "memory per node, e.g. 16G"),
    ("--time", "T", str, "time limit per task, e.g. 04:00:00 (SIGUSR1 90 s before it: checkpoint, requeue)"),
    ("--max-parallel", "K", int, "at most K tasks at once (--array=0-N%%K)"),
    ("--account", "A", str, "account to charge"),
    ("--qos", "Q", str, "quality of service"),
    ("--nodes", "N", int, "nodes per run (default 1)"),
    ("--extra-sbatch", "OPTS", str, "further sbatch options, e.g. \"--constraint=a100 --exclusive\""),
)
"""``ssl-bench sweep --slurm``'s resource options: flag, metavar, type, help."""


def _add_config_arguments(sub: argparse.ArgumentParser, required: bool, example: str) -> None:
    """``--config`` and the Hydra overrides (``example``: a few of them, for the help)."""
    sub.add_argument("--config", required=required, help="experiment config name or path to a YAML file")
    sub.add_argument("overrides", nargs="*", help=f"Hydra overrides, e.g. {example}")


def _add_batching(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--batching", choices=("auto", "vmap", "loop"), default="auto",
                     help="how an ensemble (--seeds, --ensemble) computes its members: vmap, a loop, or auto "
                          "(vmap on a GPU, a loop on a CPU)")


def _add_fit(commands: Any, help_text: str) -> None:
    text = "train one run"
    sub = commands.add_parser("fit", help=text, description=text, epilog=help_text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_arguments(sub, True, "data.sparsity=0.2 seed=3 method=byol")
    _add_batching(sub)
    sub.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    sub.add_argument("--seeds", default=None, metavar="S1,S2,...",
                     help="train these seeds as one ensemble, a batched model in this process (synthetic "
                          "data); each seed gets its own run directory (run_dir=D: D/seedS)")
    sub.set_defaults(handler=_fit)


def _add_sweep(commands: Any, help_text: str) -> None:
    text = "run an experiment's grid x seeds, print its table"
    sub = commands.add_parser("sweep", help=text, description=text, epilog=help_text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_arguments(sub, False, "data.sparsity=0.2 seed=3 method=byol")
    sub.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    sub.add_argument("--sweep-dir", type=Path, default=None, help="where the runs go (default runs/sweeps/...)")
    sub.add_argument("--print-config", "--dry-run", action="store_true",
                     help="list the runs without starting them (with --slurm: print the sbatch script and "
                          "its task table without submitting)")
    slurm = sub.add_argument_group("SLURM (one array task per grid point x seed; see docs/slurm.md)")
    slurm.add_argument("--slurm", action="store_true", help="submit the runs to do as a SLURM array job")
    slurm.add_argument("--status", type=Path, default=None, metavar="DIR",
                       help="show the state of the SLURM tasks of the sweep in DIR (no --config needed)")
    for option, metavar, kind, what in SLURM_OPTIONS:
        slurm.add_argument(option, metavar=metavar, type=kind, default=None, help=what)
    sub.add_argument("--force", action="store_true",
                     help="run every run again, replacing those in --sweep-dir even if made with other settings")
    sub.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                     help="run only the grid points with these axis values (repeatable; the table keeps the "
                          "whole grid), e.g. --only model=CL-linear --only data.sparsity=0.1,0.3")
    sub.add_argument("--ensemble", action="store_true",
                     help="train runs that differ only in seed and data values as one batched model per "
                          "process (synthetic data; see docs/ensembles.md)")
    sub.add_argument("--profile", default=None, metavar="NAME",
                     help="run the config's profile of this name (e.g. quick: its sweep.profiles entry's overrides "
                          "and seeds; full: the config as written); the report checks the claims made for it")
    _add_batching(sub)
    sub.set_defaults(handler=_sweep)


def _add_fit_ensemble(commands: Any) -> None:
    sub = commands.add_parser("fit-ensemble", description="train the runs of a table that `ssl-bench sweep "
                              "--ensemble` wrote as ensembles in this process")
    sub.add_argument("table", type=Path, help="the table, SWEEP_DIR/ensembles/K.json")
    sub.set_defaults(overrides=[], handler=lambda args: fit_table(args.table))


def _add_sweep_task(commands: Any) -> None:
    sub = commands.add_parser("sweep-task", description="run one task of a SLURM array that `ssl-bench sweep "
                              "--slurm` submitted (its sbatch script calls this)")
    sub.add_argument("table", type=Path, help="the array's task table, SWEEP_DIR/slurm/tasks-K.json")
    sub.add_argument("--task", type=int, default=None, help="the task id (default SLURM_ARRAY_TASK_ID)")
    sub.set_defaults(overrides=[], handler=_sweep_task)


def _add_evaluate(commands: Any, help_text: str) -> None:
    text = ("InfoNCE, alignment and uniformity of the config's encoder (trained weights from trainer.resume=PATH, "
            "else as built, e.g. encoder=inverse for f = g^-1) on fresh positive pairs of its data: JSON on stdout, "
            "one line on stderr")
    sub = commands.add_parser("evaluate", help="InfoNCE, alignment and uniformity of an encoder on fresh pairs",
                              description=text, epilog=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_arguments(sub, True, "encoder=inverse data.space=sphere")
    sub.add_argument("--samples", type=int, default=10000, help="positive pairs drawn (default 10000)")
    sub.set_defaults(handler=_evaluate)


def _add_report(commands: Any) -> None:
    text = ("print the table of finished or partial sweeps (per grid point, the runs that finished, the others "
            "counted as diverged, failed, interrupted or missing, and the mean ± std of their final metrics beside "
            "the paper's values) and write OUT/report.md, a self-contained OUT/report.html and OUT/figures/*.png: "
            "each metric over epochs per grid point with the min-max band across seeds, eigen-spectra and R^2 "
            "heatmaps; reads only the run directories")
    sub = commands.add_parser("report", help="tables and figures of sweeps: report.md, report.html, PNGs",
                              description=text)
    sub.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                     help="a sweep directory (with sweep.json), a run directory, or a directory of run directories")
    sub.add_argument("--out", type=Path, default=None,
                     help="where report.md, report.html and figures/ go (default: DIR/report for one DIR)")
    sub.add_argument("--metrics", default=None, metavar="M1,M2",
                     help="the metrics drawn over epochs (default: the table's metrics and train/loss)")
    sub.add_argument("--point", action="append", default=None, metavar="LABEL",
                     help="draw only this grid point (its label, e.g. 'model=CL-basic,data.sparsity=0.1'; "
                          "repeatable); the tables keep every grid point")
    sub.set_defaults(handler=_report)


def _add_diagnostics(commands: Any) -> None:
    text = ("which label-free collapse diagnostic tells the truth: across the finished runs of sweeps run with "
            "callbacks.collapse, the Spearman correlation (95%% bootstrap interval) of each collapse/ diagnostic "
            "with ground-truth metrics; OUT/diagnostics.md and OUT/diagnostics.png (docs/diagnostics.md)")
    sub = commands.add_parser("diagnostics", help="correlate collapse diagnostics with the ground truth",
                              description=text)
    sub.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="sweep directories")
    sub.add_argument("--truth", required=True, metavar="M1,M2",
                     help="ground-truth metrics, each used in the studies that logged it, e.g. "
                          "maxcos/min,r2/style,predictor/surviving (the count of predictor eigenvalues above 0.01)")
    sub.add_argument("--out", type=Path, required=True, help="where diagnostics.md and diagnostics.png go")
    sub.add_argument("--backbone", action="store_true", help="the diagnostics of the backbone (before the projector)")
    sub.add_argument("--draws", type=int, default=2000, help="bootstrap resamples (default 2000)")
    sub.set_defaults(handler=_diagnostics)


def _add_reproduce(commands: Any) -> None:
    text = ("check the paper claims of studies at a profile: run the sweeps their claims need (only those grid "
            "points, with the profile's overrides and seeds, as ensembles where the profile says so), then write one "
            "report with the scoreboard first: OUT/report.md, OUT/report.html, OUT/claims.json, OUT/scoreboard.md. "
            "Run it again with the same --out to resume (finished runs are kept)")
    sub = commands.add_parser("reproduce", help="check studies' paper claims at a profile; one scoreboard",
                              description=text)
    sub.add_argument("studies", nargs="*", metavar="STUDY",
                     help="a study (pokle2022, rusak2022, wen2022, esser2023, bao2023, jing2022), a config "
                          "(pokle2022/table2) or a YAML file; default: every study")
    sub.add_argument("--profile", required=True, metavar="NAME",
                     help="quick (shortened runs that still show the effects) or full (the paper's settings)")
    sub.add_argument("--out", type=Path, required=True, help="where the sweeps, the report and the scoreboard go")
    sub.add_argument("--jobs", type=int, default=1, help="runs (or ensembles) in parallel processes (default 1)")
    sub.add_argument("--dry-run", action="store_true", help="list the runs of each sweep without starting them")
    sub.add_argument("--wandb", action="store_true",
                     help="log the runs to W&B with the configs' logger settings (default: no W&B, logger=none)")
    slurm = sub.add_argument_group("SLURM (each sweep's runs as one array job; see docs/slurm.md)")
    slurm.add_argument("--slurm", action="store_true", help="submit the runs as SLURM array jobs; run the command "
                       "again with the same --out when they have ended, to write the report")
    for option, metavar, kind, what in SLURM_OPTIONS:
        slurm.add_argument(option, metavar=metavar, type=kind, default=None, help=what)
    sub.set_defaults(overrides=[], handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    """``ssl-bench reproduce``: the studies' claims checked at a profile, one report and scoreboard."""
    from ssl_bench.study.reproduce import reproduce
    from ssl_bench.study.slurm import slurm_options

    return reproduce(args.studies, args.profile, args.out, jobs=args.jobs, slurm=slurm_options(args),
                     dry_run=args.dry_run, wandb=args.wandb)


def _add_dashboard(commands: Any) -> None:
    text = ("save a W&B workspace for a sweep's study: its table with the paper's values, the final values and the "
            "metric curves per grid point (mean over seeds, min-max band), spectra and R^2 when the study logs them")
    sub = commands.add_parser("dashboard", help="save a W&B workspace that shows a sweep's study", description=text)
    sub.add_argument("--sweep", type=Path, required=True, metavar="DIR",
                     help="a directory that `ssl-bench sweep` wrote (with a sweep.json)")
    sub.add_argument("--project", required=True, help="the W&B project of the sweep's runs (logger.project)")
    sub.add_argument("--entity", default=None, help="the W&B entity (default: your default entity)")
    sub.add_argument("--dry-run", action="store_true",
                     help="print the workspace's sections, panels and filters; no network, no credentials")
    sub.set_defaults(handler=_dashboard)


def _parser() -> argparse.ArgumentParser:
    """The command line: one subcommand each, whose ``handler`` runs it."""
    help_text = configs_help()
    parser = argparse.ArgumentParser(prog="ssl-bench", description="Collapse studies of self-supervised learning.",
                                     epilog=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{fit,sweep,report,reproduce,evaluate,dashboard}")
    _add_fit(commands, help_text)
    _add_sweep(commands, help_text)
    _add_fit_ensemble(commands)
    _add_sweep_task(commands)
    _add_evaluate(commands, help_text)
    _add_report(commands)
    _add_reproduce(commands)
    _add_diagnostics(commands)
    _add_dashboard(commands)
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


def seed_list(text: str) -> list[int]:
    """``--seeds 1,2,3`` as distinct integers; a one-line :class:`UserError` otherwise."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds {text} must be integers separated by commas, e.g. --seeds 1,2,3") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text} repeats a seed; give each seed once")
    return seeds


def fit_seeds(config: str, overrides: list[str], seeds: list[int], run_dir: str | None, batching: str) -> int:
    """``ssl-bench fit --seeds``: the config's run for every seed, trained as one ensemble; prints each run's ending
    and returns the exit code of the worst (see :func:`report_ending`)."""
    given = [o for o in overrides if o.partition("=")[0].lstrip("+") == "seed"]
    if given:
        raise UserError(f"{given[0]} and --seeds both set the seed; drop one")
    cfgs = [load(config, [*overrides, f"seed={seed}",
                          *([f"run_dir={Path(run_dir) / f'seed{seed}'}"] if run_dir else [])]) for seed in seeds]
    return train_together(cfgs, config, overrides, batching)


def train_together(cfgs: list[RunConfig], config: str, overrides: list[str], batching: str) -> int:
    """Train ``cfgs`` with :func:`ssl_bench.train.ensemble.fit_ensemble`, print every run's ending, return the largest
    exit code."""
    from ssl_bench.train.ensemble import fit_ensemble

    return max(report_ending(summary, config, overrides) for summary in fit_ensemble(cfgs, batching))


def fit_table(table: Path) -> int:
    """``ssl-bench fit-ensemble TABLE``: the runs that a sweep's ensemble table lists, trained together."""
    try:
        spec = json.loads(table.read_text(encoding="utf-8"))
        config, members, batching = spec["config"], spec["members"], spec["batching"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{table} is not an ensemble table of `ssl-bench sweep --ensemble` ({err}); run the sweep "
                        "again") from None
    return train_together([load(config, member["overrides"]) for member in members], config, [], batching)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (overrides may stand on both sides of ``--config``); argparse's usage errors become one
    :class:`UserError` line that ends with the command's usage."""
    parser, captured = _parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args, extra = parser.parse_known_args(argv)
            if any(arg.startswith("-") for arg in extra) or (extra and not hasattr(args, "overrides")):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:
        if not exit_.code:  # --help
            raise
        *usage, error = captured.getvalue().strip().splitlines()
        usage_line = " ".join(" ".join(usage).split()).removeprefix("usage: ")
        raise UserError(f"{error.partition(': error: ')[2]}; usage: {usage_line}") from None
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code (2 for bad input, 141 when stdout closes early, as with `| head`)."""
    try:
        code = command(argv)
        sys.stdout.flush()  # a reader that closed the pipe shows here rather than in the flush at exit
    except BrokenPipeError:  # as the Python docs advise: the rest of stdout goes to devnull, no traceback
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout replaced by an object without a file descriptor
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    return code


def _dashboard(args: argparse.Namespace) -> int:
    """``ssl-bench dashboard``: save (or with ``--dry-run`` print) the sweep's W&B workspace."""
    from ssl_bench.study.dashboard import dashboard

    return dashboard(args.sweep, args.project, entity=args.entity, dry_run=args.dry_run)


def _report(args: argparse.Namespace) -> int:
    """``ssl-bench report``: the studies' tables on stdout, report.md, report.html and figures written."""
    from ssl_bench.study.report import report_command

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    return report_command(args.dirs, args.out, metrics, args.point)


def _diagnostics(args: argparse.Namespace) -> int:
    """``ssl-bench diagnostics``: the correlation table on stdout, its markdown and figure written."""
    from ssl_bench.study.truth import truth_command

    if args.draws < 1:
        raise UserError(f"--draws {args.draws}: give at least 1 bootstrap resample")
    truths = [m.strip() for m in args.truth.split(",") if m.strip()]
    return truth_command(args.dirs, truths, args.out, args.backbone, args.draws)


def _sweep_task(args: argparse.Namespace) -> int:
    """``ssl-bench sweep-task``: one task of a SLURM array, from its task table."""
    from ssl_bench.study.slurm import run_task

    if args.overrides:
        raise UserError(f"sweep-task takes no overrides ({' '.join(args.overrides)}); they are in its table")
    return run_task(args.table, args.task)


def _sweep(args: argparse.Namespace) -> int:
    """``ssl-bench sweep``: the experiment's grid x seeds (or with ``--status``, the state of a SLURM sweep)."""
    from ssl_bench.study.slurm import print_status, slurm_options
    from ssl_bench.study.sweep import run_sweep

    if args.status is not None:
        return print_status(args.status)
    if not args.config:
        raise UserError("sweep needs --config NAME (or --status DIR for the state of a SLURM sweep)")
    cfg = load(args.config, args.overrides)
    return run_sweep(args.config, cfg, args.overrides, jobs=args.jobs, sweep_dir=args.sweep_dir,
                     dry_run=args.print_config, force=args.force, only=args.only, slurm=slurm_options(args),
                     ensemble=args.batching if args.ensemble else None, profile=args.profile)


def _evaluate(args: argparse.Namespace) -> int:
    """``ssl-bench evaluate``: the encoder's metrics as JSON on stdout and one table line on stderr."""
    cfg = load(args.config, args.overrides)
    from ssl_bench.train.evaluate import evaluate, table_line

    result = evaluate(cfg, samples=args.samples)
    print(json.dumps(result))
    print(table_line(result), file=sys.stderr)
    return 0


def _fit(args: argparse.Namespace) -> int:
    """``ssl-bench fit``: train one run (or with ``--seeds`` an ensemble, with ``--print-config`` print its config)."""
    cfg = load(args.config, args.overrides)
    if args.print_config:
        from ssl_bench.config import to_yaml

        print(to_yaml(cfg))
        return 0
    if args.seeds is not None:
        return fit_seeds(args.config, args.overrides, seed_list(args.seeds), cfg.run_dir, args.batching)
    from ssl_bench.train.fit import fit

    summary = fit(cfg)
    if summary is None:  # a DDP process other than global rank 0, which writes and prints the summary
        return 0
    return report_ending(summary, args.config, args.overrides)


def command(argv: list[str] | None = None) -> int:
    """:func:`main` without its handling of a closed stdout: the subcommand's handler, a :class:`UserError` as one
    line on stderr and exit code 2."""
    try:
        args = parse_args(argv)
        return args.handler(args)
    except UserError as err:
        print(f"ssl-bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
