"""Tiny forecast datasets in the output format (DESIGN.md, "The output format") for plotting tests."""

from __future__ import annotations

import numpy as np
import pyproj
import xarray as xr

from dydiff_earth import schema

INIT = np.datetime64("2017-01-31T12:00", "ns")
HALF_HOUR = np.timedelta64(30, "m")
FMI_PROJ4 = "+proj=stere +lon_0=25 +lat_0=90 +lat_ts=60 +a=6371288 +x_0=380886.31 +y_0=3395677.92 +no_defs"


def _rain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Rain-like values: about half dry, the rest log-normal from 0.1 to tens of mm h-1."""
    wet = rng.random(shape) < 0.5
    return np.where(wet, np.exp(rng.normal(0.5, 1.2, shape)), 0.0)


def forecast(
    fields: dict[str, tuple[np.ndarray, dict]],
    spatial: dict[str, tuple],
    *,
    dims: tuple[str, str] = ("y", "x"),
    step: np.timedelta64 = HALF_HOUR,
    thresholds: dict[str, tuple[float, ...]] | None = None,
    extra: dict[str, xr.DataArray] | None = None,
) -> xr.Dataset:
    """Wrap ``fields`` (name -> (member, lead, y, x) values, attrs) as a forecast with derived products.

    ``spatial`` holds the spatial coordinates (may be empty), ``dims`` the names of the (y, x) dims.
    """
    first = next(iter(fields.values()))[0]
    n_members, n_leads = first.shape[:2]
    leads = (np.arange(1, n_leads + 1) * step).astype("timedelta64[ns]")
    dims = (schema.MEMBER, schema.LEAD_TIME, *dims)
    coords = {
        schema.MEMBER: (schema.MEMBER, np.arange(n_members), {"standard_name": "realization"}),
        schema.LEAD_TIME: (schema.LEAD_TIME, leads, {"standard_name": "forecast_period"}),
        schema.INIT_TIME: ((), INIT, {"standard_name": "forecast_reference_time"}),
        schema.VALID_TIME: (schema.LEAD_TIME, INIT + leads, {"standard_name": "time"}),
        **spatial,
    }
    ds = xr.Dataset(coords=coords, attrs={"Conventions": schema.CONVENTIONS})
    for name, (values, attrs) in fields.items():
        ds[name] = (dims, values, attrs)
        ds[f"{name}_mean"] = ds[name].mean(schema.MEMBER).assign_attrs(attrs)
        ds[f"{name}_spread"] = ds[name].std(schema.MEMBER).assign_attrs(units=attrs.get("units", "1"))
        for_var = (thresholds or {}).get(name)
        if for_var:
            t = xr.DataArray(list(for_var), dims=schema.THRESHOLD, attrs={"units": attrs.get("units", "1")})
            probability = (ds[name] > t).mean(schema.MEMBER).where(ds[name].notnull().all(schema.MEMBER))
            ds[f"{name}_probability"] = probability.transpose(schema.THRESHOLD, ...)
            ds = ds.assign_coords({schema.THRESHOLD: t})
    for name, da in (extra or {}).items():
        ds[name] = da
    return ds


def latlon_precip(n_members: int = 3, n_leads: int = 3, seed: int = 0) -> xr.Dataset:
    """Rain on a 0.5 degree lat/lon grid over the Alps, latitude descending as in ERA5."""
    rng = np.random.default_rng(seed)
    lat, lon = np.arange(49.0, 44.9, -0.5), np.arange(5.0, 12.1, 0.5)
    attrs = {"units": "mm h-1", "standard_name": "lwe_precipitation_rate", "long_name": "precipitation rate"}
    values = _rain(rng, (n_members, n_leads, lat.size, lon.size))
    spatial = {
        "latitude": ("latitude", lat, {"units": "degrees_north"}),
        "longitude": ("longitude", lon, {"units": "degrees_east"}),
    }
    thresholds = {"precip": (0.1, 1.0, 5.0)}
    return forecast(
        {"precip": (values, attrs)}, spatial, dims=("latitude", "longitude"), thresholds=thresholds
    )


def polar_stereographic_precip(n_members: int = 3, n_leads: int = 2, seed: int = 1) -> xr.Dataset:
    """Rain on a 40 km polar stereographic grid over Finland, y descending, with 2-D lat/lon and a ``crs``."""
    rng = np.random.default_rng(seed)
    x = np.arange(20e3, 760e3, 40e3)
    y = np.arange(1220e3, 0.0, -40e3)
    xx, yy = np.meshgrid(x, y)
    lon, lat = pyproj.Transformer.from_crs(FMI_PROJ4, "EPSG:4326", always_xy=True).transform(xx, yy)
    crs_attrs = {
        "grid_mapping_name": "polar_stereographic",
        "straight_vertical_longitude_from_pole": 25.0,
        "latitude_of_projection_origin": 90.0,
        "standard_parallel": 60.0,
        "false_easting": 380886.31,
        "false_northing": 3395677.92,
        "earth_radius": 6371288.0,
        "proj4": FMI_PROJ4,
    }
    attrs = {
        "units": "mm h-1",
        "standard_name": "rainfall_rate",
        "long_name": "rain rate",
        "grid_mapping": "crs",
    }
    values = _rain(rng, (n_members, n_leads, y.size, x.size))
    spatial = {
        "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
        "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
        "lat": (("y", "x"), lat.astype("float32"), {"units": "degrees_north"}),
        "lon": (("y", "x"), lon.astype("float32"), {"units": "degrees_east"}),
    }
    crs = xr.DataArray(np.int32(0), attrs=crs_attrs)
    return forecast({"precip": (values, attrs)}, spatial, thresholds={"precip": (1.0,)}, extra={"crs": crs})


def turbulence(n_members: int = 2, n_leads: int = 4, size: int = 24, seed: int = 2) -> xr.Dataset:
    """Velocity components ``u``, ``v`` on a periodic square without geography (dims y, x, no coords)."""
    rng = np.random.default_rng(seed)
    k = np.linspace(0, 2 * np.pi, size, endpoint=False)
    base = np.sin(k)[:, None] * np.cos(k)[None, :]
    shape = (n_members, n_leads, size, size)
    u = base + 0.3 * rng.normal(size=shape)
    v = -base.T + 0.3 * rng.normal(size=shape)
    step = np.timedelta64(1, "h")
    fields = {"u": (u, {"units": "1", "long_name": "x velocity"}), "v": (v, {"units": "1"})}
    return forecast(fields, {}, step=step)


def truth_for(ds: xr.Dataset, var: str, seed: int = 3) -> xr.Dataset:
    """Observations of ``var`` at the forecast's valid times (dims time, y, x) on its grid."""
    member0 = ds[var].isel({schema.MEMBER: 0}).drop_vars([schema.MEMBER, schema.INIT_TIME])
    rng = np.random.default_rng(seed)
    values = np.asarray(member0.values) * rng.uniform(0.5, 1.5, member0.shape)
    da = member0.copy(data=values).assign_coords({schema.LEAD_TIME: member0[schema.VALID_TIME].values})
    da = da.drop_vars(schema.VALID_TIME).rename({schema.LEAD_TIME: schema.TIME})
    return da.to_dataset(name=var)
