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
