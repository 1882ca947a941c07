"""The docs state the verdicts of the committed scoreboards (tests/claims_docs.py): the generated claims sections,
every configured claim in the latest quick scoreboard, and no prose calling a failing claim reproduced."""

from __future__ import annotations

import json

import claims_docs
import pytest
from claims_docs import BEGIN, END, PROFILES, ROOT, committed, configured, merge, pages, prose_conflicts

RECORDS = committed()


@pytest.mark.parametrize("page", sorted(pages(), key=str), ids=lambda path: path.name)
def test_the_claims_section_states_the_committed_verdicts(page):
    text = page.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{page.name} has no claims section"
    section = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert section == pages()[page], f"{page.name}: run `python tests/claims_docs.py` (the claims section differs " \
                                     "from docs/claims/*.json)"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_no_page_calls_a_failing_claim_reproduced(page):
    assert prose_conflicts(page.read_text(encoding="utf-8"), RECORDS) == []


def test_every_configured_claim_is_in_the_latest_quick_scoreboard():
    claims = configured()
    assert claims, "no config holds a claim"
    missing = sorted(claims - set(RECORDS["quick"]))
    assert not missing, f"claims not in docs/claims/quick.json (run `ssl-bench reproduce --profile quick`): {missing}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_committed_verdict_pooled_every_grid_point_its_selectors_match(profile):
    """A holds or fails in docs/claims/ was judged on runs of each point the claim names, never on part of a pool."""
    partial = [f"{record['id']}: {sorted(set(side['points']) - {run['point'] for run in side['runs']})}"
               for record in RECORDS[profile].values() if record["verdict"] in ("holds", "fails")
               for side in record.get("sides", []) if set(side["points"]) - {run["point"] for run in side["runs"]}]
    assert partial == []


def test_the_prose_check_reads_the_verdict_word_nearest_each_id():
    records = {profile: {} for profile in PROFILES}
    records["quick"] = {"a2000/t:x": {"verdict": "fails"}, "a2000/t:y": {"verdict": "holds"}}
    assert prose_conflicts("**Reproduced** (`a2000/t:x`)", records) == ["a2000/t:x (reproduced; fails at quick)"]
    assert prose_conflicts("**Not reproduced** (`a2000/t:x`); **reproduced** (`a2000/t:y`)", records) == []
    assert prose_conflicts(f"{BEGIN}\n| `a2000/t:x` | holds |\n{END}", records) == []


def test_a_merge_takes_the_judged_claims_and_keeps_the_committed_verdicts_of_the_others(tmp_path, monkeypatch):
    def record(claim_id: str, verdict: str) -> dict:
        return {"id": claim_id, "study": claim_id.split("/")[0], "source": "Table 1", "statement": "s", "paper": {},
                "checks": "c", "verdict": verdict, "reason": "r"}

    (tmp_path / "claims").mkdir()
    old = [record("a2022/t:kept", "holds"), record("a2022/t:rejudged", "holds"), record("b2022/t:unrun", "fails"),
           record("b2022/t:waits", "holds"), record("a2022/t:no-longer-configured", "holds")]
    monkeypatch.setattr(claims_docs, "configured",
                        lambda: {"a2022/t:kept", "a2022/t:rejudged", "b2022/t:unrun", "b2022/t:waits"})
    (tmp_path / "claims" / "full.json").write_text(json.dumps({"scoreboard": [], "claims": old}))
    (tmp_path / "scoreboard-full.md").write_text("# Scoreboard: profile full\n\nRuns made on a laptop.\n\n| study |\n")
    waits = {**record("b2022/t:waits", "not run"), "sides": [{"runs": [{"point": "m=A", "seed": 1, "value": 0.5}]}]}
    new = [record("a2022/t:rejudged", "fails"), record("b2022/t:unrun", "not run"), record("c2022/t:new", "not run"),
           {**record("a2022/t:kept", "not checked at this length"), "profile": "release_scripts"}, waits]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "claims.json").write_text(json.dumps({"claims": new}))
    merge(tmp_path / "report" / "claims.json", "full", tmp_path)
    merged = committed(tmp_path)["full"]
    assert {i: r["verdict"] for i, r in merged.items()} == {
        "a2022/t:kept": "holds", "a2022/t:rejudged": "fails", "b2022/t:unrun": "fails", "b2022/t:waits": "not run",
        "c2022/t:new": "not run"}
    board = json.loads((tmp_path / "claims" / "full.json").read_text())["scoreboard"]
    assert board[-1] == {"study": "total", "claims": 5, "holds": 1, "fails": 2, "not run": 2,
                         "not checked at this length": 0}
    made = (tmp_path / "scoreboard-full.md").read_text().split("\n\n")[1].splitlines()
    assert made[0] == "Runs made on a laptop." and "1 claim judged by the runs of" in made[1]
