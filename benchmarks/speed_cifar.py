"""Images per second of CIFAR-10 SimCLR ResNet-18 training, data loading and augmentation included: ssl-bench vs a
plain PyTorch loop, and the share of time spent in augmentation.

The ``cifar10/simclr`` recipe (ResNet-18 with the CIFAR stem, MLP projector 512-2048-256, NT-Xent with tau 0.2, LARS,
online linear probe, two solo-learn views per image) trains on a synthetic CIFAR-format train split of ``--n-train``
random images written to a temporary directory. An image is a source image: a step of batch size B trains on B images,
i.e. 2B augmented views, and images/s = B x steps / seconds. The ``--steps`` timed steps follow ``--warmup-steps``
untimed ones and run from the end of the last warm-up step to the end of the last timed step, each with the loading,
augmentation and device transfer of its batch (CUDA is synchronised at both ends).

* ssl-bench: ``fit`` of ``cifar10/simclr`` in-process (Lightning Trainer, SSLModule, CIFAR10DataModule, SimCLR
  method) without logger, progress bar, checkpoints, validation or metric callbacks; a callback clocks the steps and
  stops the run.
* plain PyTorch: the same ResNetBackbone, MLP projector (the config's ``make_projector``), probe, ``nt_xent`` and
  ``LARS`` at the recipe's peak
  learning rate (the schedule changes one scalar per step), the same DataLoader (dataset, views, sampler, workers,
  pinning) and the same autocast / GradScaler as ``--precision``, in a hand-written loop. "in next(loader)" is the
  share of its wall time spent waiting for batches.
* DataLoader alone: the same loader iterated without a model: the images/s that loading and augmentation can feed.
* plain PyTorch with ``num_workers=0``: augmentation runs in the training process, so "in next(loader)" is the share
  of the step time spent producing the two views of every image and collating them, and that time per image is the
  augmentation cost.

Rounds alternate the measurements and the median of each is reported.

    python benchmarks/speed_cifar.py [--device cuda] [--batch-size 256] [--steps 50] [--warmup-steps 10]
                                     [--num-workers 4] [--precision 16-mixed] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from datamodules.base import collate_views
from datamodules.cifar10 import (
    EpochShuffleSampler,
    TransformedSplit,
    cifar10_split,
    view_transforms,
    write_cifar10_batches,
)
from ssl_bench.cli import load
from ssl_bench.config import RunConfig
from ssl_bench.losses import nt_xent
from ssl_bench.nets.resnet import ResNetBackbone
from ssl_bench.optim import LARS
from ssl_bench.run import fit
from ssl_bench.views import Views

AUTOCAST = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe(root: Path, run_dir: Path, args: argparse.Namespace, num_workers: int) -> RunConfig:
    """``cifar10/simclr`` on the synthetic split, with enough epochs for the warm-up and timed steps."""
    epochs = math.ceil((args.warmup_steps + args.steps) / (args.n_train // args.batch_size))
    return load("cifar10/simclr", [
        f"data.root={root}", "data.verify_checksums=false", f"data.batch_size={args.batch_size}",
        f"data.num_workers={num_workers}", f"trainer.max_epochs={epochs}", f"trainer.val_every_n_epochs={epochs + 1}",
        "trainer.checkpoint_every_n_epochs=0", "trainer.progress=none", f"trainer.threads={args.threads}",
        f"trainer.precision={args.precision}", f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "~callbacks.spectrum", "~callbacks.readout", "logger=none", f"run_dir={run_dir}"])


def train_loader(cfg: RunConfig) -> DataLoader:
    """The loader ``CIFAR10DataModule.train_dataloader`` builds for one process, written out."""
    data = cfg.data
    split = cifar10_split(data.root, train=True, verify_checksums=data.verify_checksums)
    dataset = TransformedSplit(split, *view_transforms(data.views, data.crop_min_scale), seed=cfg.seed)
    return DataLoader(dataset, batch_size=data.batch_size, sampler=EpochShuffleSampler(len(dataset), cfg.seed),
                      num_workers=data.num_workers, pin_memory=torch.cuda.is_available(), drop_last=True,
                      collate_fn=collate_views, persistent_workers=data.num_workers > 0)


def endless(loader: DataLoader) -> Iterator[list[Views]]:
    """The loader's batches epoch after epoch, with the sampler's epoch set as Lightning sets it."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def plain_loop(cfg: RunConfig, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """The recipe's training written directly in PyTorch; seconds of the timed steps and of those spent in
    ``next(loader)``."""
    torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed)
    m, o = cfg.method, cfg.optim
    backbone = ResNetBackbone(cfg.encoder.name, cifar_stem=cfg.encoder.cifar_stem).to(device)
    head = m.make_projector(backbone.output_dim).to(device)
    probe = torch.nn.Linear(backbone.output_dim, 10).to(device)
    lr = o.lr * cfg.data.batch_size / 256 if o.scale_lr else o.lr
    optimizer = LARS([dict(params=[*backbone.parameters(), *head.parameters()]),
                      dict(params=list(probe.parameters()), lr=o.probe_lr, weight_decay=0.0, lars_exclude=True)],
                     lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, eta=o.lars_eta, clip=o.lars_clip,
                     exclude_bias_and_norm=o.exclude_bias_and_norm)
    dtype = AUTOCAST[cfg.trainer.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    batches = endless(train_loader(cfg))
    start, loading = 0.0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start, loading = time.perf_counter(), 0.0
        fetch = time.perf_counter()
        [views] = next(batches)
        loading += time.perf_counter() - fetch
        views = views.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f1, f2 = backbone(views.view1), backbone(views.view2)
            loss = nt_xent(head(f1), head(f2), m.temperature) + F.cross_entropy(probe(f1.detach()), views.labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device)
    return time.perf_counter() - start, loading


def loader_alone(cfg: RunConfig, warmup: int, steps: int) -> float:
    """Seconds to draw the timed batches from the recipe's loader with no model."""
    torch.set_num_threads(cfg.trainer.threads)
    batches = endless(train_loader(cfg))
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


class _StepClock(L.Callback):
    """Wall time from the end of training step ``warmup`` to the end of step ``warmup + steps``; then stops."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.done, self.start, self.seconds = warmup, steps, 0, 0.0, float("nan")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        self.done += 1
        if self.done not in (self.warmup, self.warmup + self.steps):
            return
        synchronize(pl_module.device)
        if self.done == self.warmup:
            self.start = time.perf_counter()
        else:
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def suite_loop(cfg: RunConfig, warmup: int, steps: int) -> float:
    """``ssl-bench fit`` in-process; seconds of the timed steps."""
    clock = _StepClock(warmup, steps)
    summary = fit(cfg, extra_callbacks=[clock])
    assert summary["status"] == "finished" and clock.done == warmup + steps, summary
    return clock.seconds


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")]
            name = models[0] if models else name
    return f"{name}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=None,
                        help="synthetic train images (default: batch size x (warm-up + timed steps), one epoch)")
    parser.add_argument("--precision", choices=tuple(AUTOCAST), default=None,
                        help="default 16-mixed on cuda, 32-true on cpu (16-mixed on cpu runs as bf16-mixed)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    args.n_train = args.n_train or args.batch_size * (args.warmup_steps + args.steps)
    if args.precision is None:
        args.precision = "16-mixed" if args.device == "cuda" else "32-true"
    if args.precision == "16-mixed" and args.device == "cpu":
        args.precision = "bf16-mixed"
    if min(args.batch_size, args.steps, args.warmup_steps, args.threads, args.rounds) < 1 or args.num_workers < 0:
        parser.error("--batch-size, --steps, --warmup-steps, --threads and --rounds must be positive")
    if args.n_train < args.batch_size:
        parser.error("--n-train must be at least --batch-size")
    device = torch.device(args.device)
    images = args.batch_size * args.steps
    keys = ("plain", "plain_share", "suite", "loader", "inline", "inline_share", "inline_ms")
    samples: dict[str, list[float]] = {key: [] for key in keys}
    with tempfile.TemporaryDirectory(prefix="speed_cifar-") as tmp:
        root = write_cifar10_batches(Path(tmp) / "cifar10", args.n_train, n_test=100, seed=0)
        cfg = recipe(root, Path(tmp) / "run", args, args.num_workers)
        inline_cfg = recipe(root, Path(tmp) / "run", args, 0)
        for _ in range(args.rounds):
            seconds, loading = plain_loop(cfg, device, args.warmup_steps, args.steps)
            samples["plain"].append(seconds)
            samples["plain_share"].append(loading / seconds)
            samples["suite"].append(suite_loop(cfg, args.warmup_steps, args.steps))
            samples["loader"].append(loader_alone(cfg, args.warmup_steps, args.steps))
            if args.num_workers > 0:
                seconds, loading = plain_loop(inline_cfg, device, args.warmup_steps, args.steps)
            samples["inline"].append(seconds)
            samples["inline_share"].append(loading / seconds)
            samples["inline_ms"].append(loading / images * 1e3)
    median = {key: statistics.median(values) for key, values in samples.items()}
    rate = {key: images / median[key] for key in ("plain", "suite", "loader", "inline")}
    ms = {key: median[key] / args.steps * 1e3 for key in ("plain", "suite", "loader", "inline")}
    print(f"torch {torch.__version__}, {args.device}: {machine(device)}; {args.threads} thread(s), "
          f"{args.precision}, batch {args.batch_size} images (x2 views), {args.steps} timed steps after "
          f"{args.warmup_steps} warm-up, {args.num_workers} worker(s), {args.n_train} synthetic train images, "
          f"median of {args.rounds} round(s); images/s counts source images (batch size per step)")
    print("| loop | images/s | ms/step | in next(loader) | vs plain |\n|---|---|---|---|---|")
    print(f"| plain PyTorch | {rate['plain']:.1f} | {ms['plain']:.1f} | {median['plain_share']:.1%} | 1.00x |")
    print(f"| ssl-bench fit | {rate['suite']:.1f} | {ms['suite']:.1f} | - | {rate['suite'] / rate['plain']:.2f}x |")
    print(f"| DataLoader alone, {args.num_workers} worker(s) | {rate['loader']:.1f} | {ms['loader']:.1f} | - | "
          f"{rate['loader'] / rate['plain']:.2f}x |")
    print(f"| plain PyTorch, num_workers=0 | {rate['inline']:.1f} | {ms['inline']:.1f} | "
          f"{median['inline_share']:.1%} | {rate['inline'] / rate['plain']:.2f}x |")
    print(f"augmentation (loading, two views, collation) in the training process: {median['inline_ms']:.2f} ms per "
          f"image, {median['inline_share']:.1%} of the num_workers=0 step time", flush=True)
    return {"plain_images_per_s": rate["plain"], "ssl_bench_images_per_s": rate["suite"],
            "ratio": rate["suite"] / rate["plain"], "loader_images_per_s": rate["loader"],
            "inline_images_per_s": rate["inline"], "inline_loading_share": median["inline_share"],
            "augmentation_ms_per_image": median["inline_ms"]}


if __name__ == "__main__":
    main()
