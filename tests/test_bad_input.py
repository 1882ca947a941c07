"""Bad input through the CLI: exit code 2, one stderr line ``ssl-bench: error: ...`` that names the problem and the
fix, no traceback, nothing written; a reader that closes stdout early ends the CLI quietly."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, error_line

from datamodules.cifar10 import (
    FOLDER,
    CIFAR10DataModule,
    DatasetFileError,
    DatasetNotFoundError,
    write_cifar10_batches,
)
from ssl_bench import registry
from ssl_bench.config.compose import available_configs

NEEDS_BASE = "needs a defaults list starting with base: begin {tmp}/plain.yaml with `defaults: [base, _self_]`"
FIX_OVERRIDE = ("write KEY=VALUE with a dotted KEY such as data.n, and quote a VALUE that holds = , [ ] { } or spaces: "
                "KEY='...'")

USER_FILES = {
    "syntax.yaml": "defaults:\n  - base\n  - _self_\ndata:\n  n: [1, 2\n",
    "tab.yaml": "defaults:\n  - base\n  - _self_\ndata:\n\tn: 5\n",
    "duplicate.yaml": "defaults:\n  - base\n  - _self_\nseed: 1\nseed: 2\n",
    "rows.yaml": "- seed: 1\n- seed: 2\n",
    "defaults_string.yaml": "defaults: base\nseed: 2\n",
    "plain.yaml": "data:\n  n: 100\n",
    "interpolation.yaml": "defaults:\n  - base\n  - _self_\ndata:\n  n: ${nope}\n",
    "notes.txt": "defaults: [base, _self_]\n",
}
"""User config files (``--config {tmp}/NAME``) that every case below finds in its temporary directory."""


OPTIONS = available_configs()[1]


def case(argv: str, message: str, command: str = "fit") -> pytest.param:
    return pytest.param(command, argv.split(), message, id=f"{command} {argv}"[:70])


CASES = [
    # --config: the user's YAML file
    case("--config {tmp}/syntax.yaml", "invalid YAML in {tmp}/syntax.yaml at line 6, column 1: expected ',' or ']', "
         "but got '<stream end>' (while parsing a flow sequence at line 5, column 6); fix the file there"),
    case("--config {tmp}/tab.yaml", "invalid YAML in {tmp}/tab.yaml at line 5, column 1: found character '\\t' that "
         "cannot start any token; indent with spaces, YAML does not allow tabs there"),
    case("--config {tmp}/duplicate.yaml", "invalid YAML in {tmp}/duplicate.yaml at line 5, column 1: found duplicate "
         "key seed (while constructing a mapping at line 1, column 1); fix the file there"),
    case("--config {tmp}/rows.yaml", "--config {tmp}/rows.yaml holds a list, not a mapping of keys; start it with "
         "`defaults: [base, _self_]` and set keys below it, e.g. `seed: 3`"),
    case("--config {tmp}/defaults_string.yaml",
         "defaults in {tmp}/defaults_string.yaml must be a list; write `defaults: [base, _self_]`"),
    case("--config {tmp}/plain.yaml logger=none",
         f"logger=none selects a config of group logger, which {NEEDS_BASE}"),
    case("--config {tmp}/plain.yaml", f"run_dir={{tmp}}/run sets a key of base, so plain.yaml {NEEDS_BASE}"),
    case("--config {tmp}/interpolation.yaml", "data.n cannot be resolved: Interpolation key 'nope' not found; refer to "
         "a key that exists, e.g. data.n=${seed}, or give a plain value"),
    case("--config {tmp}", "--config {tmp} is a directory; give a .yaml file or an experiment name "
         "(`ssl-bench --help` lists them)"),
    case("--config {tmp}/notes.txt", "--config {tmp}/notes.txt is not a .yaml file (Hydra reads only that suffix); "
         "rename it to notes.yaml"),
    case("--config {tmp}/missing.yaml", "--config {tmp}/missing.yaml does not exist; give the path of a .yaml file or "
         "an experiment name (`ssl-bench --help` lists them)"),
    # overrides that are not KEY=VALUE, or do not resolve
    case("--config quickstart =5", "override '=5' has no key; write KEY=VALUE, e.g. seed=5"),
    case("--config quickstart data.n", "override 'data.n' has no '='; write KEY=VALUE, e.g. data.n=VALUE"),
    case("--config quickstart data.n=3=4",
         f"cannot read the override 'data.n=3=4' (mismatched input '=' expecting <EOF>); {FIX_OVERRIDE}"),
    case("--config quickstart data..n=3",
         f"cannot read the override 'data..n=3' (token recognition error at: '.'); {FIX_OVERRIDE}"),
    case("--config quickstart data.n=${nope}", "data.n=${nope} cannot be resolved: Interpolation key 'nope' not found; "
         "refer to a key that exists, e.g. data.n=${seed}, or give a plain value"),
    case("--config quickstart +data.batch_size=3",
         "+data.batch_size=3 adds a key that is already set; drop the '+': data.batch_size=3"),
    case("--config quickstart ~nosuch", "~nosuch deletes a key that is not in the config; drop the override"),
    case("--config quickstart hydra.foo=1",
         "hydra.foo=1 sets hydra.foo, which is not a key of the config; drop the override"),
    case("--config quickstart optim.lr=inf", "optim.lr=inf must be a finite number > 0"),
    # config groups
    case("--config quickstart method=nosuch",
         f"method=nosuch is not a config of group method; choose one of: {', '.join(OPTIONS['method'])}"),
    case("--config quickstart data=", f"data= does not name a config of group data; choose one of: "
         f"{', '.join(OPTIONS['data'])}"),
    case("--config quickstart callbacks=[1]",
         f"callbacks=[1] does not name a config of group callbacks; choose one of: {', '.join(OPTIONS['callbacks'])}"),
    case("--config quickstart method.name=[1]",
         f"method.name=[1] is not a name; choose one of: {', '.join(registry.names('method'))}"),
    # the run's own keys and typed values
    case("--config quickstart seed=-1", "seed=-1 is out of range; allowed: [0, 4294967295]"),
    case("--config quickstart seed=4294967296", "seed=4294967296 is out of range; allowed: [0, 4294967295]"),
    case("--config quickstart experiment=", "experiment='' is empty; name the experiment, e.g. experiment=mytest (it "
         "names the run directory runs/<experiment>/...)"),
    case("--config quickstart sweep.seeds=[a]", "sweep.seeds[0]='a' has the wrong type; expected int"),
    case("--config quickstart sweep.seeds=[1,-1]", "sweep.seeds[1]=-1 is out of range; allowed: [0, 4294967295]"),
    case("--config quickstart sweep.seeds=[1,2,1]", "sweep.seeds=[1, 2, 1] repeats seed 1; list each seed once"),
    case("--config quickstart logger.tags=[[1]]", "logger.tags[0]=[1] has the wrong type; expected str"),
    case("--config quickstart sweep.reference=[{match:5}]",
         "sweep.reference[0].match=5 has the wrong type; expected dict[str, Any]"),
    case("--config quickstart trainer.devices=0", "trainer.devices=0 must be > 0"),
    case("--config quickstart data.batch_size=2000", "data.batch_size=2000 is larger than data.n=1000 with "
         "data.drop_last=true, so no full batch exists; set data.batch_size to at most 1000 or data.drop_last=false"),
    # the command line itself
    case("", "the following arguments are required: --config; usage: ssl-bench fit [-h] --config CONFIG "
         "[--batching {auto,vmap,loop}] [--print-config] [--seeds S1,S2,...] [overrides ...]"),
    case("--config quickstart --jobs abc", "argument --jobs: invalid int value: 'abc'; usage: ssl-bench sweep [-h] "
         "[--config CONFIG] [--jobs JOBS] [--sweep-dir SWEEP_DIR] [--print-config] [--slurm] [--status DIR] "
         "[--partition P] [--gpus-per-task G] [--cpus-per-task C] [--mem M] [--time T] [--max-parallel K] "
         "[--account A] [--qos Q] [--nodes N] [--extra-sbatch OPTS] [--force] [--only AXIS=V1,V2] [--ensemble] "
         "[--profile NAME] [--batching {auto,vmap,loop}] [overrides ...]",
         command="sweep"),
    case("--config quickstart --jobs -1", "--jobs=-1 must be >= 1", command="sweep"),
]


@pytest.mark.parametrize("command,argv,message", CASES)
def test_bad_input_is_one_line_with_exit_2_and_writes_nothing(run_cli, tmp_path, command, argv, message):
    for name, text in USER_FILES.items():
        (tmp_path / name).write_text(text)
    run_dir = tmp_path / "run"
    where = [f"run_dir={run_dir}"] if command == "fit" else ["--sweep-dir", str(run_dir)]
    code, out, err = run_cli(command, *(a.replace("{tmp}", str(tmp_path)) for a in argv), *where)
    assert error_line(code, err, out) == message.replace("{tmp}", str(tmp_path))
    assert not run_dir.exists()


# --------------------------------------------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    return write_cifar10_batches(tmp_path / "cifar", n_train=10, n_test=5)


@pytest.mark.parametrize("content", [b"not a pickle\n", b"truncated"], ids=["not-a-pickle", "truncated"])
def test_unreadable_cifar_file_is_named_with_the_fix(cifar_root, content):
    batch = cifar_root / FOLDER / "data_batch_3"
    if content == b"truncated":
        content = batch.read_bytes()[:1000]
    batch.write_bytes(content)
    data = CIFAR10DataModule(cifar_root, verify_checksums=False, num_workers=0)
    with pytest.raises(DatasetFileError) as error:
        data.check()
    message = str(error.value)
    assert message.startswith(f"CIFAR-10 file {batch.absolute()} is truncated or not a pickled batch (")
    assert message.endswith(f"; delete {batch.parent.absolute()} and set data.download=true to fetch the official "
                            "files, or regenerate them")
    assert "\n" not in message
    data.split(train=False)  # the test split's files are fine


def test_cifar_file_that_is_a_dict_without_images_is_named(cifar_root):
    meta = cifar_root / FOLDER / "batches.meta"
    meta.write_bytes(pickle.dumps({"names": []}))
    expected = f"CIFAR-10 file {re.escape(str(meta.absolute()))} .*not a pickled dict with label_names"
    with pytest.raises(DatasetFileError, match=expected):
        CIFAR10DataModule(cifar_root, verify_checksums=False).check()


@pytest.mark.parametrize("download", [False, True])
def test_cifar_root_that_is_a_file_says_so(tmp_path, download):
    root = tmp_path / "cifar"
    root.write_text("")
    data = CIFAR10DataModule(root, download=download)
    with pytest.raises(DatasetNotFoundError, match=r"^data\.root=.* is a file, not a directory; set data\.root to the "
                                                   r"directory that holds cifar-10-batches-py"):
        data.prepare_data()
        data.check()


def test_unreadable_cifar_file_through_the_cli(run_cli, cifar_root, tmp_path):
    batch = cifar_root / FOLDER / "test_batch"
    batch.write_bytes(b"\x80\x04junk")
    code, out, err = run_cli("fit", "--config", "cifar10/simclr", f"data.root={cifar_root}",
                             "data.verify_checksums=false", "data.batch_size=4", "data.num_workers=0",
                             "method.projector_hidden_dim=8", "method.projector_dim=8", "trainer.max_epochs=1",
                             "trainer.precision=32-true", "trainer.progress=none", "logger=none",
                             f"run_dir={tmp_path / 'run'}")
    message = error_line(code, err, out)
    assert message.startswith(f"CIFAR-10 file {batch.absolute()} is truncated or not a pickled batch")
    assert not (tmp_path / "run").exists()  # the data is checked before the run directory is written


# ---------------------------------------------------------------------------------------------- real subprocesses


def test_yaml_syntax_error_in_a_real_process(cli_subprocess, tmp_path):
    (tmp_path / "broken.yaml").write_text(USER_FILES["tab.yaml"])
    run_dir = tmp_path / "run"
    proc = cli_subprocess("fit", "--config", "broken.yaml", f"run_dir={run_dir}", *TINY)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["ssl-bench: error: invalid YAML in broken.yaml at line 5, column 1: found "
                                        "character '\\t' that cannot start any token; indent with spaces, YAML does "
                                        "not allow tabs there"]
    assert not run_dir.exists()


@pytest.mark.parametrize("command", ["fit", "sweep"])
def test_a_reader_that_closes_stdout_early_ends_the_cli_quietly(tmp_path, command):
    """``ssl-bench fit --print-config | head -1``: the reader is gone before the CLI writes; no BrokenPipe traceback,
    exit code 141 (128 + SIGPIPE) as a shell reports for a writer whose reader went away."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    where = ["--sweep-dir", str(tmp_path / "sweep")] if command == "sweep" else [f"run_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, "-m", "ssl_bench.cli", command, "--config", "quickstart",
                             "--print-config", *where], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert err == b""
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "run").exists()
