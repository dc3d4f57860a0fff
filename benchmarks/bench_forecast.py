"""Forecast wall time and peak memory on a global 0.25 degree grid; prints a section for docs/benchmarks.md.

One member, few DDIM steps and one lead time with an untrained ``tiny`` checkpoint (patch 32, context 2,
horizon 2; the cost does not depend on the weights), through `dydiff_earth.pipeline.run_forecast` as
``dydiff-earth forecast --no-maps`` runs it (open, tiled sampling, NetCDF write). The 721 x 1440 grid is
compared in the same run with 181 x 360: memory above the process baseline should grow like the field
state (linear in cells, a few float32 copies), not with the number of tiles, since the tiled denoiser
holds at most `forecast.TILE_BATCH` tiles at once. Also: seconds per member per sampling step on 64 x 64.
Each measurement is a fresh process, so peaks (``getrusage`` max RSS) do not mix.

    .venv/bin/python benchmarks/bench_forecast.py                 # default: 18 minutes on 2 shared cores
    .venv/bin/python benchmarks/bench_forecast.py --steps 1 --large 361x720   # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

CONTEXT, HORIZON, PATCH = 2, 2, 32


def smooth_field(ny: int, nx: int, frames: int = 3) -> xr.Dataset:
    """A global lat/lon grid (poles included) of a smooth temperature-like field drifting east, in K."""
    lat = np.linspace(90.0, -90.0, ny)
    lon = np.linspace(0.0, 360.0, nx, endpoint=False)
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    waves = [5.0 * np.sin(3 * lam - 0.1 * t) * np.cos(phi) ** 2 for t in range(frames)]
    values = np.stack([280.0 + 25.0 * np.cos(phi) + w for w in waves]).astype(np.float32)
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), values, {"units": "K", "long_name": "2 m temperature"})},
        coords={
            "time": ("time", pd.date_range("2024-01-01", periods=frames, freq="6h"), {"axis": "T"}),
            "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
        attrs={"Conventions": "CF-1.8"},
    )


def write_inputs(workdir: Path, grids: list[tuple[int, int]]) -> tuple[dict[str, Path], Path]:
    """One zarr store per grid (one frame per chunk) and one checkpoint that fits them all."""
    from dydiff_earth import io
    from dydiff_earth.data import open_fields
    from dydiff_earth.testing import tiny_checkpoint

    stores = {}
    for ny, nx in grids:
        ds = smooth_field(ny, nx)
        stores[f"{ny}x{nx}"] = io.write_zarr(ds.chunk({"time": 1}), workdir / f"t2m_{ny}x{nx}.zarr")
    first = stores[f"{grids[0][0]}x{grids[0][1]}"]
    checkpoint = tiny_checkpoint(
        workdir / "tiny.safetensors", open_fields(first), context=CONTEXT, horizon=HORIZON, patch=PATCH
    )
    return stores, checkpoint


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(store: Path, checkpoint: Path, members: int, steps: int, output: Path) -> dict[str, float]:
    """In a fresh process: RSS after imports and model load, then one forecast; peak RSS and seconds."""
    import torch

    from dydiff_earth.config import ForecastConfig
    from dydiff_earth.forecast import load_model
    from dydiff_earth.pipeline import ForecastRequest, run_forecast

    load_model(checkpoint)  # warms the same code paths and allocator state as the run below
    baseline = _rss_mib()
    request = ForecastRequest(
        input=str(store),
        checkpoint=str(checkpoint),
        lead_times=1,
        forecast=ForecastConfig(members=members, sampling_steps=steps, batch_size=members),
        output=output,
        maps=None,
        device="cpu",
    )
    begin = time.perf_counter()
    run_forecast(request)
    seconds = time.perf_counter() - begin
    return {
        "seconds": seconds,
        "baseline": baseline,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "threads": torch.get_num_threads(),
    }


def run_child(store: Path, checkpoint: Path, members: int, steps: int, workdir: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(store), str(checkpoint), str(members), str(steps)]
    cmd += [str(workdir / f"out_{store.stem}_{members}x{steps}.nc")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _grid(text: str) -> tuple[int, int]:
    ny, nx = text.lower().split("x")
    return int(ny), int(nx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=_grid, default=(721, 1440), help="large grid NYxNX")
    parser.add_argument("--small", type=_grid, default=(181, 360), help="baseline grid NYxNX")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps of the grid comparison")
    parser.add_argument("--member-steps", type=int, default=4, help="DDIM steps of the 64 x 64 timing")
    parser.add_argument("--members", type=int, default=2, help="members of the 64 x 64 timing")
    parser.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        store, checkpoint, members, steps, output = args.child
        print(json.dumps(child(Path(store), Path(checkpoint), int(members), int(steps), Path(output))))
        return

    from dydiff_earth.forecast import TILE_BATCH
    from dydiff_earth.patches import tiles

    overlap = round(0.25 * PATCH)  # ForecastConfig.tile_overlap
    grids = [args.large, args.small, (64, 64)]
    with tempfile.TemporaryDirectory(prefix="bench_forecast_") as work:
        workdir = Path(work)
        stores, checkpoint = write_inputs(workdir, grids)
        runs = {}
        for ny, nx in grids[:2]:
            runs[ny, nx] = run_child(stores[f"{ny}x{nx}"], checkpoint, 1, args.steps, workdir)
        small64 = run_child(stores["64x64"], checkpoint, args.members, args.member_steps, workdir)
        one = run_child(stores["64x64"], checkpoint, 1, 1, workdir)  # fixed costs: open, load, write

    rows = []
    for ny, nx in grids[:2]:
        r = runs[ny, nx]
        n_tiles = len(tiles((ny, nx), PATCH, overlap))
        # Field state while sampling: context + window (P + L frames), noise, estimate, output; float32.
        state = (CONTEXT + HORIZON) * ny * nx * 4 / 2**20
        rows.append(
            (
                f"{ny} x {nx} ({ny * nx / 1e6:.2f} M cells, {n_tiles} tiles)",
                f"{r['seconds']:.1f} s",
                f"{r['peak']:.0f} MiB ({r['peak'] - r['baseline']:+.0f}; one window {state:.0f} MiB)",
            )
        )
    big, base = runs[grids[0]], runs[grids[1]]
    cells = (grids[0][0] * grids[0][1]) / (grids[1][0] * grids[1][1])
    tile_ratio = len(tiles(grids[0], PATCH, overlap)) / len(tiles(grids[1], PATCH, overlap))
    memory_ratio = (big["peak"] - big["baseline"]) / max(base["peak"] - base["baseline"], 1e-9)
    rows.append(
        (
            "ratio large / baseline grid",
            f"{big['seconds'] / base['seconds']:.1f} x time",
            f"{memory_ratio:.1f} x memory above baseline (cells {cells:.1f} x, tiles {tile_ratio:.1f} x)",
        )
    )
    per = (small64["seconds"] - one["seconds"]) / (args.members * args.member_steps - 1)
    rows.append(
        (
            f"64 x 64, {args.members} members x {args.member_steps} steps",
            f"{small64['seconds']:.1f} s; {per:.2f} s per member per step",
            f"{small64['peak']:.0f} MiB",
        )
    )

    command = shlex.join([Path(sys.executable).name, "benchmarks/bench_forecast.py", *sys.argv[1:]])
    print("## Forecast memory and time (`benchmarks/bench_forecast.py`)\n")
    print(
        f"Untrained `tiny` checkpoint (patch {PATCH}, context {CONTEXT}, horizon {HORIZON}), tiles of "
        f"{PATCH} with overlap {overlap}, {TILE_BATCH} tiles per network call; 1 member, {args.steps} DDIM "
        "steps, 1 lead time, through `pipeline.run_forecast` (open, sample, write NetCDF, no maps); each "
        "row a fresh process. Memory: peak resident set (in parentheses: above the process after imports "
        "and a model load). Per member per step on 64 x 64: the difference to a 1 member x 1 step run, "
        "so opening and writing are not counted.\n"
    )
    print(f"- date: {dt.date.today().isoformat()}")
    print(
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {big['threads']:.0f}"
    )
    print(f"- command: `{command}`\n")
    print("| grid | wall time | peak RSS, MiB |")
    print("|---|---|---|")
    for name, seconds, memory in rows:
        print(f"| {name} | {seconds} | {memory} |")


if __name__ == "__main__":
    main()
