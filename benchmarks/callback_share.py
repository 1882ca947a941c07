"""The share of training time each metric callback takes at its cadence, for any experiment config.

``ssl-bench fit`` runs in-process (Lightning Trainer, the config's metric callbacks, a run directory in a temporary
folder) for ``--epochs`` epochs with ``trainer.metrics_every_n_epochs=--every``; the clock of
``benchmarks/speed_sparse.py`` times each metric callback's epoch-end and step hooks. The table gives the training
time per epoch without the callbacks, and per callback its evaluations (the epochs it was due, the last one included),
its time per evaluation and its share: callback time / training time without the callbacks. A callback with a cadence
of its own (``callbacks.r2_probe.every_n_epochs``) is counted at the run's cadence; give ``--every`` the one you use.
Overrides after the options go to the config, e.g. a shorter epoch for a quick look:

    python benchmarks/callback_share.py --config rusak2022/nonlinear_box --epochs 20 --every 10 --clock cpu \\
        data.batch_size=1024
"""

from __future__ import annotations

import argparse
import tempfile

from speed_sparse import CLOCKS, TrainingClock

from ssl_bench.config.compose import load
from ssl_bench.train.fit import fit


def evaluations(epochs: int, every: int) -> int:
    """Epochs at whose end a callback with cadence ``every`` evaluates: the multiples of ``every`` and the last."""
    return epochs // every + (epochs % every != 0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; return each callback's share of the training time (callbacks excluded)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="rusak2022/nonlinear_box")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=10, help="trainer.metrics_every_n_epochs")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="callback_share-") as run_dir:
        cfg = load(args.config, [*args.overrides, f"trainer.max_epochs={args.epochs}",
                                 f"trainer.metrics_every_n_epochs={args.every}", "logger=none",
                                 "trainer.progress=none", f"run_dir={run_dir}"])
        timer = TrainingClock(CLOCKS[args.clock])
        summary = fit(cfg, extra_callbacks=[timer])
    assert summary["status"] == "finished", summary
    training = timer.seconds - timer.callback_seconds
    count = evaluations(args.epochs, args.every)
    print(f"{args.config}: {args.epochs} epochs, metrics every {args.every} ({count} evaluations), "
          f"{args.clock} clock; training without callbacks {1e3 * training / args.epochs:.1f} ms/epoch")
    print("| callback | ms per evaluation | % of training time |")
    print("|---|---|---|")
    shares = {}
    for name, seconds in timer.by_callback.items():
        shares[name] = seconds / training
        print(f"| {name} | {1e3 * seconds / count:.1f} | {100 * shares[name]:.2f} |")
    print(f"| all | {1e3 * timer.callback_seconds / count:.1f} | {100 * timer.callback_seconds / training:.2f} |")
    return shares


if __name__ == "__main__":
    main()
