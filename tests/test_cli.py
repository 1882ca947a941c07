"""End-to-end: ``ssl-bench fit|sweep|report``, strict keys and one-line config errors, light start-up,
determinism, sweep references, W&B offline logging."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY, error_line

from datamodules.cifar10 import CIFAR10DataModule
from datamodules.sparse_coding import SparseCodingDataModule
from ssl_bench import registry
from ssl_bench.config import ConfigError, RunConfig
from ssl_bench.config.compose import available_configs, load, quote_paths
from ssl_bench.methods.simclr import SimCLR
from ssl_bench.ops.metrics import max_cosine
from ssl_bench.study.grid import expand_grid
from ssl_bench.study.report import sweep_table_markdown
from ssl_bench.train.build import build_data, build_module

MAXCOS = ("maxcos/max", "maxcos/median", "maxcos/min")
METHODS = "adaptive_infonce, barlow_twins, byol, directclr, dot_product, simclr, simsiam, vicreg"
SPARSE_DATA_KEYS = {f.name for f in fields(SparseCodingDataModule.Config)}
CIFAR_DATA_KEYS = {f.name for f in fields(CIFAR10DataModule.Config)}
SIMCLR_KEYS = {f.name for f in fields(SimCLR.Config)}


def listed_keys(message: str, head: str) -> set[str]:
    """The keys that a ``KEY is not a key of PART; its keys: a, b, ...`` message lists after ``head``."""
    assert message.startswith(f"{head}; its keys: "), message
    return set(message.removeprefix(f"{head}; its keys: ").split(", "))


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
    # only the chosen parts' keys (strict keys), callbacks by name with their own keys
    assert set(config["data"]) == SPARSE_DATA_KEYS
    assert config["callbacks"]["max_cosine"] == {"signed": False}
    assert set(config["callbacks"]) == {"max_cosine", "spectrum", "readout"}
    assert "ema_momentum" not in config["method"] and "cifar_stem" not in config["encoder"]

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
    ["method=simsiam", "callbacks.spectrum.samples=16", "~callbacks.readout"],
], ids=lambda o: " ".join(o))
def test_each_method_finishes(fit_tiny, overrides):
    code, run_dir, summary = fit_tiny(*overrides)
    assert code == 0
    check_finished(summary)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for override in overrides:
        key, _, value = override.partition("=")
        *sections, leaf = key.lstrip("~").split(".")
        node = config
        for section in sections:
            node = node[section]
        if key.startswith("~"):
            assert leaf not in node, key
        elif sections:
            assert node[leaf] == yaml.safe_load(value), key


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
    weight = ckpt["state_dict"]["method.encoder.layers.0.linear.weight"]
    cfg = load("quickstart", [*TINY, "seed=4"])
    expected = max_cosine(weight, build_data(cfg).dictionary)
    for key in ("max", "median", "min"):
        assert summary["metrics"][f"maxcos/{key}"] == pytest.approx(expected[key], abs=1e-6)


def test_print_config_does_not_train(run_cli, tmp_path):
    run_dir = tmp_path / "never"
    code, out, err = run_cli("fit", "--config", "quickstart", "data.n=777", f"run_dir={run_dir}", "--print-config")
    assert code == 0
    assert yaml.safe_load(out)["data"]["n"] == 777
    assert not run_dir.exists()


def test_paths_of_sweep_runs_need_no_quotes(run_cli, tmp_path):
    """A sweep's run directory holds '=' and ',' (``tau=equal,d=2/seed1``): run_dir, trainer.resume and data.root
    take such a path as it stands, as the resume hint of an interrupted run prints it; a quoted one is unchanged."""
    assert quote_paths(["run_dir=/r/a=1,b=2/seed1", "trainer.resume='/r/x=1'", "group=a", "data.root=/d"]) == [
        "run_dir='/r/a=1,b=2/seed1'", "trainer.resume='/r/x=1'", "group=a", "data.root=/d"]
    run_dir = tmp_path / "tau=equal,d=2" / "seed1"
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "trainer.max_epochs=2",
                             "trainer.checkpoint_every_n_epochs=1", f"run_dir={run_dir}")
    assert code == 0, err
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    code, out, err = run_cli("fit", "--config", str(run_dir / "config.yaml"), f"run_dir={run_dir}",
                             f"trainer.resume={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=4")
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 4


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


@functools.cache
def every_experiment() -> dict[str, RunConfig]:
    """Each experiment config composed without overrides, once per test process (the tests only read them)."""
    return {name: load(name, []) for name in available_configs()[0]}


def test_all_experiment_configs_compose_and_validate():
    experiments, groups = available_configs()
    assert "quickstart" in experiments and "pokle2022/table2" in experiments
    assert "base" not in experiments
    assert set(groups["method"]) == {"simclr", "simsiam", "byol", "directclr", "adaptive_infonce", "dot_product",
                                     "vicreg", "barlow_twins"}
    assert list(every_experiment()) == experiments
    for name, cfg in every_experiment().items():
        assert cfg.experiment == name
        points = expand_grid(cfg.sweep.grid)
        assert len({p.dirname for p in points}) == len(points), name  # distinct run directories


def test_table2_grid_size():
    cfg = load("pokle2022/table2", [])
    points = expand_grid(cfg.sweep.grid)
    # block 1: 2 models x 3 sparsities; block 2: 5 NCL models, block 3: VICReg and Barlow Twins, each x 3 sparsities
    # x 4 mask probabilities
    assert len(points) == 2 * 3 + 5 * 3 * 4 + 2 * 3 * 4
    assert cfg.sweep.seeds == [1, 2, 3, 4, 5]
    # one grid point per model composes into a valid config with the model's settings
    firsts = {dict(p.axes)["model"]: p for p in reversed(points)}
    assert set(firsts) == {"CL-linear", "CL-basic", "NCL-linear", "NCL-basic", "NCL-simplified", "NCL-basic-2L",
                           "NCL-basic-2L-first-layer", "VICReg-basic", "BarlowTwins-basic"}
    methods = {"VICReg-basic": "vicreg", "BarlowTwins-basic": "barlow_twins"}
    for model, point in firsts.items():
        run = load("pokle2022/table2", list(point.overrides))
        assert run.method.name == methods.get(model, "simclr" if model.startswith("CL") else "byol")
        assert run.encoder.layers == (2 if "2L" in model else 1)
        assert run.encoder.batch_norm == (model in {"CL-basic", "NCL-basic", "NCL-basic-2L",
                                                    "NCL-basic-2L-first-layer", *methods})
        assert run.encoder.trainable == ("first_layer" if model.endswith("first-layer") else "all")


@pytest.mark.slow
def test_every_grid_point_of_every_experiment_is_valid():
    experiments, _ = available_configs()
    for name in experiments:
        for point in expand_grid(load(name, []).sweep.grid):
            load(name, list(point.overrides))


# ------------------------------------------------------------------------------------------------- config errors


def test_config_error_exits_2_with_one_line_and_no_run_dir(cli_subprocess, tmp_path):
    """The console path end to end: exit code 2, one line on stderr, no traceback, nothing written."""
    run_dir = tmp_path / "run"
    proc = cli_subprocess("fit", "--config", "quickstart", "data.sparsity=1.5", f"run_dir={run_dir}", "logger=none")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["ssl-bench: error: data.sparsity=1.5 is out of range; allowed: (0, 1]"]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize("overrides,message", [
    ("data.n=abc", "data.n='abc' has the wrong type; expected int"),
    ("data.sparsity=1.5", "data.sparsity=1.5 is out of range; allowed: (0, 1]"),
    ("data.sparsity=0", "data.sparsity=0.0 is out of range; allowed: (0, 1]"),
    ("data.mask_prob=1.0", "data.mask_prob=1.0 is out of range; allowed: [0, 1)"),
    ("data.n=0", "data.n=0 must be > 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 must be > 0"),
    ("encoder.layers=3", "encoder.layers=3 is not allowed; choose one of: 1, 2"),
    ("data.latent=foo", "data.latent='foo' is not allowed; choose one of: symmetric, binary, one_hot"),
    ("data.p=3", "data.p=3 must be >= data.d=10 for an orthonormal dictionary"),
    ("data.dictionary=identity", "data.dictionary=identity needs p == d (got p=50, d=10)"),
    ("sweep.seeds=[]", "sweep.seeds is empty; give at least one seed, e.g. sweep.seeds=[1]"),
    ("method=simsiam method.predictor=none",
     "method.predictor=none is not allowed for method=simsiam; use method.predictor=linear"),
    ("method=directclr method.projector=mlp",
     "method.projector is not a key of method=directclr; its keys: name, temperature, directclr_dim"),
    ("+foo=1", "unknown key 'foo'; top-level keys: experiment, group, seed, run_dir, data, encoder, method, optim, "
               "trainer, logger, sweep, callbacks"),
    ("method.name=nope", f"method.name='nope' is not registered; choose one of: {METHODS}"),
    ("encoder=resnet18", "encoder.name=resnet18 needs image inputs, which data.name=sparse_coding with "
                         "encoder.name=resnet18 does not provide; encoder names for vector inputs: mlp, sparse, "
                         "two_layer"),
])
def test_config_errors_are_one_line_naming_key_and_allowed(run_cli, tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    code, out, err = run_cli("fit", "--config", "quickstart", *overrides.split(), f"run_dir={run_dir}")
    assert error_line(code, err) == message
    assert not run_dir.exists()


def test_unknown_config_lists_the_experiments(run_cli):
    code, out, err = run_cli("fit", "--config", "no_such_config")
    experiments = ", ".join(available_configs()[0])
    assert error_line(code, err) == (f"unknown config 'no_such_config'; choose one of: {experiments} "
                                     "(or a path to a .yaml)")
    assert "quickstart" in experiments


def test_unknown_group_option_lists_the_groups_yaml_files(run_cli):
    code, out, err = run_cli("fit", "--config", "quickstart", "method=nope", "--print-config")
    options = sorted(p.stem for p in (REPO / "configs" / "method").glob("*.yaml"))
    assert error_line(code, err) == f"method=nope is not a config of group method; choose one of: {', '.join(options)}"
    assert ", ".join(options) == METHODS  # one YAML per registered method


def test_unknown_callback_lists_the_registered_callbacks(run_cli):
    for override in ("callbacks.nope.x=1", "+callbacks.nope={}"):
        code, out, err = run_cli("fit", "--config", "quickstart", override, "--print-config")
        message = error_line(code, err)
        assert message == ("callbacks.nope is not a registered callback; choose from: "
                           f"{', '.join(registry.names('callback'))}")
        assert "max_cosine" in message and "spectrum" in message


def test_a_top_level_typo_names_the_key(run_cli):
    code, out, err = run_cli("fit", "--config", "quickstart", "foo=1", "--print-config")
    assert error_line(code, err) == ("unknown key 'foo'; top-level keys: experiment, group, seed, run_dir, data, "
                                     "encoder, method, optim, trainer, logger, sweep, callbacks")


@pytest.mark.parametrize("override,head,keys", [
    ("method=simclr method.predictor=linear", "method.predictor is not a key of method=simclr", SIMCLR_KEYS),
    ("data=cifar10", "data.n is not a key of data=cifar10", CIFAR_DATA_KEYS),  # quickstart sets data.n
    ("data.foo=1", "data.foo is not a key of data=sparse_coding", SPARSE_DATA_KEYS),
], ids=["simclr-predictor", "cifar10-n", "data-foo"])
def test_more_config_errors_in_process(run_cli, override, head, keys):
    code, out, err = run_cli("fit", "--config", "quickstart", *override.split(), "--print-config")
    assert listed_keys(error_line(code, err), head) == keys


def test_load_raises_config_error():
    with pytest.raises(ConfigError, match=re.escape("data.sparsity=2.0 is out of range; allowed: (0, 1]")):
        load("quickstart", ["data.sparsity=2"])


# ---------------------------------------------------------------------------------------------------- strict keys


def test_keys_of_parts_not_chosen_are_refused(run_cli):
    """Sparse-data, sparse-encoder and BYOL keys on a CIFAR SimCLR config: the first unknown key is named with the
    part and the keys it does have."""
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "data.sparsity=0.3", "encoder.weight_norm=row",
                             "method.ema_momentum=0.5", "--print-config")
    assert listed_keys(error_line(code, err), "data.sparsity is not a key of data=cifar10") == CIFAR_DATA_KEYS
    assert out == ""

    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "method.ema_momentum=0.5", "--print-config")
    assert listed_keys(error_line(code, err), "method.ema_momentum is not a key of method=simclr") == SIMCLR_KEYS

    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "encoder.weight_norm=row", "--print-config")
    assert error_line(code, err) == "encoder.weight_norm is not a key of encoder=resnet18; its keys: name, cifar_stem"


def test_print_config_holds_only_the_chosen_parts_keys(run_cli):
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "--print-config")
    assert code == 0, err
    cifar = yaml.safe_load(out)
    assert set(cifar["data"]) == CIFAR_DATA_KEYS and "sparsity" not in cifar["data"]
    assert set(cifar["encoder"]) == {"name", "cifar_stem"}
    assert set(cifar["method"]) == SIMCLR_KEYS and "ema_momentum" not in cifar["method"]
    assert set(cifar["callbacks"]) == {"spectrum", "readout"}  # no max_cosine: CIFAR-10 has no dictionary
    assert cifar["optim"]["name"] == "lars" and "lars_eta" in cifar["optim"]

    code, out, err = run_cli("fit", "--config", "quickstart", "--print-config")
    assert code == 0, err
    sparse = yaml.safe_load(out)
    assert set(sparse["data"]) == SPARSE_DATA_KEYS and "root" not in sparse["data"]
    assert {"weight_norm", "warm_start", "width"} <= set(sparse["encoder"]) and "cifar_stem" not in sparse["encoder"]
    assert "ema_momentum" not in sparse["method"] and "max_cosine" in sparse["callbacks"]

    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "optim=sgd", "--print-config")
    assert code == 0, err
    sgd = yaml.safe_load(out)["optim"]
    assert sgd["name"] == "sgd" and "momentum" in sgd
    assert not {"lars_eta", "lars_clip", "exclude_bias_and_norm", "betas"} & set(sgd)


# ---------------------------------------------------------------------------------------------------- capabilities


def test_an_encoder_for_vectors_on_images_names_the_image_encoders(run_cli):
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "encoder=basic", "--print-config")
    assert error_line(code, err) == ("encoder.name=sparse needs vector inputs, which data.name=cifar10 with "
                                     "encoder.name=sparse does not provide; encoder names for image inputs: resnet18, "
                                     "resnet50")


def test_max_cosine_on_cifar_says_how_to_remove_it(run_cli):
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "data=cifar10", "encoder=resnet18",
                             "callbacks=default", "--print-config")
    assert error_line(code, err) == (
        "callbacks.max_cosine needs a ground-truth dictionary (e.g. data.name=sparse_coding), which data.name=cifar10 with "
        "encoder.name=resnet18 does not provide; remove it with ~callbacks.max_cosine")
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", "callbacks=default", "~callbacks.max_cosine",
                             "--print-config")
    assert code == 0, err
    assert set(yaml.safe_load(out)["callbacks"]) == {"spectrum", "readout"}


def test_warm_start_of_a_sparse_encoder_on_sparse_data():
    """A noiseless warm start puts every first-layer row on a dictionary atom (max-cosine 1 for each neuron)."""
    cfg = load("quickstart", [*TINY, "encoder.warm_start=true", "encoder.warm_start_noise=0"])
    data = build_data(cfg)
    weight = build_module(cfg, data).method.encoder.first_layer_weight
    assert max_cosine(weight, data.dictionary)["min"] == pytest.approx(1.0, abs=1e-6)
    cold = load("quickstart", list(TINY))
    assert max_cosine(build_module(cold, data).method.encoder.first_layer_weight, data.dictionary)["min"] < 0.99


# ---------------------------------------------------------------------------------------------------- start-up


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          env=env, cwd=REPO)


def test_help_imports_neither_torch_lightning_nor_torchvision():
    proc = _python(
        "import sys\n"
        "from ssl_bench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit_:\n    assert exit_.code == 0, exit_.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules))\n")
    assert proc.returncode == 0, proc.stderr
    assert "quickstart" in proc.stdout
    assert "LOADED []" in proc.stdout


def test_print_config_and_config_errors_import_neither_lightning_nor_torchvision():
    proc = _python(
        "import sys\n"
        "from ssl_bench.cli import main\n"
        "assert main(['fit', '--config', 'quickstart', '--print-config']) == 0\n"
        "assert main(['fit', '--config', 'cifar10/simclr', '--print-config']) == 0\n"
        "assert main(['fit', '--config', 'quickstart', 'data.n=0']) == 2\n"
        "print('LOADED', sorted(m for m in ('lightning', 'torchvision') if m in sys.modules))\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "ssl-bench: error: data.n=0 must be > 0"
    assert "LOADED []" in proc.stdout


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
    assert len(lines) == (2 + 5) * 3 * 5  # SimCLR's 2 mask schemes, SimSiam's 5 masking probabilities x 3 x 5 seeds
    assert not (tmp_path / "s").exists()


def test_report_of_non_sweep_dir_is_one_line_error(run_cli, tmp_path):
    code, out, err = run_cli("report", tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "sweep.json" in err


def test_report_of_a_reference_not_in_rows_is_one_line_error(run_cli, tmp_path):
    spec = {"experiment": "e", "metrics": ["m"], "axes": [], "groups": [], "reference": {"rows": []}}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    code, out, err = run_cli("report", tmp_path)
    assert error_line(code, err) == (f"{tmp_path / 'sweep.json'}: 'reference' must be a list of {{match, values}} "
                                     "rows; rerun `ssl-bench sweep` with the same --sweep-dir to rewrite it "
                                     "(finished runs are kept)")


def test_report_aggregates_and_shows_reference(tmp_path):
    spec = {"experiment": "exp", "metrics": ["maxcos/max"], "axes": ["model", "data.sparsity"],
            "groups": ["exp/model=B,data.sparsity=0.1", "exp/model=A,data.sparsity=0.1"],
            "reference": [{"match": {"model": "A", "data.sparsity": 0.1}, "values": {"maxcos/max": 0.5}}]}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    runs = [("A", 1, "finished", 0.2), ("A", 2, "finished", 0.6), ("A", 3, "failed", 0.0),
            ("B", 1, "finished", 0.9)]
    for model, seed, status, value in runs:
        run_dir = tmp_path / model / f"seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({
            "status": status, "group": f"exp/model={model},data.sparsity=0.1", "metrics": {"maxcos/max": value}}))
    table = sweep_table_markdown(tmp_path).splitlines()
    rows = [line for line in table if line.startswith("| A") or line.startswith("| B")]
    assert [r.split("|")[1].strip() for r in rows] == ["B", "A"]  # the spec's group order
    a_row = [c.strip() for c in rows[1].strip("|").split("|")]
    assert a_row[:3] == ["A", "0.1", "2/3 (1 failed)"]  # failed runs are counted but not averaged
    assert a_row[3] == f"{statistics.fmean([0.2, 0.6]):.3f} ± {statistics.pstdev([0.2, 0.6]):.3f} (0.50)"
    b_row = [c.strip() for c in rows[0].strip("|").split("|")]
    assert b_row[2:] == ["1/1", "0.900 ± 0.000"]


def test_every_sweep_reference_names_real_grid_axes_values_and_metrics():
    """A reference row that names a missing axis, a value no grid point has, or a metric the table lacks would leave
    the paper column silently empty."""
    with_reference = 0
    for name, cfg in every_experiment().items():
        points = [dict(p.axes) for p in expand_grid(cfg.sweep.grid)]
        axes: dict[str, set[str]] = {}
        for point in points:
            for axis, value in point.items():
                axes.setdefault(axis, set()).add(value)
        for row in cfg.sweep.reference:
            assert row.match and row.values, (name, row)
            for axis, value in row.match.items():
                assert axis in axes, f"{name}: reference axis {axis!r} is not a grid axis ({', '.join(axes)})"
                assert str(value) in axes[axis], f"{name}: {axis}={value} is on no grid point"
            assert any(all(p.get(k) == str(v) for k, v in row.match.items()) for p in points), (name, row.match)
            assert set(row.values) <= set(cfg.sweep.metrics), (name, set(row.values) - set(cfg.sweep.metrics))
            assert all(math.isfinite(v) for v in row.values.values()), (name, row.values)
        with_reference += bool(cfg.sweep.reference)
    assert with_reference >= 4  # pokle2022 tables 1-3 and rusak2022's CIFAR-10 table


def test_adaptive_infonce_table_shows_the_paper_column(run_cli, tmp_path, monkeypatch):
    """The sweep of Rusak et al.'s table with each run replaced by a summary with fixed metrics: every row of the
    report shows the paper's value beside the metrics it reports."""
    import ssl_bench.study.sweep

    name, cfg = next((n, c) for n, c in every_experiment().items()
                     if c.method.name == "adaptive_infonce" and c.sweep.reference)
    fake = {metric: 0.5 + i / 10 for i, metric in enumerate(cfg.sweep.metrics)}

    def run(command, stdout, **kwargs):
        values = dict(arg.split("=", 1) for arg in command if arg.startswith(("run_dir=", "group=", "seed=")))
        run_dir = Path(values["run_dir"].strip("'"))
        (run_dir / "summary.json").write_text(json.dumps({
            "status": "finished", "group": values["group"].strip("'"), "seed": int(values["seed"]), "metrics": fake}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(ssl_bench.study.sweep.subprocess, "run", run)
    sweep_dir = tmp_path / "sweep"
    code, out, err = run_cli("sweep", "--config", name, "--sweep-dir", sweep_dir)
    assert code == 0, err
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    assert isinstance(spec["reference"], list) and len(spec["reference"]) == len(cfg.sweep.reference)

    table = sweep_table_markdown(sweep_dir).splitlines()
    assert "paper's value in parentheses" in table[0]
    header = [c.strip() for c in table[2].strip("|").split("|")]
    axes = header[:header.index("runs")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[4:]]
    assert len(rows) == len(expand_grid(cfg.sweep.grid))
    used = set()
    for cells in rows:
        point = dict(zip(axes, cells))
        assert cells[len(axes)] == f"{len(cfg.sweep.seeds)}/{len(cfg.sweep.seeds)}"
        matches = [i for i, r in enumerate(cfg.sweep.reference)
                   if all(point.get(k) == str(v) for k, v in r.match.items())]
        assert len(matches) == 1, (point, matches)  # every row of this table has its paper values
        used.update(matches)
        reference = cfg.sweep.reference[matches[0]].values
        for metric, cell in zip(cfg.sweep.metrics, cells[len(axes) + 1:]):
            paper = f" ({reference[metric]:.2f})" if metric in reference else ""
            assert cell == f"{fake[metric]:.3f} ± 0.000{paper}", (point, metric)
    assert used == set(range(len(cfg.sweep.reference)))
    assert sum("(" in cell for cells in rows for cell in cells) >= len(rows)


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
    init_kwargs = {}
    real_init = wandb.init

    def spy_init(**kwargs):
        init_kwargs.update(kwargs)
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", spy_init)
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
    # W&B's config is the run's config.yaml: only the chosen parts' keys
    assert init_kwargs["config"] == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert set(init_kwargs["config"]["data"]) == SPARSE_DATA_KEYS


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
