"""Handing the C heap's free pages back to the system between epochs.

A contrastive step at batch sizes of about 500 to 3000 allocates similarity matrices of 1 to 32 MiB. After the first
such block is freed, glibc's dynamic mmap threshold rises above that size and later blocks come from the heap, which
then grows from step to step although the tensors are freed: the nonlinear sphere study of Rusak et al. 2022 at batch
1024 (2048 x 2047 NT-Xent logits) grew by 1.5 GiB an epoch until the kernel killed it. ``malloc_trim`` gives those
pages back, but it is not free: once an epoch it made 3-7 ms epochs of ``benchmarks/speed_sparse.py`` 25-30 % slower
(the pages it returns are faulted in again), so it runs only when the heap holds at least :data:`TRIM_FREE_BYTES` of
free memory. Asking ``mallinfo2`` walks the heap's free lists, about 90 us in a training process (1 % of such an
epoch), so the heap is looked at no more than once every :data:`CHECK_INTERVAL_S` seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from typing import Any

TRIM_FREE_BYTES = 256 * 2**20
"""Free heap bytes from which an epoch's end returns them to the system."""

CHECK_INTERVAL_S = 1.0
"""Seconds from one look at the heap to the next: growth is bounded by what one second of training frees."""

_last_check = float("-inf")


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33)."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _glibc() -> tuple[Any, Any] | None:
    """glibc's ``mallinfo2`` and ``malloc_trim``, or None where the C library lacks them (macOS, musl, old glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    info, trim = getattr(libc, "mallinfo2", None), getattr(libc, "malloc_trim", None)
    if info is None or trim is None:
        return None
    info.restype = _MallInfo2
    return info, trim


def free_heap_bytes() -> int | None:
    """Bytes free in the main heap (``mallinfo2().fordblks``), None without glibc."""
    functions = _glibc()
    return None if functions is None else functions[0]().fordblks


def release_free_heap(at_least: int = TRIM_FREE_BYTES, interval: float = CHECK_INTERVAL_S) -> bool:
    """Return the heap's free pages to the system (``malloc_trim(0)``) when at least ``at_least`` bytes are free and
    the last look at the heap is at least ``interval`` seconds ago; whether it did."""
    global _last_check
    functions, now = _glibc(), time.monotonic()
    if functions is None or now - _last_check < interval:
        return False
    _last_check = now
    if functions[0]().fordblks < at_least:
        return False
    functions[1](0)
    return True
