"""``ssl-bench reproduce``: check the paper claims of one or more studies at a profile, in one command.

For each config of the chosen studies it runs, as a sweep into ``OUT/EXPERIMENT``, only the grid points that the
claims checked at the profile select (:mod:`ssl_bench.study.claims`), with the profile's overrides and seeds and as
ensembles where the profile says so. Then it writes one report of all of them (``OUT/report.md``,
``OUT/report.html``, ``OUT/claims.json``) with the scoreboard first, and ``OUT/scoreboard.md``: the scoreboard and
every claim's verdict, with the profile, the machine, the date and the time it took. Running it again with the same
``OUT`` resumes: finished runs are kept, as with ``ssl-bench sweep``.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ssl_bench.config import ConfigError, RunConfig
from ssl_bench.study import slurm as arrays
from ssl_bench.study.claims import claims_markdown, scoreboard_markdown, selectors, study_of
from ssl_bench.study.grid import expand_grid
from ssl_bench.study.report import load_study, write_report
from ssl_bench.study.table import Study, matches, plural

STUDY_FOLDER = re.compile(r"[a-z]+[0-9]{4}")
"""A study's config folder: author and year (``pokle2022``)."""

SCOREBOARD = "scoreboard.md"


@dataclass
class Target:
    """One config of a study at the profile: its config, the claims checked there and the grid points they need."""

    config: str
    cfg: RunConfig
    checked: int
    labels: set[str]

    @property
    def study(self) -> str:
        return study_of(self.cfg.experiment)


def study_configs(names: list[str]) -> list[str]:
    """The configs of the named studies (``pokle2022``), configs (``pokle2022/table2``) or YAML files; every study's
    configs when none is named."""
    from ssl_bench.config.compose import available_configs

    experiments, _ = available_configs()
    studies = sorted({name.split("/")[0] for name in experiments if STUDY_FOLDER.fullmatch(name.split("/")[0])})
    if not names:
        return [name for name in experiments if name.split("/")[0] in studies]
    configs: list[str] = []
    for name in names:
        found = [name] if name in experiments or (name.endswith(".yaml") and Path(name).is_file()) else [
            e for e in experiments if e.startswith(f"{name.rstrip('/')}/")]
        if not found:
            raise ConfigError(f"'{name}' is neither a study nor a config; studies: {', '.join(studies)} (or a config "
                              "such as pokle2022/table2)")
        configs += [c for c in found if c not in configs]
    return configs


def plan_targets(configs: list[str], profile: str) -> list[Target]:
    """Each config loaded at ``profile`` (a config error names it before anything runs), with its claims checked
    there and the labels of the grid points they select."""
    from ssl_bench.config.compose import load
    from ssl_bench.study.sweep import profile_overrides

    targets = []
    for config in configs:
        base = load(config, [])
        if profile != "full" and profile not in base.sweep.profiles and any(
                profile in claim.profiles for claim in base.sweep.claims):
            raise ConfigError(f"{config}: a claim names profile '{profile}', which sweep.profiles does not define")
        checked = [claim for claim in base.sweep.claims if profile in claim.profiles]
        cfg = load(config, profile_overrides(base, profile)) if checked else base
        points = expand_grid(cfg.sweep.grid)
        labels = {point.label for point in points for claim in checked
                  for selector in selectors(claim.check) if matches(dict(point.axes), selector)}
        targets.append(Target(config, cfg, len(checked), labels))
    return targets


def machine() -> str:
    """The machine in words: system, architecture, CPU model and count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({model})"


def unswept(target: Target, out: Path, profile: str) -> Study:
    """A config with no claim checked at ``profile``, as a study without runs (its claims: not checked)."""
    return Study(target.cfg.experiment, out / target.cfg.experiment, [], [], [], [], list(target.cfg.sweep.claims),
                 profile)


def reproduce(names: list[str], profile: str, out: Path, jobs: int = 1, slurm: arrays.SlurmOptions | None = None,
              dry_run: bool = False, wandb: bool = False) -> int:
    """Run the sweeps the claims need (logging to W&B only with ``wandb``: the configs' logger), then write the
    combined report and the scoreboard; returns the worst exit code of the sweeps (0: every run ended for good;
    claims that fail do not change it: they are results)."""
    from ssl_bench.study.sweep import run_sweep

    targets = plan_targets(study_configs(names), profile)
    started, worst = time.monotonic(), 0
    studies = list(dict.fromkeys(target.study for target in targets))
    for number, study in enumerate(studies, 1):
        chosen = [t for t in targets if t.study == study and t.checked]
        print(f"reproduce [{number}/{len(studies)}] {study}: {plural(sum(t.checked for t in chosen), 'claim')} "
              f"checked at {profile} in {plural(len(chosen), 'config')}", flush=True)
        since = time.monotonic()
        for target in chosen:
            chosen_profile = target.cfg.sweep.profiles.get(profile)
            code = run_sweep(target.config, target.cfg, [] if wandb else ["logger=none"], jobs=jobs,
                             sweep_dir=out / target.cfg.experiment, dry_run=dry_run, slurm=slurm, profile=profile,
                             labels=target.labels,
                             ensemble="auto" if chosen_profile and chosen_profile.ensemble and slurm is None else None)
            worst = max(worst, code)
        if not dry_run:
            print(f"reproduce: {study} done in {(time.monotonic() - since) / 60:.1f} min", flush=True)
    if dry_run:
        return worst
    swept = [load_study(out / t.cfg.experiment) for t in targets if t.checked]
    report = write_report(swept, out, claim_studies=[*swept, *(unswept(t, out, profile) for t in targets
                                                                 if not t.checked)])
    minutes = (time.monotonic() - started) / 60
    board = scoreboard_markdown(report.claims)
    (out / SCOREBOARD).write_text(
        f"# Scoreboard: profile {profile}\n\n{time.strftime('%Y-%m-%d')}, {machine()}: {minutes:.1f} min (runs "
        f"finished before this command were kept, not trained again).\n\n{board}\n\n"
        + claims_markdown(report.claims) + "\n", encoding="utf-8")
    print(board)
    print(f"reproduce: {profile} profile of {', '.join(studies)} in {minutes:.1f} min; {out / 'report.md'}, "
          f"{out / 'claims.json'}, {out / SCOREBOARD}", flush=True)
    return worst

