"""Covariates (grid, land, sun) and the persistence frame they serve: values against brute force, plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest
import torch
import xarray as xr

from dydiff_earth import covariates, diurnal, geo, io, testing
from dydiff_earth.config import DiffusionConfig, ForecastConfig, TrainConfig, preset
from dydiff_earth.data import load_frames, open_fields
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import DiffusionForecaster, load_model
from dydiff_earth.patches import DepartureWindowStream
from dydiff_earth.train import fit, resolve_covariates, resolve_frame

LAT = np.arange(58.0, 49.9, -0.5)  # descending, as ERA5
LON = np.arange(-10.0, 2.01, 0.5)


def _t2m(tmp_path: Path, frames: int = 30, start: str = "2019-03-01T00:00") -> Path:
    """An hourly 2 m temperature field with a diurnal cycle stronger over land (east) than sea."""
    times = pd.date_range(start, periods=frames, freq="1h")
    hours = times.hour.values[:, None, None]
    landish = np.linspace(0.2, 1.0, LON.size)[None, None, :]
    rng = np.random.default_rng(0)
    values = (
        280 + 4 * landish * np.sin(2 * np.pi * (hours - 9) / 24) + rng.normal(0, 0.2, (frames, LAT.size, 1))
    )
    values = np.broadcast_to(values, (frames, LAT.size, LON.size)).astype(np.float32)
    ds = xr.Dataset(
        {
            "t2m": (
                ("time", "latitude", "longitude"),
                values,
                {"units": "K", "long_name": "2 metre temperature"},
            )
        },
        coords={"time": times, "latitude": ("latitude", LAT), "longitude": ("longitude", LON)},
    )
    return io.write_zarr(ds, tmp_path / "t2m.zarr")


@pytest.fixture(scope="module")
def t2m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _t2m(tmp_path_factory.mktemp("cov"))


def test_lat_lon_grids_and_projected_grids_give_each_cell_its_coordinates(t2m: Path, tmp_path: Path) -> None:
    lon, lat = covariates.grid_lonlat(open_fields(t2m))
    assert lon.shape == lat.shape == (LAT.size, LON.size)
    np.testing.assert_array_equal(lat[:, 0], LAT)
    np.testing.assert_array_equal(lon[0], LON)
    # A projected grid (UTM 31N) with its CRS as WKT: the inverse projection of each cell centre.
    crs = pyproj.CRS.from_epsg(32631)
    ds = _projected({"crs_wkt": crs.to_wkt()})
    lon, lat = covariates.grid_lonlat(open_fields(io.write_zarr(ds, tmp_path / "utm.zarr")))
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    expect = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx[2, 3], yy[2, 3])
    np.testing.assert_allclose((lon[2, 3], lat[2, 3]), expect, atol=1e-9)
    assert abs(lon[0, 0] - 3.0) < 1e-6 and 52.3 < lat[0, 0] < 52.4  # x = 500 km: on the central meridian, 3 E


def _projected(grid_mapping: dict | None) -> xr.Dataset:
    """``tiny_field`` on x/y metres near 3 E 52 N, with a grid-mapping variable when one is given."""
    ds = testing.tiny_field(frames=4, size=(6, 8)).rename(latitude="y", longitude="x")
    ds = ds.assign_coords(y=5_800_000.0 + 5000 * np.arange(6), x=500_000.0 + 5000 * np.arange(8))
    if grid_mapping is not None:
        ds["crs"] = ((), np.int32(0), grid_mapping)
        ds["precip"].attrs["grid_mapping"] = "crs"
    return ds


def test_a_grid_without_geography_is_refused_in_one_line(tmp_path: Path) -> None:
    fields = open_fields(io.write_zarr(_projected(None), tmp_path / "plain.zarr"))
    with pytest.raises(InputError, match="covariates need geographic coordinates"):
        covariates.Covariates(fields, ["latitude"])
    with pytest.raises(InputError, match="unknown covariate"):
        covariates.Covariates(fields, ["altitude"])
    assert resolve_frame("auto", fields) == "lagrangian"  # rain, whatever the grid


def test_the_sun_and_the_season_at_known_times(t2m: Path) -> None:
    cov = covariates.Covariates(open_fields(t2m), ["sin_solar_hour", "cos_solar_hour", "cos_day_of_year"])
    noon = cov.at(np.datetime64("2019-01-01T12:00"))
    at_greenwich = int(np.argmin(np.abs(LON)))
    # Local noon at 0 E: half a day, sin 0 and cos -1; 6 h of longitude (90 degrees) shifts it by 6 h.
    np.testing.assert_allclose(noon[:2, 0, at_greenwich], [0.0, -1.0], atol=1e-6)
    shift = 2 * np.pi * (12 + LON / 15.0) / 24
    np.testing.assert_allclose(noon[0], np.sin(shift)[None].repeat(LAT.size, 0), atol=1e-6)
    # 1 January at noon is half a day into the year; 2 July is about half a year.
    np.testing.assert_allclose(noon[2], np.cos(2 * np.pi * 0.5 / 365.2425), atol=1e-6)
    july = cov.at(np.datetime64("2019-07-02T12:00"))
    assert july[2, 0, 0] < -0.99


def test_land_fraction_from_the_offline_coastlines(t2m: Path) -> None:
    if geo.first_existing(covariates.LAND_SHAPEFILES) is None:
        pytest.skip("no offline coastline data (apt-get install python-cartopy-data)")
    cov = covariates.Covariates(open_fields(t2m), ["land"])
    land = cov.at(np.datetime64("2019-03-01"))[0]
    assert land.min() >= 0 and land.max() <= 1
    lat, lon = LAT[:, None], LON[None, :]
    # The English Midlands are land, the middle of the North Sea and the Atlantic west of Ireland are not.
    assert land[(lat == 52.5) & (lon == -1.5)].item() == 1.0
    assert land[(lat == 55.0) & (lon == 2.0)].item() == 0.0
    assert land[(lat == 53.0) & (lon == -10.0)].item() == 0.0
    assert 0.15 < land.mean() < 0.5  # Britain and Ireland in this box


def test_the_persistence_frame_trains_on_departures_with_covariates_as_condition(t2m: Path) -> None:
    fields = open_fields(t2m)
    assert resolve_frame("auto", fields) == "diurnal"  # hourly weather on a lat/lon grid
    names = resolve_covariates(None, "persistence", fields)
    assert names == covariates.NAMES
    cov = covariates.Covariates(fields, ["latitude", "cos_solar_hour"])
    stream = DepartureWindowStream(fields, 3, 2, 8, frame="persistence", covariates=cov, augment=False)
    sample = stream.sample(5)
    start, y0, x0 = sample["start"], sample["y0"], sample["x0"]
    window = load_frames(fields, slice(start, start + 5))[:, :, y0 : y0 + 8, x0 : x0 + 8]
    expect = (window - window[2]) / stream.scale[:, None, None, None]
    np.testing.assert_allclose(sample["frames"].numpy(), expect, rtol=1e-5, atol=1e-6)
    condition = sample["condition"].numpy()
    assert condition.shape == (1 + 2, 8, 8)
    np.testing.assert_allclose(condition[0], window[2, 0])
    np.testing.assert_allclose(condition[1:], cov.at(fields.times[start + 2])[:, y0 : y0 + 8, x0 : x0 + 8])


def test_covariates_need_a_departure_frame() -> None:
    with pytest.raises(InputError, match="--frame persistence, diurnal, lagrangian or --covariates none"):
        resolve_covariates(["latitude"], "eulerian", None)  # type: ignore[arg-type]


def test_a_weather_model_trains_and_forecasts_with_its_covariates(t2m: Path, tmp_path: Path) -> None:
    fields = open_fields(t2m)
    cfg = TrainConfig(
        context=3, horizon=3, patch=16, batch_size=2, steps=2, validation_fraction=0, covariates=("latitude",)
    )
    result = fit(fields, preset("radar"), DiffusionConfig(), cfg, tmp_path / "w.safetensors")
    tensors, meta = io.load_checkpoint(result.checkpoint)
    assert meta["frame"] == "diurnal" and meta["covariates"] == ["latitude"]
    assert tensors[diurnal.TENSOR].shape == (24, 1, LAT.size, LON.size)
    assert len(meta["departure_scale"]) == 6 and meta["departure_scale"][2] == 1.0
    model = load_model(result.checkpoint)
    assert model.covariates == ("latitude",) and model.denoiser.condition_channels == 2
    fc = DiffusionForecaster(model, ForecastConfig(sampling_steps=2))
    # Two rollout rounds: the second round's covariates are those of its own init time.
    a = fc(fields, init_time="2019-03-01T05:00", lead_times=5, n_members=2, seed=1)
    b = fc(fields, init_time="2019-03-01T05:00", lead_times=5, n_members=2, seed=1)
    np.testing.assert_array_equal(a["t2m"].values, b["t2m"].values)
    assert a["t2m"].shape == (2, 5, LAT.size, LON.size) and np.isfinite(a["t2m"].values).all()
    assert a.attrs["covariates"] == "latitude" and a.attrs["frame"].startswith("diurnal")
    # The cycle belongs to the training grid: another grid is refused in one line.
    smaller = _t2m(tmp_path, frames=12)
    ds = xr.open_zarr(smaller, consolidated=False).isel(longitude=slice(0, 10))
    other = open_fields(io.write_zarr(ds.load(), tmp_path / "other.zarr"), stats=model.variables)
    with pytest.raises(InputError, match="diurnal cycle of a"):
        fc(other, init_time="2019-03-01T05:00", lead_times=2, n_members=1, seed=1)


def test_a_checkpoint_with_unknown_covariates_is_refused(t2m: Path, tmp_path: Path) -> None:
    fields = open_fields(t2m)
    path = testing.tiny_checkpoint(
        tmp_path / "c.safetensors", fields, frame="persistence", covariates=("latitude",)
    )
    weights, meta = io.load_checkpoint(path)
    io.save_checkpoint(path, weights, {**meta, "covariates": ["altitude"]})
    with pytest.raises(InputError, match="does not match"):
        load_model(path)


def test_the_diurnal_path_steps_by_the_mean_change_into_each_frame(t2m: Path) -> None:
    fields = open_fields(t2m)
    change = diurnal.mean_change(fields)
    assert change.shape == (24, 1, LAT.size, LON.size)
    times = fields.times[3:11]
    path = diurnal.path(change, times, 2)
    np.testing.assert_array_equal(path[2], 0.0)
    hours = (times - times.astype("datetime64[D]")) // np.timedelta64(1, "h")
    for k in range(1, len(times)):
        np.testing.assert_allclose(path[k] - path[k - 1], change[hours[k]], atol=1e-12)


def test_zero_departures_in_the_diurnal_frame_are_the_diurnal_baseline(t2m: Path) -> None:
    """What a diurnal-frame model that has learnt nothing forecasts: exactly the ``diurnal`` baseline."""
    from dydiff_earth.baselines import DiurnalForecaster
    from dydiff_earth.data import denormalize
    from dydiff_earth.forecast import _Space

    fields = open_fields(t2m)
    idx, p, leads = 9, 4, 6
    times = fields.times[idx - p + 1 : idx + leads + 1]
    path = torch.from_numpy(diurnal.path(diurnal.mean_change(fields), times, p - 1)).float()
    context = torch.from_numpy(load_frames(fields, slice(idx - p + 1, idx + 1)))[None]
    space = _Space(torch.ones(p + leads, 1, 1, 1), path)
    given, condition = space.encode(context)
    np.testing.assert_allclose(given[0, -1].numpy(), 0.0)
    values = space.decode(torch.zeros(1, leads, 1, LAT.size, LON.size), condition, p)
    baseline = DiurnalForecaster(fields)(fields, init_time=str(fields.times[idx]), lead_times=leads)
    np.testing.assert_allclose(
        denormalize(values[0].numpy(), fields.variables)[:, 0], baseline["t2m"].values[0], rtol=0, atol=2e-4
    )


def test_a_diurnal_stream_departs_from_persistence_plus_the_cycle(t2m: Path) -> None:
    fields = open_fields(t2m)
    change = diurnal.mean_change(fields)
    stream = DepartureWindowStream(fields, 3, 2, 8, frame="diurnal", diurnal_change=change, augment=False)
    sample = stream.sample(4)
    start, y0, x0 = sample["start"], sample["y0"], sample["x0"]
    window = load_frames(fields, slice(start, start + 5))
    expect = window - window[2] - diurnal.path(change, fields.times[start : start + 5], 2)
    expect = expect[..., y0 : y0 + 8, x0 : x0 + 8] / stream.scale[:, None, None, None]
    np.testing.assert_allclose(sample["frames"].numpy(), expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="diurnal frame, and only it"):
        DepartureWindowStream(fields, 3, 2, 8, frame="persistence", diurnal_change=change)
