"""Claims as code: checks over a study's run directories, profiles, `ssl-bench reproduce` and its scoreboard."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import error_line

from ssl_bench.config import ClaimCheck, ClaimConfig, ReferenceRow
from ssl_bench.study.claims import VERDICTS, evaluate
from ssl_bench.study.sweep import profile_of
from ssl_bench.study.table import GridPoint, Study

TINY_STUDY = """\
# @package _global_
defaults:
  - /base
  - _self_
experiment: tiny2022/steps
logger: {backend: none}
data: {n: 64, batch_size: 32}
trainer: {max_epochs: 3}
callbacks: {spectrum: null, readout: null}
sweep:
  seeds: [1, 2, 3]
  grid:
    - data.sparsity: [0.1, 0.3]
      optim.lr: [0.05, 0.5]
  reference:
    - {match: {data.sparsity: 0.1, optim.lr: 0.5}, values: {maxcos/max: 0.9}}
  profiles:
    quick: {overrides: [trainer.max_epochs=2], seeds: [1, 2], note: "2 of 3 epochs, 2 of 3 seeds"}
  claims:
    - {id: larger-step-recovers-more, source: Table 9, statement: "a larger step recovers more atoms",
       paper: {lr 0.5: 0.9}, profiles: [quick, full],
       check: {kind: ordering, metric: maxcos/max, higher: {optim.lr: 0.5, data.sparsity: 0.1},
               lower: {optim.lr: 0.05, data.sparsity: 0.1}}}
    - {id: beyond-one, source: Table 9, statement: "max-cosine above 2", profiles: [quick],
       check: {kind: bound, metric: maxcos/max, min: 2.0, at: {data.sparsity: 0.1, optim.lr: 0.5}}}
    - {id: agrees-with-the-paper, source: Table 9, statement: "max-cosine as in the paper", profiles: [full],
       check: {kind: agreement, metric: maxcos/max, at: {data.sparsity: 0.1, optim.lr: 0.5}, tolerance: 0.05}}
"""


def point(label: str, runs: list[tuple[Path, dict | None]]) -> GridPoint:
    axes = dict(part.split("=", 1) for part in label.split(","))
    return GridPoint(label, axes, [run for run, _ in runs], [summary for _, summary in runs])


def finished(run_dir: Path, seed: int, **metrics: float) -> tuple[Path, dict]:
    return run_dir / f"seed{seed}", {"status": "finished", "seed": seed, "metrics": metrics}


def toy_study(tmp_path: Path, profile: str | None = "full") -> Study:
    a = [finished(tmp_path / "a", 1, m=0.9), finished(tmp_path / "a", 2, m=0.7),
         (tmp_path / "a" / "seed3", {"status": "diverged", "seed": 3, "metrics": {"m": 5.0}})]
    b = [finished(tmp_path / "b", 1, m=0.2), (tmp_path / "b" / "seed2", {"status": "diverged", "seed": 2})]
    c = [(tmp_path / "c" / "seed1", None)]
    return Study("toy2022/t", tmp_path, ["model"], ["m"], [ReferenceRow({"model": "A"}, {"m": 0.85})],
                 [point("model=A", a), point("model=B", b), point("model=C", c)], [], profile)


def claim(profiles: list[str] | None = None, **check: object) -> ClaimConfig:
    return ClaimConfig("c", "Table 1", "s", {}, profiles or ["full"], ClaimCheck(metric="m", **check))


@pytest.mark.parametrize(("check", "verdict", "ours"), [
    ({"kind": "bound", "at": {"model": "A"}, "min": 0.8}, "holds", {"value": 0.8}),  # the diverged run is left out
    ({"kind": "bound", "at": {"model": "A"}, "min": 0.8, "over_seeds": "min"}, "fails", {"value": 0.7}),
    ({"kind": "bound", "at": {"model": "A"}, "max": 0.95, "over_seeds": "max"}, "holds", {"value": 0.9}),
    ({"kind": "ordering", "higher": {"model": "A"}, "lower": {"model": "B"}, "margin": 0.6}, "holds",
     {"higher": 0.8, "lower": 0.2}),
    ({"kind": "ordering", "higher": {"model": "A"}, "lower": {"model": "B"}, "factor": 4.5}, "fails",
     {"higher": 0.8, "lower": 0.2}),
    ({"kind": "agreement", "at": {"model": "A"}, "tolerance": 0.05}, "holds", {"value": 0.8, "expected": 0.85}),
    ({"kind": "agreement", "at": {"model": "A"}, "tolerance": 0.01, "expected": 0.9}, "fails",
     {"value": 0.8, "expected": 0.9}),
])
def test_each_kind_of_check_pools_the_finished_runs_of_the_selected_points(tmp_path, check, verdict, ours):
    record = evaluate(toy_study(tmp_path), claim(**check))
    assert record["verdict"] == verdict, record["reason"]
    assert record["ours"] == pytest.approx(ours)
    runs = [run for side in record["sides"] for run in side["runs"]]
    assert all(run["value"] in (0.9, 0.7, 0.2) and run["seed"] in (1, 2) for run in runs)


@pytest.mark.parametrize(("check", "shown"), [
    ({"kind": "agreement", "at": {"model": "A"}, "tolerance": 0.05}, "0.8 (paper 0.85) (2 runs)"),
    ({"kind": "agreement", "at": {"model": "A"}, "tolerance": 0.2, "expected": 0.9}, "0.8 (expected 0.9) (2 runs)"),
])
def test_an_agreement_names_where_its_expected_value_comes_from(tmp_path, check, shown):
    """The reference row is the paper's value; an ``expected`` in the check is the config's own (a closed form, an
    official script's number)."""
    assert evaluate(toy_study(tmp_path), claim(**check))["reason"] == shown


@pytest.mark.parametrize(("study_profile", "check", "reason"), [
    ("full", {"kind": "bound", "at": {"model": "C"}, "min": 0.0}, "no finished run with m at model=C (runs 0/1 (1 "
                                                                    "missing))"),
    ("full", {"kind": "bound", "at": {"model": "Z"}, "min": 0.0}, "no finished run with m at no grid point"),
    ("full", {"kind": "bound", "at": {}, "min": 0.0}, "no finished run with m at model=C (runs 0/1 (1 missing)); it "
                                                      "pools 3 grid points"),
    ("full", {"kind": "ordering", "higher": {"model": "A"}, "lower": {}}, "at model=C"),
    ("full", {"kind": "agreement", "at": {"model": "B"}, "tolerance": 0.1}, "the paper gives no value"),
    ("quick", {"kind": "bound", "at": {"model": "A"}, "min": 0.0}, "meaningful at full; these runs were made at "
                                                                    "profile quick"),
    (None, {"kind": "bound", "at": {"model": "A"}, "min": 0.0}, "made at settings that are no profile's"),
])
def test_a_claim_without_runs_or_at_another_length_gets_no_holds_or_fails(tmp_path, study_profile, check, reason):
    record = evaluate(toy_study(tmp_path, study_profile), claim(**check))
    expected = "not checked at this length" if study_profile != "full" else "not run"
    assert record["verdict"] == expected
    assert reason in record["reason"]


def test_a_pool_over_several_grid_points_is_judged_once_every_point_has_a_run(tmp_path):
    """Two of three points finished give another mixture than the claim names: no verdict until the third has run,
    then the mean over every finished run of the three."""
    study = toy_study(tmp_path)
    pool = claim(kind="bound", at={}, min=0.0)
    assert evaluate(study, pool)["verdict"] == "not run"
    study.points[2] = point("model=C", [finished(tmp_path / "c", 1, m=0.4)])
    record = evaluate(study, pool)
    pooled_mean = statistics.fmean([0.9, 0.7, 0.2, 0.4])
    assert (record["verdict"], record["ours"]) == ("holds", {"value": pytest.approx(pooled_mean)})


@pytest.mark.parametrize("unended", [None, {"status": "failed", "seed": 3}, {"status": "interrupted", "seed": 3}])
def test_a_point_is_judged_once_every_seeds_run_has_ended(tmp_path, unended):
    """Two of three seeds finished are not the point's pool: no verdict while the third is missing, failed or
    interrupted (a sweep runs it again; the two alone would hold), then the mean over all three."""
    study = toy_study(tmp_path)
    seeds = [finished(tmp_path / "b", 1, m=0.2), finished(tmp_path / "b", 2, m=0.4)]
    study.points[1] = point("model=B", [*seeds, (tmp_path / "b" / "seed3", unended)])
    check = claim(kind="bound", at={"model": "B"}, max=0.45)
    record = evaluate(study, check)
    assert record["verdict"] == "not run"
    assert record["reason"].startswith("m at model=B waits for every seed's run to end (runs 2/3 (1 ")
    study.points[1] = point("model=B", [*seeds, finished(tmp_path / "b", 3, m=0.9)])
    record = evaluate(study, check)
    assert (record["verdict"], record["ours"]) == ("fails", {"value": pytest.approx(0.5)})


def test_runs_ended_reads_a_diverged_run_at_its_last_record(tmp_path):
    """A claim about what happens before a predicted divergence reads the diverged runs too (seed 3 of model A ended
    diverged at m = 5.0); by default they are left out, and a point whose every run diverged is not run."""
    study = toy_study(tmp_path)
    study.points[2] = point("model=C", [(tmp_path / "c" / "seed1", {"status": "diverged", "seed": 1,
                                                                     "metrics": {"m": 1.05}})])
    record = evaluate(study, claim(kind="bound", at={"model": "A"}, max=1.0, runs="ended"))
    assert (record["verdict"], record["ours"]) == ("fails", {"value": pytest.approx(statistics.fmean([0.9, 0.7, 5.0]))})
    assert record["checks"] == "m (diverged runs at their last record) at model=A <= 1"
    assert evaluate(study, claim(kind="bound", at={"model": "C"}, max=1.1, runs="ended"))["verdict"] == "holds"
    record = evaluate(study, claim(kind="bound", at={"model": "C"}, max=1.1))
    assert (record["verdict"], record["reason"]) == ("not run", "no finished run with m at model=C (runs 0/1 (1 "
                                                                 "diverged))")


def test_reduce_reads_the_max_or_min_over_the_run_history(tmp_path):
    run_dir, summary = finished(tmp_path / "a", 1, m=0.1)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "step": e, "m": v}) + "\n"
                                                   for e, v in enumerate([0.1, 0.6, 0.3])))
    study = Study("toy2022/t", tmp_path, ["model"], ["m"], [], [point("model=A", [(run_dir, summary)])], [], "full")
    assert evaluate(study, claim(kind="bound", at={}, reduce="max", min=0.5))["ours"] == {"value": 0.6}
    assert evaluate(study, claim(kind="bound", at={}, reduce="final", min=0.5))["verdict"] == "fails"
    rose = claim(kind="ordering", higher={"model": "A"}, lower={"model": "A"}, reduce="max", lower_reduce="first",
                 margin=0.4)
    record = evaluate(study, rose)
    assert (record["verdict"], record["ours"]) == ("holds", {"higher": 0.6, "lower": 0.1})
    assert "max over epochs of m at model=A >= first over epochs of m at model=A + 0.4" == record["checks"]


def test_the_profile_of_a_sweep_is_none_once_overrides_change_its_runs():
    assert profile_of(None, []) == "full"
    assert profile_of("quick", ["logger=none", "trainer.accelerator=gpu", "data.root=/d"]) == "quick"
    assert profile_of("quick", ["trainer.max_epochs=3"]) is None


@pytest.mark.parametrize(("claims", "error"), [
    ("[{id: a, source: T, statement: s, profiles: [fast], check: {metric: m, min: 1}}]",
     "sweep.claims[0].profiles names 'fast', which sweep.profiles does not define; its profiles: full"),
    ("[{id: a, source: T, statement: s, check: {metric: m}}]", "sweep.claims[0].check: a bound needs min, max or both"),
    ("[{id: A_b, source: T, statement: s, check: {metric: m, min: 1}}]", "sweep.claims[0].id='A_b' must be lower-case"),
    ("[{id: a, source: T, statement: s, check: {kind: agreement, metric: m}}]",
     "sweep.claims[0].check.tolerance=None must be a number >= 0"),
    ("[{id: a, source: T, statement: s, check: {kind: order, metric: m}}]", "sweep.claims[0].check.kind='order'"),
    ("[{id: a, source: T, statement: s, check: {metric: m, min: 1, runs: all}}]", "sweep.claims[0].check.runs='all'"),
    ("[{id: a, source: T, statement: s, check: {metric: m, min: 1}}, {id: a, source: T, statement: s, check: "
     "{metric: m, min: 1}}]", "sweep.claims[1].id=a is used twice"),
])
def test_a_malformed_claim_is_one_line_naming_it(run_cli, tmp_path, claims, error):
    config = tmp_path / "bad.yaml"
    config.write_text(f"defaults:\n  - /base\n  - _self_\nsweep:\n  claims: {claims}\n")
    code, _, err = run_cli("sweep", "--config", config, "--dry-run")
    assert code == 2
    assert error in error_line(code, err)


def test_an_unknown_study_or_profile_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("reproduce", "nobody1999", "--profile", "quick", "--out", tmp_path / "o")
    assert code == 2 and "'nobody1999' is neither a study nor a config; studies: " in error_line(code, err)
    code, _, err = run_cli("sweep", "--config", "quickstart", "--profile", "quick", "--dry-run")
    assert code == 2 and "--profile quick: quickstart has no such profile; its profiles: full" in error_line(code, err)


def recomputed(record: dict, out: Path) -> dict:
    """A claim's sides recomputed from the summaries of the run directories that claims.json names."""
    sides = []
    for side in record["sides"]:
        summaries = [json.loads((out / run["dir"] / "summary.json").read_text()) for run in side["runs"]]
        assert [summary["seed"] for summary in summaries] == [run["seed"] for run in side["runs"]]
        sides.append(statistics.fmean(summary["metrics"][side["metric"]] for summary in summaries))
    return dict(zip(["higher", "lower"] if len(sides) == 2 else ["value"], sides))


def test_reproduce_runs_what_the_claims_need_and_its_scoreboard_adds_up(run_cli, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "out"
    code, stdout, err = run_cli("reproduce", config, "--profile", "quick", "--out", out, "--jobs", "2")
    assert code == 0, err
    assert "reproduce [1/1] tiny2022: 2 claims checked at quick in 1 config" in stdout
    sweep_dir = out / "tiny2022" / "steps"
    ran = sorted(str(p.parent.relative_to(sweep_dir)) for p in sweep_dir.rglob("summary.json"))
    assert ran == [f"data.sparsity=0.1,optim.lr={lr}/seed{s}" for lr in ("0.05", "0.5") for s in (1, 2)]
    claims = json.loads((out / "claims.json").read_text())
    records = {r["id"].split(":")[1]: r for r in claims["claims"]}
    assert records["agrees-with-the-paper"]["verdict"] == "not checked at this length"
    assert records["beyond-one"]["verdict"] == "fails"
    for record in records.values():
        assert record["profile"] == "quick"
        if record["verdict"] in ("holds", "fails"):
            assert record["ours"] == pytest.approx(recomputed(record, out), abs=1e-12)
    ordering = records["larger-step-recovers-more"]
    assert ordering["verdict"] == ("holds" if ordering["ours"]["higher"] >= ordering["ours"]["lower"] else "fails")
    total = claims["scoreboard"][-1]
    assert total["study"] == "total" and total["claims"] == 3
    assert [total[v] for v in VERDICTS] == [sum(r["verdict"] == v for r in records.values()) for v in VERDICTS]
    report = (out / "report.md").read_text()
    assert report.index("## Claims") < report.index("## tiny2022/steps")
    assert "2 other grid points of 4 without runs." in report
    assert "| tiny2022 | 3 |" in (out / "scoreboard.md").read_text()

    before = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")}
    code, stdout, err = run_cli("reproduce", config, "--profile", "quick", "--out", out)
    assert code == 0, err
    assert "4 already finished; running 0" in stdout  # resumed: nothing trained again
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")} == before
    assert json.loads((out / "claims.json").read_text()) == claims


def test_a_sweep_with_overrides_beyond_the_profile_checks_no_claim(run_cli, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    sweep_dir = tmp_path / "sweep"
    code, _, err = run_cli("sweep", "--config", config, "--profile", "quick", "--sweep-dir", sweep_dir, "--jobs", "2",
                           "--only", "optim.lr=0.5", "--only", "data.sparsity=0.1", "data.n=48")
    assert code == 0, err
    assert json.loads((sweep_dir / "sweep.json").read_text())["profile"] is None
    code, _, err = run_cli("report", sweep_dir)
    assert code == 0, err
    verdicts = [r["verdict"] for r in json.loads((sweep_dir / "report" / "claims.json").read_text())["claims"]]
    assert verdicts == ["not checked at this length"] * 3


@pytest.mark.slow
def test_the_quick_profile_of_every_study_gives_the_committed_verdicts(run_cli, tmp_path):
    """The quick profile as a regression test: every claim's verdict as in docs/claims/quick.json."""
    from claims_docs import committed

    out = tmp_path / "quick"
    code, _, err = run_cli("reproduce", "--profile", "quick", "--out", out, "--jobs", "2")
    assert code == 0, err
    ours = {r["id"]: r["verdict"] for r in json.loads((out / "claims.json").read_text())["claims"]}
    assert ours == {claim_id: record["verdict"] for claim_id, record in committed()["quick"].items()}


def test_the_full_profile_takes_no_overrides(run_cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("defaults:\n  - /base\n  - _self_\n"
                      "sweep:\n  profiles: {full: {overrides: [trainer.max_epochs=2]}}\n")
    code, _, err = run_cli("sweep", "--config", config, "--dry-run")
    assert code == 2
    assert error_line(code, err).startswith("sweep.profiles.full is the config as written: it takes no overrides")
