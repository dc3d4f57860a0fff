"""Opening gridded sources: paths, formats, dims, variables, grid mapping and the time axis.

`open_source` turns a zarr store, a NetCDF file, a glob of NetCDF files or a list of these into a lazy
(dask) ``xr.Dataset`` of the chosen variables and times: the time and spatial dims found (CF marks first,
then the usual names), times decoded to datetimes and checked (none missing, none repeated, increasing).
A zarr store may also be an fsspec URL (``s3://``, ``gs://``, ``https://``), read lazily with the
credentials of the environment. No data is read. Time segments, normalisation and arrays belong to
:mod:`dydiff_earth.data`.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib.util
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from dydiff_earth import io, schema
from dydiff_earth.errors import InputError, MissingVariableError

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
#: ``scheme://`` (fsspec URLs: s3, gs, http(s), ...); a Windows drive ``C:\\`` has no ``//``.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: The fsspec filesystems of the schemes users meet, and the package that provides each.
_URL_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
_NETCDF_SUFFIXES = frozenset({".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5"})
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")
# HDF5 (NetCDF-4) may start after a user block of 512, 1024, 2048... bytes.
_HDF5_OFFSETS = (512, 1024, 2048)
_Y_MARKS = frozenset({"projection_y_coordinate", "latitude", "grid_latitude"})
_X_MARKS = frozenset({"projection_x_coordinate", "longitude", "grid_longitude"})


# ---------------------------------------------------------------------------------------------- opening


#: Points a spatial dim needs at least: a dim of one point is a 1-D field (or a single level) in disguise.
MIN_GRID_POINTS = 2


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


@contextlib.contextmanager
def reading(what: str, action: str = "") -> Iterator[None]:
    """Turn any exception raised by the libraries reading a user's file into an `InputError` naming it.

    xarray, netCDF4, h5py, zarr and the codecs raise whatever they like on a truncated file or a
    corrupted chunk (``OSError``, ``RuntimeError`` from a decompressor, ``KeyError``...): all of them
    mean the file cannot be read, which is for the user to fix, so none becomes a traceback.
    ``MemoryError`` is not about the file and passes through. ``action`` names what was being done
    when it is more than reading (``"convert into out.zarr"``).
    """
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as err:
        doing = f"read {what}" + (f" to {action}" if action else "")
        raise InputError(
            f"cannot {doing}: {type(err).__name__}: {_one_line(err)}; a file may be truncated or "
            "corrupted, re-create or re-download it"
        ) from err


def is_url(source: object) -> bool:
    """True for an fsspec URL such as ``s3://bucket/era5.zarr`` or ``https://host/store.zarr``."""
    return isinstance(source, str) and _URL.match(source) is not None


def _expand(source: str | Path | Sequence[str | Path]) -> list[Path | str]:
    """Paths named by ``source``: one path, a glob pattern, a URL, or a list of these.

    URLs stay strings (``Path`` would fold ``s3://b`` into ``s3:/b``) and are not checked here: only
    opening them asks the remote side.
    """
    items = [source] if isinstance(source, (str, Path)) else list(source)
    if not items:
        raise InputError("no input given; pass a zarr store, a NetCDF file or a glob of NetCDF files")
    paths: list[Path | str] = []
    for item in items:
        text = str(item)
        if is_url(item):
            paths.append(text.rstrip("/"))
        elif isinstance(item, str) and glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputError(f"no files match {text!r}; check the pattern and quote it in the shell")
            paths.extend(Path(m) for m in matches)
        elif not Path(text).exists():
            raise InputError(f"input {text!r} does not exist; check the path")
        else:
            paths.append(Path(text))
    return paths


def _format(path: Path | str) -> Literal["zarr", "netcdf"]:
    if isinstance(path, str):  # a URL (see _expand)
        if Path(path).suffix.lower() in _NETCDF_SUFFIXES:
            raise InputError(
                f"{path} is a remote NetCDF file; remote input must be a zarr store, convert it with "
                "`dydiff-earth prepare` (or download it first)"
            )
        return "zarr"
    if path.is_dir():
        if path.suffix == ".zarr" or any((path / m).exists() for m in _ZARR_MARKERS):
            return "zarr"
        raise InputError(f"directory {str(path)!r} is not a zarr store (no zarr.json or .zgroup)")
    try:
        with open(path, "rb") as f:
            start = f.read(_HDF5_OFFSETS[-1] + 8)
    except OSError as err:
        raise InputError(f"cannot read {str(path)!r}: {_one_line(err)}") from None
    head = start[:8]
    hdf5 = any(start[o : o + 8] == _NETCDF_MAGIC[-1] for o in _HDF5_OFFSETS)
    if hdf5 or any(head.startswith(magic) for magic in _NETCDF_MAGIC):
        if not head.startswith(b"CDF"):  # HDF5: NetCDF-4, or a radar network's own (ODIM, KNMI)
            _refuse_native(path)
        return "netcdf"
    if not head:
        raise InputError(f"{str(path)!r} is empty (0 bytes); re-create or re-download it")
    if path.suffix.lower() in _NETCDF_SUFFIXES:
        raise InputError(
            f"{str(path)!r} is not a NetCDF file (no NetCDF or HDF5 signature at its start); "
            "check that it is the file you meant and that it downloaded completely"
        )
    _refuse_native(path)
    raise InputError(
        f"unknown format of {str(path)!r}; give a zarr store (directory or .zarr) or a NetCDF file (.nc)"
    )


def _refuse_native(path: Path) -> None:
    """A native radar file (GIF, PGM, ODIM HDF5, ...) is read by ``prepare`` only: say so, and how."""
    from dydiff_earth import native  # which imports this module

    if fmt := native.detect(path):
        raise InputError(
            f"{str(path)!r} is a native radar file ({fmt}); convert it first: dydiff-earth prepare 'FILES' "
            "--coarsen N --output STORE (N = 4 for radar-4km-v1 from a 1 km composite), then give STORE"
        )


def _open_raw(paths: list[Path | str], chunks: dict[str, int] | None) -> xr.Dataset:
    """Open lazily with dask: one time step per chunk for NetCDF, the store's chunks for zarr."""
    formats = {_format(p) for p in paths}
    if len(formats) > 1:
        raise InputError("inputs mix zarr stores and NetCDF files; convert them to one format")
    fmt = formats.pop()
    if any(is_url(p) for p in paths):
        return _open_remote([str(p) for p in paths], chunks or {})
    # zarr: consolidated metadata where the store has it (one version of a store being appended to,
    # see `io.consolidation_quiet`), else array by array.
    kwargs: dict = {"engine": "zarr", "consolidated": None} if fmt == "zarr" else {}
    what = str(paths[0]) if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"
    if chunks is None and fmt == "netcdf":
        with reading(what), xr.open_dataset(paths[0], chunks=None) as peek:
            chunks = _netcdf_chunks(peek)
    elif chunks is None:
        chunks = {}
    try:
        with io.consolidation_quiet():
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
    except (InputError, MemoryError):
        raise
    except Exception as err:
        raise InputError(f"cannot open {what} as {fmt}: {type(err).__name__}: {_one_line(err)}") from err


def _open_remote(urls: list[str], chunks: dict[str, int]) -> xr.Dataset:
    """Zarr stores at fsspec URLs, opened lazily: only metadata is fetched here, chunks when read.

    Consolidated metadata first (one request: what cloud archives such as ARCO-ERA5 publish), else the
    store's own metadata, which needs a listing of the group (S3, GCS and plain HTTP directory
    listings give one).
    """
    for url in urls:
        scheme = url.split("://", 1)[0].lower()
        package = _URL_PACKAGES.get(scheme)
        if package is not None and importlib.util.find_spec(package) is None:
            raise InputError(f"reading {scheme}:// URLs needs the {package} package: pip install {package}")
    what = urls[0] if len(urls) == 1 else f"{len(urls)} stores ({urls[0]}, ...)"

    def open_one(url: str) -> xr.Dataset:
        try:
            return xr.open_dataset(url, engine="zarr", consolidated=True, chunks=chunks)
        except Exception:
            # No consolidated metadata (or no such store: the second attempt then says what is wrong).
            return xr.open_dataset(url, engine="zarr", consolidated=False, chunks=chunks)

    try:
        parts = [open_one(url) for url in urls]
        if len(parts) == 1:
            return parts[0]
        return xr.combine_by_coords(
            parts, data_vars="minimal", coords="minimal", compat="override", join="exact"
        )  # type: ignore[return-value]
    except (InputError, MemoryError):
        raise
    except Exception as err:
        raise InputError(f"cannot open {what} as zarr: {type(err).__name__}: {_one_line(err)}") from err


def _netcdf_chunks(peek: xr.Dataset) -> dict[str, int]:
    """One frame per dask chunk, unless the file stores several frames per chunk: then its own chunks,
    since splitting a stored chunk would decompress it once per frame (and xarray warns)."""
    tdim = find_time_dim(peek)
    for var in peek.data_vars.values():
        stored = var.encoding.get("chunksizes")
        if tdim in var.dims and stored and stored[var.dims.index(tdim)] > 1:
            return {}
    return {tdim: 1}


def find_time_dim(ds: xr.Dataset) -> str:
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


def find_spatial_dims(ds: xr.Dataset) -> tuple[str, str]:
    """``(y, x)`` dims: the usual name pairs first, then CF marks (``axis``, ``standard_name``)."""
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


def _check_grid(ds: xr.Dataset, ydim: str, xdim: str) -> None:
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    if min(ny, nx) < MIN_GRID_POINTS:
        raise InputError(
            f"the grid is {ny} x {nx} ({ydim} x {xdim}): a field needs two spatial dims of at least "
            f"{MIN_GRID_POINTS} points each; this looks like 1-D data, give a 2-D grid"
        )


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


def as_datetimes(ds: xr.Dataset, tdim: str) -> xr.Dataset:
    """``ds`` with its time coordinate as ``datetime64`` (cftime calendars converted) or an `InputError`."""
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


def check_times(times: np.ndarray, tdim: str) -> None:
    """Refuse missing, repeated or decreasing times, naming the first offending one."""
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


# ----------------------------------------------------------------------------------------- public API


def open_raw(source: str | Path | Sequence[str | Path], chunks: dict[str, int] | None = None) -> xr.Dataset:
    """Open a source lazily as it is (every variable, no checks beyond a readable format).

    Parameters
    ----------
    source, chunks
        As for `dydiff_earth.data.open_fields`.

    Returns
    -------
    xr.Dataset
        Lazy (dask) dataset; an unreadable file is an `InputError` naming it.
    """
    return _open_raw(_expand(source), chunks)


def open_source(
    source: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None = None,
    chunks: dict[str, int] | None = None,
    time: str | slice | None = None,
) -> tuple[xr.Dataset, list[str], str, str, str, str | None]:
    """Open, find dims, validate times and pick variables; no data is read.

    Parameters
    ----------
    source, variables, chunks, time
        As for `dydiff_earth.data.open_fields`.

    Returns
    -------
    tuple
        ``(dataset, names, time_dim, y_dim, x_dim, grid_mapping)``: the lazy dataset of the chosen
        variables (the grid-mapping variable a coordinate) and times, at least 2 frames; the variable
        names in order; the dims; the grid-mapping variable's name or None.
    """
    paths = _expand(source)
    raw = _open_raw(paths, chunks)
    tdim = find_time_dim(raw)
    ydim, xdim = find_spatial_dims(raw)
    _check_grid(raw, ydim, xdim)
    # Coordinates are read here (times): a damaged file may fail now rather than when opened.
    with reading(str(paths[0]) if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"):
        raw = as_datetimes(raw, tdim)
        times = raw[tdim].values
    check_times(times, tdim)
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
