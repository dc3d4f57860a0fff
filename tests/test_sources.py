"""Tests of dydiff_earth.sources: paths, formats, dims, variables, grid mapping, time checks and ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import make_ds

from dydiff_earth import io
from dydiff_earth.errors import InputError
from dydiff_earth.sources import open_source, parse_time_range

# ------------------------------------------------------------------------------------------ bad input


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_source(tmp_path / "nope.nc")


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no files match"):
        open_source(str(tmp_path / "*.nc"))


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a dataset")
    with pytest.raises(InputError, match="unknown format"):
        open_source(path)


def test_misspelled_variable_lists_available(tmp_path: Path) -> None:
    make_ds().to_netcdf(tmp_path / "a.nc")
    with pytest.raises(InputError, match=r"'precp' not found; did you mean 'precip'\? available: precip"):
        open_source(tmp_path / "a.nc", ["precp"])


def test_no_time_dim(tmp_path: Path) -> None:
    make_ds().rename({"time": "step"}).to_netcdf(tmp_path / "a.nc")
    with pytest.raises(InputError, match="no time dim"):
        open_source(tmp_path / "a.nc")


def test_no_spatial_dims(tmp_path: Path) -> None:
    make_ds().rename({"y": "a", "x": "b"}).drop_vars(["a", "b"]).to_netcdf(tmp_path / "a.nc")
    with pytest.raises(InputError, match="no spatial dims"):
        open_source(tmp_path / "a.nc")


def test_spatial_dims_from_cf_marks(tmp_path: Path) -> None:
    ds = make_ds().rename({"y": "northing", "x": "easting"})
    ds["northing"].attrs = {"axis": "Y"}
    ds.to_netcdf(tmp_path / "a.nc")
    out, _, _, ydim, xdim, _ = open_source(tmp_path / "a.nc")
    # northing by its axis, easting by its standard_name (projection_x_coordinate).
    assert (ydim, xdim) == ("northing", "easting") and (out.sizes[ydim], out.sizes[xdim]) == (4, 5)


@pytest.mark.parametrize(("order", "message"), [([0, 2, 1, 3], "not increasing"), ([0, 1, 1, 2], "twice")])
def test_bad_time_order(tmp_path: Path, order: list[int], message: str) -> None:
    make_ds().isel(time=order).to_netcdf(tmp_path / "a.nc")
    with pytest.raises(InputError, match=message):
        open_source(tmp_path / "a.nc")


@pytest.mark.parametrize("text", ["2020-01-01", "a:b", "2020-01-02:2020-01-01", "2020-13-01:"])
def test_bad_time_range(text: str) -> None:
    with pytest.raises(InputError):
        parse_time_range(text)


def test_time_range_with_colons_in_times() -> None:
    assert parse_time_range("2020-01-01T00:05:00:2020-01-01T00:15") == slice(
        "2020-01-01T00:05:00", "2020-01-01T00:15"
    )
    assert parse_time_range(":2020-01-02") == slice(None, "2020-01-02")


# -------------------------------------------------------------------------------------- good sources


def test_formats_agree_and_keep_grid_mapping(tmp_path: Path) -> None:
    ds = make_ds(nt=6)
    io.write_zarr(ds.chunk({"time": 1}), tmp_path / "all.zarr")
    ds.to_netcdf(tmp_path / "all.nc")
    for k in range(3):
        ds.isel(time=slice(2 * k, 2 * k + 2)).to_netcdf(tmp_path / f"part{k}.nc")
    for source in (tmp_path / "all.zarr", tmp_path / "all.nc", str(tmp_path / "part*.nc")):
        out, names, tdim, ydim, xdim, gm = open_source(source)
        assert (names, tdim, ydim, xdim, gm) == (["precip"], "time", "y", "x", "crs"), source
        assert "crs" in out.coords and out["precip"].chunks is not None, source
        np.testing.assert_array_equal(out["precip"].values, ds["precip"].values, err_msg=str(source))


def test_time_selection_needs_two_frames(tmp_path: Path) -> None:
    make_ds(nt=6).to_netcdf(tmp_path / "a.nc")
    out, *_ = open_source(tmp_path / "a.nc", time="2020-01-01T00:05:2020-01-01T00:15")
    assert out.sizes["time"] == 3 and out["time"].values[0] == np.datetime64("2020-01-01T00:05")
    with pytest.raises(InputError, match="at least 2 are needed"):
        open_source(tmp_path / "a.nc", time="2020-01-01T00:05:2020-01-01T00:05")
