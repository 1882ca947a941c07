"""The heap of a contrastive run stays bounded: the free pages of its step-sized similarity matrices go back to the
system at the end of an epoch (ssl_bench.train.memory), where glibc alone keeps them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

STEPS = textwrap.dedent("""
    import torch
    from ssl_bench.ops.losses import nt_xent_terms
    from ssl_bench.train.memory import TRIM_FREE_BYTES, free_heap_bytes, release_free_heap

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

    torch.manual_seed(0)
    torch.set_num_threads(1)
    encoder = torch.nn.Linear(10, 10)
    optimizer = torch.optim.Adam(encoder.parameters(), 1e-3)
    x1, x2 = torch.randn(1024, 10), torch.randn(1024, 10)
    start, losses = rss_mib(), []
    assert free_heap_bytes() < TRIM_FREE_BYTES and not release_free_heap(interval=0)  # little free: nothing to give back
    for _ in range(40):  # an epoch of 40 steps at batch 1024: 2048 x 2047 logits, 16 MiB each
        terms = nt_xent_terms(encoder(x1), encoder(x2), 1.0)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        losses.append(terms.loss.detach())
    assert free_heap_bytes() >= TRIM_FREE_BYTES, free_heap_bytes()  # the freed matrices stay in the heap
    assert release_free_heap(interval=0)
    print(rss_mib() - start)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_epoch_end_returns_the_steps_freed_matrices():
    """40 NT-Xent steps at batch 1024 leave about 560 MiB free in the heap, which glibc keeps; the epoch-end release
    gives it back, so the process ends within 150 MiB of where it started. With little free memory it does nothing
    (a trim costs more than an epoch of a small model)."""
    grown = int(subprocess.run([sys.executable, "-c", STEPS], check=True, capture_output=True, text=True).stdout)
    assert grown < 150, f"the process kept {grown} MiB after the release"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2 and malloc_trim")
def test_heap_is_looked_at_once_per_interval():
    """Asking glibc for the free heap walks its free lists (about 90 us in a training process, 1 % of a small
    model's epoch), so a second call within ``interval`` seconds of the last look does nothing."""
    from ssl_bench.train.memory import release_free_heap

    assert release_free_heap(at_least=0, interval=0)
    assert not release_free_heap(at_least=0, interval=60)
    assert release_free_heap(at_least=0, interval=0)
