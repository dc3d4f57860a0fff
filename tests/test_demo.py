"""The shipped demo model and the embedded default: what a new user runs first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from dydiff_earth import io, metrics, schema, synthetic
from dydiff_earth.cli import app
from dydiff_earth.config import ForecastConfig
from dydiff_earth.data import open_fields
from dydiff_earth.forecast import DiffusionForecaster, PersistenceForecaster, load_model


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic rain from seeds the demo model never saw (training used seed 1, the demo input 2024)."""
    ds = synthetic.precip(sequences=3, frames=16, size=64, seed=777)
    return io.write_zarr(ds, tmp_path_factory.mktemp("fresh") / "fresh.zarr")


@pytest.mark.slow
def test_demo_model_beats_persistence_on_fresh_data(demo, fresh: Path) -> None:
    fields = open_fields(fresh, stats=demo.variables)
    lead = demo.horizon
    forecaster = DiffusionForecaster(demo, ForecastConfig(members=8, sampling_steps=20))
    truth_all = fields.dataset["precip"]
    crps: dict[str, list[float]] = {"dydiff": [], "persistence": []}
    for seg in fields.segments:
        init = str(fields.times[seg.start + demo.context - 1])
        truth = truth_all.isel(time=slice(seg.start + demo.context, seg.start + demo.context + lead)).values
        for name, system in (("dydiff", forecaster), ("persistence", PersistenceForecaster())):
            fc = system(fields, init_time=init, lead_times=lead, n_members=8, seed=3)
            obs = xr.DataArray(truth, dims=("lead_time", "latitude", "longitude"))
            obs = obs.assign_coords(lead_time=fc[schema.LEAD_TIME].values)
            score = metrics.CRPS(fair=True).compute(fc["precip"].drop_vars(list(fc.coords)), obs)
            crps[name].append(float(score["crps_fair"].mean()))
    model, persistence = np.mean(crps["dydiff"]), np.mean(crps["persistence"])
    assert model < persistence, f"fair CRPS {model:.4f} (demo) vs {persistence:.4f} (persistence)"


def _edge_to_interior(values: np.ndarray) -> np.ndarray:
    """Mean absolute step between neighbouring columns plus that between rows of square ``(..., n, n)``
    fields, at the first 4 and at the last 4 boundaries, each against the interior's."""
    lead = tuple(range(values.ndim - 2))
    grad = np.abs(np.diff(values, axis=-1)).mean(axis=(*lead, -2))
    grad += np.abs(np.diff(values, axis=-2)).mean(axis=(*lead, -1))
    return np.array([grad[:4].mean(), grad[-4:].mean()]) / grad[4:-4].mean()


@pytest.mark.parametrize("seed", [5, 7])
def test_demo_members_have_no_seams_on_a_larger_domain(demo, tmp_path: Path, seed: int) -> None:
    """96 x 96 cells from a model trained on 48 x 48 crops: one field over the whole domain (no tiles, so
    no seams), and the cells next to the edges, where rain advects in from outside or leaves, are about
    as rough as the observed field's there (a band next to padding is rougher: docs/models.md)."""
    ds_in = synthetic.precip(sequences=1, frames=10, size=96, seed=seed)
    store = io.write_zarr(ds_in.isel(time=slice(0, 4)), tmp_path / "big.zarr")
    fields = open_fields(store, stats=demo.variables)
    ds = DiffusionForecaster(demo, ForecastConfig(members=4))(
        fields, init_time=None, lead_times=demo.horizon, n_members=4, seed=0
    )
    # The model's own scale.
    members, truth = np.log1p(ds["precip"].values), np.log1p(ds_in["precip"].values[4:])
    assert np.isfinite(members).all()
    ratio = _edge_to_interior(members) / _edge_to_interior(truth)
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), f"edges against the observed: {ratio.round(2)}"


def test_embedded_default_writes_forecast_and_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["forecast", "--members", "2", "--sampling-steps", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(tmp_path / "dydiff-output" / "forecast.nc")
    schema.validate_forecast(ds)
    assert ds["precip"].attrs["units"] == "mm h-1"
    assert ds.attrs["checkpoint"].endswith("demo.safetensors")
    pngs = list((tmp_path / "dydiff-output" / "maps").glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
