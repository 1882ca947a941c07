"""The paper's claims that a study checks (``sweep.claims`` of its config), judged over its run directories alone.

A claim is checked at the profiles it names (``quick``, ``full``: :class:`ssl_bench.config.ProfileConfig`); the
sweep records the profile its runs were made at in ``sweep.json``. Its check reads one number per selector: the
value of ``metric`` of every finished run of every grid point the selector matches (summary.json's final value, or
the max / min / first of metrics.jsonl with ``reduce``; ``runs: ended`` adds the diverged runs, which end at their
last finite record), pooled into their mean (or min / max, ``over_seeds``). Then

- ``bound``: ``min <= v(at) <= max``;
- ``ordering``: ``v(higher) >= factor * v'(lower) + margin`` (``v'`` reads ``lower_metric`` with ``lower_reduce``);
- ``agreement``: ``|v(at) - expected| <= tolerance`` (``expected``: the paper's value in the ``reference`` row of
  ``at`` unless given).

The verdict is ``holds`` or ``fails``; ``not run`` when a grid point a selector matches has no finished run with the
metric or a seed whose run has not ended (failed, interrupted, missing: a pool is judged whole or not at all), and
``not checked at this length`` when the runs were made at a profile the claim does not name (or with overrides that
are no profile's). Every number a verdict uses is in its record (:func:`claim_records`), with the run directories it
came from, so that it can be recomputed from them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_bench.config import ClaimCheck, ClaimConfig, ReferenceRow
from ssl_bench.errors import ConfigError
from ssl_bench.rundir import ENDED, as_number, read_records
from ssl_bench.study.table import Study, matches, plural, reference_value, runs_cell

VERDICTS = ("holds", "fails", "not run", "not checked at this length")
"""Every verdict, in the scoreboard's order."""

def claims_from_record(records: Any, where: str) -> list[ClaimConfig]:
    """The claims that ``sweep.json`` records (``dataclasses.asdict`` of each :class:`ClaimConfig`)."""
    if not isinstance(records, list):
        raise ConfigError(f"{where}: 'claims' must be a list; run `ssl-bench sweep` again with the same --sweep-dir to "
                          "rewrite it (finished runs are kept)")
    try:
        return [ClaimConfig(**{**record, "check": ClaimCheck(**record["check"])}) for record in records]
    except (TypeError, KeyError):
        raise ConfigError(f"{where}: a claim is not a record of id, source, statement, paper, profiles and check; run "
                          "`ssl-bench sweep` again with the same --sweep-dir to rewrite it") from None


def full_id(study: Study, claim: ClaimConfig) -> str:
    return f"{study.name}:{claim.id}"


def study_of(experiment: str) -> str:
    """The study (author and year) of an experiment: ``pokle2022/table2`` -> ``pokle2022``."""
    return experiment.split("/", 1)[0]


def selectors(check: ClaimCheck) -> list[dict[str, Any]]:
    """The selectors a check reads: ``higher`` and ``lower`` of an ordering, else ``at``."""
    return [check.higher, check.lower] if check.kind == "ordering" else [check.at]


def run_value(run_dir: Path, summary: dict[str, Any], metric: str, reduce: str) -> float | None:
    """A finished run's value of ``metric``: its final value (``reduce=final``), or the max / min / first of its
    metrics.jsonl records; None when it did not record the metric."""
    if reduce == "final":
        metrics = summary.get("metrics")
        return as_number(metrics.get(metric)) if isinstance(metrics, dict) else None
    values = [v for record in read_records(run_dir, "metrics.jsonl")
              if (v := as_number(record.get(metric))) is not None]
    if not values:
        return None
    if reduce == "first":
        return values[0]
    return max(values) if reduce == "max" else min(values)


def pooled(values: list[float], over_seeds: str) -> float:
    if over_seeds == "min":
        return min(values)
    if over_seeds == "max":
        return max(values)
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else sum(values) / len(values)


@dataclass
class Side:
    """One selector of a check: the grid points it matched, the finished runs' values of its metric, and the matched
    points with runs that have not ended yet (failed, interrupted or missing: a sweep runs them again)."""

    role: str
    selector: dict[str, Any]
    metric: str
    points: list[str]
    runs: list[dict[str, Any]]
    value: float | None
    unended: list[str]

    def incomplete_points(self) -> list[str]:
        """The matched grid points without a finished run that recorded the metric, or with a seed whose run has not
        ended: a pool that lacks one of its points or seeds would be judged on another mixture than the claim
        names."""
        run = {run["point"] for run in self.runs}
        return [point for point in self.points if point not in run or point in self.unended]

    def record(self, relative_to: Path | None) -> dict[str, Any]:
        runs = [{**run, "dir": _shown(run["dir"], relative_to)} for run in self.runs]
        return {"role": self.role, "selector": self.selector, "metric": self.metric, "points": self.points,
                "runs": runs, "value": self.value}


def _shown(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None and path.resolve().is_relative_to(relative_to.resolve()):
        return path.resolve().relative_to(relative_to.resolve()).as_posix()
    return str(path)


def read_side(study: Study, role: str, selector: dict[str, Any], metric: str, check: ClaimCheck,
              reduce: str) -> Side:
    """The value of ``metric`` at the grid points ``selector`` matches: their finished runs pooled (and their diverged
    ones with ``runs: ended``: summary.json and metrics.jsonl of a diverged run end at its last finite record)."""
    points = [point for point in study.points if matches(point.axes, selector)]
    read = ENDED if check.runs == "ended" else ("finished",)
    runs = []
    for point in points:
        for run_dir, summary, status in zip(point.runs, point.summaries, point.statuses):
            if status in read and summary is not None:
                value = run_value(run_dir, summary, metric, reduce)
                if value is not None:
                    runs.append({"dir": run_dir, "point": point.label, "seed": summary.get("seed"), "value": value})
    value = pooled([run["value"] for run in runs], check.over_seeds) if runs else None
    unended = [point.label for point in points if any(status not in ENDED for status in point.statuses)]
    return Side(role, dict(selector), metric, [point.label for point in points], runs, value, unended)


def expected_value(check: ClaimCheck, reference: list[ReferenceRow]) -> float | None:
    """An agreement's expected value: its own, else the paper's value at its ``at`` (:func:`reference_value`)."""
    return check.expected if check.expected is not None else reference_value(reference, check.at, check.metric)


def sides_of(study: Study, check: ClaimCheck) -> list[Side]:
    if check.kind == "ordering":
        return [read_side(study, "higher", check.higher, check.metric, check, check.reduce),
                read_side(study, "lower", check.lower, check.lower_metric or check.metric, check,
                          check.lower_reduce or check.reduce)]
    return [read_side(study, "at", check.at, check.metric, check, check.reduce)]


def describe(check: ClaimCheck) -> str:
    """The check in words, e.g. ``maxcos/min at model=CL-basic >= 0.8``."""
    def where(selector: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in selector.items()) or "every grid point"

    def reduced(metric: str, reduce: str) -> str:
        text = metric if reduce == "final" else f"{reduce} over epochs of {metric}"
        return text if check.over_seeds == "mean" else f"{check.over_seeds} over runs of {text}"

    what = reduced(check.metric, check.reduce)
    if check.runs == "ended":
        what += " (diverged runs at their last record)"
    if check.kind == "bound":
        low = "" if check.min is None else f"{check.min:g} <= "
        high = "" if check.max is None else f" <= {check.max:g}"
        return f"{low}{what} at {where(check.at)}{high}"
    if check.kind == "ordering":
        lower = reduced(check.lower_metric or check.metric, check.lower_reduce or check.reduce)
        scaled = "" if check.factor == 1 else f"{check.factor:g} x "
        plus = "" if check.margin == 0 else f" + {check.margin:g}"
        return f"{what} at {where(check.higher)} >= {scaled}{lower} at {where(check.lower)}{plus}"
    expected = "the paper's value" if check.expected is None else f"{check.expected:g}"
    return f"{what} at {where(check.at)} within {check.tolerance:g} of {expected}"


def judge(check: ClaimCheck, sides: list[Side], expected: float | None) -> tuple[str, dict[str, Any], str]:
    """The verdict of a check whose sides all have a value, what ours is, and the comparison in numbers."""
    values = [side.value for side in sides]
    if check.kind == "bound":
        value = values[0]
        holds = (check.min is None or value >= check.min) and (check.max is None or value <= check.max)
        return ("holds" if holds else "fails"), {"value": value}, f"{value:.4g}"
    if check.kind == "ordering":
        higher, lower = values
        holds = higher >= check.factor * lower + check.margin
        return ("holds" if holds else "fails"), {"higher": higher, "lower": lower}, \
            f"{higher:.4g} vs {lower:.4g}"
    value = values[0]
    holds = expected is not None and abs(value - expected) <= check.tolerance
    source = "paper" if check.expected is None else "expected"
    return ("holds" if holds else "fails"), {"value": value, "expected": expected}, \
        f"{value:.4g} ({source} {expected:.4g})"


def evaluate(study: Study, claim: ClaimConfig, relative_to: Path | None = None) -> dict[str, Any]:
    """The record of one claim over ``study``: id, study, source, statement, paper, the check, the profile the runs
    were made at, the verdict with its reason, and ours (the value(s) and every run they came from)."""
    check = claim.check
    record: dict[str, Any] = {
        "id": full_id(study, claim), "study": study_of(study.name), "experiment": study.name,
        "source": claim.source, "statement": claim.statement, "paper": dict(claim.paper),
        "profiles": list(claim.profiles), "profile": study.profile, "check": dataclasses.asdict(check),
        "checks": describe(check), "sweep_dir": _shown(study.dir, relative_to), "ours": None, "sides": []}
    if study.profile not in claim.profiles:
        made = f"profile {study.profile}" if study.profile else "settings that are no profile's"
        return {**record, "verdict": "not checked at this length",
                "reason": f"meaningful at {', '.join(claim.profiles)}; these runs were made at {made}"}
    sides = sides_of(study, check)
    record["sides"] = [side.record(relative_to) for side in sides]
    incomplete = [side for side in sides if side.value is None or side.incomplete_points()]
    if incomplete:
        side = incomplete[0]
        waiting = side.incomplete_points()
        where = ", ".join(waiting) or "no grid point (the selector matches none)"
        statuses = [s for point in study.points if point.label in waiting for s in point.statuses]
        runs = f" (runs {runs_cell(statuses)})" if statuses else ""
        started = {run["point"] for run in side.runs} & set(waiting)
        what = (f"{side.metric} at {where} waits for every seed's run to end{runs}" if started else
                f"no {check.runs} run with {side.metric} at {where}{runs}")
        if side.value is not None and len(side.points) > 1:
            what += f"; it pools {len(side.points)} grid points"
        return {**record, "verdict": "not run", "reason": what}
    expected = expected_value(check, study.reference) if check.kind == "agreement" else None
    if check.kind == "agreement" and expected is None:
        return {**record, "verdict": "not run", "reason": "the paper gives no value for this grid point"}
    verdict, ours, shown = judge(check, sides, expected)
    runs = sum(len(side.runs) for side in sides)
    return {**record, "verdict": verdict, "ours": ours, "reason": f"{shown} ({plural(runs, 'run')})"}


def claim_records(studies: list[Study], relative_to: Path | None = None) -> list[dict[str, Any]]:
    """The record of every claim of every study, in the studies' order."""
    return [evaluate(study, claim, relative_to) for study in studies for claim in study.claims]


def scoreboard(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per study (author and year), then in total: the number of claims and of each verdict."""
    studies = list(dict.fromkeys(record["study"] for record in records))
    rows = []
    for name, chosen in [*((s, [r for r in records if r["study"] == s]) for s in studies), ("total", records)]:
        counts = Counter(record["verdict"] for record in chosen)
        rows.append({"study": name, "claims": len(chosen), **{verdict: counts[verdict] for verdict in VERDICTS}})
    return rows


def scoreboard_markdown(records: list[dict[str, Any]]) -> str:
    """The scoreboard as a markdown table."""
    header = ["study", "claims", *VERDICTS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in scoreboard(records):
        cells = [f"**{row['study']}**" if row["study"] == "total" else row["study"], *(str(row[h]) for h in header[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_cell(text: object) -> str:
    """``text`` for a cell of a markdown table: its pipes escaped."""
    return str(text).replace("|", "\\|")


def claims_markdown(records: list[dict[str, Any]]) -> str:
    """Every claim's id, source, verdict and ours (or why it has none), as a markdown table."""
    lines = ["| claim | source | verdict | ours |", "|---|---|---|---|"]
    lines += [f"| `{r['id']}` | {markdown_cell(r['source'])} | {r['verdict']} | {markdown_cell(r['reason'])} |"
              for r in records]
    return "\n".join(lines)
