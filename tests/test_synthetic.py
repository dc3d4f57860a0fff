from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dydiff_earth import synthetic
from dydiff_earth.errors import InputError


def _spectral_derivatives(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/dx and d/dy on [0, 2 pi)^2, computed independently of the module (full FFT)."""
    n = field.shape[-1]
    k = np.fft.fftfreq(n, 1.0 / n)
    k[n // 2] = 0.0
    f = np.fft.fft2(field)
    return np.fft.ifft2(1j * k[None, :] * f).real, np.fft.ifft2(1j * k[:, None] * f).real


@pytest.fixture(scope="module")
def rain() -> xr.Dataset:
    return synthetic.precip(sequences=4, frames=40, size=64, seed=0)


# -- solver -------------------------------------------------------------------------------------


def test_velocity_is_divergence_free_and_has_the_input_vorticity() -> None:
    omega = synthetic.random_vorticity(np.random.default_rng(1), 32)
    u, v = synthetic.vorticity_to_velocity(omega)
    ux, _ = _spectral_derivatives(u)
    vx, vy = _spectral_derivatives(v)
    _, uy = _spectral_derivatives(u)
    scale = np.abs(ux).max()
    assert np.abs(ux + vy).max() < 1e-10 * scale
    # The random field is band-limited below Nyquist, so curl(u) returns omega to round-off.
    np.testing.assert_allclose(vx - uy, omega, atol=1e-10 * np.abs(omega).max())


@pytest.mark.parametrize("drag", [0.0, 0.1])
def test_single_fourier_mode_decays_exactly(drag: float) -> None:
    n, nu, t = 32, 1e-2, 2.0
    x = 2 * np.pi * np.arange(n) / n
    omega = np.cos(2 * x[None, :] + 3 * x[:, None])  # u . grad(omega) = 0 for a single mode
    out = synthetic.evolve(omega, t, viscosity=nu, drag=drag)
    expected = omega * np.exp(-(nu * 13 + drag) * t)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_unforced_energy_decays_monotonically() -> None:
    omega = synthetic.random_vorticity(np.random.default_rng(2), 32)
    energies = []
    for _ in range(10):
        u, v = synthetic.vorticity_to_velocity(omega)
        energies.append(0.5 * np.mean(u**2 + v**2))
        omega = synthetic.evolve(omega, 0.2, viscosity=1e-3)
    assert np.all(np.diff(energies) < 0)
    assert energies[-1] > 0.5 * energies[0]  # decay by viscosity only, not a numerical blow-down


def test_kolmogorov_forcing_is_the_curl_of_sin_ky() -> None:
    n, k = 32, 4
    y = 2 * np.pi * np.arange(n) / n
    f = np.fft.irfft2(synthetic.kolmogorov_forcing(n, k, amplitude=2.0), s=(n, n))
    np.testing.assert_allclose(f, np.broadcast_to(-2.0 * k * np.cos(k * y)[:, None], (n, n)), atol=1e-12)


# -- turbulence dataset -------------------------------------------------------------------------


def test_turbulence_dataset_layout_and_determinism() -> None:
    kw = dict(sequences=2, frames=5, size=32, spinup=1.0)
    ds = synthetic.turbulence(**kw, seed=3)
    assert ds.sizes == {"time": 10, "y": 32, "x": 32}
    for name in ("u", "v"):
        assert ds[name].dims == ("time", "y", "x")
        assert ds[name].dtype == np.float32
        assert np.isfinite(ds[name]).all()
        assert ds[name].attrs["units"] == "m s-1"
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
    assert ds["y"].attrs["axis"] == "Y"
    assert ds["time"].attrs == {"standard_name": "time", "axis": "T"}
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["seed"] == 3
    steps = np.diff(ds["time"].values)
    assert steps[0] == np.timedelta64(720, "s")  # dt_frame 0.2 time units of 1 hour
    assert sorted(set(steps)) == [steps[0], steps[0] * (synthetic.GAP_STEPS + 1)]
    xr.testing.assert_identical(ds, synthetic.turbulence(**kw, seed=3))
    assert not np.array_equal(ds["u"], synthetic.turbulence(**kw, seed=4)["u"])
    # The flow evolves between frames but stays correlated with the previous one.
    u = ds["u"].values
    assert 0.5 < np.corrcoef(u[0].ravel(), u[1].ravel())[0, 1] < 0.9999


# -- precip dataset -----------------------------------------------------------------------------


def _sequences(ds: xr.Dataset) -> np.ndarray:
    n = ds.attrs["sequences"]
    return ds["precip"].values.reshape(n, -1, ds.sizes["latitude"], ds.sizes["longitude"])


def test_precip_layout_and_cf_attributes(rain: xr.Dataset) -> None:
    assert rain["precip"].dims == ("time", "latitude", "longitude")
    assert rain["precip"].dtype == np.float32
    attrs = rain["precip"].attrs
    assert attrs["units"] == "mm h-1" and attrs["standard_name"] == "lwe_precipitation_rate"
    assert attrs["grid_mapping"] == "crs"
    assert rain["crs"].attrs["grid_mapping_name"] == "latitude_longitude"
    assert rain["latitude"].attrs["units"] == "degrees_north"
    assert rain["longitude"].attrs["standard_name"] == "longitude"
    np.testing.assert_allclose(np.diff(rain["latitude"]), 0.04)
    np.testing.assert_allclose(rain["latitude"].mean(), 46.8)
    np.testing.assert_allclose(rain["longitude"].mean(), 8.2)
    steps = np.diff(rain["time"].values)
    assert set(steps) == {np.timedelta64(5, "m"), np.timedelta64(5 * (synthetic.GAP_STEPS + 1), "m")}
    assert (steps > np.timedelta64(5, "m")).sum() == 3


def test_precip_values_are_plausible(rain: xr.Dataset) -> None:
    r = _sequences(rain)
    assert (r >= 0).all()
    wet = (r > 0.1).mean(axis=(1, 2, 3))
    assert np.all((wet > 0.1) & (wet < 0.3)), wet
    peaks = r.max(axis=(1, 2, 3))
    assert np.all((peaks > 5) & (peaks < 60)), peaks


def test_precip_is_persistent_and_decorrelates(rain: xr.Dataset) -> None:
    for seq in _sequences(rain):
        corr = [np.corrcoef(seq[:-lag].ravel(), seq[lag:].ravel())[0, 1] for lag in (1, 4, 12)]
        assert corr[0] > 0.8
        assert corr[0] > corr[1] > corr[2], corr


def test_precip_moves_with_the_stated_flow(rain: xr.Dataset) -> None:
    lag = 8
    drifts = zip(rain.attrs["motion_u_pixels_per_step"], rain.attrs["motion_v_pixels_per_step"], strict=True)
    for seq, (u, v) in zip(_sequences(rain), drifts, strict=True):
        a, b = seq[:-lag] - seq.mean(), seq[lag:] - seq.mean()
        xcorr = np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)).real.sum(axis=0)
        iy, ix = np.unravel_index(np.argmax(xcorr), xcorr.shape)
        n = xcorr.shape[0]
        shift = np.array([(iy + n // 2) % n - n // 2, (ix + n // 2) % n - n // 2])
        assert np.abs(shift).max() >= 1  # displaced from zero: persistence is not the best guess
        np.testing.assert_allclose(shift, [lag * v, lag * u], atol=1.5)


def test_precip_determinism_and_sequence_independence(rain: xr.Dataset) -> None:
    again = synthetic.precip(sequences=2, frames=40, size=64, seed=0)
    np.testing.assert_array_equal(again["precip"].values, rain["precip"].values[:80])
    other = synthetic.precip(sequences=1, frames=5, size=64, seed=1)
    assert not np.array_equal(other["precip"].values, rain["precip"].values[:5])


def test_demo_sample_is_one_deterministic_sequence() -> None:
    demo = synthetic.demo_sample()
    assert demo.sizes == {"time": 16, "latitude": 56, "longitude": 56}
    assert (demo["precip"] > 0.1).mean() > 0.05
    xr.testing.assert_identical(demo, synthetic.demo_sample())


# -- writing and errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("precip", dict(sequences=2, frames=3, size=16, seed=5)),
        ("turbulence", dict(sequences=2, frames=3, size=16, spinup=0.5)),
    ],
)
def test_write_round_trips(tmp_path, kind: str, kwargs: dict) -> None:
    path = synthetic.write(kind, tmp_path / f"{kind}.zarr", **kwargs)
    expected = getattr(synthetic, kind)(**kwargs)
    back = xr.open_zarr(path, consolidated=False).load()
    xr.testing.assert_identical(back, expected)
    for name in expected.variables:
        assert back[name].attrs == expected[name].attrs


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("radar", {}, "unknown synthetic kind"),
        ("precip", {"speed": 2}, "unknown option"),
        ("precip", {"size": 4}, "size"),
        ("precip", {"center": (89.5, 0.0)}, "latitude"),
        ("turbulence", {"viscosity": 0.0}, "viscosity"),
    ],
)
def test_bad_requests_raise_input_error(tmp_path, kind: str, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        synthetic.write(kind, tmp_path / "out.zarr", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out.zarr").exists()
