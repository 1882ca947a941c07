"""End-to-end: ``ssl-bench fit|sweep|report``, config errors, determinism, W&B offline logging."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY

from ssl_bench.cli import available_configs, load
from ssl_bench.config import ConfigError
from ssl_bench.metrics import max_cosine
from ssl_bench.run import build_datamodule
from ssl_bench.sweep import expand_grid, report

MAXCOS = ("maxcos/max", "maxcos/median", "maxcos/min")


def check_finished(summary: dict) -> None:
    assert summary["status"] == "finished"
    metrics = summary["metrics"]
    for key in ("train/loss", *MAXCOS):
        assert key in metrics, key
    assert math.isfinite(metrics["train/loss"])
    for key in MAXCOS:
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["maxcos/min"] <= metrics["maxcos/median"] <= metrics["maxcos/max"]


# ------------------------------------------------------------------------------------------------------------ fit


def test_quickstart_fit_writes_run_directory(fit_tiny, capsys):
    code, run_dir, summary = fit_tiny()
    assert code == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    check_finished(summary)
    assert summary["epochs"] == 3
    assert summary["seed"] == 1 and summary["experiment"] == "quickstart"
    assert summary["run_dir"] == str(run_dir)

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment"] == "quickstart"
    assert (config["data"]["n"], config["data"]["p"], config["data"]["d"]) == (64, 12, 4)
    assert config["data"]["sparsity"] == 0.2  # from configs/quickstart.yaml
    assert config["encoder"]["activation"] == "symmetric_relu_official"  # encoder=basic_official
    assert config["trainer"]["max_epochs"] == 3
    assert config["run_dir"] == str(run_dir)

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines, "no metrics logged"
    # the summary's final values are the last logged ones
    last = {}
    for line in lines:
        last.update(line)
    for key in ("train/loss", *MAXCOS):
        assert last[key] == pytest.approx(summary["metrics"][key])


def test_fit_prints_final_max_cosine(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, f"run_dir={tmp_path / 'r'}")
    assert code == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    m = summary["metrics"]
    assert f"{m['maxcos/max']:.3f} / {m['maxcos/median']:.3f} / {m['maxcos/min']:.3f}" in out
    assert str(tmp_path / "r") in out


@pytest.mark.parametrize("overrides", [
    ["method=simclr"],
    ["method=simclr", "method.projector=linear", "encoder=basic"],
    ["method=simsiam"],
    ["method=byol", "method.target_update=alternate"],
    ["method=byol", "method.target_update=ema", "method.predictor=linear"],
    ["method=byol", "encoder=simplified", "data.augmentation=independent"],
    ["method=byol", "encoder=basic_2l"],
    ["method=simclr", "encoder=linear"],
    ["method=byol", "encoder.warm_start=true", "encoder.warm_start_c=1", "encoder.weight_norm=row"],
    ["data.latent=binary", "data.sampler=bernoulli"],
], ids=lambda o: " ".join(o))
def test_each_method_finishes(fit_tiny, overrides):
    code, run_dir, summary = fit_tiny(*overrides)
    assert code == 0
    check_finished(summary)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for override in overrides:
        key, value = override.split("=")
        if "." in key:
            group, leaf = key.split(".")
            assert config[group][leaf] == yaml.safe_load(value)


def test_same_seed_same_metrics_different_seed_different(fit_tiny):
    _, _, a = fit_tiny("seed=5")
    _, _, b = fit_tiny("seed=5")
    _, _, c = fit_tiny("seed=6")
    assert a["metrics"] == b["metrics"]
    assert a["metrics"] != c["metrics"]
    assert all(a["metrics"][k] != c["metrics"][k] for k in MAXCOS)


def test_summary_max_cosine_matches_checkpointed_weights(fit_tiny):
    code, run_dir, summary = fit_tiny("trainer.checkpoint_every_n_epochs=1", "seed=4")
    assert code == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    weight = ckpt["state_dict"]["encoder.layers.0.linear.weight"]
    cfg = load("quickstart", [*TINY, "seed=4"])
    expected = max_cosine(weight, build_datamodule(cfg).dictionary)
    for key in ("max", "median", "min"):
        assert summary["metrics"][f"maxcos/{key}"] == pytest.approx(expected[key], abs=1e-6)


def test_print_config_does_not_train(run_cli, tmp_path):
    run_dir = tmp_path / "never"
    code, out, err = run_cli("fit", "--config", "quickstart", "data.n=77", f"run_dir={run_dir}", "--print-config")
    assert code == 0
    assert yaml.safe_load(out)["data"]["n"] == 77
    assert not run_dir.exists()


def test_fit_from_yaml_path(run_cli, tmp_path):
    path = tmp_path / "myexp.yaml"
    path.write_text("defaults:\n  - base\n  - override /method: byol\n  - _self_\ndata:\n  sparsity: 0.3\n")
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", str(path), *TINY, f"run_dir={run_dir}")
    assert code == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment"] == "myexp"
    assert config["method"]["name"] == "byol" and config["data"]["sparsity"] == 0.3
    check_finished(json.loads((run_dir / "summary.json").read_text()))


def test_all_experiment_configs_compose_and_validate():
    experiments, groups = available_configs()
    assert "quickstart" in experiments and "pokle2022/table2" in experiments
    assert "base" not in experiments
    assert set(groups["method"]) == {"simclr", "simsiam", "byol", "directclr", "adaptive_infonce"}
    for name in experiments:
        cfg = load(name, [])
        assert cfg.experiment == name
        points = expand_grid(cfg.sweep.grid)
        assert len({p.dirname for p in points}) == len(points), name  # distinct run directories


def test_table2_grid_size():
    cfg = load("pokle2022/table2", [])
    points = expand_grid(cfg.sweep.grid)
    # block 1: 2 models x 3 sparsities; block 2: 4 models x 3 sparsities x 4 mask probabilities
    assert len(points) == 2 * 3 + 4 * 3 * 4
    assert cfg.sweep.seeds == [1, 2, 3, 4, 5]
    # one grid point per model composes into a valid config with the model's settings
    firsts = {dict(p.axes)["model"]: p for p in reversed(points)}
    assert set(firsts) == {"CL-linear", "CL-basic", "NCL-linear", "NCL-basic", "NCL-simplified", "NCL-basic-2L"}
    for model, point in firsts.items():
        run = load("pokle2022/table2", list(point.overrides))
        assert run.method.name == ("simclr" if model.startswith("CL") else "byol")
        assert run.encoder.layers == (2 if model.endswith("2L") else 1)
        assert run.encoder.batch_norm == (model in {"CL-basic", "NCL-basic", "NCL-basic-2L"})


@pytest.mark.slow
def test_every_grid_point_of_every_experiment_is_valid():
    experiments, _ = available_configs()
    for name in experiments:
        for point in expand_grid(load(name, []).sweep.grid):
            load(name, list(point.overrides))


# ------------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("args,needle", [
    (["--config", "no_such_config"], "no_such_config"),
    (["--config", "quickstart", "data.foo=1"], "data.foo"),
    (["--config", "quickstart", "data.n=abc"], "data.n"),
    (["--config", "quickstart", "data.sparsity=1.5"], "data.sparsity"),
    (["--config", "quickstart", "data.sparsity=0"], "data.sparsity"),
    (["--config", "quickstart", "data.mask_prob=1.0"], "data.mask_prob"),
    (["--config", "quickstart", "data.n=0"], "data.n"),
    (["--config", "quickstart", "trainer.max_epochs=0"], "trainer.max_epochs"),
])
def test_config_errors_exit_2_with_one_line(cli_subprocess, tmp_path, args, needle):
    run_dir = tmp_path / "run"
    proc = cli_subprocess("fit", *args, f"run_dir={run_dir}", "logger=none")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert lines[0].startswith("ssl-bench: error:")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize("override,needle", [
    ("method=nope", "method/nope"),
    ("encoder.layers=3", "encoder.layers"),
    ("data.latent=foo", "data.latent"),
    ("foo=1", "foo"),
    ("data.p=3", "data.p"),
    ("method=simsiam method.predictor=none", "method.predictor"),
    ("method=directclr method.projector=mlp", "method.projector=none"),
    ("method=simclr method.predictor=linear", "method.predictor=none"),
    ("encoder=resnet18", "encoder.name=resnet18 cannot read data.name=sparse_coding"),
    ("data=cifar10", "encoder.name=sparse cannot read data.name=cifar10; use encoder resnet18, resnet50"),
    ("sweep.seeds=[]", "sweep.seeds"),
    ("data.dictionary=identity", "data.dictionary"),
])
def test_more_config_errors_in_process(run_cli, override, needle):
    code, out, err = run_cli("fit", "--config", "quickstart", *override.split(), "--print-config")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_load_raises_config_error():
    with pytest.raises(ConfigError, match="data.sparsity"):
        load("quickstart", ["data.sparsity=2"])


# ---------------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["sweep", "--help"]])
def test_help_lists_experiment_configs(run_cli, argv):
    code, out, err = run_cli(*argv)
    assert code == 0
    assert "quickstart" in out and "pokle2022/table2" in out


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"]])
def test_console_script_help(argv):
    scripts = Path(sysconfig.get_path("scripts")) / "ssl-bench"
    exe = str(scripts) if scripts.is_file() else shutil.which("ssl-bench")
    assert exe is not None, "the ssl-bench console script is not installed; run `pip install -e .`"
    proc = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    assert "quickstart" in proc.stdout and "pokle2022/table2" in proc.stdout


def test_missing_command_is_usage_error(run_cli):
    code, out, err = run_cli()
    assert code == 2 and "usage" in err


# ------------------------------------------------------------------------------------------------- sweep, report


def test_sweep_runs_table_and_skips_finished(run_cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "--config", "quickstart", *TINY, "sweep.seeds=[1,2]", "--jobs", "2", "--sweep-dir", sweep_dir]
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "0 already finished" in out
    table = (sweep_dir / "table.md").read_text().strip()
    assert table in out
    header = "| runs | maxcos/max | maxcos/median | maxcos/min |"
    assert header in table

    summaries = []
    for seed in (1, 2):
        run_dir = sweep_dir / "default" / f"seed{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        check_finished(summary)
        assert summary["seed"] == seed
        assert (run_dir / "log.txt").is_file()
        summaries.append(summary)
    row = next(line for line in table.splitlines() if line.startswith("| 2/2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    for key, cell in zip(MAXCOS, cells[1:]):
        values = [s["metrics"][key] for s in summaries]
        assert cell == f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}"

    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")}
    code, out, err = run_cli(*args)
    assert code == 0
    assert "2 already finished" in out
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("summary.json")} == mtimes
    assert table in out

    code, out, err = run_cli("report", sweep_dir)
    assert code == 0
    assert out.strip() == table


def test_sweep_dry_run_lists_runs(run_cli, tmp_path):
    code, out, err = run_cli("sweep", "--config", "pokle2022/table1", "--sweep-dir", tmp_path / "s", "--print-config")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 * 3 * 5  # 2 models x 3 sparsities x 5 seeds
    assert not (tmp_path / "s").exists()


def test_report_of_non_sweep_dir_is_one_line_error(run_cli, tmp_path):
    code, out, err = run_cli("report", tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "sweep.json" in err


def test_report_aggregates_and_shows_reference(tmp_path):
    spec = {"experiment": "exp", "metrics": ["maxcos/max"], "axes": ["model", "data.sparsity"],
            "groups": ["exp/model=B,data.sparsity=0.1", "exp/model=A,data.sparsity=0.1"],
            "reference": {"rows": [{"match": {"model": "A", "data.sparsity": 0.1}, "values": {"maxcos/max": 0.5}}]}}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    runs = [("A", 1, "finished", 0.2), ("A", 2, "finished", 0.6), ("A", 3, "failed", 0.0),
            ("B", 1, "finished", 0.9)]
    for model, seed, status, value in runs:
        run_dir = tmp_path / model / f"seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({
            "status": status, "group": f"exp/model={model},data.sparsity=0.1", "metrics": {"maxcos/max": value}}))
    table = report(tmp_path).splitlines()
    rows = [line for line in table if line.startswith("| A") or line.startswith("| B")]
    assert [r.split("|")[1].strip() for r in rows] == ["B", "A"]  # the spec's group order
    a_row = [c.strip() for c in rows[1].strip("|").split("|")]
    assert a_row[:3] == ["A", "0.1", "2/3"]  # failed runs are counted but not averaged
    assert a_row[3] == f"{statistics.fmean([0.2, 0.6]):.3f} ± {statistics.pstdev([0.2, 0.6]):.3f} (0.50)"
    b_row = [c.strip() for c in rows[0].strip("|").split("|")]
    assert b_row[2:] == ["1/1", "0.900 ± 0.000"]


def test_expand_grid():
    grid = [{"model": {"X": ["method=simclr", "encoder=linear"], "Y": "method=byol"}, "data.sparsity": [0.1, 0.2]},
            {"data.mask_prob": [0.5]}]
    points = expand_grid(grid)
    assert [p.label for p in points] == ["model=X,data.sparsity=0.1", "model=X,data.sparsity=0.2",
                                         "model=Y,data.sparsity=0.1", "model=Y,data.sparsity=0.2",
                                         "data.mask_prob=0.5"]
    assert points[0].overrides == ("method=simclr", "encoder=linear", "data.sparsity=0.1")
    assert points[3].overrides == ("method=byol", "data.sparsity=0.2")
    assert expand_grid(None)[0].overrides == () and expand_grid(None)[0].dirname == "default"
    with pytest.raises(ConfigError):
        expand_grid([{"data.n": 5}])


# --------------------------------------------------------------------------------------------------------- wandb


def test_wandb_offline_run_in_run_dir(run_cli, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "wb"
    overrides = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "logger.tags=[t1,t2]"]
    try:
        code, out, err = run_cli("fit", "--config", "quickstart", *overrides, f"run_dir={run_dir}")
    finally:
        if wandb.run is not None:  # a failed fit must not leak a live run into the other tests
            wandb.finish()
    assert code == 0
    assert wandb.run is None  # the fit finished its W&B run
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("run-*.wandb"))
    check_finished(json.loads((run_dir / "summary.json").read_text()))


def test_sweep_rejects_an_override_of_a_grid_key(run_cli, tmp_path):
    code, out, err = run_cli("sweep", "--config", "pokle2022/table1", "--sweep-dir", str(tmp_path / "sweep"),
                             "data.sparsity=0.3")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "data.sparsity" in err
    assert not (tmp_path / "sweep").exists()


def test_overrides_may_come_before_and_after_config(run_cli):
    code, out, err = run_cli("fit", "logger=none", "--config", "quickstart", "trainer.max_epochs=7", "--print-config")
    assert code == 0
    assert "backend: none" in out and "max_epochs: 7" in out


def test_unknown_option_is_a_usage_error(run_cli):
    code, out, err = run_cli("fit", "--config", "quickstart", "--bogus")
    assert code == 2
    assert "unrecognized arguments: --bogus" in err
