"""Tests of the pysteps baselines: motion direction, skill over persistence, STEPS ensemble properties."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dydiff_earth import data, io, schema
from dydiff_earth.baselines import ExtrapolationForecaster, StepsForecaster, make_baseline, steps_seed
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import PersistenceForecaster

pytest.importorskip("pysteps", reason="the pysteps baselines need pysteps (pip install '.[baselines]')")
pytest.importorskip("cv2", reason="pysteps' Lucas-Kanade motion needs OpenCV (opencv-python-headless)")

SIZE = 48
FRAMES = 10
#: Blob motion in pixels per 5-minute step, along x (columns) and y (rows).
U, V = 1.5, 1.0


def _blob_frames(rng: np.random.Generator | None = None) -> np.ndarray:
    """A Gaussian rain blob (peak 10 mm h-1) translating by (U, V) px per frame, plus optional texture."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    frames = []
    for t in range(FRAMES):
        cx, cy = 12 + U * t, 14 + V * t
        blob = 10.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 4.0**2))
        if rng is not None:
            # Texture that moves with the blob, so that STEPS has structure at several scales.
            texture = np.roll(np.roll(rng.gamma(2.0, 0.5, (SIZE, SIZE)), round(U * t), 1), round(V * t), 0)
            blob = blob + np.where(blob > 0.5, texture, 0.0)
        frames.append(np.where(blob < 0.05, 0.0, blob))
    return np.stack(frames).astype(np.float32)


def _store(tmp_path, values: np.ndarray, units: str = "mm h-1", name: str = "precip") -> data.Fields:
    times = pd.date_range("2020-06-01T12:00", periods=values.shape[0], freq="5min")
    coords = {
        "time": times,
        "y": ("y", np.arange(SIZE) * 1000.0, {"units": "m", "standard_name": "projection_y_coordinate"}),
        "x": ("x", np.arange(SIZE) * 1000.0, {"units": "m", "standard_name": "projection_x_coordinate"}),
    }
    ds = xr.Dataset({name: (("time", "y", "x"), values, {"units": units})}, coords=coords)
    path = tmp_path / f"{name}.zarr"
    io.write_zarr(ds, path)
    return data.open_fields(path)


def _centroid(field: np.ndarray) -> np.ndarray:
    w = np.nan_to_num(field)
    yy, xx = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return np.array([(w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()])


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> data.Fields:
    return _store(tmp_path_factory.mktemp("blob"), _blob_frames())


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> data.Fields:
    values = _blob_frames(np.random.default_rng(0))
    values[:, :6, :6] = np.nan  # a corner without radar coverage
    return _store(tmp_path_factory.mktemp("textured"), values)


def test_extrapolation_moves_the_blob_with_the_flow_and_beats_persistence(blob):
    init = str(blob.times[5])
    fc = ExtrapolationForecaster()(blob, init_time=init, lead_times=3, n_members=4, seed=0)
    assert fc.sizes[schema.MEMBER] == 1  # deterministic: one member whatever is asked
    truth = _blob_frames()[6:9]
    moved = _centroid(fc["precip"].values[0, 2])
    # Tolerance 1 px (the task's): LK motion on a smooth blob is accurate to a fraction of a pixel.
    np.testing.assert_allclose(moved, _centroid(truth[2]), atol=1.0)
    start = _centroid(_blob_frames()[5])
    assert moved[1] - start[1] > 3.5 and moved[0] - start[0] > 2.0  # right by 4.5 px, down by 3 px
    persistence = PersistenceForecaster()(blob, init_time=init, lead_times=3)
    mae_extrap = np.abs(fc["precip"].values[0] - truth).mean()
    mae_persist = np.abs(persistence["precip"].values[0] - truth).mean()
    assert mae_extrap < 0.5 * mae_persist


def test_extrapolation_output_is_labelled_like_the_model(blob):
    fc = ExtrapolationForecaster()(blob, init_time=None, lead_times=2, n_members=1, seed=0)
    schema.validate_forecast(fc)
    assert fc[schema.INIT_TIME].values == blob.times[-1]
    assert fc.attrs["model"] == "extrapolation"
    assert fc["precip"].attrs["units"] == "mm h-1"


def test_extrapolation_keeps_no_coverage_as_nan(textured):
    fc = ExtrapolationForecaster()(
        textured, init_time=str(textured.times[5]), lead_times=2, n_members=1, seed=0
    )
    values = fc["precip"].values
    assert np.isnan(values[..., :6, :6]).all()
    assert np.isfinite(values[..., 6:, :]).all()


def test_steps_ensemble_properties(textured):
    init = str(textured.times[6])
    run = StepsForecaster()
    a = run(textured, init_time=init, lead_times=3, n_members=3, seed=7)
    values = a["precip"].values
    assert values.shape == (3, 3, SIZE, SIZE)
    covered = values[..., 6:, :]
    assert np.isfinite(covered).all() and (covered >= 0).all()
    assert np.isnan(values[..., :6, :6]).all()
    # Members differ (stochastic perturbations), and the same seed gives the same numbers.
    assert np.nanmax(np.abs(values[0] - values[1])) > 0.1
    b = run(textured, init_time=init, lead_times=3, n_members=3, seed=7)
    np.testing.assert_array_equal(values, b["precip"].values)
    c = run(textured, init_time=init, lead_times=3, n_members=3, seed=8)
    assert not np.array_equal(values, c["precip"].values)
    assert a.attrs["model"] == "steps" and "SeedSequence" in a.attrs["rng_scheme"]


def test_steps_seed_depends_on_seed_and_init_time():
    t0, t1 = np.datetime64("2020-01-01T00:00"), np.datetime64("2020-01-01T00:05")
    assert steps_seed(0, t0) == steps_seed(0, t0)
    assert len({steps_seed(0, t0), steps_seed(1, t0), steps_seed(0, t1)}) == 3
    assert 0 <= steps_seed(123, t1) < 2**32


def test_steps_refuses_a_field_that_is_not_a_rain_rate(tmp_path):
    fields = _store(tmp_path, 280.0 + _blob_frames(), units="K", name="t2m")
    with pytest.raises(InputError, match="rain rates"):
        StepsForecaster()(fields, init_time=None, lead_times=2, n_members=2, seed=0)
    # Extrapolation works on any field.
    fc = ExtrapolationForecaster()(fields, init_time=None, lead_times=2, n_members=1, seed=0)
    assert np.isfinite(fc["t2m"].values).all()


def test_unknown_baseline_lists_the_names():
    with pytest.raises(InputError, match="persistence, extrapolation, steps"):
        make_baseline("nowcastnet")
    assert isinstance(make_baseline(" Persistence "), PersistenceForecaster)


def test_missing_pysteps_is_a_clear_error(blob, monkeypatch):
    # A None entry in sys.modules makes `import pysteps` (and its submodules) raise ImportError.
    for name in [m for m in sys.modules if m == "pysteps" or m.startswith("pysteps.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pysteps", None)
    with pytest.raises(InputError, match=r"baseline 'steps' needs pysteps: pip install pysteps"):
        make_baseline("steps")(blob, init_time=None, lead_times=2, n_members=2, seed=0)


def _hourly(tmp_path, values: np.ndarray, start: str = "2019-03-01T00:00", drop: tuple[int, ...] = ()):
    times = pd.date_range(start, periods=values.shape[0], freq="1h")
    keep = np.setdiff1d(np.arange(values.shape[0]), drop)
    ds = xr.Dataset(
        {"t2m": (("time", "y", "x"), values[keep].astype(np.float32), {"units": "K"})},
        coords={"time": times[keep], "y": np.arange(values.shape[1]), "x": np.arange(values.shape[2])},
    )
    return data.open_fields(io.write_zarr(ds, tmp_path / f"t2m-{len(keep)}.zarr"))


def test_diurnal_mean_change_against_a_loop_over_consecutive_pairs(tmp_path):
    from dydiff_earth.baselines import DiurnalForecaster

    rng = np.random.default_rng(4)
    values = rng.normal(280, 3, (60, 3, 4))
    values[7, 1, 2] = np.nan
    record = _hourly(tmp_path, values, drop=(30,))  # a gap: frames 29 and 31 are not a pair
    got = DiurnalForecaster(record).mean_change()
    total, count = np.zeros((24, 1, 3, 4)), np.zeros((24, 1, 3, 4))
    for t in range(1, 60):
        if 30 in (t - 1, t):
            continue
        change = values[t] - values[t - 1]
        ok = np.isfinite(change)
        total[t % 24, 0][ok] += change[ok]
        count[t % 24, 0][ok] += 1
    np.testing.assert_allclose(got, total / count, rtol=1e-5, atol=1e-4)


def test_diurnal_forecast_is_exact_for_a_pure_daily_cycle(tmp_path):
    from dydiff_earth.baselines import DiurnalForecaster

    hours = np.arange(24 * 5)
    amplitude = np.linspace(1, 6, 12).reshape(3, 4)
    cycle = 280 + amplitude[None] * np.sin(2 * np.pi * (hours[:, None, None] - 8) / 24)
    record = _hourly(tmp_path, cycle[:72])
    later = _hourly(tmp_path, cycle)
    fc = DiurnalForecaster(record)(later, init_time="2019-03-04T05:00", lead_times=12)
    np.testing.assert_allclose(fc["t2m"].values[0], cycle[78:90], atol=1e-3)
    assert fc.attrs["model"] == "diurnal"
    persistence = make_baseline("persistence")(later, init_time="2019-03-04T05:00", lead_times=12)
    assert np.abs(persistence["t2m"].values[0] - cycle[78:90]).mean() > 1.0


def test_diurnal_needs_a_record_and_a_step_that_divides_a_day(tmp_path):
    with pytest.raises(InputError, match="training record"):
        make_baseline("diurnal")
    values = np.zeros((6, 2, 2))
    times = pd.date_range("2019-03-01", periods=6, freq="7h")
    ds = xr.Dataset({"t2m": (("time", "y", "x"), values, {"units": "K"})}, coords={"time": times})
    odd = data.open_fields(io.write_zarr(ds, tmp_path / "odd.zarr"))
    with pytest.raises(InputError, match="divides a day"):
        make_baseline("diurnal", odd)


def test_skill_learns_the_diurnal_baseline_before_the_held_out_period(tmp_path):
    from dydiff_earth import verify

    hours = np.arange(24 * 4)
    cycle = 280 + 3 * np.sin(2 * np.pi * hours / 24)[:, None, None] * np.ones((1, 8, 8))
    store = str(_hourly(tmp_path, cycle).source)
    result = verify.skill(
        store, [], ["diurnal"], time="2019-03-03:", inits=3, lead_times=6, report_dir=tmp_path / "skill"
    )
    crps = result.scores["crps_fair"]
    assert float(crps.sel(system="diurnal").max()) < 1e-3 < float(crps.sel(system="persistence").min())
    with pytest.raises(InputError, match="record before the held-out period"):
        verify.skill(
            store, [], ["diurnal"], time="2019-03-01:", inits=2, lead_times=3, report_dir=tmp_path / "s2"
        )
