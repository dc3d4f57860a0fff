"""Native radar files (ODIM HDF5, MeteoSwiss GIF, FMI PGM, ...) into a CF zarr store, through pysteps.

`ingest` reads the files a radar network publishes with pysteps' importers (never our own parsers),
converts them to a rain rate in mm h-1 and appends the frames the store lacks, in time order:

- the valid time of a file comes from its metadata (ODIM ``what/date`` and ``what/time``) or its name
  (a pattern of strftime fields, e.g. ``%Y%m%d%H%M``; ``?`` is any one character);
- the grid and CRS come from the importer's metadata and are written as `open_source` reads them: a
  ``crs`` grid-mapping variable (``crs_wkt``, ``proj4`` and CF attributes), ``y``/``x`` projection
  coordinates of the cell centres, 2-D ``lat``/``lon``;
- depths per accumulation period are scaled to one hour, reflectivity goes through Z = a R^b (pysteps'
  ``to_rainrate``; default coefficients the network's where the importer gives them, else
  Marshall-Palmer a = 200, b = 1.6), no-data is NaN;
- a bad file (empty, truncated, another product or grid, no valid time) is skipped and reported, the
  others are ingested; a store on another grid is refused.

The store is published with `io.publish`: a first ingest writes it atomically, later ones append to a
hard-linked clone that is swapped in whole, so a concurrent reader always sees a complete store.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import itertools
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from dydiff_earth import io
from dydiff_earth.errors import InputError
from dydiff_earth.sources import _expand, _one_line, parse_time_range

#: Marshall-Palmer Z = 200 R^1.6, the Z-R relation used when neither the option nor the file gives one.
MARSHALL_PALMER = (200.0, 1.6)

#: Rates from reflectivity below this (mm h-1) are set to 0: weak echoes near the noise floor (about
#: 3.6 dBZ with the FMI's Z = 223 R^1.53). Depths and rates measured as such are kept as published.
REFLECTIVITY_MIN_RATE = 0.05

#: Frames read into memory before they are written: bounds memory on a first ingest of a long archive.
BATCH_FRAMES = 16

VARIABLE = "precip"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TIME_ENCODING = {"units": "seconds since 1970-01-01T00:00:00", "dtype": "int64"}


@dataclass(frozen=True)
class RadarFormat:
    """A native format: its pysteps importer, importer arguments and where a file's valid time is."""

    name: str
    importer_kwargs: tuple[tuple[str, Any], ...] = ()
    #: file-name pattern of the valid time when the metadata holds none
    time_pattern: str = "%Y%m%d%H%M"
    #: the valid time is in ODIM ``what/date`` + ``what/time``
    odim_time: bool = False


#: Formats by pysteps importer name. Tested on real files: odim_hdf5, mch_gif, fmi_pgm.
FORMATS: dict[str, RadarFormat] = {
    f.name: f
    for f in (
        RadarFormat("odim_hdf5", (("qty", "RATE"),), odim_time=True),
        RadarFormat("opera_hdf5", (("qty", "RATE"),), odim_time=True),
        RadarFormat("dwd_hdf5", (("qty", "RATE"),), odim_time=True),
        RadarFormat("mch_gif", time_pattern="%y%j%H%M"),
        RadarFormat("fmi_pgm"),
        RadarFormat("knmi_hdf5", (("qty", "ACRR"), ("accutime", 5.0), ("pixelsize", 1000.0))),
        RadarFormat("bom_rf3", time_pattern="%Y%m%d_%H%M"),
    )
}
ALIASES = {
    "odim": "odim_hdf5",
    "opera": "opera_hdf5",
    "mch": "mch_gif",
    "fmi": "fmi_pgm",
    "knmi": "knmi_hdf5",
}

# MeteoSwiss names start with the product (AQC..., RZC...) and end in the accumulation in minutes
# (_00005); AQC/CPC hold depths per accumulation period, RZC/AZC rates.
_MCH_NAME = re.compile(r"^(?P<product>[A-Z]{3}).*_(?P<minutes>\d{5})\.")
_MCH_DEPTH_PRODUCTS = frozenset({"AQC", "CPC"})


@dataclass(frozen=True)
class IngestResult:
    """What `ingest` did: frames added, frames in the store, its newest time, and the files skipped."""

    output: Path
    added: int
    total: int
    newest: pd.Timestamp | None
    format: str
    skipped: tuple[tuple[Path, str], ...]


# -------------------------------------------------------------------------------------------- formats


def format_name(name: str) -> str:
    """The canonical format name of ``name`` (an importer name or an alias); unknown is an `InputError`."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        known = ", ".join([*FORMATS, *ALIASES])
        raise InputError(f"unknown radar format {name!r}; choose one of {known}")
    return key


def detect(path: Path) -> str | None:
    """The native format of a file from its first bytes (and ODIM/KNMI HDF5 structure), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x1f\x8b"):
            with gzip.open(path, "rb") as f:
                head = f.read(8)
    except (OSError, EOFError):
        return None
    if head.startswith(b"GIF8"):
        return "mch_gif"
    if head[:2] in (b"P5", b"P2"):
        return "fmi_pgm"
    if head.startswith(_HDF5_MAGIC):
        return _detect_hdf5(path)
    return None


def _detect_hdf5(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            conventions = f.attrs.get("Conventions", b"")
            conventions = conventions.decode() if isinstance(conventions, bytes) else str(conventions)
            if conventions.startswith("ODIM_H5"):
                return "odim_hdf5"
            if "image1" in f and "overview" in f:
                return "knmi_hdf5"
    except OSError:
        return None
    return None


def is_native(sources: str | Path | Sequence[str | Path], fmt: str | None = None) -> bool:
    """True when ``sources`` name native radar files (``fmt`` given, or the first file is detected)."""
    if fmt:
        return True
    try:
        paths = [p for p in _expand(sources) if isinstance(p, Path) and p.is_file()]
    except InputError:
        return False
    return any(detect(p) is not None for p in paths[:1])


def _choose_format(paths: Sequence[Path], fmt: str | None) -> str:
    if fmt:
        return format_name(fmt)
    found = Counter(f for f in map(detect, paths) if f is not None)
    if not found:
        raise InputError(
            f"no file among {len(paths)} is a known radar format; give --format ({', '.join(FORMATS)})"
        )
    if len(found) > 1:
        mix = ", ".join(f"{name} ({n} files)" for name, n in found.most_common())
        raise InputError(f"the files mix radar formats: {mix}; ingest each format into its own store")
    return next(iter(found))


# ------------------------------------------------------------------------------------------ valid time

_FIELDS = {"Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{2}", "d": r"\d{2}", "j": r"\d{3}", "H": r"\d{2}"}
_FIELDS |= {"M": r"\d{2}", "S": r"\d{2}"}


def _pattern_regex(pattern: str) -> tuple[re.Pattern[str], list[str]]:
    """A regex for a file-name pattern (strftime fields, ``?`` one character, ``*`` any run), its fields."""
    parts, fields, i = [], [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "%" and i + 1 < len(pattern):
            field = pattern[i + 1]
            if field not in _FIELDS:
                raise InputError(
                    f"time pattern {pattern!r}: %{field} is not supported; use %Y %y %m %d %j %H %M %S"
                )
            parts.append(f"({_FIELDS[field]})")
            fields.append(field)
            i += 2
            continue
        parts.append("." if char == "?" else ".*?" if char == "*" else re.escape(char))
        i += 1
    if not {"H", "M"} <= set(fields) or not ({"Y", "y"} & set(fields)):
        raise InputError(f"time pattern {pattern!r} needs a year (%Y or %y), %H and %M")
    return re.compile("".join(parts)), fields


def time_from_name(name: str, pattern: str) -> pd.Timestamp | None:
    """The valid time in a file name by ``pattern`` (searched anywhere in the name), or None."""
    regex, fields = _pattern_regex(pattern)
    match = regex.search(name)
    if match is None:
        return None
    try:
        when = datetime.strptime("".join(match.groups()), "".join(f"%{f}" for f in fields))
    except ValueError:
        return None
    return pd.Timestamp(when)


def _odim_time(path: Path) -> pd.Timestamp | None:
    """ODIM's nominal time (``what/date`` + ``what/time``, UTC), or None where the file lacks it."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            what = f["what"].attrs
            text = "".join(
                v.decode() if isinstance(v, bytes) else str(v) for v in (what["date"], what["time"])
            )
        return pd.Timestamp(datetime.strptime(text, "%Y%m%d%H%M%S"))
    except (OSError, KeyError, ValueError):
        return None


def _valid_time(path: Path, fmt: RadarFormat, pattern: str | None) -> pd.Timestamp | None:
    if pattern is None and fmt.odim_time:
        return _odim_time(path) or time_from_name(path.name, fmt.time_pattern)
    return time_from_name(path.name, pattern or fmt.time_pattern)


# -------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Frame:
    path: Path
    time: pd.Timestamp
    values: np.ndarray  # float32 (y, x), mm h-1, NaN no data
    meta: dict[str, Any]

    @property
    def grid(self) -> tuple:
        """What must agree between frames of one store: projection, shape and extent (to a centimetre)."""
        m = self.meta
        box = tuple(round(float(m[k]), 2) for k in ("x1", "y1", "x2", "y2", "xpixelsize", "ypixelsize"))
        return (_proj4(m["projection"]), self.values.shape, box, m.get("yorigin", "upper"))

    @property
    def product(self) -> str:
        m = self.meta
        parts = [m.get("institution"), m.get("product"), m.get("unit"), f"{float(m['accutime']):g} min"]
        return " ".join(str(p) for p in parts if p)


def _importer_kwargs(path: Path, fmt: RadarFormat) -> dict[str, Any]:
    kwargs = dict(fmt.importer_kwargs)
    if fmt.name == "mch_gif":
        match = _MCH_NAME.match(path.name)
        if match is None:
            raise ValueError("not a MeteoSwiss product name (e.g. AQC170310945F_00005.801.gif)")
        product = match["product"]
        depth = product in _MCH_DEPTH_PRODUCTS
        kwargs |= {"product": product, "unit": "mm" if depth else "mm/h", "accutime": int(match["minutes"])}
    if fmt.name in ("fmi_pgm", "bom_rf3"):
        kwargs["gzipped"] = path.suffix == ".gz"
    return kwargs


def _pysteps() -> tuple[Any, Any]:
    """pysteps' importer lookup and unit conversion (its import prints a line on stdout: kept quiet)."""
    import io as _stdio

    with contextlib.redirect_stdout(_stdio.StringIO()):
        from pysteps.io import get_method
        from pysteps.utils.conversion import to_rainrate
    return get_method, to_rainrate


def _read(
    path: Path, fmt: RadarFormat, when: pd.Timestamp, zr: tuple[float, float] | None, min_rate: float | None
) -> _Frame:
    """Import one file and convert it to a rain rate in mm h-1; any failure raises with the reason."""
    import warnings

    get_method, to_rainrate = _pysteps()
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    importer = get_method(fmt.name, "importer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pysteps warns about optional dependencies and NaN
        values, _, meta = importer(str(path), **_importer_kwargs(path, fmt))
        values = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)
        if values.ndim != 2:
            raise ValueError(f"the importer gave {values.ndim} dims, not one 2-D field")
        reflectivity = meta.get("unit") == "dBZ"
        a, b = zr or (meta.get("zr_a", MARSHALL_PALMER[0]), meta.get("zr_b", MARSHALL_PALMER[1]))
        rate, _ = to_rainrate(values, meta, zr_a=a, zr_b=b)
    threshold = min_rate if min_rate is not None else (REFLECTIVITY_MIN_RATE if reflectivity else 0.0)
    if threshold > 0:
        rate = np.where(rate < threshold, 0.0, rate)  # NaN stays NaN (a comparison with NaN is False)
    # The importer's metadata as published (unit: mm, dBZ, ...), with the Z-R relation actually used.
    meta = {**meta, "zr_a": a, "zr_b": b} if reflectivity else meta
    return _Frame(path, when, rate.astype(np.float32), meta)


# ----------------------------------------------------------------------------------------------- grid


def _proj4(text: str) -> str:
    return " ".join(str(text).split())


def _xy(meta: dict[str, Any], shape: tuple[int, int], coarsen: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre projection coordinates ``(y, x)`` of a pysteps grid, block means when ``coarsen`` > 1."""
    ny, nx = shape
    x = meta["x1"] + (np.arange(nx) + 0.5) * meta["xpixelsize"]
    if meta.get("yorigin", "upper") == "upper":
        y = meta["y2"] - (np.arange(ny) + 0.5) * meta["ypixelsize"]
    else:
        y = meta["y1"] + (np.arange(ny) + 0.5) * meta["ypixelsize"]
    if coarsen > 1:  # as data._coarsen: trim the edge, average the coordinates of each block
        y = y[: ny // coarsen * coarsen].reshape(-1, coarsen).mean(axis=1)
        x = x[: nx // coarsen * coarsen].reshape(-1, coarsen).mean(axis=1)
    return y, x


def _coords(meta: dict[str, Any], shape: tuple[int, int]) -> dict[str, xr.Variable]:
    """Projection coordinates with CF marks, and 2-D lat/lon of the cell centres."""
    import pyproj

    y, x = _xy(meta, shape)
    crs = pyproj.CRS.from_proj4(meta["projection"])
    lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(*np.meshgrid(x, y))
    unit = meta.get("cartesian_unit", "m")
    return {
        "y": xr.Variable("y", y, {"standard_name": "projection_y_coordinate", "units": unit, "axis": "Y"}),
        "x": xr.Variable("x", x, {"standard_name": "projection_x_coordinate", "units": unit, "axis": "X"}),
        "lat": xr.Variable(
            ("y", "x"), lat.astype(np.float32), {"standard_name": "latitude", "units": "degrees_north"}
        ),
        "lon": xr.Variable(
            ("y", "x"), lon.astype(np.float32), {"standard_name": "longitude", "units": "degrees_east"}
        ),
    }


def _crs_attrs(proj4: str) -> dict[str, Any]:
    """CF grid-mapping attributes: WKT (what `geo.crs_of` reads first), the PROJ string, CF parameters."""
    import warnings

    import pyproj

    crs = pyproj.CRS.from_proj4(proj4)
    attrs: dict[str, Any] = {"crs_wkt": crs.to_wkt(), "proj4": _proj4(proj4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # to_cf warns that some PROJ parameters have no CF name
        try:
            cf = crs.to_cf()
        except pyproj.exceptions.CRSError:
            cf = {}
    for key, value in cf.items():
        if key != "crs_wkt":  # standard_parallel of a two-parallel conic is a list
            attrs[key] = [float(v) for v in value] if isinstance(value, (list, tuple)) else value
    return attrs


def _dataset(frames: Sequence[_Frame], fmt: str, coarsen: int) -> xr.Dataset:
    """Frames of one grid as a CF dataset (float32 mm h-1), block-averaged when ``coarsen`` > 1."""
    from dydiff_earth.data import _coarsen

    meta = frames[0].meta
    comment = "NaN outside radar coverage"
    if meta.get("unit") == "dBZ":
        comment += f"; from reflectivity through Z = {meta['zr_a']:g} R^{meta['zr_b']:g}"
    precip_attrs = {
        "standard_name": "rainfall_rate",
        "long_name": "radar rainfall rate",
        "units": "mm h-1",
        "grid_mapping": "crs",
        "comment": comment,
    }
    times = pd.DatetimeIndex([f.time for f in frames]).as_unit("ns")
    ds = xr.Dataset(
        {VARIABLE: (("time", "y", "x"), np.stack([f.values for f in frames]), precip_attrs)},
        coords={
            "time": ("time", times, {"standard_name": "time", "axis": "T"}),
            "crs": ((), np.int32(0), _crs_attrs(meta["projection"])),
            **_coords(meta, frames[0].values.shape),
        },
        attrs={
            "Conventions": "CF-1.8",
            "institution": str(meta.get("institution", "")),
            "source": f"weather radar composite, {fmt} files read with pysteps' importer",
            "dydiff_radar_format": fmt,
            "dydiff_radar_product": frames[0].product,
            "dydiff_coarsen": coarsen,
        },
    )
    if coarsen > 1:
        ds = _coarsen(ds, coarsen, "y", "x")
        for name in (VARIABLE, "lat", "lon"):
            ds[name] = ds[name].astype(np.float32)
    return ds


# ---------------------------------------------------------------------------------------------- store


@dataclass(frozen=True)
class _Store:
    """What an existing store fixes for the frames appended to it."""

    times: pd.DatetimeIndex
    y: np.ndarray
    x: np.ndarray
    proj4: str
    product: str
    coarsen: int | None  # None: a store not made from radar files (e.g. `prepare` of a NetCDF file)

    @classmethod
    def read(cls, path: Path) -> _Store | None:
        if not path.exists():
            return None
        try:
            with io.open_zarr(path) as ds:
                return cls(
                    pd.DatetimeIndex(ds["time"].values),
                    ds["y"].values,
                    ds["x"].values,
                    _proj4(ds["crs"].attrs.get("proj4", "")),
                    str(ds.attrs.get("dydiff_radar_product", "")),
                    int(ds.attrs["dydiff_coarsen"]) if "dydiff_coarsen" in ds.attrs else None,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path} is not a radar store to append to: {_one_line(exc)}") from None

    def same_grid(self, frame: _Frame, coarsen: int) -> bool:
        y, x = _xy(frame.meta, frame.values.shape, coarsen)
        return (
            y.shape == self.y.shape
            and x.shape == self.x.shape
            and np.allclose(y, self.y, rtol=0, atol=0.01)
            and np.allclose(x, self.x, rtol=0, atol=0.01)
            and _proj4(frame.meta["projection"]) == self.proj4
        )

    def describe(self) -> str:
        return _describe(self.y, self.x, self.proj4)


def _describe(y: np.ndarray, x: np.ndarray, proj4: str) -> str:
    """A grid in a few words: ``175x175 from x=302000, y=998000 (+proj=lcc)``."""
    name = next((p for p in proj4.split() if p.startswith("+proj=")), "unknown projection")
    return f"{y.size}x{x.size} from x={x[0]:.0f}, y={y[0]:.0f} ({name})"


@contextlib.contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    """One ingest per store at a time (an ``flock`` on a hidden sibling file, dropped if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- ingest


def _plan(
    paths: Sequence[Path], fmt: RadarFormat, pattern: str | None, window: slice | None, store: _Store | None
) -> tuple[list[tuple[pd.Timestamp, Path]], list[tuple[Path, str]]]:
    """The files to read, in time order, and those skipped before reading (no time, duplicate, late)."""
    skipped: list[tuple[Path, str]] = []
    by_time: dict[pd.Timestamp, Path] = {}
    for path in paths:
        when = _valid_time(path, fmt, pattern)
        if when is None:
            where = "its metadata or name" if pattern is None and fmt.odim_time else "its name"
            shown = pattern or fmt.time_pattern
            skipped.append((path, f"no valid time in {where} (pattern {shown!r}; see --time-pattern)"))
        elif when in by_time:
            skipped.append((path, f"same valid time {when.isoformat()} as {by_time[when].name}"))
        else:
            by_time[when] = path
    todo = sorted(by_time.items())
    if window is not None and todo:
        todo = todo[pd.DatetimeIndex([t for t, _ in todo]).slice_indexer(window.start, window.stop)]
    if store is not None and len(store.times):
        have, newest = set(store.times), store.times[-1]
        for when, path in todo:
            if when < newest and when not in have:
                reason = (
                    f"valid time {when.isoformat()} is before the store's newest frame {newest.isoformat()}"
                )
                skipped.append((path, f"{reason}; rebuild the store to insert it"))
        todo = [(t, p) for t, p in todo if t > newest]
    return todo, skipped


def _read_batch(
    todo: Sequence[tuple[pd.Timestamp, Path]],
    fmt: RadarFormat,
    zr: tuple[float, float] | None,
    min_rate: float | None,
    skipped: list[tuple[Path, str]],
) -> list[_Frame]:
    frames = []
    for when, path in todo:
        try:
            frames.append(_read(path, fmt, when, zr, min_rate))
        except Exception as exc:  # importers fail in their own ways; the reason names the file's fault
            skipped.append((path, f"cannot read as {fmt.name}: {_one_line(exc)}"))
    return frames


def _batches(
    todo: list[tuple[pd.Timestamp, Path]],
    fmt: RadarFormat,
    options: dict[str, Any],
    store: _Store | None,
    skipped: list[tuple[Path, str]],
) -> Iterator[xr.Dataset]:
    """Datasets of up to `BATCH_FRAMES` good frames, all on one grid and product; bad files skipped.

    The grid and product are the store's, or else the most common of the first frames read. When a
    store exists and no file is on its grid, that is a refusal (`InputError`), not a skip.
    """
    coarsen = options["coarsen"]
    grid: tuple | None = None
    product = store.product if store is not None and store.product else None
    off_grid: _Frame | None = None
    written = False
    for start in range(0, len(todo), BATCH_FRAMES):
        frames = _read_batch(
            todo[start : start + BATCH_FRAMES], fmt, options["zr"], options["min_rate"], skipped
        )
        if grid is None and frames:
            fits = [f for f in frames if store is None or store.same_grid(f, coarsen)]
            if fits:
                grid, top = Counter((f.grid, f.product) for f in fits).most_common(1)[0][0]
                product = product or top
        good = []
        for frame in frames:
            if grid is None or frame.grid != grid:
                off_grid = off_grid or frame
                y, x = _xy(frame.meta, frame.values.shape)
                skipped.append((frame.path, f"another grid ({_describe(y, x, frame.grid[0])})"))
            elif frame.product != product:
                skipped.append((frame.path, f"another product ({frame.product}, not {product})"))
            else:
                good.append(frame)
        if good:
            written = True
            yield _dataset(good, fmt.name, coarsen)
    if store is not None and not written and off_grid is not None:
        y, x = _xy(off_grid.meta, off_grid.values.shape, coarsen)
        raise InputError(
            f"{off_grid.path.name} is on grid {_describe(y, x, _proj4(off_grid.meta['projection']))}, "
            f"the store's is {store.describe()}; ingest these files into a new store"
        )


def _write(ds: xr.Dataset, target: Path, *, append: bool) -> None:
    """Write or append one batch: one frame per chunk, times in seconds since 1970 (exact on appends)."""
    if append:
        ds = ds.drop_vars([n for n, v in ds.variables.items() if "time" not in v.dims])
        io.to_zarr(ds, target, append_dim="time", mode="a")
        return
    encoding = {
        "time": _TIME_ENCODING,
        VARIABLE: {"dtype": "float32", "chunks": (1, ds.sizes["y"], ds.sizes["x"])},
    }
    io.to_zarr(ds, target, mode="w-", encoding=encoding)


def ingest(
    sources: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    format: str | None = None,
    time_pattern: str | None = None,
    zr: tuple[float, float] | None = None,
    min_rate: float | None = None,
    coarsen: int = 1,
    time: str | None = None,
) -> IngestResult:
    """Append the frames of native radar files that a zarr store lacks (creating it on the first call).

    Parameters
    ----------
    sources : str, Path or sequence of them
        Files or globs (quoted in the shell) of one native format.
    output : str or Path
        The zarr store; created atomically, then grown by atomic swaps (readers always see a whole store).
    format : str, optional
        A key of `FORMATS` or `ALIASES`; default: detected from the files (a mix is an `InputError`).
    time_pattern : str, optional
        The valid time in the file names (``%Y %y %m %d %j %H %M %S``, ``?`` any one character),
        searched anywhere in the name; default: ODIM metadata, else the format's usual name.
    zr : (a, b), optional
        Z = a R^b for reflectivity; default the network's (importer metadata), else Marshall-Palmer.
    min_rate : float, optional
        Rates below it (mm h-1) become 0; default `REFLECTIVITY_MIN_RATE` for reflectivity, else none.
    coarsen : int
        Block-mean factor, as for `dydiff_earth.data.prepare`; a store keeps the factor it was made with.
    time : str, optional
        ``"START:END"`` valid times to ingest (see `parse_time_range`).

    Returns
    -------
    IngestResult
        Frames added (``precip``, float32 mm h-1, dims ``time, y, x``), the store's size and newest
        time, the format, and each skipped file with its reason.
    """
    if coarsen < 1:
        raise InputError(f"coarsen must be a positive integer, got {coarsen}")
    if zr is not None and not (len(zr) == 2 and all(v > 0 for v in zr)):
        raise InputError(f"Z-R coefficients must be two positive numbers a,b (Z = a R^b), got {zr}")
    if time_pattern:
        _pattern_regex(time_pattern)  # a bad pattern is an error before any file is read
    target = Path(output)
    paths = [p for p in _expand(sources) if isinstance(p, Path) and p.is_file()]
    if not paths:
        raise InputError(f"no files in {sources!r}")
    fmt = FORMATS[_choose_format(paths, format)]
    window = parse_time_range(time) if time else None
    options = {"zr": zr, "min_rate": min_rate, "coarsen": coarsen}
    with _store_lock(target):
        _clean_leftovers(target)
        store = _Store.read(target)
        if store is not None and store.coarsen not in (None, coarsen):
            raise InputError(f"{target} was made with coarsen {store.coarsen}, not {coarsen}; give the same")
        todo, skipped = _plan(paths, fmt, time_pattern, window, store)
        added, newest = 0, store.times[-1] if store is not None and len(store.times) else None
        batches = _batches(todo, fmt, options, store, skipped)
        first = next(batches, None)
        if first is not None:
            with io.publish(target) as tmp:
                if store is not None:
                    io.link_tree(target, tmp)
                for ds in itertools.chain([first], batches):
                    _write(ds, tmp, append=store is not None or added > 0)
                    added += ds.sizes["time"]
                    newest = pd.Timestamp(ds["time"].values[-1])
    total = (len(store.times) if store is not None else 0) + added
    return IngestResult(target, added, total, newest, fmt.name, tuple(skipped))


def _clean_leftovers(target: Path) -> None:
    """Remove temporaries of an ingest killed before its swap (call with the store lock held)."""
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
