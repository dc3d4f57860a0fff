"""glibc's malloc told to keep the memory that PyTorch frees on the CPU, instead of handing it back.

On the CPU PyTorch takes every tensor from ``malloc`` and frees it when the tensor dies. glibc serves
blocks above its mmap threshold (128 KiB at first, raised as such blocks are freed, to at most 32 MiB)
with fresh memory from the kernel, which the kernel maps and zero-fills on first touch and unmaps on
free, and it gives the top of its heap back to the kernel above its trim threshold. A network call or
training step of the radar model allocates and frees hundreds of activations of 1 to 100 MiB, so a good
part of its time went to the kernel's mapping and zeroing. With both thresholds raised to 256 MiB,
freed blocks of that size or less are reused instead; larger ones (a float32 copy of a global grid's
ensemble is 0.4 GiB) are still mapped and handed back, so that memory kept does not pile up: the
radar forecast on the 721 x 1440 global grid peaked at 7462 MiB with this limit, 10121 MiB with none
(the largest value glibc takes) and 6949 MiB with glibc's defaults. What it buys (docs/benchmarks.md,
Keeping freed memory): the radar forecast command and training steps of the radar preset on the 2-core
CPU machine take 8 to 12 % less time, eight members in one network call 1.3 to 1.5 x less.

Only for the process of a command (:func:`dydiff_earth.cli.main` calls it): a library that changes its
caller's allocator would surprise it. Where a user has set glibc's own variables for these settings
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``), theirs stand. Elsewhere than
glibc on Linux nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt's parameters (<malloc.h>).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size are reused, larger ones mapped afresh; the heap's free top is kept up to it.
THRESHOLD = 256 * 2**20

#: glibc's own environment settings of the same thresholds: where any is set, it is the user's choice.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether both were raised."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: without it, a high trim threshold alone does not help.
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD))


__all__ = ["THRESHOLD", "USER_SETTINGS", "keep_freed_memory"]
