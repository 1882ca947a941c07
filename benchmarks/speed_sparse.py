"""Seconds per epoch at the Table 2 setting (n=3000, p=50, d=10, m=50, batch 512): ssl-bench vs a plain PyTorch loop,
the share of ssl-bench's training time spent in metric callbacks, and the peak memory of each.

Both loops run on the same data and the same math: the contrastive model (CL-basic: linear + BN + symmetric ReLU,
NT-Xent, dependent masks), the alternating non-contrastive model (NCL-basic: linear + symmetric ReLU, 2 - 2cos,
independent masks, online and target SGD steps in turn) and the regularised non-contrastive ones (VICReg,
BarlowTwins: CL-basic's encoder and masks, the expander of ``configs/method/vicreg.yaml`` and ``barlow_twins.yaml``,
Linear-BN-ReLU twice then Linear to 256, and the very loss functions of ``ssl_bench.ops.losses`` with their
defaults). ssl-bench runs ``pokle2022/table2`` through
``ssl_bench.train.fit.fit`` (Lightning Trainer, SSLModule, the config's metric callbacks every
``trainer.metrics_every_n_epochs`` epochs, a run directory in a temporary folder); each epoch is one training batch
of its mini-batches (``list[Views]``). Rounds alternate between the two loops in this process and the median is
reported, so background load affects both alike (``--clock cpu`` times the work, this thread's CPU time, instead of
the elapsed time, for a machine shared with other work); ratio = ssl-bench / plain. The callback share is the time
inside the metric callbacks' epoch-end and step hooks over the training time. Peak memory is the largest over the
rounds of each loop's peak: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process's maximum resident set
size (``getrusage``), its count restarted before every loop (Linux's ``/proc/self/clear_refs``; ``n/a`` elsewhere),
so it includes what the process held before the loop (Python, torch, Lightning: the same for both loops).

    python benchmarks/speed_sparse.py [--epochs 200] [--rounds 3] [--threads 1] [--device cpu] [--clock wall]
                                      [--models CL-basic,NCL-basic,VICReg,BarlowTwins]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from ssl_bench.config.compose import load
from ssl_bench.ops.losses import barlow_twins_loss, vicreg_loss
from ssl_bench.train.fit import fit
from ssl_bench.train.lightning_module import CallbackAdapter

CL_BASIC = ["encoder=basic_official", "data.augmentation=dependent", "data.drop_last=true"]
SETTINGS = {
    "CL-basic": ["method=simclr", *CL_BASIC],
    "NCL-basic": ["method=byol", "encoder=simplified", "data.augmentation=independent", "data.mask_prob=0.5"],
    "VICReg": ["method=vicreg", *CL_BASIC],
    "BarlowTwins": ["method=barlow_twins", *CL_BASIC],
}
REGULARISED = {"VICReg": vicreg_loss, "BarlowTwins": barlow_twins_loss}
"""The plain loop's loss of each regularised model: the same functions, with the same defaults, as ssl-bench's."""
EXPANDER = 256
"""The width of the expander's three layers, as ``configs/method/vicreg.yaml`` and ``barlow_twins.yaml``."""
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
N, P, D, M, BATCH, LR = 3000, 50, 10, 50, 512, 0.005
"""The plain loops' samples, input and latent dimensions, encoder width, batch size and learning rate."""


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a clock read after it counts it (nothing on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model: str, epochs: int, device: torch.device = torch.device("cpu"),
               clock: Callable[[], float] = time.perf_counter, seed: int = 1) -> float:
    """The same training written directly in PyTorch on ``device``; returns seconds per epoch on ``clock``."""
    torch.manual_seed(seed)
    n, p, d = N, P, D
    q, _ = torch.linalg.qr(torch.randn(p, d))
    z = torch.zeros(n, d)
    z[torch.arange(n), torch.randint(d, (n,))] = 1.0
    x = (z @ q.T + (torch.log(torch.tensor(float(d))).sqrt() / d) * torch.randn(n, p)).to(device)
    synchronize(device)
    start = clock()
    if model == "NCL-basic":
        alternating_epochs(x, epochs)
    else:
        shared_encoder_epochs(model, x, epochs)
    synchronize(device)
    return (clock() - start) / epochs


def layer(device: torch.device) -> list[torch.Tensor]:
    """Weight ``W_ij ~ N(0, 1 / (p d))`` and bias of an ``M x P`` layer on ``device``."""
    w = (torch.randn(M, P) * (1.0 / (P * D)) ** 0.5).to(device).requires_grad_()
    b = ((torch.rand(M) * 2 - 1) / P ** 0.5).to(device).requires_grad_()
    return [w, b]


def encode(params: list[torch.Tensor], a: torch.Tensor, batch_norm: bool) -> torch.Tensor:
    """``y = W a + b`` (batch-normalised with ``params[2:]`` as scale and shift), then ``relu(y) - relu(2b - y)``."""
    w, b = params[0], params[1]
    y = a @ w.T + b
    if batch_norm:
        y = F.batch_norm(y, None, None, params[2], params[3], training=True)
    return F.relu(y) - F.relu(2 * b - y)


def nt_xent_plain(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """NT-Xent at temperature 0.05 over the 2B views, self-similarity left out."""
    batch, device = h1.shape[0], h1.device
    u = F.normalize(torch.cat([h1, h2]), dim=1)
    logits = u @ u.T / 0.05
    off_diagonal = logits.flatten()[1:].view(2 * batch - 1, 2 * batch + 1)[:, :-1]
    partner = torch.arange(2 * batch, device=device).roll(batch)
    return F.cross_entropy(off_diagonal.reshape(2 * batch, 2 * batch - 1),
                           partner - (partner > torch.arange(2 * batch, device=device)).long())


def shared_encoder_epochs(model: str, x: torch.Tensor, epochs: int) -> None:
    """CL-basic's encoder with batch norm and dependent masks ``2 D x``, ``2 (I - D) x``, one SGD optimizer; the loss
    NT-Xent (CL-basic) or that of a regularised model on the expander's outputs (VICReg, BarlowTwins)."""
    n, p, device = x.shape[0], x.shape[1], x.device
    params = layer(device) + [torch.ones(M, device=device, requires_grad=True),
                              torch.zeros(M, device=device, requires_grad=True)]
    if model in REGULARISED:
        expander = nn.Sequential(nn.Linear(M, EXPANDER, bias=False), nn.BatchNorm1d(EXPANDER), nn.ReLU(),
                                 nn.Linear(EXPANDER, EXPANDER, bias=False), nn.BatchNorm1d(EXPANDER), nn.ReLU(),
                                 nn.Linear(EXPANDER, EXPANDER)).to(device)
        params += list(expander.parameters())
        regularised = REGULARISED[model]

        def loss_fn(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
            return regularised(expander(h1), expander(h2))
    else:
        loss_fn = nt_xent_plain
    opt = torch.optim.SGD(params, lr=LR)
    for _ in range(epochs):
        xs = x[torch.randperm(n, device=device)]
        keep = (torch.rand(n, p, device=device) < 0.5).float()
        v1, v2 = 2 * keep * xs, 2 * (1 - keep) * xs
        for i in range(0, n - BATCH + 1, BATCH):
            loss = loss_fn(encode(params, v1[i:i + BATCH], True), encode(params, v2[i:i + BATCH], True))
            opt.zero_grad()
            loss.backward()
            opt.step()


def alternating_epochs(x: torch.Tensor, epochs: int) -> None:
    """NCL-basic: online and target encoders without batch norm, independent masks, SGD steps in turn on ``2 - 2
    cos`` against the other network's detached output."""
    n, p, device = x.shape[0], x.shape[1], x.device
    online, target = layer(device), layer(device)
    opt_online, opt_target = torch.optim.SGD(online, lr=LR), torch.optim.SGD(target, lr=LR)
    for _ in range(epochs):
        xs = x[torch.randperm(n, device=device)]
        v1 = (torch.rand(n, p, device=device) < 0.5).float() * xs
        v2 = (torch.rand(n, p, device=device) < 0.5).float() * xs
        for k, i in enumerate(range(0, n, BATCH)):
            trained, other, opt = (online, target, opt_online) if k % 2 == 0 else (target, online, opt_target)
            a, c = (v1, v2) if k % 2 == 0 else (v2, v1)
            with torch.no_grad():
                ref = encode(other, c[i:i + BATCH], False)
            loss = 2 - 2 * F.cosine_similarity(encode(trained, a[i:i + BATCH], False), ref).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


class TrainingClock(L.Callback):
    """Seconds on ``clock`` from the first to the end of the last training epoch, as the plain loop measures, and
    the part of them spent in each metric callback's ``on_train_epoch_end`` and ``on_optimizer_step`` hooks
    (``by_callback``, by the callback's config name)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.by_callback: dict[str, float] = {}
        for adapter in trainer.callbacks:
            if isinstance(adapter, CallbackAdapter):
                self.by_callback[adapter.name] = 0.0
                for hook in ("on_train_epoch_end", "on_optimizer_step"):
                    setattr(adapter.callback, hook,
                            self._timed(adapter.name, getattr(adapter.callback, hook), pl_module.device))
        synchronize(pl_module.device)
        self.start = self.clock()

    @property
    def callback_seconds(self) -> float:
        return sum(self.by_callback.values())

    def _timed(self, name: str, hook: Callable[..., None], device: torch.device) -> Callable[..., None]:
        def timed(*args: Any) -> None:
            synchronize(device)
            start = self.clock()
            hook(*args)
            synchronize(device)
            self.by_callback[name] += self.clock() - start
        return timed

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self.seconds = self.clock() - self.start


def suite_loop(model: str, epochs: int, device: torch.device = torch.device("cpu"),
               clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """``ssl-bench fit`` in-process (Lightning Trainer, the config's metric callbacks, run directory) in 32-bit
    precision on ``device``; returns seconds per epoch on ``clock`` and the share of them spent in metric callbacks."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="speed_sparse-") as run_dir:
        cfg = load("pokle2022/table2", [*SETTINGS[model], f"trainer.max_epochs={epochs}", "logger=none",
                                        "trainer.progress=none", f"trainer.accelerator={accelerator}",
                                        "trainer.precision=32-true", f"run_dir={run_dir}"])
        timer = TrainingClock(clock)
        summary = fit(cfg, extra_callbacks=[timer])
    assert summary["status"] == "finished", summary
    return timer.seconds / epochs, timer.callback_seconds / timer.seconds


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory count; False where the peak resident set size cannot be reset (not Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS that getrusage reports to the current RSS
    except OSError:
        return False
    return True


def peak_memory(device: torch.device) -> float:
    """MiB: ``torch.cuda.max_memory_allocated`` on a GPU, the process's maximum resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # KiB on Linux


def measured(device: torch.device, loop: Callable[[], Any]) -> tuple[Any, tuple[float, float] | None]:
    """``loop()``, and the memory in MiB held before it and at its peak (None where the peak cannot be told apart
    from earlier work)."""
    if not reset_peak_memory(device):
        return loop(), None
    before = torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == "cuda" else peak_memory(device)
    result = loop()
    return result, (before, peak_memory(device))


def largest_peak(memories: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    """The (before, peak) pair with the largest peak; None when any is unknown."""
    return None if None in memories else max(memories, key=lambda memory: memory[1])


def cell(memory: tuple[float, float] | None) -> str:
    return "n/a" if memory is None else f"{memory[1]:.0f} (+{memory[1] - memory[0]:.0f})"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | None]]:
    """Print the table; return per model the ratio ssl-bench / plain of the median times, the median callback
    share, and both loops' peak memory in MiB (the largest over the rounds)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="wall: elapsed time; cpu: this thread's CPU time, for a CPU shared with other work")
    parser.add_argument("--models", default=",".join(SETTINGS),
                        help=f"comma-separated models to time, of: {', '.join(SETTINGS)}")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if unknown := [m for m in models if m not in SETTINGS]:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    if min(args.epochs, args.rounds, args.threads) < 1:
        parser.error("--epochs, --rounds and --threads must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible here")
    if args.device == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures work on the CPU; time a GPU with --clock wall")
    torch.set_num_threads(args.threads)
    device, clock = torch.device(args.device), CLOCKS[args.clock]
    memory = f"peak {'GPU memory allocated' if device.type == 'cuda' else 'RSS'} (MiB, + over before the loop)"
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), {args.epochs} epochs x {args.rounds} "
          f"rounds, {args.clock} clock")
    print(f"| model | plain PyTorch (ms/epoch) | ssl-bench (ms/epoch) | ratio | metric callbacks (% of ssl-bench) | "
          f"plain {memory} | ssl-bench {memory} |\n|---|---|---|---|---|---|---|")
    results: dict[str, dict[str, float | None]] = {}
    for model in models:
        plain, suite, shares, plain_peaks, suite_peaks = [], [], [], [], []
        for _ in range(args.rounds):
            seconds, peak = measured(device, lambda: plain_loop(model, args.epochs, device, clock))
            plain.append(seconds)
            plain_peaks.append(peak)
            (seconds, share), peak = measured(device, lambda: suite_loop(model, args.epochs, device, clock))
            suite.append(seconds)
            shares.append(share)
            suite_peaks.append(peak)
        p, s, share = statistics.median(plain), statistics.median(suite), statistics.median(shares)
        plain_peak, suite_peak = largest_peak(plain_peaks), largest_peak(suite_peaks)
        print(f"| {model} | {p * 1e3:.1f} | {s * 1e3:.1f} | {s / p:.2f}x | {100 * share:.1f} % | {cell(plain_peak)} | "
              f"{cell(suite_peak)} |", flush=True)
        results[model] = {"ratio": s / p, "callback_share": share,
                          "plain_peak_mib": None if plain_peak is None else plain_peak[1],
                          "suite_peak_mib": None if suite_peak is None else suite_peak[1]}
    return results


if __name__ == "__main__":
    main()
