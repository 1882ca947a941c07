"""Milliseconds per epoch of ensembles of 1, 5 and 25 members against the same runs trained one after another.

The runs are Pokle et al.'s Table 2 setting (``pokle2022/table2``: n=3000, p=50, d=10, m=50, batch 512) for the
contrastive CL-basic and the alternating non-contrastive NCL-basic model, seeds 1..M, with the config's metric
callbacks at their cadence and no logger. Each measurement is the wall time of whole fits of ``--epochs`` epochs
minus that of fits of ``--base-epochs`` epochs, divided by the difference, so set-up (data, models, run directories)
cancels and what remains is the cost of an epoch: M separate ``ssl_bench.train.fit.fit`` calls (Lightning) against one
``ssl_bench.train.ensemble.fit_ensemble`` of M members, batched with ``vmap`` and with ``loop`` (the members' objectives
one after another into one backward pass). Rounds alternate the measurements; medians are reported, with the
extrapolated time of the whole ``pokle2022/table2`` sweep (270 runs x 8000 epochs) as ensembles of the largest size.
``--clock cpu`` times this thread's CPU time instead of the wall clock: the work, on a CPU shared with other work.

    python benchmarks/ensemble.py [--device cpu|cuda] [--members 1,5,25] [--epochs 30] [--base-epochs 10]
                                  [--rounds 3] [--models CL-basic,NCL-basic] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssl_bench.config import RunConfig
from ssl_bench.config.compose import load
from ssl_bench.train.ensemble import fit_ensemble
from ssl_bench.train.fit import fit

MODELS = {
    "CL-basic": ["method=simclr", "encoder=basic_official", "data.augmentation=dependent", "data.drop_last=true"],
    "NCL-basic": ["method=byol", "encoder=basic_official", "data.augmentation=independent", "data.mask_prob=0.5"],
}
TABLE2_RUNS, TABLE2_EPOCHS = 270, 8000
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def configs(model: str, members: int, epochs: int, root: Path, device: str) -> list[RunConfig]:
    accelerator = "gpu" if device == "cuda" else "cpu"
    return [load("pokle2022/table2", [*MODELS[model], f"seed={seed}", f"trainer.max_epochs={epochs}", "logger=none",
                                      "trainer.progress=none", f"trainer.accelerator={accelerator}",
                                      f"run_dir={root / f'{epochs}-{seed}'}"])
            for seed in range(1, members + 1)]


def separately(cfgs: list[RunConfig]) -> None:
    for cfg in cfgs:
        assert fit(cfg)["status"] == "finished"


def together(batching: str) -> Callable[[list[RunConfig]], None]:
    def run(cfgs: list[RunConfig]) -> None:
        assert {s["status"] for s in fit_ensemble(cfgs, batching=batching)} == {"finished"}
    return run


def ms_per_epoch(train: Callable[[list[RunConfig]], None], model: str, members: int, args: argparse.Namespace,
                 device: str) -> float:
    """(T(epochs) - T(base_epochs)) / (epochs - base_epochs) in milliseconds on ``args.clock``, for ``members``
    runs."""
    clock = CLOCKS[args.clock]
    seconds = {}
    for epochs in (args.base_epochs, args.epochs):
        with tempfile.TemporaryDirectory() as root:
            cfgs = configs(model, members, epochs, Path(root), device)
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            train(cfgs)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[epochs] = clock() - start
    return 1000 * (seconds[args.epochs] - seconds[args.base_epochs]) / (args.epochs - args.base_epochs)


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict[tuple[str, int], dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--members", default="1,5,25")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--base-epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS))
    args = parser.parse_args(argv)
    if args.device == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures work on the CPU; time a GPU with --clock wall")
    torch.set_num_threads(args.threads)
    sizes = [int(m) for m in args.members.split(",")]
    ways: dict[str, Callable[[list[RunConfig]], None]] = {"separate": separately, "vmap": together("vmap"),
                                                          "loop": together("loop")}
    results: dict[tuple[str, int], dict[str, float]] = {}
    for model in args.models.split(","):
        for members in sizes:
            samples: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(args.rounds):
                for way, train in ways.items():
                    samples[way].append(ms_per_epoch(train, model, members, args, args.device))
            results[model, members] = {way: statistics.median(values) for way, values in samples.items()}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'CPU'}, " \
        f"{args.threads} thread(s)"
    print(f"\nensembles on {device}; ms per epoch ({args.clock} clock), median of {args.rounds} rounds "
          f"({args.epochs} - {args.base_epochs} epochs)\n")
    print("| model | members | separate runs | ensemble, vmap | vmap / separate | ensemble, loop | loop / separate "
          "| vmap vs 1 member |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, members), r in results.items():
        one = results.get((model, 1), {}).get("vmap")
        print(f"| {model} | {members} | {r['separate']:.1f} | {r['vmap']:.1f} | {r['vmap'] / r['separate']:.2f}x | "
              f"{r['loop']:.1f} | {r['loop'] / r['separate']:.2f}x | "
              f"{'' if one is None else format(r['vmap'] / one, '.2f') + 'x'} |")
    largest = max(sizes)
    for model in args.models.split(","):
        best = min(results[model, largest]["vmap"], results[model, largest]["loop"])
        minutes = TABLE2_RUNS / largest * TABLE2_EPOCHS * best / 1000 / 60
        print(f"\n{model}: pokle2022/table2 ({TABLE2_RUNS} runs x {TABLE2_EPOCHS} epochs) as ensembles of {largest}, "
              f"extrapolated from the measured epochs: {minutes:.0f} min in one process")
    kind = "CUDA allocated" if args.device == "cuda" else "max RSS"
    print(f"\npeak memory: {peak_memory_mb(args.device):.0f} MiB ({kind})")
    return results


if __name__ == "__main__":
    main()
