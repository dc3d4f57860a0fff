"""Keeping freed memory: a large block freed stays with the process for the next one, in a fresh process,
and the user's own glibc settings are left alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from dydiff_earth.allocator import USER_SETTINGS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Resident memory after a 64 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB) was
# written and freed, over that with the block alive.
PROBE = """
import os
import numpy as np
from dydiff_earth import allocator
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
print(allocator.keep_freed_memory())
block = np.ones(2**24, np.float32)
alive = resident()
del block
print((alive - resident()) / 2**20)
"""


def _probe(env: dict[str, str]) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    kept, returned = out.stdout.split()
    return kept == "True", float(returned)


def test_a_freed_block_stays_with_the_process() -> None:
    # Without any of glibc's own settings, whatever the environment running the tests holds.
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    kept, returned = _probe(env)
    assert kept and returned < 8, returned  # MiB handed back to the kernel
    # glibc's defaults (the user's GLIBC_TUNABLES, here empty, stand): the block is unmapped when freed.
    kept, returned = _probe(env | {"GLIBC_TUNABLES": ""})
    assert not kept and returned > 56, returned
