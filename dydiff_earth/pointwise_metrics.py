"""Point-by-point verification of ensemble forecasts on xarray, and the conventions every metric shares.

Owns the shared plumbing (dim checks, exact alignment, masking, reduction, ``n_points``) and the scores
computed at each point and then averaged: fair and plain CRPS, spread-skill, rank histogram, RMSE, MAE and
bias of the ensemble mean, Brier score and reliability of the exceedance probability. Scores of spatial
structure (pooled categorical scores, FSS, power spectra) and ``score_all`` live in
:mod:`dydiff_earth.metrics`, which re-exports everything here: import metrics from there.

Each metric is a small frozen dataclass with ``compute(forecast, truth) -> xr.Dataset``, the shape of
google-research/weatherbench2 ``metrics.py``. Where the ``scores`` library offers the score we call it
(CRPS, RMSE, MAE, mean error, Brier score, contingency-table scores); the rest is written here and tested
against brute force.

Conventions shared by every metric (here and in :mod:`dydiff_earth.metrics`):

- ``forecast`` has dims ``(ensemble_dim, [init_time], lead_time, y, x)``; ``truth`` the same minus
  ``ensemble_dim``. The spatial dims are the last two dims of ``truth``.
- Masking: a point is verified when the truth is finite *and* every member is finite there. A NaN in the
  truth masks the point for every score; a NaN in any member at a point with finite truth masks the point
  too (a partial ensemble is not scored, as ``scores.probability.rank_histogram`` does).
- Reduction: every dim except ``lead_time`` (and the metric's own dims: ``threshold``, ``pool``,
  ``scale``, ``rank``, ``bin``, ``wavenumber``) is averaged over, i.e. over init times and space.
  ``n_points`` counts the verified points per lead time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import xarray as xr
from scores.continuous import mae, mean_error, mse, rmse
from scores.probability import brier_score_for_ensemble, crps_for_ensemble

from dydiff_earth.schema import LEAD_TIME, MEMBER, THRESHOLD

RANK = "rank"
BIN = "bin"
N_POINTS = "n_points"


class Metric(Protocol):
    """What every metric offers: ``compute(forecast, truth) -> xr.Dataset``."""

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset: ...


# --------------------------------------------------------------------------------------------------------
# Shared plumbing (also used by the spatial scores in metrics.py)
# --------------------------------------------------------------------------------------------------------


def align_and_mask(
    forecast: xr.DataArray, truth: xr.DataArray, ensemble_dim: str
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Check dims, align exactly and mask: returns ``(forecast, truth, valid)`` with NaN where not valid."""
    if ensemble_dim not in forecast.dims:
        raise ValueError(f"forecast has no {ensemble_dim!r} dim; its dims are {forecast.dims}")
    if ensemble_dim in truth.dims:
        raise ValueError(f"truth must not have the ensemble dim {ensemble_dim!r}")
    if set(forecast.dims) - {ensemble_dim} != set(truth.dims):
        raise ValueError(
            f"forecast dims {forecast.dims} do not match truth dims {truth.dims} plus a member dim"
        )
    if truth.ndim < 2:
        raise ValueError(f"truth needs two spatial dims last; its dims are {truth.dims}")
    forecast = forecast.transpose(ensemble_dim, *truth.dims)
    # join="exact": a lead time or grid mismatch is an error, never a silent intersection.
    forecast, truth = xr.align(forecast, truth, join="exact")
    valid = truth.notnull() & forecast.notnull().all(ensemble_dim)
    return forecast.where(valid), truth.where(valid), valid


def _reduce_dims(truth: xr.DataArray) -> list[str]:
    """Every dim of ``truth`` except ``lead_time``: init times and space."""
    return [str(d) for d in truth.dims if d != LEAD_TIME]


def finish(variables: Mapping[str, xr.DataArray], valid: xr.DataArray) -> xr.Dataset:
    """Bundle scores with ``n_points`` (verified points per lead time), lead time first."""
    n_points = valid.sum(_reduce_dims(valid)).astype(np.int64)
    n_points.attrs = {"long_name": "number of verified points", "units": "1"}
    ds = xr.Dataset({**variables, N_POINTS: n_points})
    return ds.transpose(LEAD_TIME, THRESHOLD, ..., missing_dims="ignore")


def _kept(name: str, long_name: str, keep: tuple[str, ...]) -> tuple[str, str]:
    """A score's variable and long name with the dims it keeps: ``crps_fair_by_init_time``."""
    return (
        name + "".join(f"_by_{d}" for d in keep),
        long_name + "".join(f" per {d.replace('_', ' ')}" for d in keep),
    )


def named(da: xr.DataArray, long_name: str, units: str) -> xr.DataArray:
    """A shallow copy of ``da`` whose attrs are exactly ``long_name`` and ``units``."""
    da = da.copy(deep=False)
    da.attrs = {"long_name": long_name, "units": units}
    return da


def truth_units(truth: xr.DataArray) -> str:
    """The truth's ``units`` attribute, ``"1"`` when it has none."""
    return str(truth.attrs.get("units", "1"))


def check_thresholds(values: Sequence[float]) -> tuple[float, ...]:
    """``values`` as a tuple of floats; raises ``ValueError`` unless non-empty and strictly increasing."""
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError("give at least one threshold")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"thresholds must increase strictly; got {out}")
    return out


def threshold_coord(thresholds: Sequence[float]) -> xr.DataArray:
    """The thresholds as a ``threshold`` coordinate, to broadcast comparisons against."""
    return xr.DataArray(list(thresholds), dims=THRESHOLD, coords={THRESHOLD: list(thresholds)})


def exceedance_probability(
    forecast: xr.DataArray, thresholds: xr.DataArray, ensemble_dim: str
) -> xr.DataArray:
    """Fraction of members ``>= threshold`` (NaN where ``forecast`` is masked), dims ``threshold, ...``."""
    valid = forecast.notnull().all(ensemble_dim)
    return (forecast >= thresholds).mean(ensemble_dim).where(valid)


# --------------------------------------------------------------------------------------------------------
# Scores of the whole ensemble
# --------------------------------------------------------------------------------------------------------


def _sum_abs_differences(x: np.ndarray) -> np.ndarray:
    """``sum_ij |x_i - x_j|`` over ordered pairs along the last axis, in O(M log M): sorted, the k-th of
    M values (from 0) is above k others and below M - 1 - k, so it counts ``2 (2k - M + 1)`` times."""
    m = x.shape[-1]
    return 2.0 * (np.sort(x, axis=-1) * (2.0 * np.arange(m) - m + 1.0)).sum(-1)


def _cross_group_spread(members: np.ndarray, group_size: int) -> np.ndarray:
    """``sum |X_i - X_j| / (2 K)`` over the K ordered pairs of members in different consecutive groups of
    ``group_size`` (members on the last axis): all pairs less the pairs within each group."""
    m = members.shape[-1]
    starts = range(0, m, group_size)
    pairs = m * m - sum(min(group_size, m - s) ** 2 for s in starts)
    total = _sum_abs_differences(members)
    for s in starts:
        total -= _sum_abs_differences(members[..., s : s + group_size])
    return total / (2.0 * pairs) if pairs else np.full(total.shape, np.nan)


@dataclass(frozen=True)
class CRPS:
    """Ensemble CRPS, ``mean_i |X_i - y| - sum_ij |X_i - X_j| / (2 K)`` (Gneiting & Raftery 2007).

    ``fair=True``: K = M (M - 1), the fair CRPS of Ferro (2014), unbiased for the CRPS of the distribution
    the members are drawn from; with one member it reduces to the MAE. ``fair=False``: K = M^2, the CRPS of
    the empirical CDF of the members. Variable ``crps_fair`` or ``crps`` (truth units), dims ``lead_time``.
    Computed by ``scores.probability.crps_for_ensemble``.

    ``group_size`` (fair only): members were made dependent in consecutive groups of this size (spread
    inflation about each group's mean, :mod:`dydiff_earth.inflation`), so a pair within a group differs
    more than two independent draws would and the fair CRPS above is optimistic. The spread term then
    takes only the K pairs from different groups, which are independent: unbiased again, NaN with one
    group. ``group_size=1`` is the plain fair CRPS.

    ``keep`` names dims not averaged over, e.g. ``("init_time",)`` for one score per case (what a
    bootstrap over cases resamples); the variable is then ``crps_fair_by_init_time``.
    """

    fair: bool = True
    ensemble_dim: str = MEMBER
    keep: tuple[str, ...] = ()
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.group_size is not None and (not self.fair or self.group_size < 1):
            raise ValueError(f"group_size needs fair=True and at least 1, got {self.group_size}")

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        reduce = [d for d in _reduce_dims(y) if d not in self.keep]
        name, long_name = ("crps_fair", "fair ensemble CRPS") if self.fair else ("crps", "ensemble CRPS")
        name, long_name = _kept(name, long_name, self.keep)
        if self.group_size is None:
            # With one member the fair spread term is 0/0 in scores; both forms reduce to |X - y| there.
            method = "fair" if self.fair and fc.sizes[self.ensemble_dim] > 1 else "ecdf"
            crps = crps_for_ensemble(fc, y, self.ensemble_dim, method=method, reduce_dims=reduce)
        else:
            spread = xr.apply_ufunc(
                _cross_group_spread,
                fc,
                kwargs={"group_size": self.group_size},
                input_core_dims=[[self.ensemble_dim]],
            )
            crps = (abs(fc - y).mean(self.ensemble_dim, skipna=False) - spread).mean(reduce)
            long_name += f" (pairs of members from different groups of {self.group_size})"
        return finish({name: named(crps, long_name, truth_units(truth))}, valid)


@dataclass(frozen=True)
class SpreadSkill:
    """Spread and spread-skill ratio of the ensemble (Fortin et al. 2014).

    ``spread = sqrt(mean var_members)`` with the unbiased (ddof=1) member variance, and
    ``ssr = sqrt((M + 1) / M) * spread / rmse(ensemble mean)``; the factor corrects for the finite
    ensemble, so a calibrated ensemble of any size has ssr close to 1. Variables ``spread`` (truth units)
    and ``ssr``, dims ``lead_time``. Needs M >= 2 (NaN otherwise).
    """

    ensemble_dim: str = MEMBER

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        reduce = _reduce_dims(y)
        m = fc.sizes[self.ensemble_dim]
        # Masked points have all members NaN, so skipna=False changes nothing but avoids empty-slice warnings.
        variance = fc.var(self.ensemble_dim, ddof=1, skipna=False) if m > 1 else xr.full_like(y, np.nan)
        spread = variance.mean(reduce) ** 0.5
        skill = rmse(fc.mean(self.ensemble_dim, skipna=False), y, reduce_dims=reduce)
        ssr = np.sqrt((m + 1) / m) * spread / skill
        return finish(
            {
                "spread": named(spread, "ensemble spread (root mean member variance)", truth_units(truth)),
                "ssr": named(ssr, "spread-skill ratio with finite-ensemble correction", "1"),
            },
            valid,
        )


@dataclass(frozen=True)
class RankHistogram:
    """Rank histogram (Talagrand diagram; Hamill 2001) of the truth among the members.

    The rank of the truth is the number of members below it (0..M); ties with members are broken uniformly
    at random with ``numpy.random.default_rng(seed)``, so a calibrated ensemble gives a flat histogram even
    for discrete fields such as rain with many zeros. Variables ``rank_histogram`` (normalised frequency)
    and ``rank_count``, dims ``lead_time, rank``.
    """

    seed: int = 0
    ensemble_dim: str = MEMBER

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        m = fc.sizes[self.ensemble_dim]
        below = (fc < y).sum(self.ensemble_dim)
        ties = (fc == y).sum(self.ensemble_dim)
        u = xr.DataArray(np.random.default_rng(self.seed).random(ties.shape), dims=ties.dims)
        rank = (below + np.floor(u * (ties + 1))).where(valid)
        ranks = xr.DataArray(np.arange(m + 1), dims=RANK, coords={RANK: np.arange(m + 1)})
        count = (rank == ranks).sum(_reduce_dims(y)).astype(np.int64)
        frequency = count / count.sum(RANK)
        return finish(
            {
                "rank_histogram": named(frequency, "rank histogram (relative frequency)", "1"),
                "rank_count": named(count, "rank histogram (count)", "1"),
            },
            valid,
        )


# --------------------------------------------------------------------------------------------------------
# Scores of the ensemble mean
# --------------------------------------------------------------------------------------------------------


def _ensemble_mean_score(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    ensemble_dim: str,
    score: Callable[..., xr.DataArray],
    name: str,
    long_name: str,
) -> xr.Dataset:
    fc, y, valid = align_and_mask(forecast, truth, ensemble_dim)
    value = score(fc.mean(ensemble_dim, skipna=False), y, reduce_dims=_reduce_dims(y))
    return finish({name: named(value, long_name, truth_units(truth))}, valid)


@dataclass(frozen=True)
class RMSE:
    """Root mean squared error of the ensemble mean (``scores.continuous.rmse``); variable ``rmse``."""

    ensemble_dim: str = MEMBER

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        return _ensemble_mean_score(
            forecast, truth, self.ensemble_dim, rmse, "rmse", "RMSE of the ensemble mean"
        )


@dataclass(frozen=True)
class MSE:
    """Mean squared error of the ensemble mean (``scores.continuous.mse``); variable ``mse``.

    ``keep`` as in :class:`CRPS`: ``("init_time",)`` gives ``mse_by_init_time``, one score per case, from
    which a bootstrap over cases forms the RMSE of each resample (the root of its mean).
    """

    ensemble_dim: str = MEMBER
    keep: tuple[str, ...] = ()

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        reduce = [d for d in _reduce_dims(y) if d not in self.keep]
        value = mse(fc.mean(self.ensemble_dim, skipna=False), y, reduce_dims=reduce)
        name, long_name = _kept("mse", "MSE of the ensemble mean", self.keep)
        return finish({name: named(value, long_name, f"({truth_units(truth)})2")}, valid)


@dataclass(frozen=True)
class MAE:
    """Mean absolute error of the ensemble mean (``scores.continuous.mae``); variable ``mae``."""

    ensemble_dim: str = MEMBER

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        return _ensemble_mean_score(
            forecast, truth, self.ensemble_dim, mae, "mae", "MAE of the ensemble mean"
        )


@dataclass(frozen=True)
class Bias:
    """Mean error (forecast - truth) of the ensemble mean (``scores.continuous.mean_error``); ``bias``."""

    ensemble_dim: str = MEMBER

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        return _ensemble_mean_score(
            forecast, truth, self.ensemble_dim, mean_error, "bias", "mean error of the ensemble mean"
        )


# --------------------------------------------------------------------------------------------------------
# Probability of exceeding a threshold
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Brier:
    """Brier score (Brier 1950) of the ensemble exceedance probability (fraction of members ``>=``).

    The plain (not fair) score of the probability the ensemble issues, from
    ``scores.probability.brier_score_for_ensemble(fair_correction=False)``. Variable ``brier``, dims
    ``lead_time, threshold``.
    """

    thresholds: Sequence[float]
    ensemble_dim: str = MEMBER

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        brier = brier_score_for_ensemble(
            fc,
            y,
            self.ensemble_dim,
            list(self.thresholds),
            reduce_dims=_reduce_dims(y),
            fair_correction=False,
        )
        return finish({"brier": named(brier, "Brier score of the exceedance probability", "1")}, valid)


@dataclass(frozen=True)
class Reliability:
    """Reliability diagram data for the ensemble exceedance probability.

    Probabilities fall in ``bins`` equal bins of [0, 1], left-closed, the last also right-closed; the
    ``bin`` coordinate is the bin centre. Variables ``reliability_forecast_probability`` (mean forecast
    probability in the bin), ``reliability_observed_frequency`` and ``reliability_count`` (points), dims
    ``lead_time, threshold, bin``; empty bins are NaN with count 0.
    """

    thresholds: Sequence[float]
    bins: int = 10
    ensemble_dim: str = MEMBER

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        if self.bins < 1:
            raise ValueError(f"bins must be positive; got {self.bins}")

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        reduce = _reduce_dims(y)
        thresholds = threshold_coord(self.thresholds)
        probability = exceedance_probability(fc, thresholds, self.ensemble_dim)
        events = (y >= thresholds).where(valid)
        # The 1e-9 keeps k/M that land on a bin edge in the bin above despite rounding (0.3 * 10 = 2.99..).
        index = np.clip(np.floor(probability * self.bins + 1e-9), 0, self.bins - 1)
        centres = (np.arange(self.bins) + 0.5) / self.bins
        bins = xr.DataArray(np.arange(self.bins), dims=BIN, coords={BIN: centres})
        in_bin = index == bins
        return finish(
            {
                "reliability_forecast_probability": named(
                    probability.where(in_bin).mean(reduce), "mean forecast probability in bin", "1"
                ),
                "reliability_observed_frequency": named(
                    events.where(in_bin).mean(reduce), "observed relative frequency in bin", "1"
                ),
                "reliability_count": named(in_bin.sum(reduce).astype(np.int64), "points in bin", "1"),
            },
            valid,
        )
