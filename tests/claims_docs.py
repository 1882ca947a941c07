"""The claims sections of the study pages (``docs/<study>.md``) and the README's Studies section, written from the
committed scoreboards of ``ssl-bench reproduce``: ``docs/claims/quick.json`` (the latest quick run) and
``docs/claims/full.json`` (the full-length runs made: at profile full, or at a full-length variant such as
pokle2022's release_scripts for the claims that name it). ``tests/test_claims_docs.py`` fails when a section differs
from what these files say, when a config's claim is missing from them, and when prose calls a claim reproduced that
a committed scoreboard says fails.

After a new ``ssl-bench reproduce --profile quick --out OUT`` (or ``full``), copy ``OUT/claims.json`` to
``docs/claims/PROFILE.json`` and ``OUT/scoreboard.md`` to ``docs/scoreboard-PROFILE.md``, then rewrite the sections:

    python tests/claims_docs.py

Full-length runs come a few studies at a time: ``--merge OUT/claims.json PROFILE`` takes into the committed
scoreboard every claim of OUT's report that its runs judged (holds, fails, not checked at a length made at PROFILE
itself, or not run while it waits for the other seeds of runs it read) and keeps the committed record of the others,
then rewrites ``docs/scoreboard-PROFILE.md`` (a line on the merge added to its paragraph on how the runs were made)
and the sections:

    python tests/claims_docs.py --merge runs/full/claims.json full
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ssl_bench.config.compose import CONFIG_DIR, available_configs
from ssl_bench.study.claims import claims_markdown, markdown_cell, scoreboard, scoreboard_markdown
from ssl_bench.study.reproduce import machine
from ssl_bench.study.table import plural

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROFILES = ("quick", "full")
BEGIN = "<!-- claims: written by `python tests/claims_docs.py` from docs/claims/*.json; do not edit by hand -->"
END = "<!-- /claims -->"
CLAIM_ID = re.compile(r"`([a-z]+[0-9]{4}/[a-z0-9_]+:[a-z0-9-]+)`")
PROSE_VERDICT = re.compile(r"not reproduced|not shown|reproduced|partly|holds?|fails?", re.IGNORECASE)
"""Verdict words of prose, longest first, so that "not reproduced" is not read as "reproduced"."""


def configured() -> set[str]:
    """The full id of every claim in the experiment configs."""
    return {f"{name}:{claim['id']}" for name in available_configs()[0]
            for claim in ((yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()) or {}).get("sweep") or {})
            .get("claims", [])}


def committed(docs: Path = DOCS) -> dict[str, dict[str, dict[str, Any]]]:
    """Per profile, the committed claim records by id ({} for a profile never run)."""
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for profile in PROFILES:
        path = docs / "claims" / f"{profile}.json"
        claims = json.loads(path.read_text(encoding="utf-8"))["claims"] if path.is_file() else []
        records[profile] = {record["id"]: record for record in claims}
    return records


def verdict_cell(record: dict[str, Any] | None, profile: str) -> str:
    """A claim's verdict in the column of ``profile``: with ours when it holds or fails, and the profile its runs
    were made at where that is another (a full-length variant such as pokle2022's release_scripts); ``not run`` when
    that scoreboard does not list it."""
    if record is None:
        return "not run"
    made_at = "" if record.get("profile") in (None, profile) else f" (profile {record['profile']})"
    if record["verdict"] in ("holds", "fails"):
        return f"**{record['verdict']}**{made_at}: {markdown_cell(record['reason'])}"
    return record["verdict"] + made_at


def ordered_ids(records: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    return list(dict.fromkeys(i for profile in PROFILES for i in records[profile]))


def study_block(study: str, records: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The claims table of one study page."""
    lines = [BEGIN, "", "| claim | source | statement | paper | check | quick | full |",
             "|---|---|---|---|---|---|---|"]
    for claim_id in ordered_ids(records):
        shown = next(records[p][claim_id] for p in PROFILES if claim_id in records[p])
        if shown["study"] != study:
            continue
        paper = ", ".join(f"{name} {value:g}" for name, value in shown["paper"].items())
        cells = [f"`{claim_id}`", *map(markdown_cell, (shown["source"], shown["statement"], paper, shown["checks"])),
                 *(verdict_cell(records[profile].get(claim_id), profile) for profile in PROFILES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", END])


def made(profile: str) -> str:
    """Where and when the committed scoreboard of ``profile`` was made: the line ``ssl-bench reproduce`` wrote under
    its title in ``docs/scoreboard-PROFILE.md``."""
    path = DOCS / f"scoreboard-{profile}.md"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return lines[2].split(":")[0] if len(lines) > 2 else "never run"


def readme_block(records: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The README's scoreboard: per study, the claims that hold / fail / were not run / not checked, per profile."""
    studies = list(dict.fromkeys(record["study"] for profile in PROFILES for record in records[profile].values()))
    ids = ordered_ids(records)
    lines = [BEGIN, "", *(f"- {profile}: {made(profile)}" for profile in PROFILES), "",
             "| study | claims | quick: holds / fails / not run / not checked | full: holds / fails / not "
             "run / not checked |", "|---|---|---|---|"]
    for study in [*studies, "total"]:
        chosen = [i for i in ids if study == "total" or
                  next(records[p][i] for p in PROFILES if i in records[p])["study"] == study]
        cells = []
        for profile in PROFILES:
            verdicts = [records[profile][i]["verdict"] if i in records[profile] else "not run" for i in chosen]
            cells.append(" / ".join(str(verdicts.count(v)) for v in
                                    ("holds", "fails", "not run", "not checked at this length")))
        name = f"**{study}**" if study == "total" else f"[{study}](docs/{study}.md#claims)"
        lines.append(f"| {name} | {len(chosen)} | {cells[0]} | {cells[1]} |")
    return "\n".join([*lines, "", END])


def replace_block(text: str, block: str, where: Path) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{where} has no claims section; add the two lines {BEGIN!r} and {END!r} where it goes")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def pages() -> dict[Path, str]:
    """Every page with a claims section and the section it should hold."""
    records = committed()
    studies = {record["study"] for profile in PROFILES for record in records[profile].values()}
    blocks = {ROOT / "README.md": readme_block(records)}
    blocks.update({DOCS / f"{study}.md": study_block(study, records) for study in sorted(studies)})
    return blocks


def prose_conflicts(text: str, records: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Claim ids that a line of prose (outside the generated section) calls reproduced or holding while a committed
    scoreboard says the claim fails: the verdict word is the last one before the id on its line."""
    outside = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), "", text, flags=re.DOTALL)
    conflicts = []
    for line in outside.splitlines():
        start = 0
        for match in CLAIM_ID.finditer(line):
            words = PROSE_VERDICT.findall(line[start:match.start()])
            start = match.end()
            said = words[-1].lower().rstrip("s") if words else None
            failing = [p for p in PROFILES if records[p].get(match.group(1), {}).get("verdict") == "fails"]
            if said in ("reproduced", "hold") and failing:
                conflicts.append(f"{match.group(1)} ({said}; fails at {', '.join(failing)})")
    return conflicts


def read_runs(record: dict[str, Any]) -> bool:
    """Whether a claim's record read some run (a ``not run`` waiting for the other seeds of runs that exist)."""
    return any(side.get("runs") for side in record.get("sides", []))


def merge(new_claims: Path, profile: str, docs: Path = DOCS) -> None:
    """Take every claim of ``new_claims`` (a report's claims.json) that its runs judged into
    ``docs/claims/PROFILE.json`` (a ``not run`` too where it read some of them: it waits for their other seeds),
    keep the committed record of the others that a config still holds, and rewrite ``docs/scoreboard-PROFILE.md``
    from the result, its paragraph on how the runs were made extended by a line on this merge."""
    path = docs / "claims" / f"{profile}.json"
    claims = configured()
    kept = {i: record for i, record in committed(docs)[profile].items() if i in claims}
    judged = {record["id"]: record for record in json.loads(new_claims.read_text(encoding="utf-8"))["claims"]
              if record["id"] not in kept or record["verdict"] in ("holds", "fails") or read_runs(record)
              or (record["verdict"] == "not checked at this length" and record.get("profile") == profile)}
    records = list({**kept, **judged}.values())
    verdicts = sum(record["verdict"] in ("holds", "fails") for record in judged.values())
    path.write_text(json.dumps({"scoreboard": scoreboard(records), "claims": records}, indent=2) + "\n",
                    encoding="utf-8")
    board = docs / f"scoreboard-{profile}.md"
    parts = board.read_text(encoding="utf-8").split("\n\n") if board.exists() else []
    made = parts[1] + "\n" if len(parts) > 2 and not parts[1].startswith("|") else ""
    merged = (f"{time.strftime('%Y-%m-%d')}, {machine()}: {plural(verdicts, 'claim')} judged by the runs of "
              f"{new_claims.parent}, the others as committed before.")
    board.write_text(f"# Scoreboard: profile {profile}\n\n{made}{merged}\n\n{scoreboard_markdown(records)}\n\n"
                     + claims_markdown(records) + "\n", encoding="utf-8")


def main() -> int:
    if sys.argv[1:2] == ["--merge"]:
        if len(sys.argv) != 4 or sys.argv[3] not in PROFILES:
            raise SystemExit(f"usage: python tests/claims_docs.py --merge CLAIMS_JSON {{{','.join(PROFILES)}}}")
        merge(Path(sys.argv[2]), sys.argv[3])
    for path, block in pages().items():
        text = path.read_text(encoding="utf-8")
        updated = replace_block(text, block, path)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            print(f"rewrote the claims section of {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
