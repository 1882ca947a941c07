"""Images per second of CIFAR-10 SimCLR ResNet-18 training, data loading and augmentation included: ssl-bench vs a
plain PyTorch loop, the CPU (PIL) against the device augmentation pipeline, augmentation alone, and the share of
training time spent in metric callbacks.

The ``cifar10/simclr`` recipe (ResNet-18 with the CIFAR stem, MLP projector 512-2048-256, NT-Xent with tau 0.2, LARS,
online linear probe, two solo-learn views per image) trains on a synthetic CIFAR-format train split of ``--n-train``
random images written to a temporary directory. An image is a source image: a step of batch size B trains on B images,
i.e. 2B augmented views, and images/s = B x steps / seconds. The ``--steps`` timed steps follow ``--warmup-steps``
untimed ones and run from the end of the last warm-up step to the end of the last timed step, each with the loading,
augmentation and device transfer of its batch (CUDA is synchronised at both ends). Each ``--augment-on`` pipeline
(``data.augment_on``: cpu, torchvision on PIL images in ``--num-workers`` loader processes; device, the uint8 split on
the device and both views made there in batch) is measured with:

* ssl-bench: ``fit`` of ``cifar10/simclr`` in-process (Lightning Trainer, SSLModule, CIFAR10DataModule, SimCLR
  method) without logger, progress bar, checkpoints, validation or metric callbacks; a callback clocks the steps and
  stops the run.
* plain PyTorch: the same ResNetBackbone, MLP projector (the config's ``make_projector``), probe, ``nt_xent`` and
  ``LARS`` at the recipe's peak learning rate (the schedule changes one scalar per step), the datamodule's own train
  loader and batch transfer (where the device pipeline augments), and the same autocast / GradScaler as
  ``--precision``, in a hand-written loop; ``--channels-last`` puts its model and views in channels-last memory format
  and ``--compile`` compiles its backbone with ``torch.compile``. "in loading" is the share of its wall time spent in
  ``next(loader)`` and the batch transfer (kernel launches only, on CUDA).

With the cpu pipeline also: the DataLoader alone (no model: the images/s that loading and augmentation can feed), and
the plain loop with ``num_workers=0``, where augmentation runs in the training process, so "in loading" is the share
of the step time spent producing the two views of every image, and that time per image is the augmentation cost.
Augmentation alone: both views of ``--steps`` batches of the device-resident split, made by the datamodule's batched
code (parameters drawn per epoch, as in training) and by kornia's equivalent (``kornia.augmentation`` with
``same_on_batch=False``; its jitter draws one operation order per batch), when kornia is installed.
Rounds alternate the measurements and the median of each is reported. Peak memory is
``torch.cuda.max_memory_allocated`` of the measurement on CUDA, the process's maximum resident set size so far on CPU.

Metric callbacks: one more ``fit`` of one epoch with the recipe's ``spectrum`` and ``readout`` callbacks (on
``--n-test`` synthetic test images) clocks each call of their hooks. Their share at the default cadence is
extrapolated to the full recipe: with ``c_s`` a spectrum call scaled to its 2048 samples, ``c_r`` the readout scaled to
the 60000 images it embeds, ``t`` the ssl-bench seconds per train image, E = 1000 epochs of 50000 images and a
spectrum every 10 epochs, ``share = (100 c_s + c_r) / (50000 E t + 100 c_s + c_r)``.

    python benchmarks/speed_cifar.py [--device cuda] [--batch-size 256] [--steps 50] [--warmup-steps 10]
                                     [--num-workers 4] [--precision 16-mixed] [--rounds 3]
                                     [--augment-on cpu device] [--channels-last] [--compile] [--n-test 2048]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from datamodules.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10DataModule,
    write_cifar10_batches,
)
from datamodules.gpu_augment import ViewRecipe
from ssl_bench.config import RunConfig
from ssl_bench.config.compose import load
from ssl_bench.nets.resnet import ResNetBackbone
from ssl_bench.ops.losses import nt_xent
from ssl_bench.optim import LARS
from ssl_bench.train.fit import fit
from ssl_bench.train.lightning_module import CallbackAdapter

AUTOCAST = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
RECIPE_IMAGES, RECIPE_TEST, RECIPE_EPOCHS, SPECTRUM_SAMPLES = 50_000, 10_000, 1000, 2048


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` on CUDA; on CPU the largest resident set of this process and of its
    finished loader workers so far (``getrusage`` maxrss, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    usage = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return usage / 2**10


def recipe(root: Path, run_dir: Path, args: argparse.Namespace, augment_on: str, num_workers: int,
           epochs: int | None = None, callbacks: bool = False) -> RunConfig:
    """``cifar10/simclr`` on the synthetic split, with enough epochs for the warm-up and timed steps."""
    epochs = epochs or math.ceil((args.warmup_steps + args.steps) / (args.n_train // args.batch_size))
    return load("cifar10/simclr", [
        f"data.root={root}", "data.verify_checksums=false", f"data.batch_size={args.batch_size}",
        f"data.num_workers={num_workers}", f"data.augment_on={augment_on}", f"trainer.max_epochs={epochs}",
        f"trainer.val_every_n_epochs={epochs + 1}", "trainer.checkpoint_every_n_epochs=0", "trainer.progress=none",
        f"trainer.threads={args.threads}", f"trainer.precision={args.precision}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", "logger=none", f"run_dir={run_dir}",
        *([] if callbacks else ["~callbacks.spectrum", "~callbacks.readout"])])


def endless(loader: DataLoader) -> Iterator[object]:
    """The loader's batches epoch after epoch, with the sampler's epoch set as Lightning sets it."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def datamodule(cfg: RunConfig) -> CIFAR10DataModule:
    data = CIFAR10DataModule.from_config(cfg.data, cfg.seed)
    data.setup("fit")
    return data


def plain_loop(cfg: RunConfig, device: torch.device, args: argparse.Namespace) -> tuple[float, float]:
    """The recipe's training written directly in PyTorch; seconds of the timed steps and of those spent loading
    (``next(loader)`` and the batch transfer)."""
    torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.seed)
    m, o = cfg.method, cfg.optim
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    backbone = ResNetBackbone(cfg.encoder.name, cifar_stem=cfg.encoder.cifar_stem)
    backbone = backbone.to(device, memory_format=memory_format)
    head = m.make_projector(backbone.output_dim).to(device)
    probe = torch.nn.Linear(backbone.output_dim, 10).to(device)
    lr = o.lr * cfg.data.batch_size / 256 if o.scale_lr else o.lr
    optimizer = LARS([dict(params=[*backbone.parameters(), *head.parameters()]),
                      dict(params=list(probe.parameters()), lr=o.probe_lr, weight_decay=0.0, lars_exclude=True)],
                     lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, eta=o.lars_eta, clip=o.lars_clip,
                     exclude_bias_and_norm=o.exclude_bias_and_norm)
    encode = torch.compile(backbone) if args.compile else backbone
    dtype = AUTOCAST[cfg.trainer.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    data = datamodule(cfg)
    batches = endless(data.train_dataloader())
    start, loading = 0.0, 0.0
    for step in range(args.warmup_steps + args.steps):
        if step == args.warmup_steps:
            synchronize(device)
            start, loading = time.perf_counter(), 0.0
        fetch = time.perf_counter()
        [views] = data.transfer_batch_to_device(next(batches), device)
        loading += time.perf_counter() - fetch
        view1, view2 = (v.contiguous(memory_format=memory_format) for v in (views.view1, views.view2))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f1, f2 = encode(view1), encode(view2)
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
    batches = endless(datamodule(cfg).train_dataloader())
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return time.perf_counter() - start


def kornia_views(recipes: tuple[ViewRecipe, ...]) -> Callable[[Tensor], tuple[Tensor, ...]] | None:
    """kornia's equivalent of the device pipeline (float images in [0, 1] -> normalised views), None without
    kornia."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)

    def pipeline(r: ViewRecipe) -> torch.nn.Module:
        blur = [K.RandomGaussianBlur(r.blur_kernel, r.blur_sigma, p=r.blur_prob)] if r.blur_prob > 0 else []
        solarize = [K.RandomSolarize(0.0, 0.0, p=r.solarize_prob)] if r.solarize_prob > 0 else []
        return K.AugmentationSequential(
            K.RandomResizedCrop((32, 32), scale=(r.crop_min_scale, 1.0), ratio=r.crop_ratio, resample="BICUBIC"),
            K.ColorJitter(r.brightness, r.contrast, r.saturation, r.hue, p=r.jitter_prob),
            K.RandomGrayscale(p=r.grayscale_prob), *blur, *solarize, K.RandomHorizontalFlip(p=r.flip_prob),
            K.Normalize(mean, std), same_on_batch=False)

    pipelines = [pipeline(r) for r in recipes]
    return lambda x: tuple(p(x) for p in pipelines)


def augmentation_alone(cfg: RunConfig, device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Seconds for both views of the timed batches: the datamodule's batched code (``device_views`` of the sampler's
    keys) and, with kornia installed, kornia's pipeline on the same images."""
    torch.set_num_threads(cfg.trainer.threads)
    data = datamodule(cfg)
    batches = endless(data.train_dataloader())
    keys = [next(batches).keys for _ in range(args.warmup_steps + args.steps)]
    seconds = {}
    kornia = kornia_views(data.batched_views.recipes)
    ways = {"batched": lambda k: data.device_views(k, device).view1}
    if kornia is not None:
        images = torch.from_numpy(data.split(train=True).data).permute(0, 3, 1, 2).contiguous().to(device)
        ways["kornia"] = lambda k: kornia(images[(k % len(images)).to(device)].float() / 255)[0]
    for name, make in ways.items():
        for k in keys[:args.warmup_steps]:
            make(k)
        synchronize(device)
        start = time.perf_counter()
        for k in keys[args.warmup_steps:]:
            make(k)
        synchronize(device)
        seconds[name] = time.perf_counter() - start
    return seconds


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


@contextmanager
def clocked_callbacks(device: torch.device) -> Iterator[dict[str, float]]:
    """Seconds spent in each metric callback's ``on_train_epoch_end`` and ``on_train_end`` (keys ``name.hook``),
    clocked around the hooks of :class:`~ssl_bench.train.lightning_module.CallbackAdapter` while the context is open."""
    seconds: dict[str, float] = {}
    hooks = {name: getattr(CallbackAdapter, name) for name in ("on_train_epoch_end", "on_train_end")}

    def clocked(name: str, hook: Callable) -> Callable:
        def run(adapter: CallbackAdapter, trainer: L.Trainer, module: L.LightningModule) -> None:
            synchronize(device)
            start = time.perf_counter()
            hook(adapter, trainer, module)
            synchronize(device)
            key = f"{adapter.name}.{name}"
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
        return run

    for name, hook in hooks.items():
        setattr(CallbackAdapter, name, clocked(name, hook))
    try:
        yield seconds
    finally:
        for name, hook in hooks.items():
            setattr(CallbackAdapter, name, hook)


def callback_seconds(cfg: RunConfig, device: torch.device) -> dict[str, float]:
    """Seconds of each metric callback hook in a one-epoch ``fit`` (the spectrum is due at the last epoch)."""
    with clocked_callbacks(device) as seconds:
        summary = fit(cfg)
    assert summary["status"] == "finished", summary
    return seconds


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


def measure(key: str, samples: dict[str, list[float]], device: torch.device,
            run: Callable[[], float | tuple[float, float]]) -> None:
    """Appends the seconds of ``run()`` to ``samples[key]``, its peak memory to ``samples[key + ':mib']`` and, where
    it returns (seconds, loading seconds), the loading share to ``samples[key + ':share']``."""
    reset_peak(device)
    seconds = run()
    if isinstance(seconds, tuple):
        seconds, loading = seconds
        samples.setdefault(f"{key}:share", []).append(loading / seconds)
    samples.setdefault(key, []).append(seconds)
    samples.setdefault(f"{key}:mib", []).append(peak_mib(device))


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
    parser.add_argument("--n-test", type=int, default=None,
                        help="synthetic test images, which the spectrum and readout callbacks embed (default: as many "
                             f"as train images, at most the spectrum's {SPECTRUM_SAMPLES} samples)")
    parser.add_argument("--precision", choices=tuple(AUTOCAST), default=None,
                        help="default 16-mixed on cuda, 32-true on cpu (16-mixed on cpu runs as bf16-mixed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--augment-on", nargs="+", choices=("cpu", "device"), default=["cpu", "device"])
    parser.add_argument("--channels-last", action="store_true", help="channels-last model and views (plain loop)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (plain loop)")
    parser.add_argument("--augmentation-only", action="store_true",
                        help="only the DataLoader alone and augmentation alone (no model, no callbacks)")
    args = parser.parse_args(argv)
    args.n_train = args.n_train or args.batch_size * (args.warmup_steps + args.steps)
    args.n_test = args.n_test or min(args.n_train, SPECTRUM_SAMPLES)
    if args.precision is None:
        args.precision = "16-mixed" if args.device == "cuda" else "32-true"
    if args.precision == "16-mixed" and args.device == "cpu":
        args.precision = "bf16-mixed"
    if min(args.batch_size, args.steps, args.warmup_steps, args.threads, args.rounds, args.n_test) < 1 \
            or args.num_workers < 0:
        parser.error("--batch-size, --steps, --warmup-steps, --threads, --rounds and --n-test must be positive")
    if args.n_train < args.batch_size:
        parser.error("--n-train must be at least --batch-size")
    device = torch.device(args.device)
    images = args.batch_size * args.steps
    samples: dict[str, list[float]] = {}
    training = not args.augmentation_only
    with tempfile.TemporaryDirectory(prefix="speed_cifar-") as tmp:
        root = write_cifar10_batches(Path(tmp) / "cifar10", args.n_train, n_test=args.n_test, seed=0)
        configs = {aug: recipe(root, Path(tmp) / "run", args, aug, args.num_workers) for aug in args.augment_on}
        for _ in range(args.rounds):
            for aug, cfg in configs.items() if training else ():
                measure(f"plain/{aug}", samples, device, lambda: plain_loop(cfg, device, args))
                measure(f"suite/{aug}", samples, device, lambda: suite_loop(cfg, args.warmup_steps, args.steps))
            if "cpu" in configs:
                measure("loader/cpu", samples, device, lambda: loader_alone(configs["cpu"], args.warmup_steps,
                                                                            args.steps))
            if "cpu" in configs and training:
                inline = recipe(root, Path(tmp) / "run", args, "cpu", 0)
                measure("inline/cpu", samples, device, lambda: plain_loop(inline, device, args))
            if "device" in configs:
                for name, seconds in augmentation_alone(configs["device"], device, args).items():
                    samples.setdefault(f"augment/{name}", []).append(seconds)
        callback_pipeline = args.augment_on[-1]
        if training:
            callbacks = callback_seconds(recipe(root, Path(tmp) / "run", args, callback_pipeline, args.num_workers,
                                                epochs=1, callbacks=True), device)
    median = {key: statistics.median(values) for key, values in samples.items()}
    rate = {key: images / value for key, value in median.items() if ":" not in key}

    print(f"torch {torch.__version__}, {args.device}: {machine(device)}; {args.threads} thread(s), "
          f"{args.precision}, batch {args.batch_size} images (x2 views), {args.steps} timed steps after "
          f"{args.warmup_steps} warm-up, {args.num_workers} worker(s), {args.n_train} synthetic train images, "
          f"channels-last {'on' if args.channels_last else 'off'} and compile {'on' if args.compile else 'off'} "
          f"(plain loop), median of {args.rounds} round(s); images/s counts source images (batch size per step)")
    print("| loop | augmentation | images/s | ms/step | in loading | vs plain | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    rows = [("plain PyTorch", f"plain/{aug}", aug) for aug in args.augment_on]
    rows += [("ssl-bench fit", f"suite/{aug}", aug) for aug in args.augment_on]
    rows += [(f"DataLoader alone, {args.num_workers} worker(s)", "loader/cpu", "cpu"),
             ("plain PyTorch, num_workers=0", "inline/cpu", "cpu")]
    for name, key, aug in rows:
        if key in rate:
            loading = f"{median[f'{key}:share']:.1%}" if f"{key}:share" in median else "-"
            versus = f"{rate[key] / rate[f'plain/{aug}']:.2f}x" if f"plain/{aug}" in rate else "-"
            print(f"| {name} | {aug} | {rate[key]:.1f} | {median[key] / args.steps * 1e3:.1f} | {loading} | "
                  f"{versus} | {median[f'{key}:mib']:.0f} |")
    if "inline/cpu" in rate:
        print(f"CPU augmentation (loading, two views, collation) in the training process: "
              f"{median['inline/cpu:share'] * median['inline/cpu'] / images * 1e3:.2f} ms per image, "
              f"{median['inline/cpu:share']:.1%} of the num_workers=0 step time")
    if "suite/cpu" in rate and "suite/device" in rate:
        print(f"device pipeline vs CPU pipeline, same {args.device}: ssl-bench fit "
              f"{rate['suite/device'] / rate['suite/cpu']:.2f}x, plain PyTorch "
              f"{rate['plain/device'] / rate['plain/cpu']:.2f}x")
    for name in ("batched", "kornia"):
        if f"augment/{name}" in rate:
            print(f"augmentation alone, both views, {name}: {rate[f'augment/{name}']:.0f} images/s")
    results = {f"{key.replace('/', '_')}_images_per_s": value for key, value in rate.items()}
    results |= {f"{key.split(':')[0].replace('/', '_')}_peak_mib": value for key, value in median.items()
                if key.endswith(":mib")}
    results |= {f"{key.split(':')[0].replace('/', '_')}_loading_share": value for key, value in median.items()
                if key.endswith(":share")}
    if training:
        spectrum = callbacks["spectrum.on_train_epoch_end"] * SPECTRUM_SAMPLES / min(args.n_test, SPECTRUM_SAMPLES)
        readout = callbacks["readout.on_train_end"] * (RECIPE_IMAGES + RECIPE_TEST) / (args.n_train + args.n_test)
        seconds = RECIPE_EPOCHS * RECIPE_IMAGES * median[f"suite/{callback_pipeline}"] / images
        metrics = RECIPE_EPOCHS // 10 * spectrum + readout
        results |= {"callback_share": metrics / (seconds + metrics), "spectrum_s": spectrum, "readout_s": readout}
        print(f"metric callbacks ({callback_pipeline} pipeline): spectrum {spectrum:.2f} s per call "
              f"({SPECTRUM_SAMPLES} samples), readout {readout:.1f} s ({RECIPE_IMAGES + RECIPE_TEST} images), scaled "
              f"from {min(args.n_test, SPECTRUM_SAMPLES)} and {args.n_train + args.n_test} images; at the default "
              f"cadence {results['callback_share']:.2%} of a {RECIPE_EPOCHS}-epoch run", flush=True)
    return results


if __name__ == "__main__":
    main()
