"""Native radar files into CF zarr stores (dydiff_earth.native): real MeteoSwiss, FMI and ODIM files.

The raw files are read from ``../shared/data/raw`` (tests skip without it) and copied into a temporary
directory one by one where a test simulates a live feed. radar_mch.nc and radar_fmi.nc were decoded from
the same files and packed as int16 with scale 0.01: prepared values must agree to half that step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _store_reader import reading
from PIL import Image
from typer.testing import CliRunner

from dydiff_earth import geo, native
from dydiff_earth.cli import app
from dydiff_earth.data import open_fields, prepare
from dydiff_earth.errors import InputError

PACKING = 0.005 + 1e-6  # half the NetCDF files' packing step (0.01 mm h-1), float32 rounding on top


def raw(shared: Path, network: str) -> list[Path]:
    folder = {"mch": "mch/20170131", "fmi": "fmi/pgm/20170509", "rmi": "rmi/radqpe/20210704"}[network]
    return sorted((shared / "raw" / folder).iterdir())


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def feed(files: list[Path], folder: Path) -> Path:
    """Copy files into ``folder`` (the feed directory), as a radar network delivers them."""
    folder.mkdir(exist_ok=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


def assert_matches_netcdf(store: Path, reference: Path) -> float:
    """Same times, grid, CRS and NaN mask as the NetCDF file; values within its packing. Returns max diff."""
    with xr.open_zarr(store, consolidated=False) as got, xr.open_dataset(reference) as want:
        want = want.sel(time=got["time"].values)
        for name in ("y", "x"):
            np.testing.assert_allclose(got[name].values, want[name].values, rtol=0, atol=0.01)  # metres
        for name in ("lat", "lon"):
            np.testing.assert_allclose(got[name].values, want[name].values, rtol=0, atol=1e-4)  # degrees
        assert got["crs"].attrs["crs_wkt"] == want["crs"].attrs["crs_wkt"]
        assert got["precip"].attrs["units"] == want["precip"].attrs["units"] == "mm h-1"
        assert got["precip"].attrs["grid_mapping"] == "crs"
        a, b = got["precip"].values, want["precip"].values
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        diff = float(np.nanmax(np.abs(a - b)))
        assert diff <= PACKING
        assert np.nanmax(b) > 1.0  # rain in the event: a comparison of zeros would prove nothing
        return diff


# --- the formats, against the NetCDF files decoded from the same files -------------------------------------


def test_meteoswiss_gif_matches_radar_mch(shared_data: Path, tmp_path: Path) -> None:
    code, out = cli("prepare", shared_data / "raw/mch/20170131/*.gif", "-o", tmp_path / "mch.zarr")
    assert code == 0, out
    assert "added 12 frame(s) of mch_gif" in out and "newest 2017-01-31T10:40:00" in out
    assert_matches_netcdf(tmp_path / "mch.zarr", shared_data / "radar_mch.nc")
    fields = open_fields(tmp_path / "mch.zarr")  # what train and forecast open
    assert fields.shape == (640, 710) and fields.grid_mapping == "crs"
    assert fields.time_step == np.timedelta64(5, "m") and len(fields.segments) == 1


def test_fmi_pgm_matches_radar_fmi(shared_data: Path, tmp_path: Path) -> None:
    result = native.ingest(str(shared_data / "raw/fmi/pgm/20170509/*"), tmp_path / "fmi.zarr")
    assert (result.format, result.added, result.skipped) == ("fmi_pgm", 12, ())
    assert_matches_netcdf(tmp_path / "fmi.zarr", shared_data / "radar_fmi.nc")
    with xr.open_zarr(tmp_path / "fmi.zarr", consolidated=False) as ds:
        assert "Z = 223 R^1.53" in ds["precip"].attrs["comment"]  # the network's relation, from pysteps


def test_zr_and_min_rate_options_change_reflectivity_only(shared_data: Path, tmp_path: Path) -> None:
    one = raw(shared_data, "fmi")[:1]
    default = native.ingest(one, tmp_path / "a.zarr")
    other = native.ingest(one, tmp_path / "b.zarr", zr=native.MARSHALL_PALMER, min_rate=0.0)
    assert default.added == other.added == 1
    with (
        xr.open_zarr(tmp_path / "a.zarr", consolidated=False) as a,
        xr.open_zarr(tmp_path / "b.zarr", consolidated=False) as b,
    ):
        ra, rb = a["precip"].values, b["precip"].values
        # Z = 200 R^1.6 against 223 R^1.53: at 10 mm h-1 both give about 35 dBZ, below it M-P is wetter.
        wet = ra > 1
        assert np.nanmean(rb[wet] / ra[wet]) == pytest.approx(1.0, abs=0.2)
        assert np.nanmin(ra[ra > 0]) >= native.REFLECTIVITY_MIN_RATE
        assert np.nanmin(rb[rb > 0]) < 0.01  # no threshold: the weakest echoes stay
        assert "Z = 200 R^1.6" in b["precip"].attrs["comment"]


def test_odim_hdf5_times_from_metadata_and_crs(shared_data: Path, tmp_path: Path) -> None:
    files = raw(shared_data, "rmi")
    result = native.ingest(files, tmp_path / "rmi.zarr")
    assert (result.format, result.added, result.skipped) == ("odim_hdf5", len(files), ())
    with xr.open_zarr(tmp_path / "rmi.zarr", consolidated=False) as ds:
        times = pd.DatetimeIndex(ds["time"].values)
        assert times[0] == pd.Timestamp("2021-07-04T15:50") and (times.to_series().diff()[1:] == "5min").all()
        assert ds["precip"].attrs["units"] == "mm h-1" and float(ds["precip"].max()) > 10
        assert 0.2 < float(ds["precip"].isnull().mean()) < 0.5  # NaN outside coverage
        # The corners the file states in lon/lat (ODIM where/LL_lon ...), against our projected grid.
        assert float(ds["lat"][-1, 0]) == pytest.approx(47.4168, abs=0.01)
        assert float(ds["lon"][-1, 0]) == pytest.approx(-0.2667, abs=0.02)
        assert float(ds["lat"][0, -1]) == pytest.approx(53.6920, abs=0.01)
        assert float(ds["lon"][0, -1]) == pytest.approx(9.6642, abs=0.02)
        assert ds["crs"].attrs["grid_mapping_name"] == "lambert_conformal_conic"
        assert ds["crs"].attrs["standard_parallel"] == pytest.approx([49.8333, 51.1667], abs=1e-4)
        assert geo.crs_of(ds, "precip") is not None


def test_format_detection_and_names(shared_data: Path, tmp_path: Path) -> None:
    assert native.detect(raw(shared_data, "mch")[0]) == "mch_gif"
    assert native.detect(raw(shared_data, "fmi")[0]) == "fmi_pgm"
    assert native.detect(raw(shared_data, "rmi")[0]) == "odim_hdf5"
    (tmp_path / "notes.txt").write_text("no radar")
    assert native.detect(tmp_path / "notes.txt") is None
    assert native.format_name("ODIM") == "odim_hdf5"
    with pytest.raises(InputError, match="unknown radar format 'gif'; choose one of odim_hdf5"):
        native.format_name("gif")
    mixed = [raw(shared_data, "mch")[0], raw(shared_data, "rmi")[0]]
    code, out = cli("prepare", *mixed, "-o", tmp_path / "x.zarr")
    assert code == 2 and "mix radar formats: mch_gif (1 files), odim_hdf5 (1 files)" in out
    code, out = cli("prepare", tmp_path / "notes.txt", "--format", "fmi", "-o", tmp_path / "x.zarr")
    assert code == 0 and "skipped" in out and "added 0 frame(s)" in out
    assert not (tmp_path / "x.zarr").exists()  # nothing good: no store


def test_time_pattern_from_names(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    folder.mkdir()
    for path in raw(shared_data, "fmi")[:2]:
        stamp = pd.Timestamp(path.name[:12])
        shutil.copy(path, folder / f"suomi_{stamp:%d.%m.%Y-%H%M}.pgm.gz")
    code, out = cli("prepare", folder / "*", "-o", tmp_path / "a.zarr")
    assert code == 0 and out.count("no valid time in its name") == 2, out
    code, out = cli("prepare", folder / "*", "-o", tmp_path / "a.zarr", "--time-pattern", "%d.%m.%Y-%H%M")
    assert code == 0 and "added 2 frame(s)" in out and "newest 2017-05-09T10:50:00" in out
    assert native.time_from_name("AQC170310945F_00005.801.gif", "%y%j%H%M") == pd.Timestamp(
        "2017-01-31T09:45"
    )
    code, out = cli("prepare", folder / "*", "-o", tmp_path / "b.zarr", "--time-pattern", "%H%M")
    assert code == 2 and "needs a year" in out


def test_coarsen_and_time_as_for_netcdf(shared_data: Path, tmp_path: Path) -> None:
    window = "2017-01-31T09:50:2017-01-31T10:00"
    code, out = cli(
        "prepare", shared_data / "raw/mch/20170131/*", "-o", tmp_path / "raw.zarr", "--coarsen", "8",
        "--time", window,
    )  # fmt: skip
    assert code == 0 and "added 3 frame(s)" in out, out
    prepare(shared_data / "radar_mch.nc", tmp_path / "nc.zarr", coarsen=8, time=window)
    with (
        xr.open_zarr(tmp_path / "raw.zarr", consolidated=False) as got,
        xr.open_zarr(tmp_path / "nc.zarr", consolidated=False) as want,
    ):
        assert got.sizes == want.sizes == {"time": 3, "y": 80, "x": 88}
        np.testing.assert_array_equal(got["time"].values, want["time"].values)
        np.testing.assert_allclose(got["x"].values, want["x"].values, atol=0.01)
        np.testing.assert_allclose(got["lat"].values, want["lat"].values, atol=1e-4)
        np.testing.assert_allclose(got["precip"].values, want["precip"].values, rtol=0, atol=PACKING)
    # A store keeps its factor: another one is refused, not mixed in.
    code, out = cli(
        "prepare", shared_data / "raw/mch/20170131/*", "-o", tmp_path / "raw.zarr", "--coarsen", "4"
    )
    assert code == 2 and "made with coarsen 8, not 4" in out


# --- a live feed: incremental, bad files, other grids, concurrent readers -----------------------------------


def test_a_growing_feed_appends_only_new_frames(shared_data: Path, tmp_path: Path) -> None:
    files, folder, store = raw(shared_data, "mch")[:5], tmp_path / "incoming", tmp_path / "radar.zarr"
    feed(files[:2], folder)
    assert native.ingest(str(folder / "*.gif"), store, coarsen=4).added == 2
    for i, path in enumerate(files[2:], start=3):
        feed([path], folder)
        before = {p: p.stat().st_ino for p in (store / "precip" / "c").rglob("*") if p.is_file()}
        result = native.ingest(str(folder / "*.gif"), store, coarsen=4)
        assert (result.added, result.total, result.skipped) == (1, i, ())
        after = {p: p.stat().st_ino for p in (store / "precip" / "c").rglob("*") if p.is_file()}
        assert len(after) == len(before) + 1
        assert all(after[p] == ino for p, ino in before.items())  # old frames are not rewritten
    again = native.ingest(str(folder / "*.gif"), store, coarsen=4)
    assert (again.added, again.total) == (0, 5)
    native.ingest(files, tmp_path / "once.zarr", coarsen=4)
    with (
        xr.open_zarr(store, consolidated=False) as grown,
        xr.open_zarr(tmp_path / "once.zarr", consolidated=False) as once,
    ):
        xr.testing.assert_identical(grown.load(), once.load())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".radar")) == [".radar.zarr.lock"]


def test_bad_files_are_skipped_with_one_warning_each(shared_data: Path, tmp_path: Path) -> None:
    files = raw(shared_data, "mch")
    folder = feed(files[:3], tmp_path / "incoming")
    (folder / "AQC170311000F_00005.801.gif").write_bytes(b"")  # zero bytes
    truncated = files[4].read_bytes()[:2000]
    (folder / "AQC170311005F_00005.801.gif").write_bytes(truncated)
    # Another product: the same picture named as MeteoSwiss' rain-rate product (RZC, other colour table).
    shutil.copy(files[5], folder / "RZC170311010F_00005.801.gif")
    # Another grid: half the picture, as a different domain would be.
    with Image.open(files[6]) as img:
        img.crop((0, 0, 355, 320)).save(folder / "AQC170311015F_00005.801.gif")
    shutil.copy(files[7], folder / "radar-latest.gif")  # no valid time in the name
    feed(files[8:9], folder)  # a good file after the bad ones
    code, out = cli("prepare", folder / "*.gif", "-o", tmp_path / "radar.zarr")
    assert code == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("warning: skipped")]
    reasons = {
        "AQC170311000F": "empty file (0 bytes)",
        "AQC170311005F": "cannot read as mch_gif: image file is truncated",
        "RZC170311010F": "another product (MeteoSwiss RZC mm/h 5 min, not MeteoSwiss AQC mm 5 min)",
        "AQC170311015F": "another grid (320x355",
        "radar-latest": "no valid time in its name",
    }
    assert len(warnings) == len(reasons)
    for stem, reason in reasons.items():
        assert sum(stem in line and reason in line for line in warnings) == 1, (stem, warnings)
    assert "added 4 frame(s)" in out
    with xr.open_zarr(tmp_path / "radar.zarr", consolidated=False) as ds:
        want = [pd.Timestamp(f"2017-01-31T{t}") for t in ("09:45", "09:50", "09:55", "10:25")]
        assert list(pd.DatetimeIndex(ds["time"].values)) == want
        assert np.isfinite(ds["precip"].values).any(axis=(1, 2)).all()


def test_a_store_on_another_grid_is_refused_in_one_line(shared_data: Path, tmp_path: Path) -> None:
    store = tmp_path / "radar.zarr"
    native.ingest(raw(shared_data, "mch")[:1], store, coarsen=8)
    code, out = cli("prepare", *raw(shared_data, "rmi")[:2], "-o", store, "--coarsen", "8")
    assert code == 2
    assert out.strip().splitlines() == [
        "error: 20210704155000.rad.best.comp.rate.qpe.hdf is on grid 87x87 from x=304000, y=996000 "
        "(+proj=lcc), the store's is 80x88 from x=259000, y=476000 (+proj=somerc); ingest these files "
        "into a new store"
    ]
    with xr.open_zarr(store, consolidated=False) as ds:
        assert ds.sizes["time"] == 1


def test_a_reader_sees_a_whole_store_while_frames_are_appended(shared_data: Path, tmp_path: Path) -> None:
    files, folder, store = raw(shared_data, "mch"), tmp_path / "incoming", tmp_path / "radar.zarr"
    native.ingest(sorted(feed(files[:1], folder).glob("*")), store, coarsen=4)
    with reading(store) as (reads, failures):
        for path in files[1:6]:
            feed([path], folder)
            native.ingest(str(folder / "*"), store, coarsen=4)
    assert failures == []
    assert len(set(reads)) >= 3 and reads == sorted(reads)  # it read while the store grew
    # One file holds every array's shape: what a reader opens is one version of the store.
    arrays = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert arrays["precip"]["shape"][0] == arrays["time"]["shape"][0] == 6


# --- maps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["mch", "fmi", "rmi"])
def test_prepared_grids_project_to_the_right_place(shared_data: Path, tmp_path: Path, network: str) -> None:
    """Cell centres land where the networks are: the CRS round-trips to the 2-D lat/lon written."""
    import pyproj

    native.ingest(raw(shared_data, network)[:1], tmp_path / "r.zarr", coarsen=10)
    with xr.open_zarr(tmp_path / "r.zarr", consolidated=False) as ds:
        crs = pyproj.CRS.from_wkt(ds["crs"].attrs["crs_wkt"])
        to_xy = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        x, y = to_xy.transform(ds["lon"].values, ds["lat"].values)
        xx, yy = np.meshgrid(ds["x"].values, ds["y"].values)
        assert np.abs(x - xx).max() < 200 and np.abs(y - yy).max() < 200  # m, float32 lat/lon
        lat, lon = float(ds["lat"].mean()), float(ds["lon"].mean())
    centre = {"mch": (46.5, 8.5), "fmi": (64.5, 26.0), "rmi": (50.7, 4.6)}[network]
    assert lat == pytest.approx(centre[0], abs=1.5) and lon == pytest.approx(centre[1], abs=2.5)


# --- a scheduled job on a directory feed -------------------------------------------------------------------


def test_a_job_ticks_on_a_directory_of_radar_files(shared_data: Path, tmp_path: Path) -> None:
    """Each tick ingests what arrived, then forecasts; the stale check reads the newest file's time."""
    import torch
    import yaml

    from dydiff_earth import jobs, testing

    files, incoming = raw(shared_data, "mch"), tmp_path / "incoming"
    native.ingest(files[:3], tmp_path / "train.zarr", coarsen=16)
    model = testing.tiny_checkpoint(tmp_path / "model.safetensors", open_fields(tmp_path / "train.zarr"))
    job = tmp_path / "job.yaml"
    keys = {"input": "incoming/*.gif", "store": "feeds/radar.zarr", "coarsen": 16, "checkpoint": model.name}
    fast = {"members": 2, "sampling_steps": 2, "maps": False, "batch_size": 2, "lead_times": 2}
    job.write_text(yaml.safe_dump({**keys, **fast, "output_dir": "out", "max_input_age": "15min"}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        feed(files[:2], incoming)
        code, out = cli("run", job, "--now", "2017-01-31T09:52")
        assert code == 0 and "init=2017-01-31T09:50:00 status=written outputs=1" in out, out
        feed(files[2:3], incoming)
        (incoming / "AQC170310959F_00005.801.gif").write_bytes(b"")  # a transfer that failed
        code, out = cli("run", job, "--now", "2017-01-31T09:57")
        assert code == 0 and "init=2017-01-31T09:55:00 status=written" in out, out
        code, out = cli("run", job, "--now", "2017-01-31T10:20")  # nothing arrived for 25 minutes
        assert code == 3 and "newest input frame 2017-01-31T09:55:00" in out
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in (tmp_path / "out").glob("forecast_*")) == [
        "forecast_20170131T0950.nc",
        "forecast_20170131T0955.nc",
    ]
    log = (tmp_path / "run.log").read_text()  # log_file: relative to the job file
    assert log.count("AQC170310959F_00005.801.gif reason=cannot read as mch_gif: empty file") == 2
    assert log.count("ingest status=added frames=") == 2
    with xr.open_zarr(tmp_path / "feeds" / "radar.zarr", consolidated=False) as ds:
        assert ds.sizes == {"time": 3, "y": 40, "x": 44}
    assert jobs.load_job(job)[0].store == str(tmp_path / "feeds" / "radar.zarr")
