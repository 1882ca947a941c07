"""``ssl-bench dashboard``: the W&B workspace of a sweep, built offline from a real tiny sweep whose runs logged to W&B
(offline): its sections, panels, grouping and filters, that those select and plot exactly the runs and metrics the
sweep wrote, ``--dry-run`` through the CLI, and one-line refusals without credentials or a sweep directory."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import wandb_workspaces.reports.v2 as wr
from conftest import REPO, TINY, error_line
from wandb.proto import wandb_internal_pb2

from ssl_bench.study.dashboard import build_workspace
from ssl_bench.study.report import sweep_table_markdown

GRID = "sweep.grid={data.sparsity:[0.2]}"
SPECTRUM = ["spectrum/effective_rank", "spectrum/rank", "collapse/std_l2", "spectrum/effective_rank_backbone",
            "spectrum/rank_backbone", "collapse/std_l2_backbone"]


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B run file (``run-ID.wandb``): a 7-byte header (``:W&B``, magic, version), then LevelDB
    log chunks in 32 KiB blocks (crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last), each record
    a ``wandb_internal_pb2.Record``."""
    data, pos, chunks, records = path.read_bytes(), 7, [], []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def offline_run(run_dir: Path) -> dict[str, Any]:
    """What a run's offline W&B file says: its group, name, tags, config and the keys of its history."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run: dict[str, Any] = {"history": set()}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(group=record.run.run_group, name=record.run.display_name, tags=list(record.run.tags),
                       config={u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "history":
            run["history"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return run


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real sweep (one grid point, one seed: seconds) of a tiny quickstart run that logs to W&B offline."""
    directory = tmp_path_factory.mktemp("dashboard") / "sweep"
    args = [arg for arg in TINY if arg != "logger=none"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "ssl_bench.cli", "sweep", "--config", "quickstart", *args,
                           "sweep.seeds=[1]", GRID, "logger=wandb", "--sweep-dir", str(directory)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return directory


def panels(workspace: Any, section: str) -> list[Any]:
    (found,) = [s for s in workspace.sections if s.name == section]
    return found.panels


class Accepting(http.server.BaseHTTPRequestHandler):
    """A W&B server that knows the key and saves every view: it keeps the spec of each ``upsertView`` it is sent
    (in ``server.specs``)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if "upsertView" in body["query"]:
            self.server.specs.append(json.loads(body["variables"]["spec"]))
        answer = {"viewer": {"id": "u1", "entity": "me", "username": "me", "email": "", "flags": "{}",
                             "teams": {"edges": []}},
                  "upsertView": {"view": {"id": "v1", "name": "nw-saved"}, "inserted": True}}
        data = json.dumps({"data": answer}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def saved_view(sweep_dir, tmp_path_factory) -> dict[str, Any]:
    """The view spec that ``ssl-bench dashboard`` saves for the sweep (its ``section``), as a W&B server receives
    it."""
    import wandb

    from ssl_bench.cli import main

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Accepting)
    server.specs = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        wandb.teardown()  # wandb reads WANDB_BASE_URL when it is set up: once per process
        try:
            assert main(["dashboard", "--sweep", str(sweep_dir), "--project", "proj", "--entity", "ent"]) == 0
        finally:
            server.shutdown()
            wandb.teardown()
    (spec,) = server.specs
    return spec["section"]


def test_workspace_sections_panels_and_grouping(sweep_dir, saved_view):
    """The study's figures: the table with the paper's values, final values as bars and curves against the epoch,
    one line per grid point (W&B group) with the mean over seeds and the min-max band; spectra for a study with
    the spectrum callback, no R^2 section without the probe. The saved spec carries the same grouping."""
    workspace = build_workspace(sweep_dir, "proj", "ent")
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    metrics = spec["metrics"]
    assert metrics == ["maxcos/max", "maxcos/median", "maxcos/min"]
    assert (workspace.entity, workspace.project, workspace.name) == ("ent", "proj", "quickstart")
    assert [s.name for s in workspace.sections] == ["Table", "Final values", "Curves", "Spectra"]

    (table,) = panels(workspace, "Table")
    assert isinstance(table, wr.MarkdownPanel) and table.markdown.startswith(sweep_table_markdown(sweep_dir))
    bars = panels(workspace, "Final values")
    assert [b.metrics for b in bars] == [[m] for m in metrics]
    curves = panels(workspace, "Curves")
    assert [c.y for c in curves] == [[m] for m in [*metrics, "train/loss"]]
    spectra = panels(workspace, "Spectra")
    assert [c.y for c in spectra[:-1]] == [[m] for m in SPECTRUM]
    assert isinstance(spectra[-1], wr.CustomChart)
    assert spectra[-1].query == {"summaryTable": {"tableKey": "spectrum/log_singular_values_table"}}
    for panel in [*bars, *curves, *spectra[:-1]]:
        assert isinstance(panel, wr.BarPlot if panel in bars else wr.LinePlot)
        assert (panel.groupby, panel.groupby_aggfunc, panel.groupby_rangefunc) == ("Group", "mean", "minmax")
        assert panel in bars or panel.x == "epoch"

    # what the saved view holds: runs grouped by W&B group in the run list and in every plot
    view = saved_view
    assert view["runSets"][0]["grouping"] == [{"section": "run", "name": "group"}]
    plots = [p for s in view["panelBankConfig"]["sections"] for p in s["panels"] if "groupBy" in p["config"]]
    assert len(plots) == len(bars) + len(curves) + len(spectra) - 1
    assert {(p["config"]["groupBy"], p["config"]["groupAgg"], p["config"]["groupArea"]) for p in plots} == {
        ("group", "mean", "minmax")}
    assert view["settings"]["xAxis"] == "epoch"


def test_workspace_selects_and_plots_the_sweeps_wandb_runs(sweep_dir, saved_view):
    """The workspace's filter and run search select exactly the W&B runs the sweep wrote (their config, group and
    name as recorded in the runs' own W&B files), and every curve's metric is in their W&B history."""
    workspace = build_workspace(sweep_dir, "proj", "ent")
    view = saved_view["runSets"][0]
    assert view["filters"]["filters"] == [{"key": {"section": "config", "name": "experiment"}, "op": "=",
                                           "value": "quickstart", "disabled": False}]
    assert view["search"]["isRegex"] is True
    search = re.compile(view["search"]["query"])
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    runs = [offline_run(sweep_dir / point["dir"] / "seed1") for point in spec["points"]]
    assert [run["group"] for run in runs] == spec["groups"] == ["quickstart/data.sparsity=0.2"]
    curves = [y for s in workspace.sections for p in s.panels if isinstance(p, wr.LinePlot) for y in p.y]
    for run in runs:
        assert run["config"]["experiment"] == "quickstart" and "quickstart" in run["tags"]
        assert search.search(run["name"]) and run["name"] == f"{run['group']}/seed1"
        assert {"epoch", *curves} <= run["history"], sorted(run["history"])
        assert any(key.startswith("spectrum/log_singular_values_table/") for key in run["history"])
    for other in ["quickstart/data.sparsity=0.3/seed1", "quickstart/seed1", "quickstart/data.sparsity=0x2/seed1",
                  "other/quickstart/data.sparsity=0.2/seed1"]:
        assert not search.search(other), other


def test_r2_section_and_no_spectra_without_the_callback(tmp_path):
    """A study with the R^2 probe and no spectrum callback (a hand-written sweep record): R^2 curves per latent group
    of the output and of every layer, and the heatmaps; no Spectra section."""
    settings = {"callbacks": {"r2_probe": {"samples": 64}}}
    spec = {"experiment": "study", "metrics": ["r2/content", "r2/style", "r2/layer1/content", "train/loss"],
            "reference": [], "axes": ["tau"], "groups": ["study/tau=equal"], "seeds": [1, 2],
            "points": [{"label": "tau=equal", "group": "study/tau=equal", "dir": "tau=equal", "axes": {"tau": "equal"},
                        "overrides": [], "settings": settings}]}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    workspace = build_workspace(tmp_path, "proj")
    assert [s.name for s in workspace.sections] == ["Table", "Final values", "Curves", "R^2"]
    assert [p.y for p in panels(workspace, "Curves")] == [["train/loss"]]
    r2 = panels(workspace, "R^2")
    assert [(p.y, p.metric_regex) for p in r2[:4]] == [
        (["r2/content"], None), (["r2/style"], None), ([], r"^r2/layer\d+/content$"), ([], r"^r2/layer\d+/style$")]
    assert re.search(r2[2].metric_regex, "r2/layer3/content") and not re.search(r2[2].metric_regex, "r2/layer3/style")
    assert isinstance(r2[4], wr.MediaBrowser) and r2[4].media_keys == ["r2/heatmap"]
    assert workspace.settings.max_runs == 2


def test_collapse_diagnostics_have_their_section(tmp_path):
    """The collapse callback's diagnostics, after and before the projector, and the kNN accuracy: their own section,
    out of Curves and Spectra."""
    spec = {"experiment": "study", "metrics": ["collapse/rankme", "collapse/lidar", "maxcos/min"],
            "reference": [], "axes": ["model"], "groups": ["study/model=a"], "seeds": [1],
            "points": [{"label": "model=a", "group": "study/model=a", "dir": "model=a", "axes": {"model": "a"},
                        "overrides": [], "settings": {"callbacks": {"collapse": {"views": 4}}}}]}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    workspace = build_workspace(tmp_path, "proj")
    assert [s.name for s in workspace.sections] == ["Table", "Final values", "Curves", "Collapse diagnostics"]
    assert [p.y for p in panels(workspace, "Curves")] == [["maxcos/min"], ["train/loss"]]
    shown = [p.y[0] for p in panels(workspace, "Collapse diagnostics")]
    assert {"collapse/rankme", "collapse/lidar_backbone", "readout/knn_acc", "collapse/alpha_req"} <= set(shown)


def test_dynamics_callbacks_have_their_sections(tmp_path):
    """Feature alignment, the predictor with Bao's norms and regimes, Esser's output dynamics, linear gap and NTK:
    each its own section, their metrics out of Curves."""
    settings = {"callbacks": {"feature_alignment": {}, "predictor_dynamics": {"norms": True, "regimes": True},
                              "output_dynamics": {}, "linear_gap": {}, "ntk": {}}}
    spec = {"experiment": "study", "metrics": ["predictor/regime", "dynamics/ode_gap", "linear_gap/relative",
                                               "ntk/drift", "train/loss"],
            "reference": [], "axes": ["rho"], "groups": ["study/rho=0.1"], "seeds": [1],
            "points": [{"label": "rho=0.1", "group": "study/rho=0.1", "dir": "rho=0.1", "axes": {"rho": "0.1"},
                        "overrides": [], "settings": settings}]}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    workspace = build_workspace(tmp_path, "proj")
    assert [s.name for s in workspace.sections] == ["Table", "Final values", "Curves", "Feature alignment",
                                                    "Predictor", "Output dynamics", "Linear gap", "NTK"]
    assert [p.y for p in panels(workspace, "Curves")] == [["train/loss"]]
    predictor = panels(workspace, "Predictor")
    assert re.search(predictor[0].metric_regex, "predictor/eigenvalue12")
    curves = [p.y for p in predictor if not isinstance(p, wr.MediaBrowser)]
    assert ["predictor/n_phi"] in curves and ["predictor/ode_error"] in curves
    assert isinstance(predictor[-1], wr.MediaBrowser) and predictor[-1].media_keys == ["predictor/regimes"]
    alignment = panels(workspace, "Feature alignment")
    assert re.search(alignment[0].metric_regex, "align/neuron2_feature1") and alignment[-1].media_keys == [
        "align/heatmap"]
    assert panels(workspace, "Output dynamics")[0].y == ["dynamics/ode_gap"]
    assert panels(workspace, "Linear gap")[0].y == ["linear_gap/relative"]
    assert panels(workspace, "NTK")[0].y == ["ntk/drift"]


def test_dry_run_prints_the_workspace_without_credentials(run_cli, sweep_dir, tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, err = run_cli("dashboard", "--sweep", sweep_dir, "--project", "proj", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "workspace 'quickstart' in project proj (entity: your default entity)"
    assert lines[1] == ("runs: Config(\"experiment\") == 'quickstart' and name matches "
                        r"/^(quickstart/data\.sparsity=0\.2)/seed[0-9]+$/")
    assert lines[2] == "grouped by: Group; x axis: epoch; at most 1 run per panel"
    assert [line for line in lines if line.startswith("section ")] == [
        "section 'Table':", "section 'Final values':", "section 'Curves':", "section 'Spectra':"]
    assert "  LinePlot: x=epoch y=maxcos/min groupby=Group agg=mean range=minmax" in lines
    assert "  BarPlot: y=maxcos/min groupby=Group agg=mean range=minmax" in lines
    assert "  LinePlot: x=epoch y=collapse/std_l2_backbone groupby=Group agg=mean range=minmax" in lines
    assert all(f"    {line}" in lines for line in sweep_table_markdown(sweep_dir).splitlines() if line)


def test_saving_without_credentials_is_one_line(run_cli, sweep_dir, tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, err = run_cli("dashboard", "--sweep", sweep_dir, "--project", "proj", "--entity", "me")
    message = error_line(code, err, out)
    assert message.startswith("no W&B credentials for ") and "run `wandb login` or set WANDB_API_KEY" in message
    assert out == ""


def test_saving_to_an_unreachable_server_is_one_line(run_cli, sweep_dir, tmp_path, monkeypatch):
    """With a key but no W&B server answering, nothing is saved and one line says why (no retries, no traceback)."""
    import wandb

    with socket.socket() as probe:  # a port that refuses connections: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HOME", str(tmp_path))
    wandb.teardown()  # wandb reads WANDB_BASE_URL when it is set up: once per process
    try:
        code, out, err = run_cli("dashboard", "--sweep", sweep_dir, "--project", "proj", "--entity", "me")
    finally:
        monkeypatch.undo()
        wandb.teardown()
    assert error_line(code, err, out) == (f"cannot reach W&B at http://127.0.0.1:{port} (Connection refused); the "
                                          "workspace was not saved (try again when W&B answers, or --dry-run)")


class Refusing(http.server.BaseHTTPRequestHandler):
    """A server that answers every request as W&B answers a key it does not know: 401."""

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

    do_GET = do_POST = do_HEAD = answer

    def log_message(self, *args: Any) -> None:
        pass


def test_a_refused_save_is_one_line(run_cli, sweep_dir, tmp_path, monkeypatch):
    """A server that answers but refuses the key: one line with W&B's reason and what to check."""
    import wandb

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HOME", str(tmp_path))
    wandb.teardown()
    try:
        code, out, err = run_cli("dashboard", "--sweep", sweep_dir, "--project", "proj")
    finally:
        server.shutdown()
        monkeypatch.undo()
        wandb.teardown()
    message = error_line(code, err, out)
    assert message.startswith("W&B did not save the workspace (") and "user is not logged in" in message, message
    assert message.endswith("check --entity and --project (the project must hold the sweep's runs: `wandb sync` "
                            "offline ones first) and the key (`wandb login --relogin`)")


@pytest.mark.parametrize("args, message", [
    (["--sweep", "{tmp}/absent", "--project", "p"], "--sweep {tmp}/absent is not a directory; give a directory that "
                                                    "`ssl-bench sweep` wrote"),
    (["--sweep", "{tmp}", "--project", "p", "--dry-run"], "{tmp} is not a sweep directory (no sweep.json); run "
                                                          "`ssl-bench sweep` first"),
    (["--sweep", "{tmp}", "--project", "p"], "{tmp} is not a sweep directory (no sweep.json); run `ssl-bench sweep` "
                                             "first"),
    (["--sweep", "{tmp}", "--project", " ", "--dry-run"], "--project is empty; give the W&B project the sweep's runs "
                                                          "logged to (logger.project, default ssl-bench)"),
], ids=["absent", "no-sweep-json-dry-run", "no-sweep-json", "empty-project"])
def test_bad_input_is_one_line(run_cli, tmp_path, args, message):
    code, out, err = run_cli("dashboard", *(a.format(tmp=tmp_path) for a in args))
    assert error_line(code, err, out) == message.format(tmp=tmp_path)


def test_unknown_arguments_are_refused(run_cli, tmp_path):
    code, out, err = run_cli("dashboard", "--sweep", tmp_path, "--project", "p", "extra")
    assert error_line(code, err, out).startswith("unrecognized arguments: extra; usage: ")
    code, out, err = run_cli("dashboard", "--project", "p")
    assert error_line(code, err, out).startswith("the following arguments are required: --sweep")
