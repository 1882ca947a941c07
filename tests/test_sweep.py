"""Sweep integrity: per-run keys refused, a sweep directory that remembers its settings, diverged and missing runs in
the table, one plain line per run in a log, Ctrl-C that starts no further runs."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, error_line

from ssl_bench.config import to_yaml
from ssl_bench.config.compose import load
from ssl_bench.study.grid import expand_grid, select_points
from ssl_bench.study.report import sweep_table_markdown

TINY_SWEEP = [*TINY, "sweep.seeds=[1]"]


def table_rows(table: str) -> list[list[str]]:
    """The cells of a markdown table's body rows."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[4:] if line.startswith("|")]


def mtimes(sweep_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")}


def sweep_env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# -------------------------------------------------------------------------------------------------- per-run keys


@pytest.mark.parametrize("override, fix", [
    ("seed=7", "seed=7 cannot be given to a sweep, which sets seed for each run (every run would get the same "
               "seed); give the sweep's seeds with sweep.seeds=[7]"),
    ("++seed=7", "++seed=7 cannot be given to a sweep, which sets seed for each run (every run would get the same "
                 "seed); give the sweep's seeds with sweep.seeds=[7]"),
    ("run_dir=out", "run_dir=out cannot be given to a sweep, which sets run_dir for each run (every run would write "
                    "to the same directory); choose where the sweep's runs go with --sweep-dir out"),
    ("group=mine", "group=mine cannot be given to a sweep, which sets group for each run (the sweep groups its runs "
                   "as EXPERIMENT/GRID_POINT); name the groups with experiment=mine"),
    ("trainer.resume=auto", "trainer.resume=auto cannot be given to a sweep, which sets trainer.resume for each run "
                            "(every run would start from the same checkpoint); a sweep run again resumes its "
                            "interrupted runs from their own last checkpoints"),
], ids=lambda value: value.split("=")[0] if "cannot" not in value else "")
def test_per_run_overrides_are_refused(run_cli, tmp_path, override, fix):
    sweep_dir = tmp_path / "sweep"
    code, out, err = run_cli("sweep", "--config", "quickstart", *TINY, override, "--sweep-dir", sweep_dir)
    assert error_line(code, err) == fix
    assert not sweep_dir.exists()


def test_experiment_may_be_set_and_names_the_groups(run_cli, tmp_path):
    """The experiment is the same for every run: it may be set, and names the runs' groups (without a grid, the group
    is the experiment itself, with no trailing slash)."""
    sweep_dir = tmp_path / "sweep"
    code, out, err = run_cli("sweep", "--config", "quickstart", *TINY, "sweep.seeds=[1,2]", "experiment=renamed",
                             "--sweep-dir", sweep_dir, "--print-config")
    assert code == 0, err
    assert out.splitlines() == [f"every run: {' '.join([*TINY, 'sweep.seeds=[1,2]', 'experiment=renamed'])}",
                                *(f"{sweep_dir / 'default' / f'seed{seed}'}: seed={seed}" for seed in (1, 2))]
    assert expand_grid(None)[0].group("renamed") == "renamed"
    assert expand_grid({"data.n": [8]})[0].group("renamed") == "renamed/data.n=8"


# ------------------------------------------------------------------------------------------ settings of a sweep dir


def test_sweep_dir_remembers_settings_refuses_others_and_force_replaces(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "--config", "quickstart", *TINY_SWEEP, "--sweep-dir", sweep_dir]
    code, out, err = run_cli(*args)
    assert code == 0, err
    run_dir = sweep_dir / "default" / "seed1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["group"] == "quickstart"  # no trailing slash
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    assert spec["groups"] == ["quickstart"] and spec["seeds"] == [1]
    [point] = spec["points"]
    settings = point["settings"]
    assert settings["data"]["n"] == 64 and settings["experiment"] == "quickstart"
    assert not {"seed", "run_dir", "group", "sweep"} & settings.keys() and "resume" not in settings["trainer"]
    # the recorded settings are the run's own config.yaml less the per-run keys
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {k: v for k, v in config.items() if k not in ("seed", "run_dir", "group", "sweep")} == {
        **settings, "trainer": {**settings["trainer"], "resume": None}}
    before, spec_text = mtimes(sweep_dir), (sweep_dir / "sweep.json").read_text()

    code, out, err = run_cli(*args[:-2], "data.n=128", "optim.lr=0.1", "--sweep-dir", sweep_dir)
    assert error_line(code, err) == (f"{sweep_dir} holds runs made with other settings (data.n: 64 -> 128, optim.lr: "
                                     "0.025 -> 0.1); run with --force to replace them, or choose another --sweep-dir")
    code, out, err = run_cli(*args[:-2], "sweep.seeds=[2]", "--sweep-dir", sweep_dir)
    assert error_line(code, err).startswith(f"{sweep_dir} holds runs made with other settings (sweep.seeds: [1] -> "
                                            "[2]); run with --force")
    assert mtimes(sweep_dir) == before and (sweep_dir / "sweep.json").read_text() == spec_text

    code, out, err = run_cli(*args)  # the same settings: nothing to run
    assert code == 0, err
    assert "1 already finished; running 0" in out and mtimes(sweep_dir) == before
    code, out, err = run_cli(*args[:-2], "logger.mode=offline", "--sweep-dir", sweep_dir)  # where runs log: no change
    assert code == 0, err
    assert "1 already finished; running 0" in out and mtimes(sweep_dir) == before

    code, out, err = run_cli(*args[:-2], "data.n=128", "--sweep-dir", sweep_dir, "--force")
    assert code == 0, err
    assert "all to run again (--force); running 1" in out
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["n"] == 128
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert json.loads((sweep_dir / "sweep.json").read_text())["points"][0]["settings"]["data"]["n"] == 128
    assert "| 1/1 |" in out


def test_a_record_without_settings_is_checked_against_the_runs_config(run_cli, tmp_path):
    """A sweep.json written before settings were recorded: the runs' own config.yaml say what they were made with."""
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "default" / "seed1"
    run_dir.mkdir(parents=True)
    cfg = load("quickstart", [*TINY_SWEEP, "seed=1", f"run_dir={run_dir}", "group=quickstart"])
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished", "group": "quickstart", "seed": 1,
                                                      "metrics": {"maxcos/max": 0.5}}))
    (sweep_dir / "sweep.json").write_text(json.dumps({"experiment": "quickstart", "metrics": ["maxcos/max"],
                                                      "axes": [], "groups": ["quickstart"], "reference": []}))
    args = ["sweep", "--config", "quickstart", *TINY_SWEEP, "--sweep-dir", sweep_dir]
    code, out, err = run_cli(*args, "encoder.width=16")
    assert error_line(code, err).startswith(f"{sweep_dir} holds runs made with other settings (encoder.width: 8 -> 16)")
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "1 already finished; running 0" in out and "| 1/1 | 0.500 ± 0.000 |" in out
    assert json.loads((sweep_dir / "sweep.json").read_text())["points"][0]["settings"]["encoder"]["width"] == 8


# ----------------------------------------------------------------------------------------------- diverged runs


def test_a_diverged_run_in_a_sweep_is_counted_kept_and_printed_once_per_line(cli_subprocess, run_cli, tmp_path):
    """optim.lr=1e30 makes AdamW's loss non-finite within the first epoch: that grid point's run ends ``diverged``,
    the table counts it and summarises the other point; the sweep's stdout is a pipe, so it prints one plain line per
    run (no carriage returns, no line twice)."""
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "--config", "quickstart", *TINY_SWEEP, "optim=adamw", "sweep.grid={optim.lr:[0.01,1e30]}",
            "--jobs", "2", "--sweep-dir", sweep_dir]
    proc = cli_subprocess(*args)
    assert proc.returncode == 0, proc.stderr  # every run ended for good
    assert "\r" not in proc.stdout
    lines = proc.stdout.splitlines()
    progress = [line.split("] ", 1) for line in lines if line.startswith("sweep [")]
    assert [count for count, _ in progress] == ["sweep [1/2", "sweep [2/2"]  # the last one once
    assert sorted(run for _, run in progress) == ["optim.lr=0.01/seed1: finished", "optim.lr=1e+30/seed1: diverged"]
    assert lines.count("| optim.lr | runs | maxcos/max | maxcos/median | maxcos/min |") == 1

    diverged = json.loads((sweep_dir / "optim.lr=1e+30" / "seed1" / "summary.json").read_text())
    assert diverged["status"] == "diverged" and diverged["diverged"]["loss"] == "nan"
    for history in (sweep_dir / "optim.lr=1e+30" / "seed1").glob("*.jsonl"):
        for line in history.read_text().splitlines():
            json.loads(line)  # valid JSON: no bare NaN
    at = diverged["diverged"]
    assert (f"diverged: {sweep_dir / 'optim.lr=1e+30' / 'seed1'} (non-finite loss at epoch {at['epoch']}, "
            f"step {at['step']})") in proc.stderr
    rows = table_rows((sweep_dir / "table.md").read_text())
    assert [row[:2] for row in rows] == [["0.01", "1/1"], ["1e+30", "0/1 (1 diverged)"]]
    assert rows[0][2].endswith("± 0.000") and rows[1][2:] == ["-", "-", "-"]

    before = mtimes(sweep_dir)
    code, out, err = run_cli(*args)  # a diverged run would diverge again: it is kept, like a finished one
    assert code == 0, err
    assert "1 already finished, 1 diverged (kept); running 0" in out
    assert mtimes(sweep_dir) == before


# ---------------------------------------------------------------------------------------------------- report


def write_sweep(sweep_dir: Path, runs: dict[tuple[str, int], dict | str]) -> None:
    """A sweep.json of grid points A..D (axis ``model``) x seeds 1..3, and the given summaries (a string is written
    as it is: a broken file)."""
    points = [{"label": f"model={m}", "group": f"exp/model={m}", "dir": f"model={m}", "axes": {"model": m},
               "overrides": [], "settings": {}} for m in "ABCD"]
    spec = {"experiment": "exp", "config": "quickstart", "overrides": [], "metrics": ["maxcos/max", "maxcos/min"],
            "reference": [{"match": {"model": "B"}, "values": {"maxcos/max": 0.5}}], "axes": ["model"],
            "groups": [p["group"] for p in points], "seeds": [1, 2, 3], "points": points}
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps(spec))
    for (model, seed), summary in runs.items():
        run_dir = sweep_dir / f"model={model}" / f"seed{seed}"
        run_dir.mkdir(parents=True)
        text = summary if isinstance(summary, str) else json.dumps({"group": f"exp/model={model}", "seed": seed,
                                                                    **summary})
        (run_dir / "summary.json").write_text(text)


def test_report_counts_runs_by_status_and_lists_points_without_runs(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    write_sweep(sweep_dir, {
        ("A", 1): {"status": "finished", "metrics": {"maxcos/max": 0.2, "maxcos/min": 0.1}},
        ("A", 2): {"status": "finished", "metrics": {"maxcos/max": 0.6, "maxcos/min": 0.1}},
        ("A", 3): {"status": "diverged", "metrics": {"loss": "nan"},
                   "diverged": {"epoch": 4, "step": 9, "loss": "nan"}},
        ("B", 1): {"status": "failed", "metrics": {}},
        ("B", 2): {"status": "interrupted", "metrics": {"maxcos/max": 0.3}, "signal": "SIGTERM", "resume": None},
        ("C", 1): {"status": "finished", "metrics": {"maxcos/max": "inf"}},  # no maxcos/min
        ("C", 2): '{"status": "fini',  # cut off: counted as missing
        ("C", 3): {"status": "finished", "metrics": {"maxcos/max": 0.5, "maxcos/min": "nan"}},
    })
    code, out, err = run_cli("report", sweep_dir)
    assert code == 0, err
    table = out.strip()
    assert table.splitlines()[0] == ("exp: mean ± std over the finished runs of the final values, paper's value in "
                                     "parentheses; runs: finished/all, the others by status")
    assert table.splitlines()[2] == "| model | runs | maxcos/max | maxcos/min |"
    a_max = f"{statistics.fmean([0.2, 0.6]):.3f} ± {statistics.pstdev([0.2, 0.6]):.3f}"
    assert table_rows(table) == [
        ["A", "2/3 (1 diverged)", a_max, "0.100 ± 0.000"],  # the diverged run is counted, not averaged
        ["B", "0/3 (1 failed, 1 interrupted, 1 missing)", "- (0.50)", "-"],
        ["C", "2/3 (1 missing)", "inf ± nan", "nan ± nan"],
    ]  # D has no run: summed up in one line, as in the report
    assert table.splitlines()[-1] == "1 other grid point of 4 without runs."
    assert table_rows(sweep_table_markdown(sweep_dir))[-1] == ["D", "0/3 (3 missing)", "-", "-"]


def test_report_help_has_a_description(run_cli):
    code, out, err = run_cli("report", "--help")
    assert code == 0
    assert "mean ± std" in out and "diverged" in out and "missing" in out


# --------------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_the_sweep_and_a_rerun_resumes_the_interrupted_run(tmp_path):
    """SIGINT to the sweep's process group (Ctrl-C in a terminal) interrupts the running fit and starts no other run
    (exit 130); the same command again resumes the interrupted run from its last checkpoint and runs the rest."""
    sweep_dir = tmp_path / "sweep"
    args = [sys.executable, "-m", "ssl_bench.cli", "sweep", "--config", "quickstart",
            *[o for o in TINY if not o.startswith("trainer.max_epochs")], "trainer.max_epochs=100",
            "trainer.checkpoint_every_n_epochs=2", "sweep.seeds=[1,2]", "--sweep-dir", str(sweep_dir)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    first = sweep_dir / "default" / "seed1"
    try:
        deadline = time.monotonic() + 90
        while not (first / "checkpoints" / "last.ckpt").is_file():  # training has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "sweep interrupted" in err and len(err.strip().splitlines()) == 1, err
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume"], summary
    assert not (sweep_dir / "default" / "seed2").exists()

    proc = subprocess.run(args + ["--jobs", "2"], cwd=tmp_path, env=sweep_env(), capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "0 already finished; running 2" in proc.stdout
    for seed in (1, 2):
        summary = json.loads((sweep_dir / "default" / f"seed{seed}" / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["epochs"] == 100, summary
    assert yaml.safe_load((first / "config.yaml").read_text())["trainer"]["resume"] == "auto"
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert all(a < b for a, b in zip(steps, steps[1:])), steps  # the history goes on, no line doubled


# --------------------------------------------------------------------------------------------------- --only


def test_only_runs_the_chosen_grid_points_and_the_table_keeps_the_whole_grid(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "--config", "quickstart", *TINY_SWEEP, "sweep.grid={data.sparsity:[0.2,0.3],optim.lr:[0.01,0.02]}",
            "--jobs", "2", "--sweep-dir", sweep_dir]
    code, out, err = run_cli(*args, "--only", "optim.lr=0.02", "--only", "data.sparsity=0.3,0.2")
    assert code == 0, err
    assert "4 points x 1 seed = 4 runs (--only: 2 points), 0 already finished; running 2" in out
    ran = sorted(p.parent.parent.name for p in sweep_dir.rglob("summary.json"))
    assert ran == ["data.sparsity=0.2,optim.lr=0.02", "data.sparsity=0.3,optim.lr=0.02"]
    assert [row[:3] for row in table_rows(sweep_table_markdown(sweep_dir))] == [
        ["0.2", "0.01", "0/1 (1 missing)"], ["0.2", "0.02", "1/1"], ["0.3", "0.01", "0/1 (1 missing)"],
        ["0.3", "0.02", "1/1"]]
    assert len(json.loads((sweep_dir / "sweep.json").read_text())["points"]) == 4

    code, out, err = run_cli(*args)  # the rest of the grid: the chosen points are kept
    assert code == 0, err
    assert "2 already finished; running 2" in out and "| 1/1 |" in out and "missing" not in out


def test_a_dry_run_shows_the_profiles_overrides_every_run_takes(run_cli, tmp_path):
    """The release_scripts profile changes the learning rate of every run: the plan says so before the runs."""
    code, out, err = run_cli("sweep", "--config", "pokle2022/one_hot", "--profile", "release_scripts", "--only",
                             "model=NCL", "--dry-run", "--sweep-dir", tmp_path, "logger=none")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "every run: optim.lr=0.005 logger=none"
    assert len(lines) == 11 and lines[1].endswith("method=byol encoder=simplified encoder.width=50 seed=1")


@pytest.mark.parametrize("only, message", [
    ("lr", "--only 'lr' must be AXIS=VALUE[,VALUE...], e.g. --only data.sparsity=..."),
    ("optim.momentum=0.9", "--only optim.momentum=0.9: 'optim.momentum' is not an axis of the grid; its axes: "
                           "data.sparsity, optim.lr"),
    ("optim.lr=0.01,0.5", "--only optim.lr=0.01,0.5: 0.5 not a value of optim.lr; its values: 0.01, 0.02"),
])
def test_only_names_a_bad_axis_or_value(run_cli, tmp_path, only, message):
    code, out, err = run_cli("sweep", "--config", "quickstart", *TINY_SWEEP,
                             "sweep.grid={data.sparsity:[0.2,0.3],optim.lr:[0.01,0.02]}", "--only", only,
                             "--sweep-dir", tmp_path / "sweep")
    assert error_line(code, err) == message
    assert not (tmp_path / "sweep").exists()


def test_only_an_axis_of_one_grid_block_selects_none_of_the_other_blocks_points():
    points = expand_grid([{"model": {"A": ["optim.lr=0.1"]}, "data.sparsity": [0.1, 0.3]},
                          {"model": {"B": ["optim.lr=0.2"]}, "data.sparsity": [0.1], "data.mask_prob": [0.5, 0.9]}])
    assert [p.label for p in select_points(points, ["data.mask_prob=0.9"])] == [
        "model=B,data.sparsity=0.1,data.mask_prob=0.9"]
    assert [p.label for p in select_points(points, ["data.sparsity=0.1"])] == [
        "model=A,data.sparsity=0.1", "model=B,data.sparsity=0.1,data.mask_prob=0.5",
        "model=B,data.sparsity=0.1,data.mask_prob=0.9"]


# ------------------------------------------------------------------------------- grid points composed without the sweep section


def settings_both_ways(config: str, overrides_of_points: list[list[str]]) -> tuple[list[dict], list[dict]]:
    """Each point's settings composed from the whole config file and from :func:`run_loader`'s copy."""
    from ssl_bench.config.compose import run_loader
    from ssl_bench.study.sweep import RUN_OVERRIDES, settings_of

    whole = [settings_of(load(config, [*o, *RUN_OVERRIDES], sweep=False).to_container()) for o in overrides_of_points]
    with run_loader(config) as load_run:
        copied = [settings_of(load_run([*o, *RUN_OVERRIDES]).to_container()) for o in overrides_of_points]
    return whole, copied


def test_grid_points_of_a_study_compose_alike_without_its_sweep_section():
    """Points that switch config groups (encoder=basic_2l, encoder=linear) or a part's keys compose to the same
    settings from the copy without the 125-claim sweep section as from the study's file."""
    points = {p.label: p for p in expand_grid(load("pokle2022/table2", []).sweep.grid)}
    chosen = [points[label].overrides for label in (
        "model=NCL-basic-2L-first-layer,data.sparsity=0.3,data.mask_prob=0.5",
        "model=CL-linear,data.sparsity=0.1", "model=VICReg-basic,data.sparsity=0.1,data.mask_prob=0.5")]
    whole, copied = settings_both_ways("pokle2022/table2", chosen)
    assert copied == whole
    assert [copied[0]["encoder"]["trainable"], copied[1]["method"]["name"], copied[2]["method"]["name"]] == [
        "first_layer", "simclr", "vicreg"]


def test_an_own_yaml_keeps_its_sibling_defaults_and_its_keys_after_the_sweep_section(tmp_path):
    """A YAML of one's own is copied without its sweep block (a column-0 comment inside it, keys after it) and still
    finds a config beside it that its defaults list names."""
    (tmp_path / "common.yaml").write_text("# @package _global_\ndata:\n  n: 96\n")
    path = tmp_path / "mine.yaml"
    path.write_text("defaults: [base, common, _self_]\nsweep:\n  seeds: [1, 2]\n# the grid\n  grid:\n"
                    "    - optim.lr: [0.1, 0.2]\noptim:\n  lr: 0.3\n")
    whole, copied = settings_both_ways(str(path), [[], ["optim.lr=0.2"]])
    assert copied == whole
    assert [(s["data"]["n"], s["optim"]["lr"]) for s in copied] == [(96, 0.3), (96, 0.2)]


def test_a_file_whose_copy_would_read_differently_is_composed_whole(tmp_path):
    """Keys that refer to an anchor inside the sweep section cannot lose it: such a file is composed as it is."""
    path = tmp_path / "anchored.yaml"
    path.write_text("defaults: [base, _self_]\nsweep:\n  seeds: [1, &n 64]\ndata:\n  n: *n\n")
    whole, copied = settings_both_ways(str(path), [[]])
    assert copied == whole and copied[0]["data"]["n"] == 64


def test_the_sweep_block_is_cut_from_the_text_and_every_other_line_kept():
    from ssl_bench.config.compose import without_top_level_key

    text = ("# @package _global_\ndefaults: [base, _self_]\nsweep:\n  seeds: [1]\n# the grid\n\n  grid:\n"
            "    - seed: [1]\noptim:\n  lr: 0.3  # sweep: not a key\nsweeps: 1\nsweep: {seeds: [2]}\n")
    assert without_top_level_key(text, "sweep") == (
        "# @package _global_\ndefaults: [base, _self_]\noptim:\n  lr: 0.3  # sweep: not a key\nsweeps: 1\n")
