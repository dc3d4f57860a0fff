"""Killing a real process at a chosen moment, for the crash-safety tests."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` at the first sight of ``ready()`` (polled every millisecond), or at ``timeout``.

    Returns whether ``ready()`` was seen. The caller asserts ``proc.returncode == -signal.SIGKILL``: a
    process that ended on its own was not killed mid-work.
    """
    seen = False
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                seen = True
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return seen
