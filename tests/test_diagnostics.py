"""ssl_bench.diagnostics.CollapseDiagnostics in a plain Lightning model: docs/diagnostics.md's example as written,
and the values it logs against the metric functions."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_bench.diagnostics import CollapseDiagnostics
from ssl_bench.metrics import DIAGNOSTICS, knn_accuracy, lidar, rankme

DOC = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


def first_python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_docs_example_runs_and_logs_every_diagnostic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = first_python_block(DOC.read_text())
    assert len(code.splitlines()) <= 25
    exec(compile(code, str(DOC), "exec"), {"__name__": "__main__"})
    with open(tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("collapse/rankme_projector")]
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    for kind in ("backbone", "projector"):
        for name in (*DIAGNOSTICS, "lidar", "alignment"):
            values = [float(row[f"collapse/{name}_{kind}"]) for row in rows]
            assert all(math.isfinite(v) for v in values), (name, kind, values)
        knn = [float(row[f"readout/knn_acc_{kind}"]) for row in rows]
        assert all(0.4 < v <= 1 for v in knn), knn  # 4 classes: chance is 0.25
    for row in rows:
        assert 1 <= float(row["collapse/rankme_projector"]) <= 16
        assert 1 <= float(row["collapse/rankme_backbone"]) <= 64


class Collapsing(L.LightningModule):
    """A linear map whose output is the same for every input after training towards a constant."""

    def __init__(self, collapse: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        if collapse:
            with torch.no_grad():
                self.linear.weight.zero_()

    def forward(self, x):
        return self.linear(x)


def test_evaluate_matches_the_metric_functions_and_sees_complete_collapse():
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    y = (x[:, 0] > 0).long()
    augment = lambda batch: batch + 0.05 * torch.randn_like(batch)  # noqa: E731
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    healthy = Collapsing(collapse=False)
    metrics = CollapseDiagnostics(loader, augment=augment, views=3, view_samples=100).evaluate(healthy)
    with torch.no_grad():
        z = healthy(x)
    assert metrics["collapse/rankme"] == pytest.approx(rankme(z), rel=1e-6)
    assert metrics["readout/knn_acc"] == pytest.approx(knn_accuracy(z[0::2], y[0::2], z[1::2], y[1::2]), rel=1e-6)
    assert 1.5 < metrics["collapse/lidar"] <= 4
    collapsed = CollapseDiagnostics(loader, augment=augment, views=3, view_samples=100).evaluate(
        Collapsing(collapse=True))
    assert collapsed["collapse/rankme"] == pytest.approx(1.0, abs=1e-3)
    assert collapsed["collapse/std"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["collapse/rankme"] > 3


def test_evaluate_restores_training_mode_and_takes_unlabelled_batches():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    module = L.LightningModule()
    module.model = model
    module.forward = model.forward
    module.train()
    metrics = CollapseDiagnostics([torch.randn(50, 8) for _ in range(3)], max_samples=120).evaluate(module)
    assert model.training and module.training
    assert "readout/knn_acc" not in metrics and "collapse/lidar" not in metrics
    assert 1 < metrics["collapse/rankme"] <= 8


def test_lidar_from_views_equals_the_function():
    torch.manual_seed(1)
    x = torch.randn(60, 8)
    noise = torch.randn(4, 60, 8) * 0.1
    draws = iter(noise)
    module = Collapsing(collapse=False)
    metrics = CollapseDiagnostics([x], augment=lambda batch: batch + next(draws), views=4, view_samples=60
                                  ).evaluate(module)
    with torch.no_grad():
        views = torch.stack([module(x + n) for n in noise], dim=1)
    assert metrics["collapse/lidar"] == pytest.approx(lidar(views), rel=1e-6)


def test_wandb_gets_the_scalars_and_a_spectrum_plot(tmp_path):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    class Fitting(Collapsing):
        def training_step(self, batch, batch_idx):
            return self(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=32)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    try:
        L.Trainer(max_epochs=2, logger=logger, callbacks=[CollapseDiagnostics(loader)], enable_progress_bar=False,
                  enable_checkpointing=False, log_every_n_steps=1).fit(Fitting(collapse=False), loader)
        summary = dict(logger.experiment.summary)
    finally:
        wandb.finish()
    assert 1 <= summary["collapse/rankme"] <= 4
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/table/collapse/log_singular_values*.table.json"))


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="views >= 2"):
        CollapseDiagnostics([torch.randn(4, 2)], views=1)
    with pytest.raises(ValueError, match="no batches"):
        CollapseDiagnostics([]).evaluate(Collapsing(collapse=False))
