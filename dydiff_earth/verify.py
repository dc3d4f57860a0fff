"""Verification workflows: score one forecast file against observations, or compare systems on a held-out
period (``skill``) with every system forecasting from the same init times.

Scores come from :mod:`dydiff_earth.metrics`; the report (:mod:`dydiff_earth.report`) only draws them.
Protocol ``radar-4km-v1`` (``shared/data/README.md``): 4 context frames, 12 lead times, an init at every
4th window start, fair CRPS averaged over the lead times, CSI max-pooled over 4 points, FSS window 5.
"""

from __future__ import annotations

import functools
import json
import math
import time as _time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from dydiff_earth import __version__, cluster, io, schema
from dydiff_earth.config import ForecastConfig
from dydiff_earth.data import Fields, VariableSpec, open_fields, window_starts
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import Forecaster
from dydiff_earth.metrics import combine_systems, score_all

#: The reference system of every skill comparison (CRPS skill score = 1 - CRPS / CRPS of persistence).
REFERENCE = "persistence"
#: Max-pool sizes of the categorical scores, before dropping those larger than the grid.
DEFAULT_POOLS = (1, 4, 16)
#: radar-4km-v1: an init time at every 4th window start, at least 4 context frames, 12 lead times.
DEFAULT_INIT_STRIDE = 4
DEFAULT_CONTEXT = 4
DEFAULT_LEAD_TIMES = 12

#: ``progress(system, forecasts_done, forecasts_total)`` after each forecast of a skill run.
SkillProgress = Callable[[str, int, int], None]


# --- truth and grids ----------------------------------------------------------------------------------------


def fitting(sizes: Sequence[int], shape: tuple[int, int]) -> tuple[int, ...]:
    """The sizes (pools, windows) no larger than the grid's shorter side; ``(1,)`` if none is."""
    kept = tuple(int(s) for s in sizes if int(s) <= min(shape))
    return kept or (1,)


def _check_grid(forecast: xr.DataArray, fields: Fields) -> None:
    """The forecast's last two dims must be the truth's spatial dims with the same size and coordinates."""
    dims = forecast.dims[-2:]
    if dims != (fields.y_dim, fields.x_dim):
        raise InputError(
            f"forecast grid dims {dims} differ from the truth's {(fields.y_dim, fields.x_dim)}; "
            "verify against the data the forecast was made from"
        )
    shape = tuple(forecast.sizes[d] for d in dims)
    if shape != fields.shape:
        raise InputError(f"forecast grid {shape} differs from the truth grid {fields.shape}")
    for dim in dims:
        if dim in forecast.coords and dim in fields.dataset.coords:
            a, b = forecast[dim].values, fields.dataset[dim].values
            if a.dtype.kind == "f" and not np.allclose(a, b, rtol=1e-6, atol=1e-9):
                raise InputError(f"forecast and truth coordinates {dim!r} differ; regrid one of them first")


def truth_like(fields: Fields, forecast: xr.DataArray) -> xr.DataArray:
    """Observed values at the forecast's valid times, dims and index coords of ``forecast`` minus member.

    ``forecast`` has dims ``(member, [init_time], lead_time, y, x)``, with ``init_time`` a dim or a scalar
    coord. Missing frames raise an ``InputError`` that names them.
    """
    _check_grid(forecast, fields)
    lead = forecast[schema.LEAD_TIME].values.astype("timedelta64[ns]")
    init = np.atleast_1d(forecast[schema.INIT_TIME].values.astype("datetime64[ns]"))
    valid = (init[:, None] + lead[None, :]).ravel()
    times = fields.times
    missing = valid[~np.isin(valid, times)]
    if missing.size:
        shown = ", ".join(str(t)[:16] for t in np.unique(missing)[:5])
        more = f" and {np.unique(missing).size - 5} more" if np.unique(missing).size > 5 else ""
        raise InputError(
            f"the truth has no frames at valid times {shown}{more}; give observations covering "
            f"{str(valid.min())[:16]} .. {str(valid.max())[:16]}"
        )
    index = np.searchsorted(times, valid)
    name = str(forecast.name)
    da = fields.dataset[name].isel({fields.time_dim: index})
    values = da.transpose(fields.time_dim, fields.y_dim, fields.x_dim).values.astype(np.float32)
    dims = [d for d in forecast.dims if d != schema.MEMBER]
    shape = tuple(forecast.sizes[d] for d in dims)
    coords = {d: forecast[d].values for d in dims if d in forecast.indexes}
    return xr.DataArray(
        values.reshape(shape), dims=dims, coords=coords, name=name, attrs=dict(fields.dataset[name].attrs)
    )


def _index_only(da: xr.DataArray) -> xr.DataArray:
    """Drop non-index coords (valid_time, lat/lon, crs): scores align on dims only."""
    return da.reset_coords(drop=True)


def write_scores(scores: xr.Dataset, path: str | Path) -> Path:
    """Write a scores dataset as NetCDF-4, published atomically; lead times in minutes."""
    final = Path(path)
    encoding = {schema.LEAD_TIME: {"units": "minutes", "dtype": "float64"}}
    with io.publish(final) as tmp:
        scores.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    return final


# --- evaluate: one forecast file ----------------------------------------------------------------------------


def _system_name(ds: xr.Dataset, path: Path) -> str:
    if "checkpoint" in ds.attrs:
        return Path(str(ds.attrs["checkpoint"])).stem
    return str(ds.attrs.get("model", path.stem))


def evaluate(
    forecast_path: str | Path,
    truth_source: str | Path | Sequence[str | Path],
    *,
    thresholds: Sequence[float] = (),
    output: str | Path | None = None,
    report_dir: str | Path | None = None,
) -> xr.Dataset:
    """Score a forecast file against observations at its valid times.

    Parameters
    ----------
    forecast_path : str or Path
        A forecast written by ``dydiff-earth forecast`` (dims ``member, lead_time, y, x``).
    truth_source : str, Path or sequence
        Observations on the forecast's grid (zarr store, NetCDF files or a glob), holding every valid time.
    thresholds : sequence of float
        Event thresholds in the variable's units (categorical scores, FSS, Brier, reliability).
    output : str or Path, optional
        Where to write the scores (NetCDF, published atomically).
    report_dir : str or Path, optional
        Where to write an HTML/Markdown report of the scores.

    Returns
    -------
    xr.Dataset
        ``metrics.score_all`` output (dims ``lead_time`` and the scores' own), attrs naming the inputs.
    """
    path = Path(forecast_path)
    ds = io.open_forecast(path)
    names = schema.forecast_variables(ds)
    if not names:
        raise InputError(f"{path} holds no variable with a 'member' dim; is it a forecast file?")
    fields = open_fields(truth_source, names)
    forecast = xr.Dataset({n: _index_only(ds[n].load()) for n in names})
    truth = xr.Dataset({n: truth_like(fields, ds[n]) for n in names})
    forecast = forecast.assign_coords({d: truth[d] for d in truth.dims if d in truth.indexes})
    pools = fitting(DEFAULT_POOLS, fields.shape)
    scores = score_all(forecast, truth, thresholds=tuple(thresholds), pools=pools, group_size=_group_size(ds))
    system = _system_name(ds, path)
    scores.attrs.update(
        system=system,
        forecast=str(path),
        truth=str(fields.source),
        init_time=str(ds[schema.INIT_TIME].values)[:19],
        thresholds=", ".join(f"{t:g}" for t in thresholds) or "none",
        package_version=__version__,
        created=_now(),
    )
    note = _fair_crps_note({system: ds})
    if note:
        scores.attrs["fair_crps"] = note
    if output is not None:
        write_scores(scores, output)
    if report_dir is not None:
        from dydiff_earth.report import write_report

        combined = combine_systems({system: scores})
        summary = {
            "forecast": str(path),
            "truth": str(fields.source),
            "init_times": [str(ds[schema.INIT_TIME].values)[:19]],
            "systems": headline(combined),
        }
        truth_ds = truth.assign_coords({schema.INIT_TIME: ds[schema.INIT_TIME].values})
        write_report(
            combined, Path(report_dir), summary=summary, examples={system: ds.load()}, truth=truth_ds
        )
    return scores


# --- headline numbers ---------------------------------------------------------------------------------------


def _prefixes(scores: xr.Dataset) -> list[str]:
    """``""`` for one forecast variable, ``"<var>_"`` per variable when scores were prefixed."""
    return sorted(str(n)[: -len("crps_fair")] for n in scores.data_vars if str(n).endswith("crps_fair"))


def _number(value: object) -> float | None:
    x = float(value)  # type: ignore[arg-type]
    return None if math.isnan(x) else round(x, 6)


def headline(scores: xr.Dataset, reference: str = REFERENCE) -> dict[str, dict[str, float | int | None]]:
    """Per system, scores averaged over lead times (each lead time weighs the same).

    Keys (``<var>_`` first when several variables): ``crps_fair``, ``crps``, ``rmse``, ``mae``,
    ``spread``, ``ssr``, ``csi@T`` and ``matched_csi@T`` (of the ensemble mean and of the
    probability-matched mean, pixelwise, pool 1) and ``fss@T`` (first window) per threshold T,
    ``crps_skill`` (``1 - crps_fair / crps_fair`` of ``reference``, when it is a system) and ``n_points``
    (verified points summed over lead times). JSON-ready: NaN becomes ``None``.
    """
    out: dict[str, dict[str, float | int | None]] = {}
    systems = [str(s) for s in scores[schema.SYSTEM].values]
    for k, system in enumerate(systems):
        one = scores.isel({schema.SYSTEM: k})
        row: dict[str, float | int | None] = {}
        for p in _prefixes(scores):
            for name in ("crps_fair", "crps", "rmse", "mae", "spread", "ssr"):
                if p + name in one:
                    row[p + name] = _number(one[p + name].mean(schema.LEAD_TIME))
            if reference in systems:
                ref = scores[p + "crps_fair"].sel({schema.SYSTEM: reference}).mean(schema.LEAD_TIME)
                mine = one[p + "crps_fair"].mean(schema.LEAD_TIME)
                row[p + "crps_skill"] = _number(1.0 - mine / ref) if float(ref) > 0 else None
            for name, extra in (("csi", {"pool": 1}), ("matched_csi", {"pool": 1}), ("fss", {})):
                if p + name not in one:
                    continue
                da = one[p + name]
                da = da.sel(extra) if "pool" in da.dims and 1 in da["pool"] else da
                if "scale" in da.dims:
                    da = da.isel(scale=0)
                for t in da[schema.THRESHOLD].values:
                    row[f"{p}{name}@{t:g}"] = _number(da.sel({schema.THRESHOLD: t}).mean(schema.LEAD_TIME))
            row[p + "n_points"] = int(one[p + "n_points"].sum())
        out[system] = row
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- skill: several systems, same init times --------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    """How a worker process rebuilds a system: picklable, small, no model inside (see `cluster`)."""

    data: str
    time: str | None
    names: tuple[str, ...]
    #: normalisation of the data as the system reads it (the model's, or the baselines' computed once)
    stats: tuple[VariableSpec, ...]
    baseline: str | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    config: ForecastConfig | None = None
    device: str = "auto"


@dataclass
class _System:
    name: str
    forecaster: Forecaster
    fields: Fields
    context: int
    #: trained horizon of a model system (the default number of lead times)
    horizon: int | None = None
    recipe: _Recipe | None = None


@dataclass(frozen=True)
class FailedInit:
    """An init time one system could not forecast: it is left out of every system's scores."""

    init_time: str
    system: str
    error: str


@dataclass(frozen=True)
class SkillResult:
    """What a skill run wrote and measured."""

    report_dir: Path
    report: Path
    init_times: list[np.datetime64]
    seconds: dict[str, float]
    summary: dict
    scores: xr.Dataset = field(repr=False)
    failed: list[FailedInit] = field(default_factory=list)


def _unique(name: str, taken: Sequence[str]) -> str:
    if name not in taken:
        return name
    k = 2
    while f"{name}-{k}" in taken:
        k += 1
    return f"{name}-{k}"


def _model_systems(
    data_source: str, checkpoints: Sequence[str], time: str | None, config: object, device: str, progress
) -> list[_System]:
    """One system per checkpoint, each reading the data with its own normalisation."""
    from dydiff_earth.forecast import DiffusionForecaster, check_compatible, load_model, resolve_checkpoint
    from dydiff_earth.train import resolve_device

    dev = resolve_device(device)
    systems: list[_System] = []
    for ckpt in checkpoints:
        model = load_model(ckpt, dev)
        fields = open_fields(data_source, [v.name for v in model.variables], stats=model.variables, time=time)
        check_compatible(model, fields)
        name = _unique(resolve_checkpoint(ckpt).stem, [s.name for s in systems])
        forecaster = DiffusionForecaster(model, config, device=dev, progress=progress)  # type: ignore[arg-type]
        recipe = _Recipe(
            str(data_source),
            time,
            fields.names,
            model.variables,
            checkpoint=model.path,
            sha256=model.sha256,
            config=config,  # type: ignore[arg-type]
            device=device,
        )
        systems.append(_System(name, forecaster, fields, model.context, model.horizon, recipe))
    return systems


def training_record(data_source: str, fields: Fields, who: str = "baseline 'diurnal' learns from") -> Fields:
    """The frames of ``data_source`` before the held-out ``fields`` (what a baseline may learn from)."""
    first = np.datetime64(fields.times[0], "s")
    if np.datetime64(open_fields(data_source, list(fields.names)).times[0], "s") >= first:
        raise InputError(
            f"{who} the record before the held-out period, but {data_source} "
            f"starts at {first}; give a later --time START"
        )
    return open_fields(data_source, list(fields.names), time=f":{first - np.timedelta64(1, 's')}")


def _baseline(name: str, data_source: str, fields: Fields) -> Forecaster:
    """A baseline by name; ``diurnal`` learns from the record before the held-out ``fields``."""
    from dydiff_earth.baselines import make_baseline

    return make_baseline(name, training_record(data_source, fields) if name == "diurnal" else None)


def _baseline_systems(
    fields: Fields, baselines: Sequence[str], taken: Sequence[str], data_source: str, time: str | None = None
) -> list[_System]:
    """Persistence first (always, the reference), then the other baselines in the order given."""

    names = [REFERENCE, *[b.strip().lower() for b in baselines if b.strip().lower() != REFERENCE]]
    systems = []
    for name in dict.fromkeys(names):
        forecaster = _baseline(name, data_source, fields)
        context = int(getattr(forecaster, "context", 1))
        recipe = _Recipe(str(fields.source), time, fields.names, fields.variables, baseline=name)
        systems.append(_System(_unique(name, list(taken)), forecaster, fields, context, recipe=recipe))
    return systems


def _rebuild(recipe: _Recipe) -> tuple[Forecaster, Fields]:
    """A worker's forecaster and input for ``recipe``: the checkpoint loaded and the data opened once."""
    from dydiff_earth.forecast import DiffusionForecaster, load_model
    from dydiff_earth.train import resolve_device

    fields = cluster.worker_cached(
        ("fields", recipe.data, recipe.time, recipe.names, recipe.stats),
        lambda: open_fields(recipe.data, list(recipe.names), stats=recipe.stats, time=recipe.time),
    )
    if recipe.checkpoint is None:
        return cluster.worker_cached(
            ("baseline", recipe.baseline, recipe.data, recipe.time),
            lambda: _baseline(str(recipe.baseline), recipe.data, fields),
        ), fields
    dev = resolve_device(recipe.device)
    model = cluster.worker_cached(
        ("model", recipe.checkpoint, recipe.sha256, str(dev)), lambda: load_model(str(recipe.checkpoint), dev)
    )
    if model.sha256 != recipe.sha256:
        raise InputError(f"{recipe.checkpoint} changed while the skill run was going on; run it again")
    return DiffusionForecaster(model, recipe.config or ForecastConfig(), device=dev), fields


def default_checkpoints(data_source: str, *, time: str | None = None) -> tuple[list[str], str | None]:
    """The shipped ``demo`` model when it fits ``data_source``; else no model and a note saying why."""
    from dydiff_earth.forecast import check_compatible, load_model
    from dydiff_earth.pipeline import DEFAULT_MODEL

    try:
        model = load_model(DEFAULT_MODEL, "cpu")
        names = [v.name for v in model.variables]
        check_compatible(model, open_fields(data_source, names, stats=model.variables, time=time))
    except InputError as exc:
        return (
            [],
            f"the shipped {DEFAULT_MODEL!r} model does not fit this data ({exc}); scoring baselines only",
        )
    return [DEFAULT_MODEL], None


def choose_inits(
    fields: Fields, context: int, lead_times: int, init_stride: int | None, inits: int | None
) -> list[int]:
    """Init indices (last context frame) whose context and lead times lie in one contiguous segment.

    Every ``init_stride``-th window start (radar-4km-v1: every 4th), or ``inits`` evenly spaced ones.
    """
    if init_stride is not None and inits is not None:
        raise InputError("give --init-stride or --inits, not both")
    if (init_stride is not None and init_stride < 1) or (inits is not None and inits < 1):
        raise InputError("--init-stride and --inits must be at least 1")
    stride = 1 if inits is not None else (init_stride or DEFAULT_INIT_STRIDE)
    starts = window_starts(fields, context + lead_times, stride)
    if inits is not None:
        pick = np.unique(np.round(np.linspace(0, len(starts) - 1, min(inits, len(starts)))).astype(int))
        starts = [starts[i] for i in pick]
    return [s + context - 1 for s in starts]


def _forecast_init(
    forecaster: Forecaster, fields: Fields, init: np.datetime64, lead_times: int, members: int, seed: int
) -> tuple[xr.Dataset, float]:
    """One system's forecast of one init time, and the seconds it took: the unit of work of a skill run."""
    start = _time.perf_counter()
    ds = forecaster(fields, init_time=str(init), lead_times=lead_times, n_members=members, seed=seed)
    return ds, _time.perf_counter() - start


def _forecast_recipe(
    item: tuple[_Recipe, np.datetime64], lead_times: int, members: int, seed: int
) -> tuple[xr.Dataset, float]:
    """:func:`_forecast_init` on a worker, from a recipe (the task a cluster runs)."""
    forecaster, fields = _rebuild(item[0])
    return _forecast_init(forecaster, fields, item[1], lead_times, members, seed)


def _stack(datasets: Sequence[xr.Dataset], inits: Sequence[np.datetime64]) -> dict[str, xr.DataArray]:
    """Forecasts of every init stacked along ``init_time``, dims ``(member, init_time, lead_time, y, x)``."""
    first = datasets[0]
    out = {}
    for name in schema.forecast_variables(first):
        template = first[name]
        dims = (schema.MEMBER, schema.INIT_TIME, *template.dims[1:])
        coords = {d: template[d].values for d in template.dims[1:] if d in template.indexes}
        out[name] = xr.DataArray(
            np.stack([ds[name].values for ds in datasets], axis=1),
            dims=dims,
            coords={schema.INIT_TIME: np.asarray(inits, "datetime64[ns]"), **coords},
            name=name,
            attrs=dict(template.attrs),
        )
    return out


def skill(
    data_source: str,
    checkpoints: Sequence[str],
    baselines: Sequence[str],
    *,
    time: str | None = None,
    init_stride: int | None = None,
    inits: int | None = None,
    members: int = 8,
    lead_times: int | None = None,
    sampling_steps: int | None = None,
    solver: str = "dpmpp2m",
    eta: float = 0.0,
    precision: str = "fp32",
    prob_matching: str = "cdf",
    rain_mask: bool = True,
    spacing: str | None = None,
    inflation: float | None = None,
    inflation_scale: float | None = None,
    thresholds: Sequence[float] = (),
    pools: Sequence[int] | None = None,
    fss_windows: Sequence[int] = (5,),
    seed: int = 0,
    context: int = DEFAULT_CONTEXT,
    report_dir: Path,
    device: str = "auto",
    progress: SkillProgress | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> SkillResult:
    """Compare checkpoints and baselines on the same init times of a held-out period.

    Every system forecasts from the same init times: the last context frame of windows of
    ``max(context, each system's context) + lead_times`` frames inside one contiguous segment of the
    ``time`` range (so the truth exists), every ``init_stride``-th window start or ``inits`` evenly
    spaced ones. Forecasts of each system are stacked over init times and scored together
    (``metrics.score_all``); persistence is always a system, the reference of the CRPS skill score.
    All systems are verified on the same points (truth and every member of every system finite), so
    every system's forecasts are held in memory until scoring.

    Parameters
    ----------
    data_source : str
        Observations (zarr store, NetCDF files or a glob): inputs and truth.
    checkpoints : sequence of str
        Checkpoint paths or shipped model names; ``()`` runs baselines only. System name: the file stem.
    baselines : sequence of str
        Among ``persistence``, ``extrapolation``, ``steps`` and ``diurnal`` (which learns from the frames
        of ``data_source`` before ``time``).
    time : str, optional
        Held-out range ``START:END``; inits, context and truth all lie inside it.
    init_stride, inits : int, optional
        Every ``init_stride``-th window start (default 4, protocol radar-4km-v1), or ``inits`` evenly
        spaced window starts.
    members, lead_times, sampling_steps, seed : int
        Ensemble size, lead times (default: the first checkpoint's horizon, else 12), solver steps (default:
        each checkpoint's recommendation, else 10), seed.
    solver, eta, precision, prob_matching, rain_mask, spacing
        The checkpoints' solver (``ddim``, ``dpmpp2m``), DDIM's stochasticity (0 to 1), network
        arithmetic (``fp32``, ``bf16``), what is done to their rain after sampling (``cdf``, ``none``;
        STEPS's rain mask or not)
        and the spacing of the solver's steps (``time``, ``logsnr``; default: each checkpoint's
        recommendation, else ``time``).
    inflation, inflation_scale : float, optional
        The members' spread inflation factor and the scale in grid cells above which it acts
        (:mod:`dydiff_earth.inflation`; default: each checkpoint's recommendation, else 1 and 0).
    thresholds, pools, fss_windows : sequence
        Event thresholds (variable units), max-pool sizes (default 1, 4, 16 that fit the grid), FSS windows.
    context : int
        Context frames every init must have at least (radar-4km-v1: 4), whatever the systems need.
    report_dir : Path
        Directory written atomically: ``scores.nc``, ``summary.json``, ``index.html``, ``summary.md``, PNGs.
    device : str
        For the checkpoints: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    progress : callable, optional
        ``progress(system, done, total)`` after each forecast (as each completes on a cluster).
    workers, scheduler : optional
        Spread the forecasts over a local ``dask.distributed`` cluster of ``workers`` processes, or the
        cluster at ``scheduler``; each worker loads a checkpoint once. The scores are those of the serial
        run (on CPUs, of a serial run on one torch thread, as each worker runs one: CPU kernels round
        differently at other thread counts). An init time that fails for a system is reported
        (``SkillResult.failed``) and left out of every system's scores; the other init times are kept.

    Returns
    -------
    SkillResult
    """
    from dydiff_earth.config import (
        PRECISIONS,
        SOLVERS,
        SPACINGS,
        ForecastConfig,
        check_choice,
        check_inflation,
    )
    from dydiff_earth.inflation import describe
    from dydiff_earth.probmatch import MATCHINGS

    cluster.check_options(workers, scheduler)
    if members < 1 or any(n is not None and n < 1 for n in (sampling_steps, lead_times)):
        raise InputError("--members, --sampling-steps and --lead-times must be at least 1")
    check_choice(solver, SOLVERS, "--solver")
    check_choice(precision, PRECISIONS, "--precision")
    check_choice(prob_matching, MATCHINGS, "--prob-matching")
    if spacing is not None:
        check_choice(spacing, SPACINGS, "--spacing")
    check_inflation(1.0 if inflation is None else inflation, inflation_scale or 0.0)
    config = ForecastConfig(
        members=members,
        sampling_steps=sampling_steps,
        seed=seed,
        solver=solver,
        eta=eta,
        precision=precision,
        prob_matching=prob_matching,
        rain_mask=rain_mask,
        spacing=spacing,
        inflation=inflation,
        inflation_scale=inflation_scale,
    )
    systems = _model_systems(data_source, checkpoints, time, config, device, None)
    # Each model's own recommendation fills what the command left open: the report says what each used.
    samplers = "; ".join(
        f"{s.name}: {c.solver}, {c.sampling_steps} steps, {c.spacing} spacing"
        + (f", inflation {describe(c.inflation, c.inflation_scale)}" if c.inflation != 1 else "")
        for s in systems
        for c in [s.forecaster.config]  # type: ignore[attr-defined]
    )
    names = list(systems[0].fields.names) if systems else None
    fields = open_fields(data_source, names, time=time)
    base = _baseline_systems(fields, baselines, [s.name for s in systems], data_source, time)
    systems += base
    if lead_times is None:
        lead_times = systems[0].horizon or DEFAULT_LEAD_TIMES
    ctx = max([context, *(s.context for s in systems)])
    idx = choose_inits(fields, ctx, lead_times, init_stride, inits)
    init_times = [fields.times[i] for i in idx]
    pools = fitting(pools or DEFAULT_POOLS, fields.shape)
    windows = fitting(fss_windows, fields.shape)
    options = {
        "data": str(data_source),
        "checkpoints": list(checkpoints),
        "systems": [s.name for s in systems],
        "baselines": [s.name for s in base],
        "time": time,
        "init_stride": init_stride if inits is not None else init_stride or DEFAULT_INIT_STRIDE,
        "inits": inits,
        "members": members,
        "lead_times": lead_times,
        "sampling_steps": sampling_steps,
        "solver": solver,
        "eta": eta,
        "precision": precision,
        "prob_matching": prob_matching,
        "rain_mask": rain_mask,
        "spacing": spacing,
        "inflation": inflation,
        "inflation_scale": inflation_scale,
        "samplers": samplers,
        "thresholds": [float(t) for t in thresholds],
        "pools": list(pools),
        "fss_windows": list(windows),
        "seed": seed,
        "context": ctx,
    }
    with cluster.client(workers, scheduler) as client:
        runs, seconds, failed = _forecast_all(
            systems, init_times, lead_times, members, seed, progress, client
        )
    kept = [k for k in range(len(init_times)) if all(k in runs[s.name] for s in systems)]
    if not kept:
        raise InputError(
            f"no init time could be forecast by every system; the first failure: {failed[0].error}"
        )
    init_times = [init_times[k] for k in kept]
    stacks, truth, examples = _stack_all(systems, fields, runs, kept, init_times)
    # Every system is verified on the same points: where the truth and all members of all systems are
    # finite (coverage rules differ: persistence needs the last frame, the others every context frame).
    common = truth.copy()
    for forecast in stacks.values():
        common = xr.Dataset({n: common[n].where(forecast[n].notnull().all(schema.MEMBER)) for n in common})
    options["fair_crps"] = _fair_crps_note(examples)
    results = {
        name: score_all(
            xr.Dataset(forecast),
            common,
            thresholds=tuple(thresholds),
            pools=pools,
            fss_windows=windows,
            group_size=_group_size(examples[name]),
        )
        for name, forecast in stacks.items()
    }
    scores = combine_systems(results)
    scores.attrs.update(protocol=json.dumps(options), package_version=__version__, created=_now())
    summary = {
        "options": options,
        "init_times": [str(t)[:19] for t in init_times],
        "failed": [f.__dict__ for f in failed],
        "lead_times_minutes": [float(x) for x in truth[schema.LEAD_TIME].values / np.timedelta64(1, "m")],
        "reference": REFERENCE,
        "systems": headline(scores),
        "seconds": seconds,
        "package_version": __version__,
        "created": _now(),
    }
    report = _write_outputs(
        scores, summary, Path(report_dir), examples, truth.isel({schema.INIT_TIME: _example_case(truth)})
    )
    return SkillResult(Path(report_dir), report, init_times, seconds, summary, scores, failed)


def _group_size(forecast: xr.Dataset) -> int | None:
    """The group size the fair CRPS must score pairs across (``metrics.CRPS``): the forecast's
    ``inflation_group_size`` (members inflated together depend on one another, :mod:`inflation`) when it
    holds more than one group; None for independent members, or a single group, which has no pair of
    independent members (the fair CRPS of all pairs is then reported, and said to be optimistic)."""
    group = forecast.attrs.get("inflation_group_size")
    return int(group) if group is not None and forecast.sizes[schema.MEMBER] > int(group) else None


def _fair_crps_note(forecasts: Mapping[str, xr.Dataset]) -> str:
    """How each inflated system's fair CRPS was computed, for the report ("" when none is inflated)."""
    notes = []
    for name, ds in forecasts.items():
        group = ds.attrs.get("inflation_group_size")
        if group is None:
            continue
        if _group_size(ds):
            how = f"pairs of members from different groups of {group} only (independent members)"
        else:
            how = (
                f"all pairs of members, all of one group of {group} inflated together and so dependent: "
                f"optimistic; --members {2 * int(group)} or more scores pairs of independent members"
            )
        notes.append(f"{name}: {how}")
    return "; ".join(notes)


def _forecast_all(
    systems: Sequence[_System],
    init_times: Sequence[np.datetime64],
    lead_times: int,
    members: int,
    seed: int,
    progress: SkillProgress | None,
    client: object | None = None,
) -> tuple[dict[str, dict[int, xr.Dataset]], dict[str, float], list[FailedInit]]:
    """Every system's forecast of every init (by init index), seconds of forecasting per system, failures.

    In this process, or on the workers of ``client``, from recipes; the same :func:`_forecast_init` either
    way. System-major order, so that on a cluster too the systems finish roughly one after the other.
    """
    items = [(system, init) for system in systems for init in init_times]
    if client is None:

        def func(item: tuple[_System, np.datetime64]) -> tuple[xr.Dataset, float]:
            return _forecast_init(item[0].forecaster, item[0].fields, item[1], lead_times, members, seed)

        work: list = items
    else:
        func = functools.partial(_forecast_recipe, lead_times=lead_times, members=members, seed=seed)  # type: ignore[assignment]
        work = [(system.recipe, init) for system, init in items]
    runs: dict[str, dict[int, xr.Dataset]] = {s.name: {} for s in systems}
    seconds = dict.fromkeys(runs, 0.0)
    done: Counter[str] = Counter()
    failed: list[FailedInit] = []
    for i, result, error in cluster.map_completed(func, work, client):
        system, init = items[i]
        if error is not None:
            message = str(error) if isinstance(error, InputError) else cluster.describe(error)
            failed.append(FailedInit(str(init)[:19], system.name, message))
        else:
            assert result is not None
            runs[system.name][i % len(init_times)], took = result
            seconds[system.name] += took
        done[system.name] += 1
        if progress is not None:
            progress(system.name, done[system.name], len(init_times))
    failed.sort(key=lambda f: (f.init_time, f.system))
    return runs, {k: round(v, 2) for k, v in seconds.items()}, failed


def _stack_all(
    systems: Sequence[_System],
    fields: Fields,
    runs: Mapping[str, Mapping[int, xr.Dataset]],
    kept: Sequence[int],
    init_times: Sequence[np.datetime64],
) -> tuple[dict[str, dict[str, xr.DataArray]], xr.Dataset, dict[str, xr.Dataset]]:
    """Each system's forecasts of the kept inits stacked, the truth at their valid times, an example case."""
    stacks: dict[str, dict[str, xr.DataArray]] = {}
    truth: xr.Dataset | None = None
    for system in systems:
        stacked = _stack([runs[system.name][k] for k in kept], init_times)
        if truth is None:
            truth = xr.Dataset({n: truth_like(fields, da) for n, da in stacked.items()})
        stacks[system.name] = {n: da.assign_coords(truth[n].coords) for n, da in stacked.items()}
    assert truth is not None  # persistence always runs
    case = kept[_example_case(truth)]
    return stacks, truth, {s.name: runs[s.name][case] for s in systems}


def _example_case(truth: xr.Dataset) -> int:
    """The init time whose truth holds the most signal (largest mean of the first variable): the map case."""
    first = truth[next(iter(truth.data_vars))]
    means = first.mean([d for d in first.dims if d != schema.INIT_TIME], skipna=True).fillna(-np.inf)
    return int(np.argmax(means.values))


def _write_outputs(
    scores: xr.Dataset,
    summary: Mapping,
    report_dir: Path,
    examples: Mapping[str, xr.Dataset],
    truth: xr.Dataset,
) -> Path:
    """scores.nc, summary.json and the report in one directory that appears whole or not at all."""
    from dydiff_earth.report import write_report

    with io.publish(report_dir) as tmp:
        # write_report publishes its own directory: it goes first, then the files beside it.
        write_report(scores, tmp, summary=dict(summary), examples=dict(examples), truth=truth)
        write_scores(scores, tmp / "scores.nc")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return report_dir / "index.html"


__all__ = [
    "DEFAULT_POOLS",
    "REFERENCE",
    "FailedInit",
    "SkillResult",
    "choose_inits",
    "default_checkpoints",
    "evaluate",
    "fitting",
    "headline",
    "skill",
    "truth_like",
    "write_scores",
]
