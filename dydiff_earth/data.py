"""Opening gridded sources as `Fields`: validation, time segments, normalisation, Dataset -> arrays.

This is the only module that turns an ``xr.Dataset`` into arrays (DESIGN.md, "What flows through the
house"). Everything stays lazy (dask) until `load_frames` asks for a window.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from dydiff_earth import io, schema
from dydiff_earth.errors import InputError, MissingVariableError

Transform = Literal["none", "log1p"]
TRANSFORMS: tuple[str, ...] = ("none", "log1p")

#: Attribute of `Fields.dataset` holding the normalisation specs as JSON, so a model can carry them.
NORMALISATION_ATTR = "dydiff_normalisation"

#: At most this many evenly spaced frames feed the normalisation statistics: the mean and std of a
#: long record converge long before every frame is read, and reading all of them would cost a full pass.
STATS_MAX_FRAMES = 200

# Rain rates and accumulations (CF canonical and common spellings, after `canonical_units`).
_RAIN_UNITS = frozenset({"mm h-1", "kg m-2 s-1", "mm", "mm s-1", "mm d-1", "kg m-2"})
_UNIT_SYNONYMS = {"mm/h": "mm h-1", "mm hr-1": "mm h-1", "mm/hr": "mm h-1", "mm/d": "mm d-1"}
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_NETCDF_SUFFIXES = frozenset({".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5"})
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")
_Y_MARKS = frozenset({"projection_y_coordinate", "latitude", "grid_latitude"})
_X_MARKS = frozenset({"projection_x_coordinate", "longitude", "grid_longitude"})


@dataclass(frozen=True)
class VariableSpec:
    """One channel: its name, units, value transform and normalisation statistics.

    ``mean`` and ``std`` are of the transformed values (``log1p`` of the rain rate, for example), so
    the normalised value is ``(transform(x) - mean) / std``.
    """

    name: str
    units: str
    transform: Transform
    mean: float
    std: float
    attrs: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        """JSON-able form (checkpoint metadata, `NORMALISATION_ATTR`)."""
        return {
            "name": self.name,
            "units": self.units,
            "transform": self.transform,
            "mean": float(self.mean),
            "std": float(self.std),
            "attrs": [[k, v] for k, v in self.attrs],
        }

    @classmethod
    def from_dict(cls, d: dict) -> VariableSpec:
        """Inverse of `to_dict`; a malformed entry raises `InputError`."""
        try:
            transform = d["transform"]
            if transform not in TRANSFORMS:
                raise InputError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")
            return cls(
                name=str(d["name"]),
                units=str(d["units"]),
                transform=transform,
                mean=float(d["mean"]),
                std=float(d["std"]),
                attrs=tuple((str(k), str(v)) for k, v in d.get("attrs", ())),
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


# ---------------------------------------------------------------------------------------------- opening


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _expand(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Paths named by ``source``: one path, a glob pattern, or a list of either."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    if not items:
        raise InputError("no input given; pass a zarr store, a NetCDF file or a glob of NetCDF files")
    paths: list[Path] = []
    for item in items:
        text = str(item)
        if isinstance(item, str) and glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputError(f"no files match {text!r}; check the pattern and quote it in the shell")
            paths.extend(Path(m) for m in matches)
        elif not Path(text).exists():
            raise InputError(f"input {text!r} does not exist; check the path")
        else:
            paths.append(Path(text))
    return paths


def _format(path: Path) -> Literal["zarr", "netcdf"]:
    if path.is_dir():
        if path.suffix == ".zarr" or any((path / m).exists() for m in _ZARR_MARKERS):
            return "zarr"
        raise InputError(f"directory {str(path)!r} is not a zarr store (no zarr.json or .zgroup)")
    if path.suffix.lower() in _NETCDF_SUFFIXES:
        return "netcdf"
    with open(path, "rb") as f:
        head = f.read(8)
    if any(head.startswith(magic) for magic in _NETCDF_MAGIC):
        return "netcdf"
    raise InputError(
        f"unknown format of {str(path)!r}; give a zarr store (directory or .zarr) or a NetCDF file (.nc)"
    )


def _open_raw(paths: list[Path], chunks: dict[str, int] | None) -> xr.Dataset:
    """Open lazily with dask: one time step per chunk for NetCDF, the store's chunks for zarr."""
    formats = {_format(p) for p in paths}
    if len(formats) > 1:
        raise InputError("inputs mix zarr stores and NetCDF files; convert them to one format")
    fmt = formats.pop()
    # zarr: local stores are cheap to list, and asking for consolidated metadata makes zarr 3 warn.
    kwargs: dict = {"engine": "zarr", "consolidated": False} if fmt == "zarr" else {}
    if chunks is None and fmt == "netcdf":
        with xr.open_dataset(paths[0], chunks=None) as peek:
            chunks = _netcdf_chunks(peek)
    elif chunks is None:
        chunks = {}
    try:
        if len(paths) == 1:
            return xr.open_dataset(paths[0], chunks=chunks, **kwargs)
        # Explicit combine options: concatenate along time only, take everything else from the first
        # file, and insist on identical grids (xarray's defaults for these are changing).
        return xr.open_mfdataset(
            paths,
            chunks=chunks,
            combine="by_coords",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="exact",
            **kwargs,
        )
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        what = str(paths[0]) if len(paths) == 1 else f"{len(paths)} files"
        raise InputError(f"cannot open {what} as {fmt}: {_one_line(err)}") from None


def _netcdf_chunks(peek: xr.Dataset) -> dict[str, int]:
    """One frame per dask chunk, unless the file stores several frames per chunk: then its own chunks,
    since splitting a stored chunk would decompress it once per frame (and xarray warns)."""
    tdim = _time_dim(peek)
    for var in peek.data_vars.values():
        stored = var.encoding.get("chunksizes")
        if tdim in var.dims and stored and stored[var.dims.index(tdim)] > 1:
            return {}
    return {tdim: 1}


def _time_dim(ds: xr.Dataset) -> str:
    """CF marks first (``standard_name = time`` or ``axis = T``), then the usual names."""
    for dim in ds.dims:
        if dim in ds.variables:
            attrs = ds[dim].attrs
            if attrs.get("standard_name") == "time" or attrs.get("axis") == "T":
                return str(dim)
    for name in schema.TIME_NAMES:
        if name in ds.dims:
            return name
    raise InputError(
        f"no time dim among {sorted(map(str, ds.dims))}; name it 'time' or set standard_name='time' on it"
    )


def _spatial_dims(ds: xr.Dataset) -> tuple[str, str]:
    for y, x in schema.SPATIAL_DIM_PAIRS:
        if y in ds.dims and x in ds.dims:
            return y, x

    def marked(marks: frozenset[str], axis: str) -> str | None:
        for dim in ds.dims:
            if dim in ds.variables:
                attrs = ds[dim].attrs
                if attrs.get("axis") == axis or attrs.get("standard_name") in marks:
                    return str(dim)
        return None

    ym, xm = marked(_Y_MARKS, "Y"), marked(_X_MARKS, "X")
    if ym is None or xm is None or ym == xm:
        raise InputError(
            f"no spatial dims recognised among {sorted(map(str, ds.dims))}; name them y/x or "
            "latitude/longitude, or set axis='Y'/'X' on their coordinates"
        )
    return ym, xm


def _choose_variables(
    ds: xr.Dataset, requested: Sequence[str] | None, dims: tuple[str, str, str]
) -> list[str]:
    fit = [str(n) for n, v in ds.data_vars.items() if set(v.dims) == set(dims)]
    if requested is None:
        if not fit:
            raise InputError(f"no variable has dims {dims}; variables are {sorted(map(str, ds.data_vars))}")
        return fit
    if isinstance(requested, str):
        requested = [requested]
    for name in requested:
        if name not in ds.data_vars:
            close = difflib.get_close_matches(name, fit, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise MissingVariableError(
                f"variable {name!r} not found; {hint}available: {', '.join(fit) or 'none'}"
            )
        if set(ds[name].dims) != set(dims):
            raise InputError(
                f"variable {name!r} has dims {ds[name].dims}, expected {dims}; select a single level first"
            )
    if len(set(requested)) != len(requested):
        raise InputError(f"variables {list(requested)} repeat a name; give each once")
    return list(requested)


def _grid_mapping(ds: xr.Dataset, names: Sequence[str]) -> str | None:
    for name in names:
        value = ds[name].attrs.get("grid_mapping") or ds[name].encoding.get("grid_mapping")
        if value:
            # CF's extended form "crs: x y" names the variable before the colon.
            gm = str(value).split(":")[0].split()[0]
            if gm in ds.variables:
                return gm
    return None


# ------------------------------------------------------------------------------------------------ time


_DATE = r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?)?)?Z?"


def parse_time_range(text: str) -> slice:
    """Parse ``"START:END"`` (ISO dates or datetimes, either side may be empty) into a label slice.

    Both ends are inclusive and partial dates cover their whole period (pandas partial-string
    indexing): ``"2019-03-01:2019-03-24"`` includes every hour of 24 March.
    """
    text = text.strip()
    splits = []
    for i, char in enumerate(text):
        if char != ":":
            continue
        start, end = text[:i].strip(), text[i + 1 :].strip()
        if all(s == "" or re.fullmatch(_DATE, s) for s in (start, end)):
            splits.append((start, end))
    if len(splits) != 1:
        raise InputError(f"bad time range {text!r}; write START:END, e.g. 2019-03-01:2019-03-24T23:00")
    lo, hi = (s.rstrip("Z") or None for s in splits[0])
    try:
        bounds = [np.datetime64(s.replace(" ", "T")) if s else None for s in (lo, hi)]
    except ValueError:
        raise InputError(f"bad date in time range {text!r}; use ISO dates like 2019-03-01T06:00") from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise InputError(f"time range {text!r} ends before it starts; swap START and END")
    return slice(lo, hi)


def _as_datetimes(ds: xr.Dataset, tdim: str) -> xr.Dataset:
    if tdim not in ds.coords:
        raise InputError(f"time dim {tdim!r} has no coordinate; add one with the frame times")
    values = ds[tdim].values
    if np.issubdtype(values.dtype, np.datetime64):
        return ds
    try:
        return ds.assign_coords({tdim: ds.indexes[tdim].to_datetimeindex(time_unit="ns")})
    except (AttributeError, TypeError, ValueError):
        raise InputError(
            f"time coordinate {tdim!r} is not a datetime; give it CF units like 'minutes since 2020-01-01'"
        ) from None


def _check_times(times: np.ndarray, tdim: str) -> None:
    if np.isnat(times).any():
        raise InputError(f"time coordinate {tdim!r} holds missing values; drop those frames")
    diffs = np.diff(times)
    zero = np.flatnonzero(diffs == np.timedelta64(0))
    if zero.size:
        raise InputError(
            f"time {times[zero[0]]} appears twice in {tdim!r}; drop duplicates, e.g. "
            f"ds.drop_duplicates({tdim!r})"
        )
    back = np.flatnonzero(diffs < np.timedelta64(0))
    if back.size:
        i = int(back[0])
        raise InputError(
            f"times in {tdim!r} are not increasing ({times[i]} then {times[i + 1]} at index {i + 1}); "
            f"sort them, e.g. ds.sortby({tdim!r})"
        )


def describe_step(step: np.timedelta64) -> str:
    """A time step as people write it (``5 minutes``, ``1 hour``), not in nanoseconds."""
    for unit, name in (("D", "day"), ("h", "hour"), ("m", "minute"), ("s", "second")):
        if step % np.timedelta64(1, unit) == np.timedelta64(0):
            n = int(step // np.timedelta64(1, unit))
            return f"{n} {name}{'' if n == 1 else 's'}"
    return str(step)


def _segments(times: np.ndarray) -> tuple[np.timedelta64, tuple[Segment, ...]]:
    """Most common step, and runs of frames split wherever the spacing differs from it."""
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


def _transform(values: np.ndarray, transform: str) -> np.ndarray:
    # Negative rain is measurement noise; clipping keeps log1p finite.
    return np.log1p(np.maximum(values, 0)) if transform == "log1p" else values


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


def _compute_stats(ds: xr.Dataset, tdim: str, transforms: Mapping[str, Transform]) -> list[VariableSpec]:
    """Mean and std of the finite transformed values, one dask pass over a subsample of frames."""
    n = ds.sizes[tdim]
    frames = np.unique(np.linspace(0, n - 1, min(n, STATS_MAX_FRAMES)).round().astype(int))
    sums = []
    for name, transform in transforms.items():
        data = ds[name].isel({tdim: frames}).data.astype(np.float64)
        data = dsa.log1p(dsa.maximum(data, 0)) if transform == "log1p" else data
        finite = dsa.isfinite(data)
        data = dsa.where(finite, data, 0.0)
        sums.append((finite.sum(), data.sum(), (data * data).sum()))
    (totals,) = dask.compute(sums)
    specs = []
    for (name, transform), (count, total, squares) in zip(transforms.items(), totals, strict=True):
        if count == 0:
            raise InputError(
                f"variable {name!r} is all NaN in the selected times; choose another variable or time range"
            )
        mean = total / count
        std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
        # A constant field (e.g. no rain at all) has std 0: keep it unscaled rather than divide by 0.
        std = std if std > 0 and np.isfinite(std) else 1.0
        da = ds[name]
        specs.append(
            VariableSpec(name, str(da.attrs.get("units", "")), transform, float(mean), std, _attrs(da))
        )
    return specs


def _check_stats(
    ds: xr.Dataset, names: Sequence[str], stats: Sequence[VariableSpec], transforms: Mapping[str, str] | None
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
        out[..., c, :, :] = (_transform(values[..., c, :, :], spec.transform) - spec.mean) / spec.std
    return out


def denormalize(values: np.ndarray, specs: Sequence[VariableSpec]) -> np.ndarray:
    """Inverse of `normalize`; the inverse of log1p is clipped at 0 (no negative rain).

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
        z = values[..., c, :, :].astype(np.float64) * spec.std + spec.mean
        out[..., c, :, :] = np.maximum(np.expm1(z), 0) if spec.transform == "log1p" else z
    return out


def _check_channels(values: np.ndarray, specs: Sequence[VariableSpec]) -> None:
    if values.ndim < 3 or values.shape[-3] != len(specs):
        raise ValueError(f"values of shape {values.shape} need {len(specs)} channels on axis -3")


# ----------------------------------------------------------------------------------------- public API


def _select(
    source: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None,
    chunks: dict[str, int] | None,
    time: str | slice | None,
) -> tuple[xr.Dataset, list[str], str, str, str, str | None]:
    """Open, find dims, validate times and pick variables; no data is read."""
    raw = _open_raw(_expand(source), chunks)
    tdim = _time_dim(raw)
    ydim, xdim = _spatial_dims(raw)
    raw = _as_datetimes(raw, tdim)
    _check_times(raw[tdim].values, tdim)
    names = _choose_variables(raw, variables, (tdim, ydim, xdim))
    gm = _grid_mapping(raw, names)
    ds = (raw.set_coords(gm) if gm else raw)[names]
    if time is not None:
        window = parse_time_range(time) if isinstance(time, str) else time
        ds = ds.sel({tdim: window})
    if ds.sizes[tdim] < 2:
        raise InputError(
            f"{ds.sizes[tdim]} frame(s) selected; at least 2 are needed to know the time step, "
            "widen the time range"
        )
    return ds, names, tdim, ydim, xdim, gm


def open_fields(
    source: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None = None,
    *,
    chunks: dict[str, int] | None = None,
    transforms: Mapping[str, str] | None = None,
    stats: Sequence[VariableSpec] | None = None,
    time: str | slice | None = None,
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
        order. Given, nothing is computed here.
    time : str or slice, optional
        ``"START:END"`` (see `parse_time_range`) or a label slice on the time dim.

    Returns
    -------
    Fields
        Lazy dataset (original names and grid; latitude order kept), specs, segments, time step.
    """
    if variables is None and stats is not None:
        variables = [s.name for s in stats]
    ds, names, tdim, ydim, xdim, gm = _select(source, variables, chunks, time)
    times = ds[tdim].values
    step, segments = _segments(times)
    if stats is not None:
        specs = _check_stats(ds, names, stats, transforms)
        ds = ds[[s.name for s in specs]]
    else:
        specs = _compute_stats(ds, tdim, _transforms(names, transforms, ds))
    ds.attrs[NORMALISATION_ATTR] = json.dumps([s.to_dict() for s in specs])
    label = str(source) if isinstance(source, (str, Path)) else ",".join(map(str, source))
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
    (block,) = dask.compute(dsa.stack(arrays, axis=1), scheduler=scheduler)
    return normalize(block, fields.variables)


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
    ds, _, tdim, ydim, xdim, _ = _select(sources, variables, chunks, time)
    if coarsen > 1:
        ds = _coarsen(ds, coarsen, ydim, xdim)
    ds = _drop_encodings(ds)
    ds.attrs.pop(NORMALISATION_ATTR, None)
    step = f"dydiff-earth prepare: variables={list(ds.data_vars)} time={time!r} coarsen={coarsen}"
    ds.attrs["history"] = "\n".join(filter(None, [str(ds.attrs.get("history", "")), step]))
    frame_chunks = {dim: (1 if dim == tdim else -1) for dim in ds.dims}
    return io.write_zarr(ds.chunk(frame_chunks), output)
