"""Tests of dydiff_earth.sources: paths, formats, dims, variables, grid mapping, time checks and ranges."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import make_ds

from dydiff_earth import io, sources
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


def test_a_native_radar_file_is_sent_to_prepare(tmp_path: Path) -> None:
    import h5py
    from PIL import Image

    Image.new("P", (4, 4)).save(tmp_path / "scan.gif")  # a GIF, as MeteoSwiss publishes
    with h5py.File(tmp_path / "scan.h5", "w") as f:  # HDF5 like a NetCDF-4 file, but ODIM's
        f.attrs["Conventions"] = b"ODIM_H5/V2_2"
    make_ds().to_netcdf(tmp_path / "a.nc", engine="netcdf4")  # HDF5 too, and opened
    for name, fmt in (("scan.gif", "mch_gif"), ("scan.h5", "odim_hdf5")):
        with pytest.raises(InputError, match=rf"native radar file \({fmt}\); .*dydiff-earth prepare"):
            open_source(tmp_path / name)
    assert "precip" in open_source(tmp_path / "a.nc")[0]


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


# -------------------------------------------------------------------------------------- remote stores


class _Files(http.server.SimpleHTTPRequestHandler):
    """Static files over HTTP, quietly; directory listings only where the server is told to give them."""

    listings = True

    def list_directory(self, path):  # type: ignore[no-untyped-def]
        if not self.listings:
            self.send_error(404, "no listings here (like a bucket behind HTTPS)")
            return None
        return super().list_directory(path)

    def log_message(self, format, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@contextlib.contextmanager
def _serve(directory: Path, *, listings: bool = True) -> Iterator[str]:
    """A real HTTP server on the loopback address over ``directory``, in a thread; yields its base URL."""
    handler = type("Handler", (_Files,), {"listings": listings})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=directory)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_zarr_store_over_http_reads_as_the_local_one(tmp_path: Path) -> None:
    ds = make_ds(nt=6)
    io.write_zarr(ds.chunk({"time": 2}), tmp_path / "s.zarr")
    with _serve(tmp_path) as base:
        out, names, tdim, ydim, xdim, gm = open_source(f"{base}/s.zarr/")
        assert (names, tdim, ydim, xdim, gm) == (["precip"], "time", "y", "x", "crs")
        assert out["precip"].chunks is not None  # lazy: chunks are fetched when read
        np.testing.assert_array_equal(out["precip"].values, ds["precip"].values)
        np.testing.assert_array_equal(out["time"].values, ds["time"].values)


def test_consolidated_store_over_http_needs_no_listing(tmp_path: Path) -> None:
    """Cloud archives (ARCO-ERA5) publish consolidated zarr 2 metadata; HTTPS servers give no listings."""
    ds = make_ds(nt=4)
    ds.to_zarr(tmp_path / "c.zarr", zarr_format=2, consolidated=True)
    with _serve(tmp_path, listings=False) as base:
        out, *_ = open_source(f"{base}/c.zarr")
        np.testing.assert_array_equal(out["precip"].values, ds["precip"].values)
        with pytest.raises(InputError, match=r"cannot open http://.*/none\.zarr as zarr"):
            open_source(f"{base}/none.zarr")


def test_remote_netcdf_and_missing_filesystem_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="remote NetCDF file"):
        open_source("https://example.invalid/era5.nc")
    monkeypatch.setitem(sources._URL_PACKAGES, "s3", "no_such_package_for_s3")
    with pytest.raises(InputError, match="needs the no_such_package_for_s3 package"):
        open_source("s3://bucket/era5.zarr")


def test_forecast_from_a_store_over_http_equals_the_local_forecast(tmp_path: Path) -> None:
    """The shipped demo model forecasts from a store served on the loopback address, number for number."""
    from typer.testing import CliRunner

    from dydiff_earth.cli import app

    served = tmp_path / "served"
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "synth",
            "precip",
            "-o",
            str(served / "rain.zarr"),
            "--size",
            "32",
            "--sequences",
            "1",
            "--frames",
            "8",
        ],
    )
    assert made.exit_code == 0, made.output
    common = ["--members", "2", "--sampling-steps", "2", "--lead-times", "2", "--no-maps", "--quiet"]
    with _serve(served) as base:
        remote = runner.invoke(
            app, ["forecast", "--input", f"{base}/rain.zarr", "-o", str(tmp_path / "r.nc"), *common]
        )
    assert remote.exit_code == 0, remote.output
    local = runner.invoke(
        app, ["forecast", "--input", str(served / "rain.zarr"), "-o", str(tmp_path / "l.nc"), *common]
    )
    assert local.exit_code == 0, local.output
    with io.open_forecast(tmp_path / "r.nc") as r, io.open_forecast(tmp_path / "l.nc") as loc:
        assert r.attrs["input"].startswith("http://127.0.0.1:")
        assert np.isfinite(r["precip"].values).any()
        np.testing.assert_array_equal(r["precip"].values, loc["precip"].values)
