"""Nowcasting baselines from pysteps that share the :class:`~dydiff_earth.forecast.Forecaster` contract.

- ``persistence``: the last frame at every lead time (:class:`~dydiff_earth.forecast.PersistenceForecaster`).
- ``extrapolation``: Lucas-Kanade motion and semi-Lagrangian advection of the last frame (Germann &
  Zawadzki 2002, MWR 130:2859; pysteps, Pulkkinen et al. 2019, GMD 12:4185), one member.
- ``steps``: the STEPS ensemble (Bowler et al. 2006, QJRMS 132:2127; Seed et al. 2013, WRR 49:6624) in
  dB-transformed rain rate, as in the pysteps examples.
- ``diurnal``: persistence plus the mean diurnal change, for weather fields: the last frame plus, lead by
  lead, the mean change of each cell from one time of day to the next over a training record.

Outputs are labelled by :func:`~dydiff_earth.forecast.forecast_dataset`, exactly like the model's, so the
same verification code reads them. pysteps is imported only when a pysteps baseline runs.
"""

from __future__ import annotations

import contextlib
import io as _stdio
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import xarray as xr

from dydiff_earth import __version__, diurnal, motion
from dydiff_earth.data import Fields, VariableSpec, denormalize, load_frames
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import Forecaster, PersistenceForecaster, forecast_dataset, init_index
from dydiff_earth.motion import RAIN_THRESHOLD, to_db

#: Names accepted by :func:`make_baseline`.
BASELINES = ("persistence", "extrapolation", "steps", "diurnal")


#: Unit spellings of a rain rate, the only field STEPS is built for.
_RAIN_RATE_UNITS = frozenset({"mm h-1", "mm/h", "mm hr-1", "mm/hr", "mm h**-1", "mm h^-1", "mmh-1"})

_KM_PER_DEGREE = 111.2


def _is_rain_rate(spec: VariableSpec) -> bool:
    return " ".join(spec.units.lower().split()) in _RAIN_RATE_UNITS


def _pysteps(baseline: str) -> SimpleNamespace:
    """The pysteps methods a baseline needs, or an ``InputError`` saying how to install them."""
    return motion.pysteps_methods(f"baseline {baseline!r}")


def _context_values(
    inputs: Fields, init_time: str | None, context: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """Init index, the last ``context`` frames ``(P, C, H, W)`` in input units, and coverage ``(H, W)``."""
    idx = init_index(inputs, init_time, context)
    frames = denormalize(load_frames(inputs, slice(idx - context + 1, idx + 1)), inputs.variables)
    # Like the diffusion forecaster: a point is forecast only where every context frame covers it.
    coverage = np.isfinite(frames).all(axis=(0, 1))
    return idx, frames, coverage


def _from_db(ps: SimpleNamespace, db: np.ndarray) -> np.ndarray:
    """dBR back to mm h-1; below -10 dBR (0.1 mm h-1) is dry (0), as in the pysteps examples."""
    return ps.db_transform(db, threshold=10.0 * np.log10(RAIN_THRESHOLD), zerovalue=0.0, inverse=True)[0]


def _provenance(name: str, inputs: Fields, idx: int, context: int, **extra: object) -> dict:
    return {
        "model": name,
        "package_version": __version__,
        "input": str(inputs.source),
        "context_frames": context,
        "init_time": str(inputs.times[idx]),
        **extra,
    }


def grid_spacing_km(inputs: Fields) -> float | None:
    """Grid spacing in km from the y coordinate (``m``, ``km`` or degrees), or ``None`` when unknown."""
    ds = inputs.dataset
    if inputs.y_dim not in ds.coords or ds.sizes[inputs.y_dim] < 2:
        return None
    coord = ds[inputs.y_dim]
    step = float(np.abs(np.diff(coord.values.astype(float))).mean())
    units = str(coord.attrs.get("units", "")).lower()
    if units in ("m", "metre", "meter", "metres", "meters"):
        return step / 1000.0
    if units in ("km", "kilometre", "kilometer"):
        return step
    if units.startswith("degree") or inputs.y_dim in ("latitude", "lat"):
        return step * _KM_PER_DEGREE
    return None


@dataclass(frozen=True)
class ExtrapolationForecaster:
    """Lagrangian persistence: the last frame advected by the Lucas-Kanade motion of the last ``context``.

    Motion is estimated on dB-transformed rain for rain-rate variables (as the pysteps examples do) and
    on the field in its own units otherwise, with missing pixels filled (``DB_ZERO``, or the field's
    minimum). The last frame is advected in input units; where the upstream point lies outside the grid
    the last observed value is kept (persistence), so every covered point gets a forecast and all
    systems are verified on the same points. Points not covered by every context frame stay NaN.
    One member whatever ``n_members``; ``seed`` is unused (deterministic).
    """

    context: int = 3

    def __call__(
        self, inputs: Fields, *, init_time: str | None, lead_times: int, n_members: int = 1, seed: int = 0
    ) -> xr.Dataset:
        if self.context < 2:
            raise InputError(f"extrapolation needs at least 2 context frames for motion, got {self.context}")
        ps = _pysteps("extrapolation")
        idx, frames, coverage = _context_values(inputs, init_time, self.context)
        out = np.empty((1, lead_times, *frames.shape[1:]), np.float32)
        for c, spec in enumerate(inputs.variables):
            field = frames[:, c]
            rain = _is_rain_rate(spec)
            velocity = motion.motion_field(field, rain=rain)
            fill = 0.0 if rain or not np.isfinite(field).any() else np.nanmin(field)
            last = np.where(np.isfinite(field[-1]), field[-1], fill)
            moved = ps.extrapolate(last, velocity, lead_times, outval=np.nan)
            out[0, :, c] = np.where(np.isfinite(moved), moved, last)
        out[..., ~coverage] = np.nan
        prov = _provenance(
            "extrapolation",
            inputs,
            idx,
            self.context,
            method="pysteps Lucas-Kanade motion + semi-Lagrangian advection",
        )
        return forecast_dataset(inputs, out, idx, prov)


def steps_seed(seed: int, init_time: np.datetime64) -> int:
    """The pysteps seed of one STEPS ensemble: a function of ``(seed, init_time)`` only."""
    seconds = int(np.datetime64(init_time, "s").astype(np.int64))
    entropy = np.random.SeedSequence([seed, seconds & 0xFFFFFFFF, seconds >> 32 & 0xFFFFFFFF])
    # numpy's legacy RandomState, which pysteps seeds, takes a 32-bit seed.
    return int(entropy.generate_state(1, np.uint32)[0])


@dataclass(frozen=True)
class StepsForecaster:
    """The pysteps STEPS ensemble in dBR (threshold 0.1 mm h-1), back-transformed to mm h-1.

    Settings follow the pysteps STEPS example: 6 cascade levels, non-parametric noise, velocity
    perturbations ("bps", when the grid spacing is known), incremental masking, Lucas-Kanade motion of
    the last ``context`` frames. Only rain-rate variables (mm h-1) are accepted.

    Exception to the Forecaster contract: STEPS seeds the *whole* ensemble from one seed (derived from
    ``(seed, init_time)`` by :func:`steps_seed`) and draws members in parallel streams of one generator,
    so asking for 2 members does not return the first 2 of 8. The numbers are reproducible for a given
    ``(seed, init_time, n_members)``.
    """

    context: int = 3
    cascade_levels: int = 6

    def __call__(
        self, inputs: Fields, *, init_time: str | None, lead_times: int, n_members: int, seed: int
    ) -> xr.Dataset:
        for spec in inputs.variables:
            if not _is_rain_rate(spec):
                raise InputError(
                    f"baseline 'steps' forecasts rain rates (mm h-1); {spec.name!r} is in {spec.units!r}"
                )
        if n_members < 1 or lead_times < 1:
            raise InputError(f"need at least one lead time and one member (got {lead_times}, {n_members})")
        ps = _pysteps("steps")
        idx, frames, coverage = _context_values(inputs, init_time, self.context)
        pseed = steps_seed(seed, inputs.times[idx])
        km = grid_spacing_km(inputs)
        minutes = pd.Timedelta(inputs.time_step).total_seconds() / 60.0
        out = np.empty((n_members, lead_times, *frames.shape[1:]), np.float32)
        for c in range(frames.shape[1]):
            db = to_db(ps, frames[:, c])
            velocity = ps.motion(db)
            with contextlib.redirect_stdout(_stdio.StringIO()):  # STEPS prints its set-up and progress
                members = ps.steps(
                    db,
                    velocity,
                    lead_times,
                    n_ens_members=n_members,
                    n_cascade_levels=self.cascade_levels,
                    precip_thr=10.0 * np.log10(RAIN_THRESHOLD),
                    kmperpixel=km,
                    timestep=minutes,
                    noise_method="nonparametric",
                    vel_pert_method="bps" if km is not None else None,
                    mask_method="incremental",
                    seed=pseed,
                )
            rain = _from_db(ps, np.asarray(members, dtype=np.float64))
            # Pixels advected in from outside the grid come back non-finite: no rain entered there.
            out[:, :, c] = np.where(np.isfinite(rain), rain, 0.0)
        out[..., ~coverage] = np.nan
        prov = _provenance(
            "steps",
            inputs,
            idx,
            self.context,
            method="pysteps STEPS in dBR (threshold 0.1 mm h-1), nonparametric noise, incremental mask",
            cascade_levels=self.cascade_levels,
            seed=seed,
            rng_scheme="one pysteps seed per ensemble from numpy SeedSequence([seed, init_time_seconds])",
            kmperpixel=km if km is not None else "unknown (no velocity perturbation)",
        )
        return forecast_dataset(inputs, out, idx, prov)


class DiurnalForecaster:
    """Persistence plus the mean diurnal change (one member), a reference for hourly weather fields.

    From a training ``record``, the mean change of each grid cell from one time of day to the next
    (over every pair of consecutive frames, per slot of the day ending at the later frame); a forecast
    is the last frame plus the sum of the mean changes from the init time to each lead time. It knows
    the sun's cycle at every cell, which persistence does not, and nothing of the weather.

    Parameters
    ----------
    record : Fields
        The training period (the same variables as the inputs); its time step must divide a day.
    """

    context = 1

    def __init__(self, record: Fields) -> None:
        self.record = record
        self.step_seconds = diurnal.step_seconds(record)
        self._mean: np.ndarray | None = None

    def mean_change(self) -> np.ndarray:
        """float64 ``(slots, C, H, W)``: mean change into each slot of the day, in the variables' units."""
        if self._mean is None:
            self._mean = diurnal.mean_change(self.record, lambda v: denormalize(v, self.record.variables))
        return self._mean

    def __call__(
        self, inputs: Fields, *, init_time: str | None, lead_times: int, n_members: int = 1, seed: int = 0
    ) -> xr.Dataset:
        idx, last, coverage = _context_values(inputs, init_time, 1)
        mean = self.mean_change()
        if mean.shape[1:] != (len(inputs.variables), *inputs.shape):
            raise InputError(
                f"baseline 'diurnal': record {self.record.source} has grid {self.record.shape}, "
                f"inputs {inputs.shape}"
            )
        times = inputs.times[idx] + np.arange(lead_times + 1) * np.timedelta64(self.step_seconds, "s")
        out = (last[-1][None] + diurnal.path(mean, times, 0)[1:]).astype(np.float32)[None]
        out[..., ~coverage] = np.nan
        prov = _provenance(
            "diurnal",
            inputs,
            idx,
            1,
            method="persistence plus the mean change by time of day, per grid cell",
            record=f"{self.record.source}: {self.record.times[0]} .. {self.record.times[-1]}",
        )
        return forecast_dataset(inputs, out, idx, prov)


def make_baseline(name: str, record: Fields | None = None) -> Forecaster:
    """A baseline forecaster by name (:data:`BASELINES`); ``diurnal`` learns from the training ``record``."""
    key = name.strip().lower()
    if key == "persistence":
        return PersistenceForecaster()
    if key == "extrapolation":
        return ExtrapolationForecaster()
    if key == "steps":
        return StepsForecaster()
    if key == "diurnal":
        if record is None:
            raise InputError("baseline 'diurnal' needs a training record before the held-out period")
        return DiurnalForecaster(record)
    raise InputError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


__all__ = [
    "BASELINES",
    "DiurnalForecaster",
    "ExtrapolationForecaster",
    "StepsForecaster",
    "grid_spacing_km",
    "make_baseline",
    "steps_seed",
]
