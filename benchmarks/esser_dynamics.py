"""Milliseconds per step of gradient descent on the two-layer network (Esser et al. 2023, Eq. 11) and of the Euler step
of its output dynamics (Eq. 12), against the network's width, in one process.

The data are ``esser2023/dynamics_vs_gd``'s: two digit classes (scikit-learn's 8x8 digits, ``--per-class`` images
each) with Gaussian positives, whitened; the loss is the contrastive trace loss ``tr(F C F^T)``. A gradient step is
the forward pass of every anchor and positive through the linear network kept semi-orthogonal (the Grassmann
gradient), the backward pass, the update and the projection back onto the manifold; a dynamics step is Eq. (12) on
the outputs (k x 2n), whose cost does not depend on the width. Rounds alternate between the two in this process and
the median is reported (``--clock cpu``: this thread's CPU time, for a machine shared with other work); ratio =
gradient step / dynamics step.

    python benchmarks/esser_dynamics.py [--widths 64,128,256,512,1024,2048] [--steps 50] [--rounds 5] [--clock wall]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from datamodules.digits import DigitsDataModule
from ssl_bench.nets.two_layer import TwoLayer
from ssl_bench.ops.trace_dynamics import (
    euler_step,
    gradient_step,
    projected_trace_matrix,
)

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def gradient_descent(encoder: TwoLayer, inputs: torch.Tensor, c: torch.Tensor, lr: float, steps: int,
                     clock: Callable[[], float]) -> float:
    """Seconds per step of Eq. (11) on ``clock``."""
    start = clock()
    for _ in range(steps):
        gradient_step(encoder, inputs, c, lr)
    return (clock() - start) / steps


def dynamics(outputs: torch.Tensor, c: torch.Tensor, lr: float, steps: int, clock: Callable[[], float]) -> float:
    """Seconds per Euler step of Eq. (12) on ``clock``."""
    start = clock()
    for _ in range(steps):
        outputs = euler_step(outputs, c, lr)
    return (clock() - start) / steps


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="64,128,256,512,1024,2048")
    parser.add_argument("--output-dim", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    data = DigitsDataModule(DigitsDataModule.Config(per_class=args.per_class, batch_size=2 * args.per_class), 1)
    inputs, c = data.inputs, data.trace_matrix("contrastive").float()
    projected = projected_trace_matrix(c, inputs)
    print(f"torch {torch.__version__}, cpu, {args.threads} thread(s), digits {tuple(inputs.shape)} (2n x d), "
          f"k = {args.output_dim}, {args.steps} steps x {args.rounds} rounds, {args.clock} clock")
    print("| width | gradient step (ms) | dynamics step (ms) | ratio |\n|---|---|---|---|")
    results = {}
    for width in (int(w) for w in args.widths.split(",")):
        encoder = TwoLayer(data.input_dim, width, args.output_dim, "linear", "orthogonal")
        encoder.initialize("orthogonal", torch.Generator().manual_seed(1))
        with torch.no_grad():
            outputs = encoder(inputs).T.contiguous()
        gd, ode = [], []
        for _ in range(args.rounds):
            gd.append(gradient_descent(encoder, inputs, c, args.lr, args.steps, clock))
            ode.append(dynamics(outputs, projected, args.lr, args.steps, clock))
        gd_ms, ode_ms = 1e3 * statistics.median(gd), 1e3 * statistics.median(ode)
        results[width] = {"gradient_ms": gd_ms, "dynamics_ms": ode_ms, "ratio": gd_ms / ode_ms}
        print(f"| {width} | {gd_ms:.3f} | {ode_ms:.3f} | {gd_ms / ode_ms:.2f}x |")
    return results


if __name__ == "__main__":
    main()
