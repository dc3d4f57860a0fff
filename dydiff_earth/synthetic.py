"""Synthetic gridded fields written as CF datasets: forced 2-D turbulence and advected rain cells.

Both generators lay several independent sequences end to end on one ``time`` axis, separated by
``GAP_STEPS`` missing time steps, so the data layer sees one contiguous segment per sequence.
Sequence ``k`` draws its random numbers from ``numpy.random.default_rng([seed, stream, k])``: it
depends only on ``(seed, k)``, not on how many sequences are asked for.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr
from scipy import ndimage

from dydiff_earth import io, schema
from dydiff_earth.errors import InputError

#: Missing time steps between two sequences on the shared time axis.
GAP_STEPS = 6
#: One nondimensional time unit of the turbulence solver is written as this much calendar time.
TURBULENCE_TIME_UNIT = np.timedelta64(3600, "s")
TURBULENCE_START = np.datetime64("2000-01-01T00:00", "ns")
PRECIP_STEP = np.timedelta64(5, "m")
PRECIP_START = np.datetime64("2024-06-01T12:00", "ns")
#: Advective Courant number max(|u| + |v|) dt / dx of the turbulence solver. The dealiased modes reach
#: |k| dx < 2.1, so RK4 sees |lambda dt| <= 2.1 CFL, inside its imaginary-axis stability limit 2.83.
CFL = 1.0

WGS84_WKT = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563,'
    'LENGTHUNIT["metre",1]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],'
    'CS[ellipsoidal,2],AXIS["geodetic latitude (Lat)",north,ORDER[1],ANGLEUNIT["degree",0.0174532925199433]],'
    'AXIS["geodetic longitude (Lon)",east,ORDER[2],ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4326]]'
)


# --------------------------------------------------------------------------------------------------
# 2-D Navier-Stokes in vorticity form, pseudo-spectral on the periodic square [0, 2 pi)^2
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpectralGrid:
    """Wavenumbers of an ``rfft2`` of a ``size x size`` field on [0, 2 pi)^2 (integer wavenumbers).

    ``kx``, ``ky`` are the derivative wavenumbers, with the Nyquist ones set to zero (the derivative
    of a real field's Nyquist mode is not real). ``k2`` is |k|^2 with ``k2[0, 0] = 1`` so the
    Laplacian can be inverted (the mean vorticity is zero on a periodic domain). ``dealias`` keeps
    modes with |kx|, |ky| < size / 3 (Orszag's 2/3 rule).
    """

    size: int
    kx: np.ndarray  # (1, size // 2 + 1)
    ky: np.ndarray  # (size, 1)
    k2: np.ndarray  # (size, size // 2 + 1)
    dealias: np.ndarray  # (size, size // 2 + 1), bool


def spectral_grid(size: int) -> SpectralGrid:
    """The :class:`SpectralGrid` of a ``size x size`` periodic field."""
    kx_full = np.arange(size // 2 + 1, dtype=float)
    ky_full = np.fft.fftfreq(size, 1.0 / size)
    kx, ky = kx_full.copy(), ky_full.copy()
    if size % 2 == 0:
        kx[-1] = 0.0
        ky[size // 2] = 0.0
    k2 = kx_full[None, :] ** 2 + ky_full[:, None] ** 2
    k2[0, 0] = 1.0
    cutoff = size / 3.0
    dealias = (np.abs(kx_full)[None, :] < cutoff) & (np.abs(ky_full)[:, None] < cutoff)
    return SpectralGrid(size, kx[None, :], ky[:, None], k2, dealias)


def _velocity_hat(omega_hat: np.ndarray, grid: SpectralGrid) -> tuple[np.ndarray, np.ndarray]:
    # Stream function with -lap(psi) = omega; u = d(psi)/dy, v = -d(psi)/dx, so div(u) = 0 exactly.
    psi_hat = omega_hat / grid.k2
    psi_hat[..., 0, 0] = 0.0
    return 1j * grid.ky * psi_hat, -1j * grid.kx * psi_hat


def vorticity_to_velocity(omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Velocity ``(u, v)`` of a periodic vorticity field, by spectral inversion of the Laplacian.

    Parameters
    ----------
    omega : array (..., y, x)
        Vorticity dv/dx - du/dy on the periodic square [0, 2 pi)^2, square in the last two dims.

    Returns
    -------
    u, v : arrays (..., y, x)
        Divergence-free velocity components along x and y (same nondimensional units).
    """
    size = omega.shape[-1]
    grid = spectral_grid(size)
    u_hat, v_hat = _velocity_hat(np.fft.rfft2(omega), grid)
    return np.fft.irfft2(u_hat, s=(size, size)), np.fft.irfft2(v_hat, s=(size, size))


def kolmogorov_forcing(size: int, wavenumber: int, amplitude: float = 1.0) -> np.ndarray:
    """Spectral vorticity forcing (y, x//2+1) of the Kolmogorov body force ``F = (A sin(k y), 0)``.

    Its curl, the term added to the vorticity equation, is ``-A k cos(k y)`` (the forcing of
    Kochkov et al. 2021, PNAS, "Machine learning-accelerated computational fluid dynamics").
    """
    y = 2.0 * np.pi * np.arange(size) / size
    f = np.broadcast_to((-amplitude * wavenumber * np.cos(wavenumber * y))[:, None], (size, size))
    return np.fft.rfft2(f) * spectral_grid(size).dealias


def _nonlinear(omega_hat: np.ndarray, grid: SpectralGrid, forcing_hat: np.ndarray) -> np.ndarray:
    """``-u . grad(omega) + f`` in spectral space, products dealiased by the 2/3 rule."""
    psi_hat = omega_hat / grid.k2
    psi_hat[..., 0, 0] = 0.0
    # u, v, d(omega)/dx, d(omega)/dy in one inverse transform (fewer calls: the grids are small).
    spectra = np.stack([grid.ky * psi_hat, -grid.kx * psi_hat, grid.kx * omega_hat, grid.ky * omega_hat])
    u, v, wx, wy = np.fft.irfft2(1j * spectra, s=(grid.size, grid.size))
    return -np.fft.rfft2(u * wx + v * wy) * grid.dealias + forcing_hat


def ns_step(
    omega_hat: np.ndarray,
    dt: float,
    grid: SpectralGrid,
    *,
    viscosity: float,
    drag: float = 0.0,
    forcing_hat: np.ndarray | float = 0.0,
) -> np.ndarray:
    """One step of ``d(omega)/dt + u . grad(omega) = nu lap(omega) - mu omega + f``.

    Integrating-factor RK4 (Lawson's method; Kassam & Trefethen 2005, SIAM J. Sci. Comput., Sec. 2):
    the linear viscous and drag terms are integrated exactly, advection and forcing by classical RK4,
    so a field with no nonlinear term (a single Fourier mode, no forcing) decays exactly as
    ``exp(-(nu |k|^2 + mu) t)``.

    Parameters
    ----------
    omega_hat : complex array (y, x//2+1)
        ``rfft2`` of the vorticity (nondimensional).
    dt : float
        Time step (nondimensional); keep it under the advective CFL limit.
    grid : SpectralGrid
    viscosity, drag : float
        Kinematic viscosity nu and linear drag mu (nondimensional).
    forcing_hat : complex array (y, x//2+1) or 0
        Spectral vorticity forcing, e.g. :func:`kolmogorov_forcing`.
    """
    e1, e2 = _integrating_factors(grid, dt, viscosity, drag)
    return _lawson_rk4(omega_hat, dt, grid, e1, e2, np.asarray(forcing_hat))


def _integrating_factors(
    grid: SpectralGrid, dt: float, viscosity: float, drag: float
) -> tuple[np.ndarray, np.ndarray]:
    k2 = grid.k2.copy()
    k2[0, 0] = 0.0
    lin = -(viscosity * k2 + drag)
    return np.exp(lin * dt), np.exp(lin * dt / 2)


def _lawson_rk4(
    omega_hat: np.ndarray, dt: float, grid: SpectralGrid, e1: np.ndarray, e2: np.ndarray, forcing: np.ndarray
) -> np.ndarray:
    a = _nonlinear(omega_hat, grid, forcing)
    b = _nonlinear(e2 * (omega_hat + 0.5 * dt * a), grid, forcing)
    c = _nonlinear(e2 * omega_hat + 0.5 * dt * b, grid, forcing)
    d = _nonlinear(e1 * omega_hat + dt * e2 * c, grid, forcing)
    return e1 * omega_hat + dt / 6.0 * (e1 * a + 2.0 * e2 * (b + c) + d)


def _advance(
    omega_hat: np.ndarray,
    duration: float,
    grid: SpectralGrid,
    *,
    viscosity: float,
    drag: float,
    forcing_hat: np.ndarray | float,
    cfl: float,
) -> np.ndarray:
    """Integrate for ``duration`` in equal substeps, as many as the advective CFL number needs."""
    if duration <= 0:
        return omega_hat
    u_hat, v_hat = _velocity_hat(omega_hat, grid)
    s = (grid.size, grid.size)
    speed = float(np.max(np.abs(np.fft.irfft2(u_hat, s=s)) + np.abs(np.fft.irfft2(v_hat, s=s))))
    dx = 2.0 * np.pi / grid.size
    steps = max(1, int(np.ceil(duration * speed / (cfl * dx))))
    dt = duration / steps
    e1, e2 = _integrating_factors(grid, dt, viscosity, drag)
    for _ in range(steps):
        omega_hat = _lawson_rk4(omega_hat, dt, grid, e1, e2, np.asarray(forcing_hat))
    return omega_hat


def evolve(
    omega: np.ndarray,
    duration: float,
    *,
    viscosity: float = 1e-3,
    drag: float = 0.0,
    forcing_wavenumber: int = 0,
    forcing_amplitude: float = 1.0,
    cfl: float = CFL,
) -> np.ndarray:
    """Vorticity (y, x) after ``duration`` nondimensional time units; ``forcing_wavenumber=0`` is unforced.

    The nonlinear term is dealiased; the input is not filtered, so a field resolved within the 2/3
    band evolves exactly as :func:`ns_step` prescribes.
    """
    size = omega.shape[-1]
    grid = spectral_grid(size)
    forcing = kolmogorov_forcing(size, forcing_wavenumber, forcing_amplitude) if forcing_wavenumber else 0.0
    omega_hat = _advance(
        np.fft.rfft2(omega), duration, grid, viscosity=viscosity, drag=drag, forcing_hat=forcing, cfl=cfl
    )
    return np.fft.irfft2(omega_hat, s=(size, size))


def random_vorticity(rng: np.random.Generator, size: int, peak_wavenumber: float = 4.0) -> np.ndarray:
    """A smooth random vorticity field (y, x), rms velocity 1, energy in a ring around ``peak_wavenumber``."""
    grid = spectral_grid(size)
    k = np.sqrt(grid.k2)
    ring = np.exp(-0.5 * ((k - peak_wavenumber) / 2.0) ** 2) * grid.dealias
    ring[0, 0] = 0.0
    omega = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * ring, s=(size, size))
    u, v = vorticity_to_velocity(omega)
    return omega / np.sqrt(np.mean(u**2 + v**2))


# --------------------------------------------------------------------------------------------------
# Dataset assembly shared by the generators
# --------------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _check_common(sequences: int, frames: int, size: int) -> None:
    _check(sequences >= 1, f"sequences must be at least 1, got {sequences}")
    _check(frames >= 1, f"frames must be at least 1, got {frames}")
    _check(size >= 8, f"size must be at least 8 grid points, got {size}")


def segmented_times(start: np.datetime64, step: np.timedelta64, sequences: int, frames: int) -> np.ndarray:
    """Times (sequences * frames,): ``sequences`` runs of ``frames`` steps, ``GAP_STEPS`` missing between."""
    index = np.arange(sequences)[:, None] * (frames + GAP_STEPS) + np.arange(frames)[None, :]
    return (start + index.ravel() * step.astype("timedelta64[ns]")).astype("datetime64[ns]")


def _time_coord(times: np.ndarray) -> xr.DataArray:
    return xr.DataArray(times, dims=schema.TIME, attrs={"standard_name": "time", "axis": "T"})


def _global_attrs(title: str, source: str, params: dict) -> dict:
    attrs: dict[str, object] = {"title": title, "source": source, "Conventions": schema.CONVENTIONS}
    attrs["history"] = f"created by dydiff_earth.synthetic.{params['generator']}"
    attrs.update({k: list(v) if isinstance(v, tuple) else v for k, v in params.items()})
    attrs["gap_steps"] = GAP_STEPS
    return attrs


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------


def turbulence(
    sequences: int = 4,
    frames: int = 40,
    size: int = 64,
    *,
    seed: int = 0,
    viscosity: float = 1e-3,
    forcing_wavenumber: int = 4,
    dt_frame: float = 0.2,
    spinup: float = 10.0,
    drag: float = 0.1,
) -> xr.Dataset:
    """Forced 2-D turbulence: velocity of Kolmogorov flow on the periodic square [0, 2 pi)^2.

    Solves ``d(omega)/dt + u . grad(omega) = nu lap(omega) - mu omega - k cos(k y)`` (the curl of the
    body force ``(sin(k y), 0)``, as in Kochkov et al. 2021) pseudo-spectrally with :func:`ns_step`.
    Each sequence starts from :func:`random_vorticity`, spins up for ``spinup`` time units, then
    records ``frames`` frames every ``dt_frame``.

    Parameters
    ----------
    sequences, frames, size : int
        Number of independent sequences, frames per sequence, grid points per side.
    seed : int
        Seed of the random initial states; the output is a deterministic function of all arguments.
    viscosity, drag : float
        nu and the linear drag mu (nondimensional).
    forcing_wavenumber : int
        k of the Kolmogorov forcing; 0 turns the forcing off.
    dt_frame, spinup : float
        Nondimensional time between frames and before the first frame. One time unit is written as
        1 hour on the time axis, so the default 0.2 gives a 12-minute step.

    Returns
    -------
    xr.Dataset
        ``u``, ``v`` (time, y, x) float32, nondimensional velocity; coords ``time``
        (sequences * frames, datetime64, ``GAP_STEPS`` missing steps between sequences), ``y``, ``x``.
    """
    _check_common(sequences, frames, size)
    _check(viscosity > 0, f"viscosity must be positive, got {viscosity}")
    _check(drag >= 0, f"drag must be non-negative, got {drag}")
    _check(dt_frame > 0, f"dt_frame must be positive, got {dt_frame}")
    _check(spinup >= 0, f"spinup must be non-negative, got {spinup}")
    _check(forcing_wavenumber >= 0, f"forcing_wavenumber must be non-negative, got {forcing_wavenumber}")
    grid = spectral_grid(size)
    forcing = kolmogorov_forcing(size, forcing_wavenumber) if forcing_wavenumber else 0.0
    advance = functools.partial(
        _advance, grid=grid, viscosity=viscosity, drag=drag, forcing_hat=forcing, cfl=CFL
    )
    omegas = np.empty((sequences, frames, size, size))
    for k in range(sequences):
        rng = np.random.default_rng([seed, 0, k])
        omega_hat = np.fft.rfft2(random_vorticity(rng, size)) * grid.dealias
        omega_hat = advance(omega_hat, spinup)
        for i in range(frames):
            if i:
                omega_hat = advance(omega_hat, dt_frame)
            omegas[k, i] = np.fft.irfft2(omega_hat, s=(size, size))
    u, v = vorticity_to_velocity(omegas.reshape(-1, size, size))
    step_td = np.timedelta64(round(dt_frame * TURBULENCE_TIME_UNIT / np.timedelta64(1, "ms")), "ms")
    ds = _turbulence_dataset(u, v, segmented_times(TURBULENCE_START, step_td, sequences, frames))
    params = dict(
        generator="turbulence",
        sequences=sequences,
        frames=frames,
        size=size,
        seed=seed,
        viscosity=viscosity,
        drag=drag,
        forcing_wavenumber=forcing_wavenumber,
        dt_frame=dt_frame,
        spinup=spinup,
    )
    ds.attrs = _global_attrs(
        "Synthetic forced 2-D turbulence (Kolmogorov flow)",
        "dydiff-earth synthetic 2-D Navier-Stokes, pseudo-spectral, integrating-factor RK4, 2/3 dealiasing",
        params,
    )
    return ds


def _turbulence_dataset(u: np.ndarray, v: np.ndarray, times: np.ndarray) -> xr.Dataset:
    """CF dataset of velocity components (time, y, x) on the periodic square."""
    comment = "nondimensional: lengths in units of L / (2 pi), one time unit written as 1 hour; units nominal"
    dims = ("time", "y", "x")
    coord = 2.0 * np.pi * np.arange(u.shape[-1]) / u.shape[-1]
    data_vars = {
        name: (
            dims,
            values.astype(np.float32),
            {"long_name": long_name, "units": "m s-1", "comment": comment},
        )
        for name, values, long_name in (
            ("u", u, "x-component of velocity"),
            ("v", v, "y-component of velocity"),
        )
    }
    coords = {"time": _time_coord(times)}
    for axis in ("y", "x"):
        coords[axis] = xr.DataArray(
            coord,
            dims=axis,
            attrs={
                "standard_name": f"projection_{axis}_coordinate",
                "axis": axis.upper(),
                "units": "m",
                "long_name": f"{axis} on the periodic square [0, 2 pi)",
            },
        )
    return xr.Dataset(data_vars, coords=coords)


def _power_law_filter(n: int, slope: float, outer_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude filter (n, n//2+1) giving a unit-variance field with power spectrum ~ |k|^slope.

    Returns the filter and the wavelength (pixels) of each mode. The spectrum flattens at wavelengths
    beyond ``outer_scale`` pixels, so no single domain-wide mode decides where it rains.
    """
    fy = np.fft.fftfreq(n)[:, None]
    fr = np.sqrt(fy**2 + np.fft.rfftfreq(n)[None, :] ** 2)
    amp = (fr**2 + outer_scale**-2) ** (slope / 4.0)
    amp[0, 0] = 0.0
    # Variance of irfft2(amp * rfft2(white)) is the mean of amp^2 over the full (Hermitian) grid.
    full = (fy**2 + np.fft.fftfreq(n)[None, :] ** 2 + outer_scale**-2) ** (slope / 4.0)
    full[0, 0] = 0.0
    with np.errstate(divide="ignore"):
        wavelength = 1.0 / fr
    return amp / np.sqrt(np.mean(full**2)), wavelength


def _departure_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Backward departure points (2, n, n) of one step of a steady flow, and its mean (u, v) in px/step.

    The flow is a constant drift (0.3-0.7 px per step, random direction; 12-40 km h-1 at 0.04 degrees
    and 5 minutes) plus a divergence-free perturbation from two random large-scale stream-function
    modes of 0.08 px per step each.
    """
    speed, angle = rng.uniform(0.3, 0.7), rng.uniform(0.0, 2.0 * np.pi)
    drift = (speed * np.cos(angle), speed * np.sin(angle))
    yy, xx = np.meshgrid(np.arange(n, dtype=float), np.arange(n, dtype=float), indexing="ij")
    u, v = np.full((n, n), drift[0]), np.full((n, n), drift[1])
    for _ in range(2):
        kx, ky = rng.integers(-2, 3, size=2)
        kx = kx or 1
        arg = 2.0 * np.pi * (kx * xx + ky * yy) / n + rng.uniform(0.0, 2.0 * np.pi)
        # psi = A sin(arg) with u = d(psi)/dy, v = -d(psi)/dx, scaled to a speed of 0.08 px per step.
        u += 0.08 * ky / np.hypot(kx, ky) * np.cos(arg)
        v -= 0.08 * kx / np.hypot(kx, ky) * np.cos(arg)
    return np.stack([yy - v, xx - u]), drift


def _rain_sequence(
    rng: np.random.Generator, frames: int, size: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Rain rate (frames, size, size) in mm h-1 of one sequence, and its mean motion (u, v) in px/step.

    A Gaussian field z with a -3.5 power spectrum (flat beyond the window's size) evolves as a
    scale-dependent AR(1) in spectral space, each scale's lag-1 correlation set by a lifetime that
    grows in proportion to its wavelength (dynamic scaling, Venugopal et al. 1999, J. Geophys. Res.;
    the cascade AR(1) of STEPS, Bowler et al. 2006, QJRMS), and is advected semi-Lagrangian by a steady
    flow. It runs on a periodic domain twice the window's size, so what drifts in is new, and is then
    cropped. Rain is log-normal above the threshold z0 that leaves a random 12-28 % of the sequence
    wet: R = 0.1 exp(b (z - z0)) mm h-1 where z > z0, else 0, with b set so the sequence's peak is a
    random 10-50 mm h-1 (b is kept in [1.2, 2.5], so a calm sequence may peak lower).
    """
    n = 2 * size
    amp, wavelength = _power_law_filter(n, slope=-3.5, outer_scale=size)
    phi = np.exp(-1.0 / (48.0 * wavelength / 16.0))  # lifetime 48 steps (4 h) at a 16-pixel wavelength
    innovation = np.sqrt(1.0 - phi**2) * amp
    departure, drift = _departure_points(rng, n)
    wet_fraction, peak = rng.uniform(0.12, 0.28), rng.uniform(10.0, 50.0)
    z = np.fft.irfft2(amp * np.fft.rfft2(rng.standard_normal((n, n))), s=(n, n))
    lo = (n - size) // 2
    out = np.empty((frames, size, size))
    for i in range(frames):
        out[i] = z[lo : lo + size, lo : lo + size]
        z = ndimage.map_coordinates(z, departure, order=3, mode="grid-wrap")
        z_hat = phi * np.fft.rfft2(z) + innovation * np.fft.rfft2(rng.standard_normal((n, n)))
        z = np.fft.irfft2(z_hat, s=(n, n))
    threshold = np.quantile(out, 1.0 - wet_fraction)
    b = np.clip(np.log(peak / 0.1) / max(out.max() - threshold, 1e-6), 1.2, 2.5)
    rain = np.where(out > threshold, 0.1 * np.exp(b * (out - threshold)), 0.0)
    return rain, drift


def _precip_dataset(rain: np.ndarray, times: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """CF dataset of rain rate (time, latitude, longitude) in mm h-1 with a WGS 84 grid mapping."""
    crs_attrs = {
        "grid_mapping_name": "latitude_longitude",
        "longitude_of_prime_meridian": 0.0,
        "semi_major_axis": 6378137.0,
        "inverse_flattening": 298.257223563,
        "crs_wkt": WGS84_WKT,
    }
    precip_attrs = {
        "standard_name": "lwe_precipitation_rate",
        "long_name": "rain rate",
        "units": "mm h-1",
        "grid_mapping": "crs",
        "comment": "mm h-1 is convertible to the CF canonical unit of lwe_precipitation_rate, m s-1",
    }
    # crs is a scalar coordinate, not a data variable, so it is never mistaken for a field to forecast.
    coords = {
        "time": _time_coord(times),
        "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
        "crs": ((), np.int32(0), crs_attrs),
    }
    return xr.Dataset({"precip": (("time", "latitude", "longitude"), rain, precip_attrs)}, coords=coords)


def precip(
    sequences: int = 4,
    frames: int = 40,
    size: int = 64,
    *,
    seed: int = 0,
    center: tuple[float, float] = (46.8, 8.2),
    resolution: float = 0.04,
) -> xr.Dataset:
    """Advected, growing and decaying rain cells on a latitude/longitude grid, every 5 minutes.

    Each sequence moves with its own steady flow (persistent motion, so extrapolation beats
    persistence) while its cells grow and decay at random (so an ensemble has spread to represent);
    see :func:`_rain_sequence` for the method.

    Parameters
    ----------
    sequences, frames, size : int
        Number of independent sequences, 5-minute frames per sequence, grid points per side.
    seed : int
        The output is a deterministic function of all arguments; sequence k depends on (seed, k) only.
    center : (float, float)
        Latitude and longitude of the grid centre (degrees north, degrees east).
    resolution : float
        Grid spacing in degrees, the same along latitude and longitude.

    Returns
    -------
    xr.Dataset
        ``precip`` (time, latitude, longitude) float32 in mm h-1 with ``grid_mapping="crs"``; coords
        ``time`` (``GAP_STEPS`` missing steps between sequences), ascending ``latitude``, ``longitude``
        and the scalar grid-mapping coord ``crs`` (WGS 84). Attribute ``motion_u_pixels_per_step`` /
        ``motion_v_pixels_per_step`` give each sequence's mean motion along longitude / latitude.
    """
    _check_common(sequences, frames, size)
    _check(resolution > 0, f"resolution must be positive, got {resolution}")
    lat0, lon0 = (float(c) for c in center)
    offsets = (np.arange(size) - (size - 1) / 2.0) * resolution
    lat, lon = lat0 + offsets, lon0 + offsets
    _check(
        lat[0] >= -90.0 and lat[-1] <= 90.0,
        f"a {size}-point grid at {resolution} degrees centred at "
        f"latitude {lat0} leaves [-90, 90]; move the centre or shrink the grid",
    )
    rain = np.empty((sequences, frames, size, size), dtype=np.float32)
    drifts = []
    for k in range(sequences):
        rain[k], drift = _rain_sequence(np.random.default_rng([seed, 1, k]), frames, size)
        drifts.append(drift)

    times = segmented_times(PRECIP_START, PRECIP_STEP, sequences, frames)
    ds = _precip_dataset(rain.reshape(-1, size, size), times, lat, lon)
    params = dict(
        generator="precip",
        sequences=sequences,
        frames=frames,
        size=size,
        seed=seed,
        center=(lat0, lon0),
        resolution=resolution,
        time_step_minutes=5,
        motion_u_pixels_per_step=[float(d[0]) for d in drifts],
        motion_v_pixels_per_step=[float(d[1]) for d in drifts],
    )
    ds.attrs = _global_attrs(
        "Synthetic radar rain-rate fields",
        "dydiff-earth synthetic advected rain cells (scale-dependent AR(1) of a power-law Gaussian field)",
        params,
    )
    return ds


def demo_sample(seed: int = 2024) -> xr.Dataset:
    """The embedded default input of ``dydiff-earth forecast``: one 16-frame, 56 x 56 rain sequence.

    56 cells are covered by 2 x 2 overlapping tiles of the demo model's 32-cell patch (64 would need 3 x 3),
    which keeps the first forecast a new user runs near a minute on a laptop CPU.
    """
    ds = precip(sequences=1, frames=16, size=56, seed=seed)
    ds.attrs["title"] = "dydiff-earth demo sample (synthetic radar rain rate)"
    return ds


_GENERATORS: dict[str, Callable[..., xr.Dataset]] = {"turbulence": turbulence, "precip": precip}


def write(kind: Literal["turbulence", "precip"], output: str | Path, **kwargs: object) -> Path:
    """Generate a ``kind`` dataset with ``kwargs`` and write it as a zarr store at ``output``.

    Raises :class:`InputError` for an unknown kind or option. Chunks hold one frame each.
    """
    if kind not in _GENERATORS:
        raise InputError(f"unknown synthetic kind {kind!r}; choose one of {', '.join(_GENERATORS)}")
    generator = _GENERATORS[kind]
    unknown = sorted(set(kwargs) - set(inspect.signature(generator).parameters))
    if unknown:
        raise InputError(f"unknown option(s) for {kind}: {', '.join(unknown)}")
    ds = generator(**kwargs)
    encoding = {
        name: {"chunks": (1, *var.shape[1:])} for name, var in ds.data_vars.items() if "time" in var.dims
    }
    return io.write_zarr(ds, output, encoding=encoding)
