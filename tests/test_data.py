"""Tests of dydiff_earth.data: Fields, segments, normalisation, laziness, load_frames, prepare.

Opening sources (paths, formats, dims, time checks) is tested in test_sources.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage
from _data_fixtures import make_ds
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dydiff_earth import io
from dydiff_earth.data import (
    CHECK_FRAMES,
    NORMALISATION_ATTR,
    Segment,
    VariableSpec,
    denormalize,
    load_frames,
    normalize,
    open_fields,
    prepare,
    window_starts,
)
from dydiff_earth.errors import InputError

# ------------------------------------------------------------------------------------------ bad input


def test_all_nan_variable(tmp_path: Path) -> None:
    ds = make_ds()
    ds["precip"][:] = np.nan
    ds.to_netcdf(tmp_path / "a.nc")
    with pytest.raises(InputError, match="'precip' is all NaN"):
        open_fields(tmp_path / "a.nc")


def test_too_few_frames_says_longest_segment(tmp_path: Path) -> None:
    make_ds(nt=5).to_netcdf(tmp_path / "a.nc")
    fields = open_fields(tmp_path / "a.nc")
    assert window_starts(fields, 5) == [0]
    with pytest.raises(InputError, match="needs 6 consecutive frames but the longest segment has 5"):
        window_starts(fields, 6)


def test_stats_with_other_units(tmp_path: Path) -> None:
    make_ds().to_netcdf(tmp_path / "a.nc")
    spec = VariableSpec("precip", "kg m-2 s-1", "log1p", 0.0, 1.0)
    with pytest.raises(InputError, match="'mm h-1' but the model expects 'kg m-2 s-1'"):
        open_fields(tmp_path / "a.nc", stats=[spec])


# ------------------------------------------------------------------------------------- sources, time


def _write_all(tmp_path: Path, ds: xr.Dataset) -> dict[str, object]:
    """The same record as a zarr store, one NetCDF file, and three NetCDF files (glob and list)."""
    io.write_zarr(ds.chunk({"time": 1}), tmp_path / "all.zarr")
    ds.to_netcdf(tmp_path / "all.nc")
    parts = [tmp_path / f"part{k}.nc" for k in range(3)]
    for k, part in enumerate(parts):
        ds.isel(time=slice(2 * k, 2 * k + 2)).to_netcdf(part)
    return {
        "zarr": tmp_path / "all.zarr",
        "netcdf": str(tmp_path / "all.nc"),
        "glob": str(tmp_path / "part*.nc"),
        "list": list(reversed(parts)),  # combined by coords, so file order does not matter
    }


def test_sources_agree(tmp_path: Path) -> None:
    ds = make_ds(nt=6)
    expected = None
    for kind, source in _write_all(tmp_path, ds).items():
        fields = open_fields(source)
        assert fields.names == ("precip",), kind
        assert fields.grid_mapping == "crs" and "crs" in fields.dataset.coords, kind
        assert fields.segments == (Segment(0, 6),), kind
        frames = load_frames(fields, slice(None))
        assert frames.shape == (6, 1, 4, 5) and frames.dtype == np.float32, kind
        if expected is None:
            expected = frames
        np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-6, err_msg=kind)
    # The normalised values are log1p-z-scores of the raw values.
    spec = fields.variables[0]
    raw = np.log1p(ds["precip"].values[:, None])
    np.testing.assert_allclose(expected, (raw - spec.mean) / spec.std, rtol=1e-5, atol=1e-5)
    assert abs(float(np.mean(expected))) < 1e-5  # z-scored over all 6 frames (< STATS_MAX_FRAMES)


def test_segments_split_at_gaps(tmp_path: Path) -> None:
    ds = xr.concat(
        [make_ds(nt=4), make_ds(nt=3, start="2020-01-01T01:00")],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="outer",
    )
    ds.to_netcdf(tmp_path / "a.nc")
    fields = open_fields(tmp_path / "a.nc")
    assert fields.time_step == np.timedelta64(5, "m")
    assert fields.segments == (Segment(0, 4), Segment(4, 7))
    assert window_starts(fields, 3) == [0, 1, 4]
    assert window_starts(fields, 2, stride=2) == [0, 2, 4]


def test_real_radar_segments(shared_data: Path) -> None:
    fields = open_fields(shared_data / "radar_mch.nc")
    assert fields.segments == (Segment(0, 40), Segment(40, 80), Segment(80, 120))
    assert fields.time_step == np.timedelta64(5, "m")
    assert fields.variables[0].transform == "log1p"
    assert fields.grid_mapping == "crs" and fields.shape == (640, 710)
    stored = json.loads(fields.dataset.attrs[NORMALISATION_ATTR])
    assert [VariableSpec.from_dict(d) for d in stored] == list(fields.variables)


def test_time_selection_and_descending_latitude(tmp_path: Path) -> None:
    ds = make_ds(nt=6, units="K", name="t2m").rename({"y": "latitude", "x": "longitude"})
    ds = ds.assign_coords(latitude=[58.0, 57.75, 57.5, 57.25], longitude=np.arange(5) * 0.25)
    ds.to_netcdf(tmp_path / "a.nc")
    fields = open_fields(tmp_path / "a.nc", time="2020-01-01T00:05:2020-01-01T00:15")
    assert (fields.y_dim, fields.x_dim) == ("latitude", "longitude")
    assert len(fields.times) == 3 and fields.times[0] == np.datetime64("2020-01-01T00:05")
    np.testing.assert_array_equal(fields.dataset.latitude.values, [58.0, 57.75, 57.5, 57.25])
    # First row of the array is the northernmost: no re-sorting.
    expected = ds["t2m"].values[1, 0]
    spec = fields.variables[0]
    np.testing.assert_allclose(
        load_frames(fields, slice(0, 1))[0, 0, 0], (expected - spec.mean) / spec.std, atol=1e-5
    )


# ------------------------------------------------------------------------------------------- laziness


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys of the zarr chunks and metadata read from local stores from now on."""
    reads: list[str] = []
    original = zarr.storage.LocalStore.get

    async def counting_get(
        self: zarr.storage.LocalStore, key: str, *args: object, **kwargs: object
    ) -> object:
        reads.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    return reads


def test_given_stats_read_only_a_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a checkpoint's stats nothing is computed but the validity check of CHECK_FRAMES frames.
    io.write_zarr(make_ds(nt=40).chunk({"time": 1}), tmp_path / "a.zarr")
    stats = open_fields(tmp_path / "a.zarr").variables
    reads = _count_reads(monkeypatch)
    fields = open_fields(tmp_path / "a.zarr", stats=stats)
    assert fields.variables == stats
    chunks = {key for key in reads if key.startswith("precip/c/")}
    assert len(chunks) == CHECK_FRAMES
    assert {"precip/c/0/0/0", "precip/c/39/0/0"} <= chunks


def test_load_frames_reads_only_its_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io.write_zarr(make_ds(nt=6).chunk({"time": 1}), tmp_path / "a.zarr")
    stats = open_fields(tmp_path / "a.zarr").variables
    fields = open_fields(tmp_path / "a.zarr", stats=stats)
    reads = _count_reads(monkeypatch)
    frames = load_frames(fields, slice(3, 5), slice(1, 3))
    assert frames.shape == (2, 1, 2, 5)
    assert sorted(reads) == ["precip/c/3/0/0", "precip/c/4/0/0"]


# -------------------------------------------------------------------------------------- normalisation


def test_transform_choice(tmp_path: Path) -> None:
    rain = make_ds(units="mm/h")
    temperature = make_ds(name="t2m", units="K", seed=1)
    flux = make_ds(name="pr", units="kg m**-2 s**-1", seed=2)
    named = make_ds(name="rr", units="1", seed=3)
    named["rr"].attrs["standard_name"] = "rainfall_amount"
    xr.merge([rain, temperature, flux, named], compat="override", join="exact").to_netcdf(tmp_path / "a.nc")
    fields = open_fields(tmp_path / "a.nc")
    assert {s.name: s.transform for s in fields.variables} == {
        "precip": "log1p",
        "t2m": "none",
        "pr": "log1p",
        "rr": "log1p",
    }
    overridden = open_fields(tmp_path / "a.nc", ["t2m", "precip"], transforms={"precip": "none"})
    assert overridden.names == ("t2m", "precip")
    assert [s.transform for s in overridden.variables] == ["none", "none"]
    with pytest.raises(InputError, match="unknown transform"):
        open_fields(tmp_path / "a.nc", transforms={"precip": "sqrt"})


def test_normalize_round_trip() -> None:
    specs = [
        VariableSpec("precip", "mm h-1", "log1p", 0.3, 0.7),
        VariableSpec("t2m", "K", "none", 280.0, 5.0),
    ]
    rng = np.random.default_rng(0)
    values = np.stack([rng.gamma(0.5, 3.0, (3, 4, 5)), 270 + 20 * rng.random((3, 4, 5))], axis=1)
    values[0, 0, 0, 0] = np.nan
    z = normalize(values, specs)
    assert z.dtype == np.float32 and z.shape == values.shape
    back = denormalize(z, specs)
    np.testing.assert_allclose(back, values, rtol=1e-5, atol=1e-4)  # float32 precision
    assert np.isnan(back[0, 0, 0, 0])
    # Model outputs below the log1p image of 0 mean "no rain", never negative rain.
    below = np.full((1, 2, 1, 1), -10.0, dtype=np.float32)
    assert denormalize(below, specs)[0, 0, 0, 0] == 0.0


def test_spec_dict_round_trip() -> None:
    spec = VariableSpec("precip", "mm h-1", "log1p", 0.1, 0.5, (("units", "mm h-1"),))
    assert VariableSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "scale" not in spec.to_dict()  # the default leaves older models' metadata as it was
    scaled = dataclasses.replace(spec, scale=0.1)
    assert VariableSpec.from_dict(json.loads(json.dumps(scaled.to_dict()))) == scaled
    with pytest.raises(InputError, match="unknown transform"):
        VariableSpec.from_dict({**spec.to_dict(), "transform": "sqrt"})
    with pytest.raises(InputError, match="scale must be positive"):
        VariableSpec.from_dict({**spec.to_dict(), "scale": 0})


def test_rain_scale() -> None:
    """log1p(x / scale): the inverse, the threshold in network units, and where dry and light rain lie."""
    coarse = VariableSpec("precip", "mm h-1", "log1p", 0.4, 0.8)
    fine = dataclasses.replace(coarse, scale=0.1)
    rain = np.array([0.0, 0.05, 0.1, 1.0, 4.0, 30.0]).reshape(1, 1, 6, 1)
    for spec in (coarse, fine):
        np.testing.assert_allclose(denormalize(normalize(rain, [spec]), [spec]), rain, rtol=1e-5, atol=1e-6)
        assert spec.normalised(0.1) == pytest.approx(float(normalize(rain, [spec])[0, 0, 2, 0]), abs=1e-6)
    assert fine.normalised(1.0) == pytest.approx((math.log(11.0) - 0.4) / 0.8)
    # In the transformed variable (before the z-score), 0.1 mm/h lies log(2) above dry, not log(1.1).
    gap = fine.transformed(np.float64(0.1)) - fine.transformed(np.float64(0.0))
    assert gap == pytest.approx(math.log(2.0))
    assert coarse.transformed(np.float64(0.1)) == pytest.approx(math.log(1.1))


def test_open_fields_rain_scale(tmp_path: Path) -> None:
    make_ds().to_netcdf(tmp_path / "a.nc")
    fields = open_fields(tmp_path / "a.nc", ["precip"], rain_scale=0.1)
    spec = fields.variables[0]
    assert spec.scale == 0.1
    rain = xr.open_dataset(tmp_path / "a.nc")["precip"].values.astype(np.float64)
    raw = np.log1p(np.maximum(rain, 0) / 0.1)
    assert spec.mean == pytest.approx(raw.mean(), rel=1e-6) and spec.std == pytest.approx(raw.std(), rel=1e-6)
    assert open_fields(tmp_path / "a.nc", ["precip"], stats=[spec]).variables[0].scale == 0.1
    with pytest.raises(InputError, match=r"rain scale 1 for 'precip' conflicts with the model's 0\.1"):
        open_fields(tmp_path / "a.nc", ["precip"], stats=[spec], rain_scale=1.0)
    with pytest.raises(InputError, match="rain scale must be a positive number"):
        open_fields(tmp_path / "a.nc", ["precip"], rain_scale=-1.0)


# ------------------------------------------------------------------------------------------- prepare


def test_prepare_round_trip(tmp_path: Path) -> None:
    ds = make_ds(nt=6)
    ds["precip"].encoding = {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -1}
    ds.to_netcdf(tmp_path / "a.nc")
    out = prepare(tmp_path / "a.nc", tmp_path / "out.zarr", time="2020-01-01T00:05:")
    assert zarr.open_group(out).metadata.zarr_format == 3
    before = open_fields(tmp_path / "a.nc", time="2020-01-01T00:05:")
    after = open_fields(out)
    assert after.names == before.names
    for a, b in zip(after.variables, before.variables, strict=True):
        assert (a.units, a.transform, a.attrs) == (b.units, b.transform, b.attrs)
        # float32 on disk vs float64 decoded from int16: stats agree to float32 precision.
        assert (a.mean, a.std) == pytest.approx((b.mean, b.std), rel=1e-6)
    assert after.grid_mapping == "crs"
    assert after.dataset["precip"].dtype == np.float32
    assert after.dataset["precip"].data.chunksize == (1, 4, 5)
    for name in ("precip", "x", "y", "crs"):
        assert after.dataset[name].attrs == before.dataset[name].attrs, name
    np.testing.assert_array_equal(after.times, before.times)
    np.testing.assert_array_equal(
        after.dataset["precip"].values, before.dataset["precip"].values.astype(np.float32)
    )


def test_coarsen_nan_rule(tmp_path: Path) -> None:
    ds = make_ds(nt=2, ny=4, nx=5)
    ds["precip"][:] = np.arange(20, dtype=np.float32).reshape(4, 5)
    ds["precip"][1, 0, 3] = np.nan  # in the lower-left 2x2 block of frame 1 only
    ds.to_netcdf(tmp_path / "a.nc")
    out = prepare(tmp_path / "a.nc", tmp_path / "c.zarr", coarsen=2)
    coarse = xr.open_zarr(out, consolidated=False)
    # 4 x 5 cells in blocks of 2 -> 2 x 2, the last column trimmed; block means by hand.
    expected = np.array(
        [[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4], [(10 + 11 + 15 + 16) / 4, (12 + 13 + 17 + 18) / 4]]
    )
    np.testing.assert_allclose(coarse["precip"].values[0], expected)
    assert np.isnan(coarse["precip"].values[1, 0, 1])
    assert np.isnan(coarse["precip"].values[1]).sum() == 1
    np.testing.assert_allclose(coarse["x"].values, [500.0, 2500.0])


def test_prepare_real_radar_coarse(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "radar_mch.nc"
    window = "2015-05-15T15:45:2015-05-15T15:55"
    out = prepare(source, tmp_path / "mch.zarr", coarsen=8, time=window)
    fields = open_fields(out)
    assert fields.shape == (80, 88) and len(fields.times) == 3
    assert fields.grid_mapping == "crs" and "crs_wkt" in fields.dataset["crs"].attrs
    assert fields.dataset["precip"].attrs["grid_mapping"] == "crs"
    assert (
        fields.dataset["lat"].dims == ("y", "x") and fields.dataset["lat"].attrs["units"] == "degrees_north"
    )
    with xr.open_dataset(source) as fine:
        np.testing.assert_allclose(
            fields.dataset["lat"].values[0, 0], fine["lat"].values[:8, :8].mean(), rtol=1e-6
        )
        partial = fine["precip"].values[0, 0:8, 376:384]
        wet = fine["precip"].values[0, 80:88, 536:544]
    # Coarse cell (0, 47) has NaN and finite fine cells (edge of radar coverage); (10, 67) is all rainy.
    assert np.isnan(partial).any() and np.isfinite(partial).any()
    assert np.isnan(fields.dataset["precip"].values[0, 0, 47])
    np.testing.assert_allclose(fields.dataset["precip"].values[0, 10, 67], wet.mean(), rtol=1e-5)
    assert wet.mean() > 0.5


# ------------------------------------------------------------------------------------- fuzzing the edge


@st.composite
def _sources(draw: st.DrawFn) -> tuple[xr.Dataset, np.ndarray]:
    """Small sources of any shape, dtype, NaN pattern and time axis (repeats, reversals, gaps included)."""
    nt, ny, nx = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    steps = draw(st.lists(st.sampled_from([-5, 0, 5, 5, 5, 10, 60]), min_size=nt - 1, max_size=nt - 1))
    times = np.datetime64("2020-01-01T00:00") + np.cumsum([0, *steps]).astype("timedelta64[m]")
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
    values = draw(arrays(np.float64, (nt, ny, nx), elements=st.floats(0, 50, allow_nan=False)))
    if dtype != np.int16:
        values[draw(arrays(bool, (nt, ny, nx)))] = np.nan
    units = draw(st.sampled_from(["mm h-1", "K"]))
    ds = make_ds(nt, ny, nx, units=units)
    ds = ds.assign_coords(time=times)
    ds["precip"] = (("time", "y", "x"), values.astype(dtype), ds["precip"].attrs)
    return ds, values


@settings(max_examples=40, deadline=None)
@given(_sources())
def test_open_fields_documented_errors_or_the_right_shape(case: tuple[xr.Dataset, np.ndarray]) -> None:
    """Any source: an `InputError`, or Fields of the source's shape whose frames hold its NaN pattern."""
    import tempfile

    ds, values = case
    with tempfile.TemporaryDirectory() as tmp:
        ds.to_netcdf(Path(tmp) / "a.nc")
        try:
            fields = open_fields(Path(tmp) / "a.nc")
        except InputError:
            return
        nt, ny, nx = values.shape
        assert fields.shape == (ny, nx) and len(fields.times) == nt
        assert sum(s.length for s in fields.segments) == nt
        frames = load_frames(fields, slice(0, nt))
        assert frames.shape == (nt, 1, ny, nx) and frames.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(frames[:, 0]), np.isnan(values))
