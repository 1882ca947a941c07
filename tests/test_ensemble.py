"""Ensembles: runs trained together as one model end as their separate runs would, each in its own run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, assert_same_run, error_line

from ssl_bench.config.compose import load
from ssl_bench.train.ensemble import fit_ensemble
from ssl_bench.train.fit import fit

EPOCHS = ["trainer.max_epochs=4", "trainer.log_every_n_epochs=1", "trainer.metrics_every_n_epochs=2"]
MODELS = {
    "contrastive": ("quickstart", [*TINY, *EPOCHS]),
    # Pokle et al.'s NCL-basic: BYOL with alternating online and target SGD steps, batch norm, independent masks
    "non-contrastive": ("pokle2022/table2", [*TINY, *EPOCHS, "method=byol", "encoder=basic_official",
                                             "data.augmentation=independent"]),
    # the regularised non-contrastive methods with their group files' expanders (3 layers of 256, batch norm)
    "vicreg": ("quickstart", [*TINY, *EPOCHS, "method=vicreg"]),
    "barlow_twins": ("quickstart", [*TINY, *EPOCHS, "method=barlow_twins"]),
}
MEMBERS = [["seed=1"], ["seed=2", "data.sparsity=0.3", "data.mask_prob=0.25"], ["seed=3", "optim.lr=0.02"]]
ONE_OPTIMIZER = [["seed=1"], ["seed=2", "data.sparsity=0.3", "data.mask_prob=0.25"], ["seed=3", "data.mask_prob=0.9"]]


def history(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.mark.parametrize(("batching", "members", "shared"), [("loop", MEMBERS, False), ("vmap", MEMBERS, False),
                                                          ("vmap", ONE_OPTIMIZER, True)])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_an_ensemble_of_three_ends_within_1e5_of_three_separate_runs(tmp_path, monkeypatch, model, batching, members,
                                                                    shared):
    """Members differ in seed, sparsity, masking probability and (but in ONE_OPTIMIZER) learning rate; each writes
    its own run directory, and every logged value, spectrum and ending equals its separate run's. Under vmap,
    members with one optimizer setting step as one optimizer over the stacked parameters."""
    from ssl_bench.train import ensemble

    built = []
    shared_optimizers = ensemble.Ensemble._shared_optimizers
    monkeypatch.setattr(ensemble.Ensemble, "_shared_optimizers",
                        lambda self: built.append(shared_optimizers(self)) or built[-1])
    config, overrides = MODELS[model]
    cfgs = [load(config, [*overrides, *member, f"run_dir={tmp_path / f'ensemble{k}'}"])
            for k, member in enumerate(members)]
    summaries = fit_ensemble(cfgs, batching=batching)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    assert [b is not None for b in built] == [shared]
    assert len({s["metrics"]["train/loss"] for s in summaries}) == 3  # three different runs
    for k, member in enumerate(members):
        separate = fit(load(config, [*overrides, *member, f"run_dir={tmp_path / f'separate{k}'}"]))
        assert separate["status"] == "finished"
        assert_same_run(tmp_path / f"ensemble{k}", tmp_path / f"separate{k}")


def test_a_diverging_member_is_marked_diverged_and_the_others_go_on(tmp_path):
    """AdamW at lr 1e30 makes one member's loss non-finite in its first epoch: it ends ``diverged`` at the epoch and
    step its separate run does, and the other two finish as their separate runs."""
    base = ["--config", "quickstart", *TINY, *EPOCHS, "optim=adamw"]
    members = [["seed=1", "optim.lr=0.01"], ["seed=2", "optim.lr=1e30"], ["seed=3", "optim.lr=0.01"]]
    cfgs = [load("quickstart", [*base[2:], *m, f"run_dir={tmp_path / f'ensemble{k}'}"]) for k, m in enumerate(members)]
    summaries = fit_ensemble(cfgs, batching="loop")
    assert [s["status"] for s in summaries] == ["finished", "diverged", "finished"]
    assert summaries[1]["diverged"]["loss"] in ("nan", "inf", "-inf")
    for k, m in enumerate(members):
        fit(load("quickstart", [*base[2:], *m, f"run_dir={tmp_path / f'separate{k}'}"]))
        assert_same_run(tmp_path / f"ensemble{k}", tmp_path / f"separate{k}")


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_members_whose_shapes_differ_train_in_separate_ensembles(tmp_path, monkeypatch, batching):
    """Encoder widths 8 and 6 go to separate ensembles; temperatures 0.05 and 0.2 share one (under vmap too: SimCLR
    holds its temperature in a buffer, stacked like the others)."""
    from ssl_bench.train import ensemble

    sizes = []
    train = ensemble.train
    monkeypatch.setattr(ensemble, "train", lambda members, batching: sizes.append(len(members)) or train(members,
                                                                                                     batching))
    members = [["seed=1"], ["seed=1", "encoder.width=6"], ["seed=2", "method.temperature=0.2"],
               ["seed=2", "encoder.width=6"]]
    cfgs = [load("quickstart", [*TINY, *EPOCHS, *m, f"run_dir={tmp_path / f'ensemble{k}'}"])
            for k, m in enumerate(members)]
    assert [s["status"] for s in fit_ensemble(cfgs, batching=batching)] == ["finished"] * 4
    assert sizes == [2, 2]
    for k in (1, 2):
        fit(load("quickstart", [*TINY, *EPOCHS, *members[k], f"run_dir={tmp_path / f'separate{k}'}"]))
        assert_same_run(tmp_path / f"ensemble{k}", tmp_path / f"separate{k}")


@pytest.mark.parametrize("method, members", [
    ("vicreg", [["seed=1"], ["seed=2", "method.std_coeff=5.0"], ["seed=3", "method.sim_coeff=1.0",
                                                                 "method.cov_coeff=4.0"]]),
    ("barlow_twins", [["seed=1"], ["seed=2", "method.lambda_offdiag=0.1"], ["seed=3", "method.scale_loss=0.5"]]),
])
def test_members_whose_loss_weights_differ_share_one_vmapped_ensemble(tmp_path, monkeypatch, method, members):
    """VICReg's and Barlow Twins' weights are buffers, stacked like SimCLR's temperature: one ensemble under vmap."""
    from ssl_bench.train import ensemble

    sizes = []
    train = ensemble.train
    monkeypatch.setattr(ensemble, "train", lambda members, batching: sizes.append(len(members)) or train(members,
                                                                                                     batching))
    overrides = [*TINY, *EPOCHS, f"method={method}", "method.projector_hidden_dim=32", "method.projector_dim=16"]
    cfgs = [load("quickstart", [*overrides, *m, f"run_dir={tmp_path / f'ensemble{k}'}"]) for k, m in enumerate(members)]
    assert [s["status"] for s in fit_ensemble(cfgs, batching="vmap")] == ["finished"] * 3
    assert sizes == [3]
    for k, member in enumerate(members):
        fit(load("quickstart", [*overrides, *member, f"run_dir={tmp_path / f'separate{k}'}"]))
        assert_same_run(tmp_path / f"ensemble{k}", tmp_path / f"separate{k}")


def test_fit_seeds_trains_one_ensemble_with_a_run_directory_per_seed(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--config", "quickstart", *TINY, "--seeds", "1,2", f"run_dir={tmp_path / 'runs'}")
    assert code == 0, err
    for seed in (1, 2):
        summary = json.loads((tmp_path / "runs" / f"seed{seed}" / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["seed"] == seed
        assert f"run directory: {tmp_path / 'runs' / f'seed{seed}'}" in out


QUICK = ["--config", "quickstart", *TINY]


@pytest.mark.parametrize(("args", "message"), [
    ([*QUICK, "--seeds", "1,x"], "--seeds 1,x must be integers separated by commas, e.g. --seeds 1,2,3"),
    ([*QUICK, "--seeds", "1,1"], "--seeds 1,1 repeats a seed; give each seed once"),
    ([*QUICK, "--seeds", "1,2", "seed=3"], "seed=3 and --seeds both set the seed; drop one"),
    ([*QUICK, "--seeds", "1,2", "trainer.devices=2"], "an ensemble trains in one process on one device"),
    (["--config", "cifar10/simclr", "--seeds", "1,2"], "data.name=cifar10 streams batches from a DataLoader"),
])
def test_bad_ensemble_input_is_one_line(run_cli, tmp_path, args, message):
    code, out, err = run_cli("fit", *args, f"run_dir={tmp_path}")
    assert error_line(code, err, out).startswith(message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("experiment", ["esser2023/width", "bao2023/linear"])
def test_callbacks_that_read_the_optimizer_settings_run_in_ensembles(tmp_path, experiment):
    """Esser et al.'s output dynamics and Bao's regimes read the run's optim settings (and step hooks): members
    write every history their separate runs write."""
    tiny = ["trainer.max_epochs=3", "trainer.progress=none", "logger=none"]
    cfgs = [load(experiment, [*tiny, f"seed={seed}", f"run_dir={tmp_path / 'ensemble' / str(seed)}"])
            for seed in (1, 2)]
    assert [summary["status"] for summary in fit_ensemble(cfgs)] == ["finished", "finished"]
    for seed in (1, 2):
        fit(load(experiment, [*tiny, f"seed={seed}", f"run_dir={tmp_path / 'separate' / str(seed)}"]))
        assert_same_run(tmp_path / "ensemble" / str(seed), tmp_path / "separate" / str(seed))


def test_sweep_ensemble_table_equals_the_separate_sweep(run_cli, tmp_path):
    """``sweep --ensemble`` over a grid of sparsity x seeds: one ensemble table, and a table equal to the separate
    sweep's."""
    grid = [*TINY, "sweep.seeds=[1,2]", "sweep.grid={data.sparsity:[0.1,0.3]}"]
    code, out, err = run_cli("sweep", "--config", "quickstart", *grid, "encoder.width=6", "--ensemble", "--jobs", "3",
                             "--dry-run", "--sweep-dir", tmp_path / "ens")
    assert out.splitlines()[-1] == "--ensemble: 4 runs to do as 2 ensembles of 2, 2 members, 3 at a time"
    code, out, err = run_cli("sweep", "--config", "quickstart", *grid, "--ensemble", "--batching", "vmap",
                             "--sweep-dir", tmp_path / "ens")
    assert code == 0, err
    assert "4 runs as 1 ensemble" in out
    table = json.loads((tmp_path / "ens" / "ensembles" / "0.json").read_text())
    assert len(table["members"]) == 4 and table["batching"] == "vmap"
    code, _, err = run_cli("sweep", "--config", "quickstart", *grid, "--jobs", "2", "--sweep-dir", tmp_path / "sep")
    assert code == 0, err
    assert (tmp_path / "ens" / "table.md").read_text() == (tmp_path / "sep" / "table.md").read_text()


def test_sweep_ensemble_refuses_slurm(run_cli, tmp_path):
    code, out, err = run_cli("sweep", "--config", "quickstart", *TINY, "--ensemble", "--slurm", "--dry-run",
                             "--sweep-dir", tmp_path / "s")
    assert "--ensemble trains a local sweep's runs together" in error_line(code, err, out)


def test_every_member_logs_its_own_wandb_run(run_cli, tmp_path, monkeypatch):
    """Two members, two offline W&B runs in the same process: each in its own run directory with its own id, both
    ended."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_tiny = [o for o in TINY if not o.startswith("logger=")]
    try:
        code, out, err = run_cli("fit", "--config", "quickstart", *wandb_tiny, "logger=wandb", "logger.mode=offline",
                                 "--seeds", "1,2", f"run_dir={tmp_path}")
    finally:
        wandb.teardown()
    assert code == 0, err
    ids = [(tmp_path / f"seed{s}" / "wandb" / "id.txt").read_text().strip() for s in (1, 2)]
    assert ids[0] != ids[1]
    for seed, run_id in zip((1, 2), ids):
        runs = list((tmp_path / f"seed{seed}" / "wandb").glob("offline-run-*"))
        assert [r.name.endswith(run_id) for r in runs] == [True]
        assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0


def test_the_ensemble_benchmark_runs(capsys):
    """benchmarks/ensemble.py end to end at a tiny size (no timing assertion)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ensemble_benchmark", REPO / "benchmarks" / "ensemble.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    results = benchmark.main(["--members", "1,2", "--epochs", "2", "--base-epochs", "1", "--rounds", "1",
                              "--models", "NCL-basic"])
    assert set(results) == {("NCL-basic", 1), ("NCL-basic", 2)}
    assert all(set(r) == {"separate", "vmap", "loop"} for r in results.values())
    assert "| NCL-basic | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_a_signal_ends_every_member_as_interrupted(tmp_path, signum, code):
    """SIGTERM stops the ensemble at once, SIGUSR1 at the end of an epoch: every member's summary says
    interrupted with that signal and no checkpoint, and its history stays valid JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", "fit", "--config", "quickstart", *TINY,
                             "trainer.max_epochs=100000", "trainer.log_every_n_epochs=1", "--seeds", "1,2",
                             f"run_dir={tmp_path}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not all((tmp_path / f"seed{s}" / "metrics.jsonl").is_file() for s in (1, 2)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    for seed in (1, 2):
        summary = json.loads((tmp_path / f"seed{seed}" / "summary.json").read_text())
        assert (summary["status"], summary["signal"], summary["resume"]) == ("interrupted",
                                                                           signal.Signals(signum).name, None)
        records = history(tmp_path / f"seed{seed}")
        assert 1 <= summary["epochs"] < 100000 and all(isinstance(r["step"], int) for r in records)
        if signum == signal.SIGUSR1:  # the epoch in progress was completed and logged
            assert records[-1]["epoch"] == summary["epochs"] - 1


def test_a_method_that_keeps_state_across_steps_is_not_vmapped(tmp_path):
    """Rusak et al.'s adaptive-temperature InfoNCE sums its loss terms across steps: vmap is refused in one line
    before anything is written, and the loop trains it."""
    from ssl_bench.config import ConfigError

    overrides = ["trainer.max_epochs=2", "logger=none", "trainer.progress=none", "data.batch_size=32",
                 "data.steps_per_epoch=2"]
    cfgs = [load("rusak2022/linear", [*overrides, f"seed={s}", f"run_dir={tmp_path / str(s)}"]) for s in (1, 2)]
    with pytest.raises(ConfigError, match="method.name=adaptive_infonce cannot be batched with vmap"):
        fit_ensemble(cfgs, batching="vmap")
    assert not list(tmp_path.iterdir())
    assert [s["status"] for s in fit_ensemble(cfgs, batching="auto")] == ["finished", "finished"]
