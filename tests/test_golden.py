"""Every experiment config refits to its committed golden trace (``tests/golden/``): the per-epoch loss and the
final summary metrics of a few deterministic CPU epochs. A failure here is a change of results; see
``tests/golden.py`` for when and how a trace may be regenerated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden import (
    cifar_root,
    differences,
    experiments,
    fit_trace,
    trace_path,
    with_data_root,
)

NAMES = experiments()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return cifar_root(tmp_path_factory.mktemp("cifar"))


def test_every_experiment_config_has_a_trace():
    stored = sorted(str(path.relative_to(trace_path("x").parent).with_suffix(""))
                    for path in trace_path("x").parent.rglob("*.json"))
    assert stored == sorted(NAMES), "add a trace with `python tests/golden.py NAME`, or delete a stale one"


@pytest.mark.parametrize("name", NAMES)
def test_refit_matches_the_golden_trace(name, data_root, tmp_path):
    trace = json.loads(trace_path(name).read_text())
    ours = fit_trace(name, with_data_root(trace["overrides"], data_root), tmp_path / "run")
    expected = {k: trace[k] for k in ("loss", "status", "epochs", "metrics")}
    assert not differences(ours, expected), differences(ours, expected)[:10]
