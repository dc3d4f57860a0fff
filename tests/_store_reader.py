"""A reader thread that opens a zarr store in a loop, to show appends never expose a partial store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xarray as xr


@contextmanager
def reading(store: Path, var: str = "precip") -> Iterator[tuple[list[int], list[str]]]:
    """While the body runs, read ``store`` again and again; yields (time lengths seen, failures).

    It opens the store as a user would (``xr.open_zarr(store)``: consolidated metadata where there is
    some). A read fails when the time coordinate and ``var`` disagree in length or the newest frame of
    ``var`` is all NaN (chunks not written yet, read as fill values).
    """
    stop, reads, failures = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                with xr.open_zarr(store) as ds:
                    newest = ds[var].isel(time=-1).values
                    assert ds.sizes["time"] == ds["time"].size and np.isfinite(newest).any()
                    reads.append(ds.sizes["time"])
            except Exception as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        yield reads, failures
    finally:
        stop.set()
        thread.join()
