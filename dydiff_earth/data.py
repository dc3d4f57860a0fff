"""Gridded sources as `Fields`: variable specs, time segments, normalisation, Dataset -> arrays, prepare.

This is the only module that turns an ``xr.Dataset`` into arrays (DESIGN.md, "What flows through the
house"). Everything stays lazy (dask) until `load_frames` asks for a window. Opening a source (paths,
formats, dims, variables, time checks) is :mod:`dydiff_earth.sources`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from dydiff_earth import io
from dydiff_earth.errors import InputError
from dydiff_earth.sources import open_source, parse_time_range, reading

# parse_time_range moved to sources.py; it stays importable from here (jobs.py, tests).
__all__ = [
    "ABSURD_MAGNITUDE",
    "CHECK_FRAMES",
    "NORMALISATION_ATTR",
    "STATS_MAX_FRAMES",
    "TRANSFORMS",
    "Fields",
    "Segment",
    "Transform",
    "VariableSpec",
    "canonical_units",
    "denormalize",
    "describe_step",
    "load_frames",
    "normalize",
    "open_fields",
    "parse_time_range",
    "prepare",
    "time_segments",
    "window_starts",
]
Transform = Literal["none", "log1p"]
TRANSFORMS: tuple[str, ...] = ("none", "log1p")

#: Attribute of `Fields.dataset` holding the normalisation specs as JSON, so a model can carry them.
NORMALISATION_ATTR = "dydiff_normalisation"

#: At most this many evenly spaced frames feed the normalisation statistics: the mean and std of a
#: long record converge long before every frame is read, and reading all of them would cost a full pass.
STATS_MAX_FRAMES = 200

#: Frames checked when a checkpoint's statistics are given (nothing else is read then): enough to find
#: an input with no valid value, infinities or undeclared fill values without a pass over the record.
CHECK_FRAMES = 8

#: Values at least this large are fill values nobody declared (netCDF's default fill is 9.97e36), not data.
ABSURD_MAGNITUDE = 1e20

# Rain rates and accumulations (CF canonical and common spellings, after `canonical_units`).
_RAIN_UNITS = frozenset({"mm h-1", "kg m-2 s-1", "mm", "mm s-1", "mm d-1", "kg m-2"})
_UNIT_SYNONYMS = {"mm/h": "mm h-1", "mm hr-1": "mm h-1", "mm/hr": "mm h-1", "mm/d": "mm d-1"}


def _log1p(values: Any, scale: float) -> Any:
    """``log1p(x / scale)`` of numpy or dask arrays (numpy's ufuncs dispatch to dask)."""
    # Negative rain is measurement noise; clipping keeps log1p finite.
    return np.log1p(np.maximum(values, 0) / scale)


@dataclass(frozen=True)
class VariableSpec:
    """One channel: its name, units, value transform and normalisation statistics.

    ``mean`` and ``std`` are of the transformed values (``log1p`` of the rain rate, for example), so
    the normalised value is ``(transform(x) - mean) / std``. A ``log1p`` channel is ``log1p(x / scale)``:
    values well below ``scale`` (in the variable's units) sit near zero and those above it are
    logarithmic, so a smaller scale parts dry from light rain more (1, the default, is every model made
    before the scale existed).
    """

    name: str
    units: str
    transform: Transform
    mean: float
    std: float
    attrs: tuple[tuple[str, str], ...] = ()
    scale: float = 1.0

    def transformed(self, values: np.ndarray) -> np.ndarray:
        """Physical values to the transformed variable (before the z-score)."""
        return _log1p(values, self.scale) if self.transform == "log1p" else values

    def physical(self, transformed: np.ndarray) -> np.ndarray:
        """Inverse of `transformed`; the inverse of log1p is clipped at 0 (no negative rain)."""
        return np.maximum(np.expm1(transformed), 0) * self.scale if self.transform == "log1p" else transformed

    def normalised(self, value: float) -> float:
        """A physical value (a threshold, say) in the normalised units the network sees."""
        return float((self.transformed(np.float64(value)) - self.mean) / self.std)

    def to_dict(self) -> dict:
        """JSON-able form (checkpoint metadata, `NORMALISATION_ATTR`)."""
        return {
            "name": self.name,
            "units": self.units,
            "transform": self.transform,
            "mean": float(self.mean),
            "std": float(self.std),
            "attrs": [[k, v] for k, v in self.attrs],
            # Written only when it is not the default, so models without it keep their metadata.
            **({"scale": float(self.scale)} if self.scale != 1.0 else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> VariableSpec:
        """Inverse of `to_dict`; a malformed entry raises `InputError`."""
        try:
            transform = d["transform"]
            if transform not in TRANSFORMS:
                raise InputError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")
            scale = float(d.get("scale", 1.0))
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"scale must be positive, got {scale}")
            return cls(
                name=str(d["name"]),
                units=str(d["units"]),
                transform=transform,
                mean=float(d["mean"]),
                std=float(d["std"]),
                attrs=tuple((str(k), str(v)) for k, v in d.get("attrs", ())),
                scale=scale,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"malformed variable spec {d!r}: {err}; re-create the checkpoint") from None


@dataclass(frozen=True)
class Segment:
    """A run of frames evenly spaced by the time step: indices ``[start, stop)`` of the time axis."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        """Number of frames."""
        return self.stop - self.start


# eq=False: a Dataset has no truth value, so identity equality (and hashing) is the only sound one.
@dataclass(frozen=True, eq=False)
class Fields:
    """A lazy, validated view of a gridded source: the variables, their specs and the time structure."""

    dataset: xr.Dataset
    variables: tuple[VariableSpec, ...]
    time_dim: str
    y_dim: str
    x_dim: str
    time_step: np.timedelta64
    segments: tuple[Segment, ...]
    grid_mapping: str | None
    source: str

    @property
    def names(self) -> tuple[str, ...]:
        """Variable names, in channel order."""
        return tuple(spec.name for spec in self.variables)

    @property
    def times(self) -> np.ndarray:
        """Frame times, ``datetime64[ns]``, dims ``(time,)``."""
        return self.dataset[self.time_dim].values.astype("datetime64[ns]")

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape ``(ny, nx)``."""
        return (self.dataset.sizes[self.y_dim], self.dataset.sizes[self.x_dim])


# ---------------------------------------------------------------------------------------- time structure


def describe_step(step: np.timedelta64) -> str:
    """A time step as people write it (``5 minutes``, ``1 hour``), not in nanoseconds."""
    for unit, name in (("D", "day"), ("h", "hour"), ("m", "minute"), ("s", "second")):
        if step % np.timedelta64(1, unit) == np.timedelta64(0):
            n = int(step // np.timedelta64(1, unit))
            return f"{n} {name}{'' if n == 1 else 's'}"
    return str(step)


def time_segments(times: np.ndarray) -> tuple[np.timedelta64, tuple[Segment, ...]]:
    """Most common step, and runs of frames split wherever the spacing differs from it.

    Parameters
    ----------
    times : np.ndarray
        Increasing ``datetime64`` frame times, at least 2.

    Returns
    -------
    tuple
        ``(step, segments)``: the most common spacing and the runs of frames evenly spaced by it.
    """
    diffs = np.diff(times)
    steps, counts = np.unique(diffs, return_counts=True)
    step = steps[np.argmax(counts)]  # ties: the smallest, since np.unique sorts
    breaks = np.flatnonzero(diffs != step) + 1
    bounds = [0, *breaks.tolist(), len(times)]
    return step, tuple(Segment(a, b) for a, b in itertools.pairwise(bounds))


# --------------------------------------------------------------------------------------- normalisation


def canonical_units(units: str) -> str:
    """Units text in one spelling (``mm/h`` and ``mm hr-1`` become ``mm h-1``), for comparisons."""
    text = " ".join(units.lower().replace("**", "").replace("^", "").split())
    return _UNIT_SYNONYMS.get(text, text)


def _default_transform(da: xr.DataArray) -> Transform:
    """log1p for precipitation-like fields: rain-rate or accumulation units, or a precipitation name."""
    if canonical_units(str(da.attrs.get("units", ""))) in _RAIN_UNITS:
        return "log1p"
    standard_name = str(da.attrs.get("standard_name", "")).lower()
    return "log1p" if "precipitation" in standard_name or "rainfall" in standard_name else "none"


def _attrs(da: xr.DataArray) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in da.attrs.items())


def _transforms(
    names: Sequence[str], option: Mapping[str, str] | None, ds: xr.Dataset
) -> dict[str, Transform]:
    option = dict(option or {})
    for name, transform in option.items():
        if name not in names:
            raise InputError(f"transform given for {name!r}, which is not among the variables {list(names)}")
        if transform not in TRANSFORMS:
            raise InputError(f"unknown transform {transform!r} for {name!r}; use one of {TRANSFORMS}")
    return {name: cast(Transform, option.get(name)) or _default_transform(ds[name]) for name in names}


def _sample_frames(n: int, count: int) -> np.ndarray:
    """At most ``count`` evenly spaced frame indices of ``n``, the first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))


def _scan(
    ds: xr.Dataset,
    tdim: str,
    transforms: Mapping[str, Transform],
    frames: np.ndarray,
    source: str,
    rain_scale: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Counts (finite, inf, absurd, negative, nonzero) and sums of transformed finite values; one pass."""
    tasks = {}
    for name, transform in transforms.items():
        raw = ds[name].isel({tdim: frames}).data.astype(np.float64)
        finite = dsa.isfinite(raw)
        values = dsa.where(finite, raw, 0.0)
        data = _log1p(values, rain_scale) if transform == "log1p" else values
        tasks[name] = {
            "finite": finite.sum(),
            "inf": dsa.isinf(raw).sum(),
            "absurd": (dsa.fabs(values) >= ABSURD_MAGNITUDE).sum(),
            "negative": (values < 0).sum(),
            "nonzero": (values != 0).sum(),
            "sum": data.sum(),
            "squares": (data * data).sum(),
        }
    with reading(f"{len(frames)} frames of {source}"):
        (counts,) = dask.compute(tasks)
    return {name: {k: float(v) for k, v in c.items()} for name, c in counts.items()}


def _check_values(
    ds: xr.Dataset,
    tdim: str,
    name: str,
    transform: Transform,
    counts: Mapping[str, float],
    sampled: int,
    source: str,
) -> None:
    """Refuse values no field holds: infinities, undeclared fill values, rain mostly below zero, no data."""
    where = f"in {sampled} sampled frames" if sampled < ds.sizes[tdim] else "in the selected times"
    if counts["inf"]:
        raise InputError(
            f"variable {name!r} holds {int(counts['inf'])} infinite values {where}; mask them as NaN, "
            "e.g. ds.where(np.isfinite(ds))"
        )
    if counts["absurd"]:
        raise InputError(
            f"variable {name!r} holds {int(counts['absurd'])} values of magnitude >= {ABSURD_MAGNITUDE:g} "
            f"{where}, fill values nobody declared; set _FillValue on it or mask them as NaN"
        )
    if transform == "log1p" and counts["negative"] > 0.5 * counts["nonzero"]:
        raise InputError(
            f"variable {name!r} is precipitation-like but most of its nonzero values are negative {where}; "
            "check its sign and units (reflectivity in dBZ is not a rain rate)"
        )
    if counts["finite"] == 0 and sampled < ds.sizes[tdim]:
        # Only a pathological input pays for this full pass: the sample found no valid value at all.
        with reading(f"variable {name!r} of {source}"):
            counts = {"finite": float(dsa.isfinite(ds[name].data).sum().compute())}
    if counts["finite"] == 0:
        raise InputError(
            f"variable {name!r} is all NaN in the selected times (no valid value); "
            "choose another variable, time range or input"
        )


def _compute_stats(
    ds: xr.Dataset, tdim: str, transforms: Mapping[str, Transform], source: str, rain_scale: float
) -> list[VariableSpec]:
    """Mean and std of the finite transformed values, one dask pass over a subsample of frames."""
    frames = _sample_frames(ds.sizes[tdim], STATS_MAX_FRAMES)
    scanned = _scan(ds, tdim, transforms, frames, source, rain_scale)
    specs = []
    for name, transform in transforms.items():
        c = scanned[name]
        _check_values(ds, tdim, name, transform, c, len(frames), source)
        if c["finite"] == 0:  # valid values only between the sampled frames: statistics from all of them
            c = _scan(ds, tdim, {name: transform}, np.arange(ds.sizes[tdim]), source, rain_scale)[name]
        count = c["finite"]
        mean = c["sum"] / count
        std = float(np.sqrt(max(c["squares"] / count - mean * mean, 0.0)))
        # A constant field (e.g. no rain at all) has std 0: keep it unscaled rather than divide by 0.
        std = std if std > 0 and np.isfinite(std) else 1.0
        da = ds[name]
        units, scale = str(da.attrs.get("units", "")), rain_scale if transform == "log1p" else 1.0
        specs.append(VariableSpec(name, units, transform, float(mean), std, _attrs(da), scale))
    return specs


def _check_stats(
    ds: xr.Dataset,
    names: Sequence[str],
    stats: Sequence[VariableSpec],
    transforms: Mapping[str, str] | None,
    rain_scale: float | None,
) -> list[VariableSpec]:
    """Specs from a checkpoint, in the checkpoint's channel order, with this input's attrs."""
    if set(names) != {s.name for s in stats}:
        raise InputError(
            f"the model was trained on variables {[s.name for s in stats]} but {list(names)} were chosen; "
            "choose the model's variables"
        )
    specs = []
    for spec in stats:
        da = ds[spec.name]
        units = str(da.attrs.get("units", ""))
        if canonical_units(units) != canonical_units(spec.units):
            raise InputError(
                f"variable {spec.name!r} is in {units!r} but the model expects {spec.units!r}; "
                "convert the input"
            )
        wanted = (transforms or {}).get(spec.name)
        if wanted is not None and wanted != spec.transform:
            raise InputError(
                f"transform {wanted!r} for {spec.name!r} conflicts with the model's {spec.transform!r}; "
                "drop the transform option"
            )
        if rain_scale is not None and spec.transform == "log1p" and rain_scale != spec.scale:
            raise InputError(
                f"rain scale {rain_scale:g} for {spec.name!r} conflicts with the model's {spec.scale:g}; "
                "drop the rain scale option"
            )
        specs.append(dataclasses.replace(spec, attrs=_attrs(da)))
    return specs


def normalize(values: np.ndarray, specs: Sequence[VariableSpec]) -> np.ndarray:
    """Transform and z-score physical values; channel axis -3 (``(..., C, H, W)``), NaN kept.

    Parameters
    ----------
    values : np.ndarray
        Physical values, dims ``(..., channel, y, x)``, in each spec's units.
    specs : sequence of VariableSpec
        One per channel, in channel order.

    Returns
    -------
    np.ndarray
        float32, same shape, dimensionless.
    """
    values = np.asarray(values)
    _check_channels(values, specs)
    out = np.empty(values.shape, dtype=np.float32)
    for c, spec in enumerate(specs):
        out[..., c, :, :] = (spec.transformed(values[..., c, :, :]) - spec.mean) / spec.std
    return out


def denormalize(values: np.ndarray, specs: Sequence[VariableSpec]) -> np.ndarray:
    """Inverse of `normalize`; rain comes back clipped at 0 (no negative rain).

    Parameters
    ----------
    values : np.ndarray
        Normalised values, dims ``(..., channel, y, x)``.
    specs : sequence of VariableSpec
        One per channel, in channel order.

    Returns
    -------
    np.ndarray
        float32 physical values in each spec's units, same shape; NaN kept.
    """
    values = np.asarray(values)
    _check_channels(values, specs)
    out = np.empty(values.shape, dtype=np.float32)
    for c, spec in enumerate(specs):
        out[..., c, :, :] = spec.physical(values[..., c, :, :].astype(np.float64) * spec.std + spec.mean)
    return out


def _check_channels(values: np.ndarray, specs: Sequence[VariableSpec]) -> None:
    if values.ndim < 3 or values.shape[-3] != len(specs):
        raise ValueError(f"values of shape {values.shape} need {len(specs)} channels on axis -3")


# ----------------------------------------------------------------------------------------- public API


def open_fields(
    source: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None = None,
    *,
    chunks: dict[str, int] | None = None,
    transforms: Mapping[str, str] | None = None,
    stats: Sequence[VariableSpec] | None = None,
    time: str | slice | None = None,
    rain_scale: float | None = None,
) -> Fields:
    """Open a gridded source lazily and validate it for training or forecasting.

    Parameters
    ----------
    source : str, Path or sequence of them
        A zarr store, a NetCDF file, a glob of NetCDF files, or a list of these (combined by coords).
    variables : sequence of str, optional
        Channels, in order. Default: the model's variables when ``stats`` is given, else every data
        variable with exactly the time and two spatial dims.
    chunks : dict, optional
        dask chunks by dim; default one frame per chunk for NetCDF, the store's chunks for zarr.
    transforms : mapping, optional
        ``{"name": "log1p" | "none"}``; default log1p for precipitation-like units or names.
    stats : sequence of VariableSpec, optional
        Normalisation from a checkpoint; units must match, and the channels take the checkpoint's
        order. Given, only `CHECK_FRAMES` evenly spaced frames are read, to refuse an input without
        a valid value, with infinities or with undeclared fill values.
    time : str or slice, optional
        ``"START:END"`` (see `parse_time_range`) or a label slice on the time dim.
    rain_scale : float, optional
        ``scale`` of the log1p channels (`VariableSpec`), in their units; default 1. With ``stats``
        it must agree with them.

    Returns
    -------
    Fields
        Lazy dataset (original names and grid; latitude order kept), specs, segments, time step.
    """
    if variables is None and stats is not None:
        variables = [s.name for s in stats]
    label = str(source) if isinstance(source, (str, Path)) else ",".join(map(str, source))
    ds, names, tdim, ydim, xdim, gm = open_source(source, variables, chunks, time)
    times = ds[tdim].values
    step, segments = time_segments(times)
    if stats is not None:
        specs = _check_stats(ds, names, stats, transforms, rain_scale)
        ds = ds[[s.name for s in specs]]
        frames = _sample_frames(ds.sizes[tdim], CHECK_FRAMES)
        scanned = _scan(ds, tdim, {s.name: s.transform for s in specs}, frames, label)
        for spec in specs:
            _check_values(ds, tdim, spec.name, spec.transform, scanned[spec.name], len(frames), label)
    else:
        if rain_scale is not None and not (np.isfinite(rain_scale) and rain_scale > 0):
            raise InputError(f"the rain scale must be a positive number, got {rain_scale}")
        specs = _compute_stats(ds, tdim, _transforms(names, transforms, ds), label, rain_scale or 1.0)
    ds.attrs[NORMALISATION_ATTR] = json.dumps([s.to_dict() for s in specs])
    return Fields(ds, tuple(specs), tdim, ydim, xdim, step, segments, gm, label)


def load_frames(fields: Fields, t: slice, y: slice = slice(None), x: slice = slice(None)) -> np.ndarray:
    """Read, transform and normalise a block of frames; only the chunks it touches are computed.

    Parameters
    ----------
    fields : Fields
        From `open_fields`.
    t, y, x : slice
        Positional slices of the time, y and x dims.

    Returns
    -------
    np.ndarray
        float32, dims ``(time, channel, y, x)``, normalised (dimensionless); NaN kept for callers to mask.
    """
    index = {fields.time_dim: t, fields.y_dim: y, fields.x_dim: x}
    dims = (fields.time_dim, fields.y_dim, fields.x_dim)
    arrays = [fields.dataset[name].isel(index).transpose(*dims).data for name in fields.names]
    # Synchronous unless a scheduler is configured: a window is a few chunks, and dask's thread pool
    # does not survive fork (DataLoader workers would wait forever on the parent's dead threads).
    scheduler = dask.config.get("scheduler", None) or "synchronous"
    times = fields.times[t]
    what = f"frames {str(times[0])[:16]} to {str(times[-1])[:16]} of {fields.source}" if len(times) else ""
    with reading(what or fields.source):
        (block,) = dask.compute(dsa.stack(arrays, axis=1), scheduler=scheduler)
    _check_block(block, fields, what)
    return normalize(block, fields.variables)


def _check_block(block: np.ndarray, fields: Fields, what: str) -> None:
    """Infinities and undeclared fill values in frames about to be used are an input error, not data."""
    finite = np.isfinite(block)
    if finite.all() and not (np.abs(block) >= ABSURD_MAGNITUDE).any():
        return
    for c, name in enumerate(fields.names):
        values = block[:, c]
        if np.isinf(values).any():
            raise InputError(
                f"variable {name!r} holds infinite values in {what}; mask them as NaN, "
                "e.g. ds.where(np.isfinite(ds))"
            )
        if (np.abs(np.where(finite[:, c], values, 0)) >= ABSURD_MAGNITUDE).any():
            raise InputError(
                f"variable {name!r} holds values of magnitude >= {ABSURD_MAGNITUDE:g} in {what}, fill values "
                "nobody declared; set _FillValue on it or mask them as NaN"
            )


def window_starts(fields: Fields, length: int, stride: int = 1) -> list[int]:
    """Time indices at which ``length`` consecutive frames of one segment begin.

    Parameters
    ----------
    fields : Fields
        From `open_fields`.
    length : int
        Frames per window (context + horizon).
    stride : int
        Step between starts within a segment, counted from the segment's first frame.

    Returns
    -------
    list of int
        Increasing start indices; raises `InputError` when no window fits.
    """
    if length < 1 or stride < 1:
        raise InputError(f"window length ({length}) and stride ({stride}) must be at least 1")
    starts = [s for seg in fields.segments for s in range(seg.start, seg.stop - length + 1, stride)]
    if not starts:
        longest = max(seg.length for seg in fields.segments)
        raise InputError(
            f"a window needs {length} consecutive frames but the longest segment has {longest} "
            f"(time step {describe_step(fields.time_step)}, {len(fields.segments)} segments); "
            "shorten context/horizon or give more frames"
        )
    return starts


def _coarsen(ds: xr.Dataset, factor: int, ydim: str, xdim: str) -> xr.Dataset:
    """Block means over ``factor`` x ``factor`` cells; a coarse cell is NaN if any fine cell is."""
    if factor > min(ds.sizes[ydim], ds.sizes[xdim]):
        raise InputError(
            f"coarsen {factor} exceeds the grid {ds.sizes[ydim]}x{ds.sizes[xdim]}; use a smaller factor"
        )
    # np.mean propagates NaN, unlike coarsen(...).mean(), which skips it; coords (1-D and 2-D) are averaged.
    return ds.coarsen({ydim: factor, xdim: factor}, boundary="trim", coord_func="mean").reduce(np.mean)


def _drop_encodings(ds: xr.Dataset) -> xr.Dataset:
    """float32 data, and no NetCDF encodings (packing, fill values, chunk sizes) carried into zarr."""
    ds = ds.copy()
    for name, var in ds.variables.items():
        var.encoding = {}
        var.attrs.pop("coordinates", None)
        if name in ds.data_vars and var.dtype.kind in "fiu":
            ds[name] = var.astype(np.float32)
    return ds


def prepare(
    sources: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    variables: Sequence[str] | None = None,
    coarsen: int = 1,
    time: str | None = None,
    chunks: dict[str, int] | None = None,
) -> Path:
    """Write the chosen variables and times as a zarr v3 store, one frame per chunk, published atomically.

    Parameters
    ----------
    sources : str, Path or sequence of them
        As for `open_fields`.
    output : str or Path
        The store to write (replaced atomically if it exists).
    variables : sequence of str, optional
        Default: every variable with the time and spatial dims.
    coarsen : int
        Block-mean factor over y and x (edges that do not fill a block are trimmed); a coarse cell is
        NaN if any of its fine cells is. Coordinates, 2-D lat/lon included, are block means too.
    time : str, optional
        ``"START:END"``, see `parse_time_range`.
    chunks : dict, optional
        dask chunks for reading.

    Returns
    -------
    Path
        ``output``. Values are float32 in the input's units; names, attrs and grid mapping are kept.
    """
    if coarsen < 1:
        raise InputError(f"coarsen must be a positive integer, got {coarsen}")
    ds, _, tdim, ydim, xdim, _ = open_source(sources, variables, chunks, time)
    if coarsen > 1:
        ds = _coarsen(ds, coarsen, ydim, xdim)
    ds = _drop_encodings(ds)
    ds.attrs.pop(NORMALISATION_ATTR, None)
    step = f"dydiff-earth prepare: variables={list(ds.data_vars)} time={time!r} coarsen={coarsen}"
    ds.attrs["history"] = "\n".join(filter(None, [str(ds.attrs.get("history", "")), step]))
    frame_chunks = {dim: (1 if dim == tdim else -1) for dim in ds.dims}
    label = str(sources) if isinstance(sources, (str, Path)) else ",".join(map(str, sources))
    # The sources are read while the store is written: a damaged chunk surfaces here.
    with reading(label, action=f"convert into {output}"):
        return io.write_zarr(ds.chunk(frame_chunks), output)
