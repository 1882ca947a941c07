"""The progress bars' postfix: the loss and the study's headline metric, every other scalar left to the logs."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TINY

from ssl_bench.train.progress import postfix

POSTFIX = re.compile(r",\s*([\w/.]+)=([-\w.]+)")


def final_postfix(stdout: str) -> dict[str, str]:
    """The postfix of the last line the bar drew (``fit: ...| 3/3 [..., key=value, key=value]``)."""
    last = [line for line in stdout.replace("\r", "\n").splitlines() if line.startswith("fit:")][-1]
    return dict(POSTFIX.findall(last[last.rindex("|"):]))


@pytest.mark.parametrize("headlines, shown", [
    ((), ["train/loss", "maxcos/min"]),
    (("readout/online_acc", "maxcos/median"), ["train/loss", "maxcos/median"]),
    (("train/loss", "maxcos/max"), ["train/loss"]),
    (("spectrum/rank",), ["train/loss", "maxcos/min"]),
], ids=["no-sweep-metrics", "first-logged", "loss-first", "none-logged"])
def test_the_postfix_holds_the_loss_and_the_headline_metric(headlines, shown):
    record = {"train/loss": 0.5, "train/lr": 0.1, "maxcos/max": 0.9, "maxcos/median": 0.8, "maxcos/min": 0.25,
              "collapse/std_l2": 0.7, "epoch": 3}
    assert list(postfix(record, headlines)) == shown
    assert postfix(record, headlines)["train/loss"] == "0.5000"
    assert postfix({"train/lr": 0.1}, headlines) == {}


def test_a_quickstart_fit_shows_only_the_loss_and_its_first_sweep_metric(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    settings = [o for o in TINY if not o.startswith("trainer.progress")]
    code, out, err = run_cli("fit", "--config", "quickstart", *settings, "trainer.progress=epochs",
                             f"run_dir={run_dir}")
    assert code == 0, err
    final = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert len(final) > 5  # the logs hold every scalar
    shown = final_postfix(out)
    assert list(shown) == ["train/loss", "maxcos/max"]  # quickstart's sweep.metrics start with maxcos/max
    assert all(float(value) == pytest.approx(final[key], abs=5e-5) for key, value in shown.items())
