"""Seconds per epoch at the Table 2 setting (n=3000, p=50, d=10, m=50, batch 512): ssl-bench vs a plain PyTorch loop.

Both run in this process on the same data and the same math: the contrastive model (CL-basic: linear + BN +
symmetric ReLU, NT-Xent, dependent masks) and the alternating non-contrastive model (NCL-basic: linear + symmetric
ReLU, 2 - 2cos, independent masks, online and target SGD steps in turn). ssl-bench runs ``pokle2022/table2`` through
``ssl_bench.run.fit`` (Lightning Trainer, SSLModule, the max-cosine callback, a run directory in a temporary
folder); each epoch is one training batch of its mini-batches (``list[Views]``). Rounds alternate between the two
loops and the median is reported, so background load affects both alike.

    python benchmarks/speed_sparse.py [--epochs 200] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch
from torch.nn import functional as F

from ssl_bench.cli import load
from ssl_bench.run import fit

SETTINGS = {
    "CL-basic": ["method=simclr", "encoder=basic_official", "data.augmentation=dependent", "data.drop_last=true"],
    "NCL-basic": ["method=byol", "encoder=simplified", "data.augmentation=independent", "data.mask_prob=0.5"],
}


def plain_loop(model: str, epochs: int, seed: int = 1) -> float:
    """The same training written directly in PyTorch; returns seconds per epoch."""
    torch.manual_seed(seed)
    n, p, d, m, batch, lr = 3000, 50, 10, 50, 512, 0.005
    q, _ = torch.linalg.qr(torch.randn(p, d))
    z = torch.zeros(n, d)
    z[torch.arange(n), torch.randint(d, (n,))] = 1.0
    x = z @ q.T + (torch.log(torch.tensor(float(d))).sqrt() / d) * torch.randn(n, p)

    def layer() -> list[torch.Tensor]:
        w = (torch.randn(m, p) * (1.0 / (p * d)) ** 0.5).requires_grad_()
        b = ((torch.rand(m) * 2 - 1) / p ** 0.5).requires_grad_()
        return [w, b]

    def encode(params: list[torch.Tensor], a: torch.Tensor, batch_norm: bool) -> torch.Tensor:
        w, b = params[0], params[1]
        y = a @ w.T + b
        if batch_norm:
            y = F.batch_norm(y, None, None, params[2], params[3], training=True)
        return F.relu(y) - F.relu(2 * b - y)

    start = time.perf_counter()
    if model == "CL-basic":
        params = layer() + [torch.ones(m, requires_grad=True), torch.zeros(m, requires_grad=True)]
        opt = torch.optim.SGD(params, lr=lr)
        for _ in range(epochs):
            xs = x[torch.randperm(n)]
            keep = (torch.rand(n, p) < 0.5).float()
            v1, v2 = 2 * keep * xs, 2 * (1 - keep) * xs
            for i in range(0, n - batch + 1, batch):
                u = F.normalize(torch.cat([encode(params, v1[i:i + batch], True),
                                           encode(params, v2[i:i + batch], True)]), dim=1)
                logits = u @ u.T / 0.05
                off_diagonal = logits.flatten()[1:].view(2 * batch - 1, 2 * batch + 1)[:, :-1]
                partner = torch.arange(2 * batch).roll(batch)
                loss = F.cross_entropy(off_diagonal.reshape(2 * batch, 2 * batch - 1),
                                       partner - (partner > torch.arange(2 * batch)).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
    else:
        online, target = layer(), layer()
        opt_online, opt_target = torch.optim.SGD(online, lr=lr), torch.optim.SGD(target, lr=lr)
        for _ in range(epochs):
            xs = x[torch.randperm(n)]
            v1 = (torch.rand(n, p) < 0.5).float() * xs
            v2 = (torch.rand(n, p) < 0.5).float() * xs
            for k, i in enumerate(range(0, n, batch)):
                trained, other, opt = (online, target, opt_online) if k % 2 == 0 else (target, online, opt_target)
                a, c = (v1, v2) if k % 2 == 0 else (v2, v1)
                with torch.no_grad():
                    ref = encode(other, c[i:i + batch], False)
                loss = 2 - 2 * F.cosine_similarity(encode(trained, a[i:i + batch], False), ref).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return (time.perf_counter() - start) / epochs


class _TrainingClock(L.Callback):
    """Wall time from the first to the end of the last training epoch, as the plain loop's clock measures."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def suite_loop(model: str, epochs: int) -> float:
    """``ssl-bench fit`` in-process (Lightning Trainer, max-cosine callback, run directory); seconds per epoch."""
    with tempfile.TemporaryDirectory(prefix="speed_sparse-") as run_dir:
        cfg = load("pokle2022/table2", [*SETTINGS[model], f"trainer.max_epochs={epochs}", "logger=none",
                                        "trainer.progress=none", f"run_dir={run_dir}"])
        clock = _TrainingClock()
        summary = fit(cfg, extra_callbacks=[clock])
    assert summary["status"] == "finished", summary
    return clock.seconds / epochs


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; return each model's ratio ssl-bench / plain (medians of the rounds)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.epochs, args.rounds, args.threads) < 1:
        parser.error("--epochs, --rounds and --threads must be positive")
    torch.set_num_threads(args.threads)
    ratios: dict[str, float] = {}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.epochs} epochs x {args.rounds} rounds")
    print("| model | plain PyTorch (ms/epoch) | ssl-bench (ms/epoch) | ratio |\n|---|---|---|---|")
    for model in SETTINGS:
        plain, suite = [], []
        for _ in range(args.rounds):
            plain.append(plain_loop(model, args.epochs))
            suite.append(suite_loop(model, args.epochs))
        p, s = statistics.median(plain) * 1e3, statistics.median(suite) * 1e3
        print(f"| {model} | {p:.1f} | {s:.1f} | {s / p:.2f}x |", flush=True)
        ratios[model] = s / p
    return ratios


if __name__ == "__main__":
    main()
