"""WindowStream throughput and memory on a synthetic zarr store; prints a section for docs/benchmarks.md.

Writes a short store (``frames / 4``) and a long one (``frames``) of smooth synthetic rain, one frame
per chunk, through `dydiff_earth.io.write_zarr`; measures samples/s for two patch sizes, and the peak
resident memory of a fresh process that streams the same number of samples from each store: it must
not grow with the store's length, since each sample reads only the chunks under its window.

    .venv/bin/python benchmarks/bench_patches.py                 # default, under ~2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_patches.py --frames 400 --size 128 --samples 50   # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from dydiff_earth import io
from dydiff_earth.data import open_fields
from dydiff_earth.patches import WindowStream

CONTEXT, HORIZON = 4, 6


def _rain(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    """Frames of a few advected Gaussian rain cells (mm h-1), a pure function of the frame index."""
    assert block_info is not None
    (t0, t1), (_, ny), (_, nx) = block_info[None]["array-location"]
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    out = np.zeros((t1 - t0, ny, nx), dtype=np.float32)
    cells = np.random.default_rng(0).random((6, 5))  # centre y, x, velocity y, x, size
    for k, t in enumerate(range(t0, t1)):
        for cy, cx, vy, vx, size in cells:
            yc = (cy * ny + (vy - 0.5) * t) % ny
            xc = (cx * nx + (vx - 0.5) * t) % nx
            r2 = ((y - yc) ** 2 + (x - xc) ** 2) / (0.02 + 0.08 * size) ** 2 / (ny * nx)
            out[k] += 8.0 * np.exp(-r2)
    out[out < 0.05] = 0.0
    return out


def write_store(path: Path, frames: int, size: int) -> float:
    """Write ``frames`` x ``size`` x ``size`` synthetic rain, chunk by chunk; return seconds taken."""
    data = dsa.zeros((frames, size, size), chunks=(1, size, size), dtype=np.float32).map_blocks(
        _rain, dtype=np.float32
    )
    ds = xr.Dataset(
        {"precip": (("time", "y", "x"), data, {"units": "mm h-1", "standard_name": "rainfall_rate"})},
        coords={
            "time": pd.date_range("2020-01-01", periods=frames, freq="5min"),
            "y": np.arange(size) * 1000.0,
            "x": np.arange(size) * 1000.0,
        },
    )
    begin = time.perf_counter()
    io.write_zarr(ds, path)
    return time.perf_counter() - begin


def throughput(store: Path, patch: int, samples: int, workers: int) -> float:
    """Samples per second through a DataLoader (``workers`` processes; 0 reads in this process)."""
    from torch.utils.data import DataLoader

    fields = open_fields(store)
    stream = WindowStream(fields, CONTEXT, HORIZON, patch, seed=0, length=samples)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    begin = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - begin)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_memory(store: Path, patch: int, samples: int) -> None:
    """In a fresh process: RSS after imports, and peak RSS after opening and streaming (MiB)."""
    import torch  # noqa: F401  (counted in the baseline, as in training)

    baseline = _rss_mib()
    fields = open_fields(store)
    for _ in WindowStream(fields, CONTEXT, HORIZON, patch, seed=0, length=samples):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"baseline": baseline, "peak": peak}))


def memory(store: Path, patch: int, samples: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--child", str(store), "--patch", str(patch), "--samples", str(samples)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames of the long store")
    parser.add_argument("--size", type=int, default=256, help="grid side (cells)")
    parser.add_argument("--samples", type=int, default=200, help="samples per measurement")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write stores (default: temp)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--patch", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_memory(args.child, args.patch, args.samples)
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench_patches_", dir=args.workdir))
    try:
        short, long = workdir / "short.zarr", workdir / "long.zarr"
        n_short = max(args.frames // 4, CONTEXT + HORIZON)
        t_short = write_store(short, n_short, args.size)
        t_long = write_store(long, args.frames, args.size)
        rows = [
            (f"write store, {n_short} frames", f"{t_short:.1f} s"),
            (f"write store, {args.frames} frames", f"{t_long:.1f} s"),
        ]
        for patch, workers in ((32, 0), (64, 0), (64, 2)):
            rate = throughput(long, patch, args.samples, workers)
            rows.append(
                (f"WindowStream patch {patch}, {workers} DataLoader workers", f"{rate:.0f} samples/s")
            )
        for store, n in ((short, n_short), (long, args.frames)):
            mem = memory(store, 64, args.samples)
            rows.append(
                (
                    f"peak RSS, {n}-frame store, patch 64",
                    f"{mem['peak']:.0f} MiB ({mem['peak'] - mem['baseline']:+.0f} MiB over imports)",
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    command = shlex.join([Path(sys.executable).name, "benchmarks/bench_patches.py", *sys.argv[1:]])
    print("## Training windows (`benchmarks/bench_patches.py`)\n")
    print(
        f"Synthetic rain, {args.size} x {args.size} cells, one frame per zarr chunk; windows of "
        f"{CONTEXT} + {HORIZON} frames, {args.samples} samples per measurement.\n"
    )
    print(f"- date: {dt.date.today().isoformat()}")
    print(f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"- command: `{command}`\n")
    print("| measurement | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
