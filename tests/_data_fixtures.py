"""Tiny CF source datasets shared by test_data.py and test_sources.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def make_ds(
    nt: int = 6,
    ny: int = 4,
    nx: int = 5,
    *,
    name: str = "precip",
    units: str = "mm h-1",
    start: str = "2020-01-01",
    freq: str = "5min",
    seed: int = 0,
) -> xr.Dataset:
    """Tiny CF dataset: rain-like values (gamma, some zeros) on a y/x grid with a ``crs`` variable."""
    rng = np.random.default_rng(seed)
    values = (rng.gamma(0.5, 2.0, (nt, ny, nx)) * (rng.random((nt, ny, nx)) > 0.3)).astype(np.float32)
    attrs = {"units": units, "long_name": "test field", "grid_mapping": "crs"}
    return xr.Dataset(
        {
            name: (("time", "y", "x"), values, attrs),
            "crs": ((), np.int32(0), {"grid_mapping_name": "transverse_mercator"}),
        },
        coords={
            "time": pd.date_range(start, periods=nt, freq=freq),
            "y": ("y", np.arange(ny) * 1000.0, {"standard_name": "projection_y_coordinate", "units": "m"}),
            "x": ("x", np.arange(nx) * 1000.0, {"standard_name": "projection_x_coordinate", "units": "m"}),
        },
    )
