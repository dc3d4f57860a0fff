"""Verification metrics for ensemble forecasts on xarray (no torch here): the module to import.

Owns the scores of spatial structure (contingency-table scores of the ensemble mean and of the
probability-matched mean after max-pooling or at each pool's scale, the fractions skill score, radially
averaged power spectra), the default suite ``score_all`` and ``combine_systems``. The point-by-point
scores (CRPS, spread-skill, rank histogram, RMSE, MAE, bias, Brier, reliability) and the conventions every
metric shares (masking, reduction, ``n_points``; see that module's docstring) live in
:mod:`dydiff_earth.pointwise_metrics` and are re-exported here.

Each metric is a small frozen dataclass with ``compute(forecast, truth) -> xr.Dataset``, the shape of
google-research/weatherbench2 ``metrics.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scores.categorical import BinaryContingencyManager

from dydiff_earth.pointwise_metrics import (
    BIN,
    CRPS,
    MAE,
    MSE,
    N_POINTS,
    RANK,
    RMSE,
    Bias,
    Brier,
    Metric,
    RankHistogram,
    Reliability,
    SpreadSkill,
    align_and_mask,
    check_thresholds,
    exceedance_probability,
    finish,
    named,
    threshold_coord,
    truth_units,
)
from dydiff_earth.probmatch import matched_mean
from dydiff_earth.schema import INIT_TIME, LEAD_TIME, MEMBER, SYSTEM, THRESHOLD

# The point-by-point metrics moved to pointwise_metrics.py; they stay importable from here.
__all__ = [
    "BIN",
    "CRPS",
    "FSS",
    "MAE",
    "MSE",
    "N_POINTS",
    "POOL",
    "RANK",
    "REFERENCES",
    "RMSE",
    "SCALE",
    "SUMMARIES",
    "WAVENUMBER",
    "Bias",
    "Brier",
    "Categorical",
    "Metric",
    "PowerSpectrum",
    "RankHistogram",
    "Reliability",
    "SpreadSkill",
    "combine_systems",
    "default_metrics",
    "score_all",
]

POOL = "pool"
SCALE = "scale"
WAVENUMBER = "wavenumber"

REFERENCES = (
    "Ferro (2014) Fair scores for ensemble forecasts, QJRMS 140:1917, doi:10.1002/qj.2270; "
    "Gneiting & Raftery (2007) Strictly proper scoring rules, JASA 102:359; "
    "Fortin et al. (2014) Why should ensemble spread match the RMSE of the ensemble mean?, "
    "J. Hydrometeor. 15:1708, doi:10.1175/JHM-D-14-0008.1; "
    "Hamill (2001) Interpretation of rank histograms, MWR 129:550; "
    "Ebert (2001) Ability of a poor man's ensemble to predict the probability and distribution of "
    "precipitation, MWR 129:2461, doi:10.1175/1520-0493(2001)129<2461:AOAPMS>2.0.CO;2; "
    "Roberts & Lean (2008) Scale-selective verification of rainfall accumulations, MWR 136:78, "
    "doi:10.1175/2007MWR2123.1; Brier (1950) MWR 78:1; "
    "Ravuri et al. (2021) Skilful precipitation nowcasting using deep generative models of radar "
    "(DGMR), Nature 597:672; Leeuwenburgh et al. (2024) scores: a Python package for verifying and "
    "evaluating models and predictions with xarray, JOSS 9(99):6889"
)


# --------------------------------------------------------------------------------------------------------
# Threshold scores over neighbourhoods
# --------------------------------------------------------------------------------------------------------


def _spatial_dims(truth: xr.DataArray) -> tuple[str, str]:
    y, x = truth.dims[-2:]
    return str(y), str(x)


def _max_pool(events: xr.DataArray, pool: int, spatial: tuple[str, str]) -> xr.DataArray:
    """Max over non-overlapping ``pool x pool`` windows (remainder dropped); a NaN in a window gives NaN."""
    if pool == 1:
        return events
    if min(events.sizes[d] for d in spatial) < pool:
        raise ValueError(f"pool {pool} is larger than the grid {[events.sizes[d] for d in spatial]}")
    return events.coarsen({d: pool for d in spatial}, boundary="trim").reduce(np.max)


#: The deterministic summaries of an ensemble that :class:`Categorical` scores, and their variables' prefixes:
#: the ensemble mean; the probability-matched mean (:func:`dydiff_earth.probmatch.matched_mean`) of the
#: members, then max-pooled; and the matched mean of the members max-pooled first (at each pool's scale).
SUMMARIES = {"mean": "", "matched_mean": "matched_", "pooled_matched_mean": "pooled_matched_"}


@dataclass(frozen=True)
class Categorical:
    """Contingency-table scores of the ensemble mean at thresholds, pixelwise and max-pooled.

    Events are exceedances ``>= threshold`` of the *ensemble mean* and of the truth, the convention of the
    nowcasting literature for ensembles (e.g. Ravuri et al. 2021, DGMR); note the ensemble mean is smoother
    than any member, so its CSI favours blurry forecasts and misses heavy rain. ``summary="matched_mean"``
    scores the probability-matched mean instead (Ebert 2001: the mean's pattern, the members' amounts).
    Scores are computed pixelwise (pool 1) and after max-pooling the binary fields over non-overlapping
    ``pool x pool`` windows (DGMR); a window holding a masked point is masked. Counts are summed over init
    times and space before the ratios are taken (``scores.categorical.BinaryContingencyManager``).
    Variables ``csi``, ``pod``, ``far``, ``frequency_bias``, ``ets`` (``matched_csi``, ... for the matched
    mean, ``pooled_matched_csi``, ... for it at each pool's scale), dims ``lead_time, threshold, pool``.

    ``summary="pooled_matched_mean"`` matches at the scale scored: each member is max-pooled first (its
    heaviest value in each window: the question a pooled score asks, of every member), then the matched
    mean is taken of the pooled members. The pixel matched mean gathers its heaviest amounts into compact
    cores where the smooth mean peaks, so after pooling it claims fewer windows than any member does
    (its pooled frequency bias falls below the members'); matched at the pool's scale, the summary has
    the members' own frequency of pooled events, placed where their windows agree. At pool 1 the two are
    the same. For a one-member system (a deterministic baseline) all three summaries are the member.
    """

    thresholds: Sequence[float]
    pools: Sequence[int] = (1, 4, 16)
    ensemble_dim: str = MEMBER
    summary: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        object.__setattr__(self, "pools", tuple(int(p) for p in self.pools))
        if not self.pools or min(self.pools) < 1:
            raise ValueError(f"pools must be positive integers; got {self.pools}")
        if self.summary not in SUMMARIES:
            raise ValueError(f"summary must be one of {sorted(SUMMARIES)}; got {self.summary!r}")

    def _matched(self, fc: xr.DataArray, spatial: tuple[str, str]) -> xr.DataArray:
        ordered = fc.transpose(self.ensemble_dim, ..., *spatial)
        return ordered.isel({self.ensemble_dim: 0}, drop=True).copy(data=matched_mean(ordered.values))

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        spatial = _spatial_dims(y)
        thresholds = threshold_coord(self.thresholds)
        pixel_events = None  # the summary's events before pooling; matched at each pool's scale: none
        if self.summary == "mean":
            pixel_events = (fc.mean(self.ensemble_dim, skipna=False) >= thresholds).where(valid)
        elif self.summary == "matched_mean":
            pixel_events = (self._matched(fc, spatial) >= thresholds).where(valid)
        truth_events = (y >= thresholds).where(valid)
        per_pool = []
        for pool in self.pools:
            if pixel_events is None:
                # fc is NaN wherever not valid, so a window holding a masked point pools to NaN.
                pooled = self._matched(_max_pool(fc, pool, spatial), spatial)
                f = (pooled >= thresholds).where(pooled.notnull())
            else:
                f = _max_pool(pixel_events, pool, spatial)
            o = _max_pool(truth_events, pool, spatial)
            reduce = [d for d in f.dims if d not in (LEAD_TIME, THRESHOLD)]
            table = BinaryContingencyManager(f, o).transform(reduce_dims=reduce)
            per_pool.append(
                xr.Dataset(
                    {
                        "csi": named(table.critical_success_index(), "critical success index", "1"),
                        "pod": named(table.probability_of_detection(), "probability of detection", "1"),
                        "far": named(table.false_alarm_ratio(), "false alarm ratio", "1"),
                        "frequency_bias": named(table.frequency_bias(), "frequency bias", "1"),
                        "ets": named(table.equitable_threat_score(), "equitable threat score", "1"),
                    }
                )
            )
        pools = pd.Index(list(self.pools), name=POOL)
        scores = xr.concat(
            per_pool, dim=pools, data_vars="all", coords="different", compat="equals", join="exact"
        )
        prefix = SUMMARIES[self.summary]
        return finish({prefix + str(k): v for k, v in scores.data_vars.items()}, valid)


def _box_sum(a: np.ndarray, n: int) -> np.ndarray:
    """Sums over every ``n x n`` window lying wholly inside the last two axes (summed-area table)."""
    c = np.cumsum(np.cumsum(a, axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    return c[..., n:, n:] - c[..., :-n, n:] - c[..., n:, :-n] + c[..., :-n, :-n]


def _neighbourhood_fraction(a: xr.DataArray, count: xr.DataArray, n: int, spatial: tuple[str, str]):
    """Mean of ``a`` over the valid points of each ``n x n`` window; NaN where a window has none."""
    total = xr.apply_ufunc(
        _box_sum,
        a.fillna(0.0),
        input_core_dims=[list(spatial)],
        output_core_dims=[["window_y", "window_x"]],
        exclude_dims=set(spatial),
        kwargs={"n": n},
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={
            "allow_rechunk": True,
            "output_sizes": {
                "window_y": a.sizes[spatial[0]] - n + 1,
                "window_x": a.sizes[spatial[1]] - n + 1,
            },
        },
    )
    return total / count.where(count > 0)


@dataclass(frozen=True)
class FSS:
    """Fractions skill score (Roberts & Lean 2008) of the ensemble exceedance probability.

    The forecast field is the fraction of members ``>= threshold`` at each point (the ensemble
    probability, standard for ensembles; with one member it is the binary field of Roberts & Lean), the
    truth field its binary exceedance. Both are averaged over every ``n x n`` window lying inside the grid
    (no padding, like ``scores.spatial.fss_2d``); masked points are left out of a window's mean, and a
    window with no valid point is dropped. ``FSS = 1 - sum (P_f - P_o)^2 / sum (P_f^2 + P_o^2)`` with sums
    over windows, init times and space (the aggregation of Roberts & Lean and ``scores``); NaN when no
    event is forecast nor observed. Variable ``fss``, dims ``lead_time, threshold, scale`` (window side in
    grid points).
    """

    thresholds: Sequence[float]
    windows: Sequence[int] = (5,)
    ensemble_dim: str = MEMBER

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
        if not self.windows or min(self.windows) < 1:
            raise ValueError(f"windows must be positive integers; got {self.windows}")

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        spatial = _spatial_dims(y)
        thresholds = threshold_coord(self.thresholds)
        probability = exceedance_probability(fc, thresholds, self.ensemble_dim)
        events = (y >= thresholds).where(valid)
        per_scale = []
        for n in self.windows:
            if min(y.sizes[d] for d in spatial) < n:
                raise ValueError(f"FSS window {n} is larger than the grid {[y.sizes[d] for d in spatial]}")
            count = _neighbourhood_fraction(valid.astype(float), xr.DataArray(1.0), n, spatial)
            pf = _neighbourhood_fraction(probability, count, n, spatial)
            po = _neighbourhood_fraction(events, count, n, spatial)
            reduce = [d for d in pf.dims if d not in (LEAD_TIME, THRESHOLD)]
            reference = (pf**2 + po**2).sum(reduce)
            per_scale.append(1.0 - ((pf - po) ** 2).sum(reduce) / reference.where(reference > 0))
        fss = xr.concat(
            per_scale, dim=pd.Index(list(self.windows), name=SCALE), coords="minimal", join="exact"
        )
        return finish({"fss": named(fss, "fractions skill score", "1")}, valid)


def _lone_points(events: np.ndarray, max_neighbours: int) -> np.ndarray:
    """Event points with at most ``max_neighbours`` events among their 8 neighbours (last two axes)."""
    counts = events.astype(np.int32)
    padded = np.pad(counts, [(0, 0)] * (events.ndim - 2) + [(1, 1), (1, 1)])
    return events & (_box_sum(padded, 3) - counts <= max_neighbours)


@dataclass(frozen=True)
class Isolated:
    """Speckle at the grid scale: the share of event points (``>= threshold``) that stand nearly alone.

    A point counts as lone when at most ``max_neighbours`` of its 8 neighbours are events too. Rain comes
    in patches, so few of its wet points are lone (the MeteoSwiss composite at 4 km, 0.5 mm h-1: about
    4 %); members of speckle have many. Power spectra at 16 km and more do not see this. Masked points
    count as no event, in the members and the truth alike. Counts are summed over members, init times and
    space before the ratio is taken. Variables ``isolated_forecast`` and ``isolated_truth``, dims
    ``lead_time, threshold``; NaN where no point reaches the threshold.
    """

    thresholds: Sequence[float]
    max_neighbours: int = 2
    ensemble_dim: str = MEMBER

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        if not 0 <= self.max_neighbours < 8:
            raise ValueError(f"max_neighbours must be 0 to 7; got {self.max_neighbours}")

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        spatial = _spatial_dims(y)
        thresholds = threshold_coord(self.thresholds)
        shares = {}
        for name, source in (("isolated_forecast", fc), ("isolated_truth", y)):
            events = source >= thresholds  # NaN compares False: masked points are no events
            lone = xr.apply_ufunc(
                _lone_points,
                events,
                input_core_dims=[list(spatial)],
                output_core_dims=[list(spatial)],
                kwargs={"max_neighbours": self.max_neighbours},
                dask="parallelized",
                output_dtypes=[bool],
            )
            reduce = [d for d in events.dims if d not in (LEAD_TIME, THRESHOLD)]
            total = events.sum(reduce)
            shares[name] = named(
                lone.sum(reduce) / total.where(total > 0),
                f"share of {name[9:]} event points with at most {self.max_neighbours} event neighbours",
                "1",
            )
        return finish(shares, valid)


# --------------------------------------------------------------------------------------------------------
# Spectra
# --------------------------------------------------------------------------------------------------------


def _radial_power(a: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum over the last two axes, wavenumbers 1..max(ny, nx) // 2.

    Power is ``|FFT|^2 / (ny nx)`` (so white noise of variance s^2 has power s^2 at every wavenumber),
    averaged over each annulus ``round(|k|) = const`` with k in cycles per domain of the longer side.
    """
    ny, nx = a.shape[-2:]
    n = max(ny, nx)
    power = np.abs(np.fft.fft2(a)) ** 2 / (ny * nx)
    k = np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(ny) * n, np.fft.fftfreq(nx) * n, indexing="ij")))
    k = k.astype(int).ravel()
    keep = np.flatnonzero((k >= 1) & (k <= n // 2))
    order = keep[np.argsort(k[keep], kind="stable")]
    counts = np.bincount(k[order], minlength=n // 2 + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(power.reshape(*power.shape[:-2], -1)[..., order], starts, axis=-1)
    return sums / counts


def _power_spectrum(field: xr.DataArray, spatial: tuple[str, str]) -> xr.DataArray:
    n = max(field.sizes[d] for d in spatial)
    wavenumber = np.arange(1, n // 2 + 1)
    power = xr.apply_ufunc(
        _radial_power,
        field,
        input_core_dims=[list(spatial)],
        output_core_dims=[[WAVENUMBER]],
        exclude_dims=set(spatial),
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"allow_rechunk": True, "output_sizes": {WAVENUMBER: n // 2}},
    )
    power = power.assign_coords({WAVENUMBER: wavenumber / n, "wavelength": (WAVENUMBER, n / wavenumber)})
    power[WAVENUMBER].attrs = {"long_name": "radial wavenumber", "units": "cycles per grid point"}
    power["wavelength"].attrs = {"long_name": "wavelength", "units": "grid points"}
    return power


@dataclass(frozen=True)
class PowerSpectrum:
    """Radially averaged power spectra of the members and of the truth, to show blurry forecasts.

    Masked points (NaN truth or member) are set to 0 in both fields before the FFT, so both spectra see
    the same gaps. Forecast power is averaged over members and init times. Variables ``power_forecast``
    and ``power_truth`` (truth units squared), dims ``lead_time, wavenumber``.
    """

    ensemble_dim: str = MEMBER

    def compute(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.Dataset:
        fc, y, valid = align_and_mask(forecast, truth, self.ensemble_dim)
        spatial = _spatial_dims(y)
        units = f"({truth_units(truth)})^2"
        power = {}
        for name, source in (("power_forecast", fc), ("power_truth", y)):
            spectrum = _power_spectrum(source.fillna(0.0), spatial)
            reduce = [d for d in spectrum.dims if d not in (LEAD_TIME, WAVENUMBER)]
            power[name] = named(spectrum.mean(reduce), f"radially averaged {name[6:]} power", units)
        return finish(power, valid)


# --------------------------------------------------------------------------------------------------------
# All scores of a forecast dataset
# --------------------------------------------------------------------------------------------------------


def default_metrics(
    *,
    thresholds: Sequence[float] = (),
    pools: Sequence[int] = (1, 4, 16),
    fss_windows: Sequence[int] = (5,),
    ensemble_dim: str = MEMBER,
    group_size: int | None = None,
) -> tuple[Metric, ...]:
    """The metrics ``score_all`` runs; threshold scores only when ``thresholds`` are given."""
    metrics: list[Metric] = [
        CRPS(fair=True, ensemble_dim=ensemble_dim, group_size=group_size),
        CRPS(fair=False, ensemble_dim=ensemble_dim),
        RMSE(ensemble_dim),
        MAE(ensemble_dim),
        Bias(ensemble_dim),
        SpreadSkill(ensemble_dim),
        RankHistogram(ensemble_dim=ensemble_dim),
        PowerSpectrum(ensemble_dim),
    ]
    if thresholds:
        metrics += [
            Categorical(thresholds, pools, ensemble_dim),
            Categorical(thresholds, pools, ensemble_dim, summary="matched_mean"),
            Categorical(thresholds, pools, ensemble_dim, summary="pooled_matched_mean"),
            FSS(thresholds, fss_windows, ensemble_dim),
            Brier(thresholds, ensemble_dim),
            Reliability(thresholds, ensemble_dim=ensemble_dim),
            Isolated(thresholds, ensemble_dim=ensemble_dim),
        ]
    return tuple(metrics)


def score_all(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    *,
    thresholds: Sequence[float] = (),
    pools: Sequence[int] = (1, 4, 16),
    fss_windows: Sequence[int] = (5,),
    ensemble_dim: str = MEMBER,
    group_size: int | None = None,
) -> xr.Dataset:
    """Every metric for every forecast variable (those with ``ensemble_dim``).

    Parameters
    ----------
    forecast : xr.Dataset
        Members, dims ``(member, [init_time], lead_time, y, x)``; variables without ``ensemble_dim``
        (``<var>_mean``, ...) are ignored.
    truth : xr.Dataset
        Same variable names, dims of the forecast minus ``ensemble_dim``.
    thresholds : sequence of float
        Event thresholds (``>=``) in the variable's units; categorical, FSS, Brier and reliability scores
        are computed only when given.
    pools, fss_windows : sequence of int
        Max-pool sizes of the categorical scores and FSS window sides, in grid points.
    ensemble_dim : str
        The member dim.
    group_size : int, optional
        Members made dependent in consecutive groups of this size (spread inflation): the fair CRPS
        takes pairs of members from different groups only (:class:`CRPS`). Default: independent members.

    Returns
    -------
    xr.Dataset
        One variable per score (``crps_fair``, ``crps``, ``rmse``, ``mae``, ``bias``, ``spread``, ``ssr``,
        ``rank_histogram``, ``rank_count``, ``power_forecast``, ``power_truth``, ``n_points`` and with
        thresholds ``csi``, ``pod``, ``far``, ``frequency_bias``, ``ets`` (and ``matched_csi``, ... of
        the probability-matched mean, ``pooled_matched_csi``, ... of it matched at each pool's scale),
        ``fss``, ``brier``,
        ``reliability_*``, ``isolated_forecast``, ``isolated_truth``),
        named ``<var>_<score>`` when the forecast holds several variables. Dims
        ``lead_time`` plus ``threshold``, ``pool``, ``scale``, ``rank``, ``bin``, ``wavenumber`` where
        they apply. With an ``init_time`` dim also ``crps_fair_by_init_time`` and ``mse_by_init_time``
        (``lead_time, init_time``): the fair CRPS and the ensemble mean's squared error of each case,
        averaged over space only.
    """
    names = [str(n) for n, v in forecast.data_vars.items() if ensemble_dim in v.dims]
    if not names:
        raise ValueError(f"forecast holds no variable with a {ensemble_dim!r} dim")
    missing = [n for n in names if n not in truth.data_vars]
    if missing:
        raise ValueError(f"truth lacks the forecast variables {missing}")
    metrics = default_metrics(
        thresholds=thresholds,
        pools=pools,
        fss_windows=fss_windows,
        ensemble_dim=ensemble_dim,
        group_size=group_size,
    )
    out: dict[str, xr.DataArray] = {}
    for name in names:
        # One fair CRPS and MSE per case too, when there are several: confidence intervals resample cases.
        cases = (
            CRPS(fair=True, ensemble_dim=ensemble_dim, keep=(INIT_TIME,), group_size=group_size),
            MSE(ensemble_dim=ensemble_dim, keep=(INIT_TIME,)),
        )
        extra = cases if INIT_TIME in truth[name].dims else ()
        # Every metric returns the same n_points, so compat="override" loses nothing.
        ds = xr.merge(
            [m.compute(forecast[name], truth[name]) for m in (*metrics, *extra)],
            compat="override",
            join="exact",
            combine_attrs="override",
        )
        prefix = f"{name}_" if len(names) > 1 else ""
        out.update({f"{prefix}{var}": ds[var] for var in ds.data_vars})
    result = xr.Dataset(out)
    result.attrs = {"references": REFERENCES, "ensemble_dim": ensemble_dim}
    return result


def combine_systems(results: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Concatenate ``score_all`` results of several systems along a ``system`` dim.

    A score that one system lacks is NaN for it (e.g. a baseline scored without thresholds).
    """
    if not results:
        raise ValueError("give at least one system")
    systems = pd.Index(list(results), name=SYSTEM)
    combined = xr.concat(
        list(results.values()),
        dim=systems,
        data_vars="all",
        coords="different",
        compat="equals",
        join="outer",
        combine_attrs="override",
    )
    return combined.transpose(SYSTEM, ...)
