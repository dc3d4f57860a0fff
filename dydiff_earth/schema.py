"""Names of dims and coords, and validation of the forecast output format (no torch here)."""

from __future__ import annotations

import xarray as xr

MEMBER = "member"
LEAD_TIME = "lead_time"
INIT_TIME = "init_time"
VALID_TIME = "valid_time"
THRESHOLD = "threshold"
SYSTEM = "system"
TIME = "time"

#: CF standard names of the forecast coordinates (DESIGN.md, "The output format").
STANDARD_NAMES = {
    MEMBER: "realization",
    LEAD_TIME: "forecast_period",
    INIT_TIME: "forecast_reference_time",
    VALID_TIME: "time",
}

#: Spatial dim pairs recognised in inputs, in order of preference: (y, x).
SPATIAL_DIM_PAIRS = (("latitude", "longitude"), ("lat", "lon"), ("y", "x"), ("rlat", "rlon"))

#: Time dim names recognised when no CF ``standard_name``/``axis`` marks one.
TIME_NAMES = ("time", "valid_time", "t", "date", "datetime")

CONVENTIONS = "CF-1.8"

#: Units temperatures can be shown in on maps (files always keep the input's units).
DISPLAY_UNITS = ("K", "degC")


def forecast_variables(ds: xr.Dataset) -> list[str]:
    """Names of member-bearing forecast variables (not the derived ``_mean``/``_spread``/... products)."""
    return [str(n) for n, v in ds.data_vars.items() if MEMBER in v.dims]


def validate_forecast(ds: xr.Dataset) -> None:
    """Raise ``ValueError`` naming the first way ``ds`` departs from the forecast output format."""
    for name in (MEMBER, LEAD_TIME):
        if name not in ds.dims:
            raise ValueError(f"forecast has no {name!r} dim")
    for name, standard_name in STANDARD_NAMES.items():
        if name not in ds.coords:
            raise ValueError(f"forecast has no {name!r} coordinate")
        if ds[name].attrs.get("standard_name") != standard_name:
            raise ValueError(f"coordinate {name!r} needs standard_name={standard_name!r}")
    if ds[INIT_TIME].ndim != 0:
        raise ValueError(f"{INIT_TIME!r} must be a scalar coordinate")
    names = forecast_variables(ds)
    if not names:
        raise ValueError("forecast holds no variable with a 'member' dim")
    for name in names:
        dims = ds[name].dims
        if dims[:2] != (MEMBER, LEAD_TIME):
            raise ValueError(f"variable {name!r} has dims {dims}; expected ({MEMBER!r}, {LEAD_TIME!r}, ...)")
    if ds.attrs.get("Conventions") != CONVENTIONS:
        raise ValueError(f"forecast attribute Conventions must be {CONVENTIONS!r}")
