"""Maps and animations of ensemble forecasts (cartopy where there is a CRS); never computes scores.

Map data comes only from local files: cartopy's default Natural Earth download would hang or fail on
machines without network, so features are read straight from shapefiles found on disk (Debian's
``python-cartopy-data`` ships GSHHS coastlines and lakes under ``/usr/share/cartopy/data``) and a map is
drawn without them, with one warning, when none are found.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cartopy
import cartopy.crs as ccrs
import cartopy.feature as cfeature
import cartopy.io.shapereader as shapereader
import matplotlib
import numpy as np
import pandas as pd
import pyproj
import shapely
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from dydiff_earth import schema
from dydiff_earth.io import publish

logger = logging.getLogger(__name__)

#: Folders searched for offline map data, after cartopy's own configured folders.
LOCAL_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/cartopy/data"),)

#: Pixels per inch of every PNG and GIF frame; a panel is ``PANEL_WIDTH`` inches wide.
DPI = 100
PANEL_WIDTH = 4.8
#: Inches above and below a map for titles and the colorbar.
MARGIN_HEIGHT = 1.3

#: Rain-rate class boundaries in mm h-1; below the first one is drawn transparent (dry).
RAIN_LEVELS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_RAIN_COLOURS = ("#c6dbef", "#6baed6", "#2171b5", "#41ab5d", "#fed976", "#fd8d3c", "#e31a1c", "#800026")
_RAIN_OVER = "#d400d4"
#: Colour of NaN (no coverage): light grey, so that "no data" never reads as "dry".
_NO_DATA = (0.82, 0.82, 0.82, 1.0)

_TEMPERATURE_UNITS = {"k", "kelvin", "degc", "degree_celsius", "degrees_celsius", "celsius", "°c", "deg c"}

# Candidate shapefiles, relative to a cartopy data folder, best first: moderate resolution before the
# coarsest, which still places coasts within tens of km.
_COASTLINES = (
    "shapefiles/natural_earth/physical/ne_50m_coastline.shp",
    "shapefiles/gshhs/l/GSHHS_l_L1.shp",
    "shapefiles/gshhs/i/GSHHS_i_L1.shp",
    "shapefiles/natural_earth/physical/ne_10m_coastline.shp",
    "shapefiles/natural_earth/physical/ne_110m_coastline.shp",
    "shapefiles/gshhs/c/GSHHS_c_L1.shp",
)
_BORDERS = tuple(
    f"shapefiles/natural_earth/cultural/ne_{s}_admin_0_boundary_lines_land.shp"
    for s in ("50m", "10m", "110m")
)
_LAKES = (
    "shapefiles/gshhs/l/GSHHS_l_L2.shp",
    "shapefiles/natural_earth/physical/ne_50m_lakes.shp",
    "shapefiles/gshhs/i/GSHHS_i_L2.shp",
    "shapefiles/natural_earth/physical/ne_10m_lakes.shp",
    "shapefiles/gshhs/c/GSHHS_c_L2.shp",
)
_FEATURE_STYLE = {
    "coastline": {"edgecolor": "black", "linewidth": 0.7},
    "border": {"edgecolor": "0.25", "linewidth": 0.6, "linestyle": "--"},
    "lake": {"edgecolor": "#08306b", "linewidth": 0.6},
    "graticule": {"edgecolor": "0.45", "linewidth": 0.4, "linestyle": ":"},
}

_warned_no_map_data = False


# --------------------------------------------------------------------------------------------- map data


def _candidate_dirs() -> list[Path]:
    dirs = [Path(cartopy.config["pre_existing_data_dir"]), Path(cartopy.config["data_dir"])]
    return [*dirs, *LOCAL_DATA_DIRS]


def _first_existing(names: Sequence[str]) -> Path | None:
    for folder in _candidate_dirs():
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def configure_cartopy() -> bool:
    """Point cartopy at local map data; True when offline coastlines are available.

    Sets ``cartopy.config['pre_existing_data_dir']`` to the first folder of ``LOCAL_DATA_DIRS`` that holds
    shapefiles, unless cartopy's configured folders already hold coastlines. Plotting itself reads the
    shapefiles it finds and never asks cartopy to download.
    """
    configured = _candidate_dirs()[:2]
    if not any((folder / name).is_file() for folder in configured for name in _COASTLINES):
        for folder in LOCAL_DATA_DIRS:
            if (folder / "shapefiles").is_dir():
                cartopy.config["pre_existing_data_dir"] = folder
                break
    return _first_existing(_COASTLINES) is not None


@functools.lru_cache(maxsize=16)
def _read_feature(path: Path, kind: str) -> cfeature.Feature:
    # pyshp logs a warning per malformed GSHHS lake ring; those rings still draw correctly.
    logging.getLogger("shapefile").setLevel(logging.ERROR)
    geometries = list(shapereader.Reader(str(path)).geometries())
    return cfeature.ShapelyFeature(geometries, ccrs.PlateCarree(), facecolor="none", **_FEATURE_STYLE[kind])


def _map_features() -> list[cfeature.Feature]:
    """The coastline, border and lake features found on disk; warns once when there are none."""
    global _warned_no_map_data
    configure_cartopy()
    found = {
        kind: _first_existing(names)
        for kind, names in (("coastline", _COASTLINES), ("border", _BORDERS), ("lake", _LAKES))
    }
    features = [_read_feature(path, kind) for kind, path in found.items() if path is not None]
    if not features and not _warned_no_map_data:
        _warned_no_map_data = True
        msg = (
            "no offline map data found (searched cartopy's data folders and "
            f"{', '.join(map(str, LOCAL_DATA_DIRS))}); maps are drawn without coastlines. "
            "Install Debian's python-cartopy-data or set cartopy.config['pre_existing_data_dir']."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
    return features


# ------------------------------------------------------------------------------------------------- CRS


class _GridProjection(ccrs.Projection):
    """Any PROJ definition as a cartopy projection, bounded by a box around the data grid.

    cartopy derives a projection's bounds from the CRS's area of use, which a custom radar CRS lacks; the
    grid's own extent (padded) serves instead.
    """

    def __init__(self, crs: pyproj.CRS, bounds: tuple[float, float, float, float]) -> None:
        super().__init__(crs.to_wkt())
        self.bounds = bounds
        self.threshold = min(bounds[1] - bounds[0], bounds[3] - bounds[2]) / 1000.0


def _source_crs(attrs: dict[str, Any], name: str) -> pyproj.CRS:
    """The pyproj CRS of a CF grid-mapping variable: WKT first (CF's authority), then proj4, then CF attrs."""
    try:
        for key in ("crs_wkt", "spatial_ref"):
            if attrs.get(key):
                return pyproj.CRS.from_wkt(str(attrs[key]))
        for key in ("proj4", "proj4_params", "proj4text", "proj4_string"):
            if attrs.get(key):
                return pyproj.CRS.from_proj4(str(attrs[key]))
        return pyproj.CRS.from_cf(attrs)
    except pyproj.exceptions.CRSError as err:
        raise ValueError(f"grid-mapping variable {name!r} does not define a CRS: {err}") from err


def _globe(params: dict[str, Any]) -> ccrs.Globe:
    towgs84 = params.get("towgs84")
    if "a" in params or "R" in params:
        a = float(params.get("a", params.get("R")))
        b = float(params.get("b", a * (1 - 1 / float(params["rf"])) if "rf" in params else a))
        return ccrs.Globe(semimajor_axis=a, semiminor_axis=b, ellipse=None, towgs84=towgs84)
    return ccrs.Globe(ellipse=params.get("ellps", "WGS84"), datum=params.get("datum"), towgs84=towgs84)


def _stereographic(source: pyproj.CRS) -> ccrs.Projection | None:
    """cartopy's own Stereographic class when it reproduces ``source`` to a metre, else None."""
    with warnings.catch_warnings():
        # to_dict() warns that PROJ strings are lossy; the point check below catches any loss.
        warnings.simplefilter("ignore", UserWarning)
        params = source.to_dict()
    if params.get("proj") != "stere":
        return None
    lat_0 = float(params.get("lat_0", 0.0))
    polar = abs(lat_0) == 90.0
    candidate = ccrs.Stereographic(
        central_latitude=lat_0,
        central_longitude=float(params.get("lon_0", 0.0)),
        false_easting=float(params.get("x_0", 0.0)),
        false_northing=float(params.get("y_0", 0.0)),
        true_scale_latitude=float(params["lat_ts"]) if polar and "lat_ts" in params else None,
        scale_factor=float(params["k_0"]) if "k_0" in params and "lat_ts" not in params else None,
        globe=_globe(params),
    )
    # Check on points rather than comparing definitions: equal maps can have differently written strings.
    lons, lats = (
        np.array([params.get("lon_0", 0.0), 10.0, -60.0]),
        np.array([60.0, 50.0, 70.0]) * np.sign(lat_0 or 1.0),
    )
    expected = pyproj.Transformer.from_crs("EPSG:4326", source, always_xy=True).transform(lons, lats)
    got = candidate.transform_points(ccrs.Geodetic(), lons, lats)
    return candidate if np.allclose(got[:, :2].T, expected, atol=1.0) else None


def _spatial_coords(ds: xr.Dataset, da: xr.DataArray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """1-D coordinate values of the variable's last two dims (y, x), None where there is none."""
    ydim, xdim = da.dims[-2:]
    y = np.asarray(ds[ydim].values, float) if ydim in ds.coords and ds[ydim].ndim == 1 else None
    x = np.asarray(ds[xdim].values, float) if xdim in ds.coords and ds[xdim].ndim == 1 else None
    return y, x


def _edges(values: np.ndarray | None, n: int) -> tuple[float, float]:
    v = np.arange(n, dtype=float) if values is None else values
    step = abs(float(v[1] - v[0])) if v.size > 1 else 1.0
    return float(v.min()) - step / 2, float(v.max()) + step / 2


def _geographic_kind(ds: xr.Dataset, da: xr.DataArray) -> str | None:
    """ "grid" for 1-D latitude/longitude dims, "curvilinear" for 2-D lat/lon coords, else None."""
    ydim, xdim = da.dims[-2:]
    if (ydim, xdim) in (("latitude", "longitude"), ("lat", "lon")):
        return "grid"
    names = {str(n) for n in da.coords} | {str(n) for n in ds.coords}
    if {"lat", "lon"} <= names or {"latitude", "longitude"} <= names:
        return "curvilinear"
    return None


def _grid_mapping(da: xr.DataArray) -> str | None:
    # xarray moves the attribute to encoding when opened with decode_coords="all".
    return da.attrs.get("grid_mapping") or da.encoding.get("grid_mapping")


def crs_of(ds: xr.Dataset, var: str) -> ccrs.CRS | None:
    """The cartopy CRS of a variable's grid, or None for a field without geography.

    Parameters
    ----------
    ds
        A dataset holding ``var`` and, where it names one, its CF grid-mapping variable.
    var
        The variable; its last two dims are (y, x).

    Returns
    -------
    From the variable's ``grid_mapping`` (``crs_wkt``, ``proj4``/``proj4_params`` or CF attributes):
    ``PlateCarree`` for a geographic CRS, cartopy's ``Stereographic`` for (polar) stereographic, otherwise
    an exact projection built from the PROJ definition and bounded around the grid. Without a grid
    mapping: ``PlateCarree`` when the field has latitude/longitude coordinates, else None.
    """
    da = ds[var]
    name = _grid_mapping(da)
    if name is None:
        return ccrs.PlateCarree() if _geographic_kind(ds, da) else None
    if name not in ds.variables:
        raise ValueError(f"variable {var!r} names grid mapping {name!r}, which the dataset lacks")
    source = _source_crs(dict(ds[name].attrs), name)
    if source.is_geographic and not source.is_derived:
        return ccrs.PlateCarree()
    stereographic = _stereographic(source)
    if stereographic is not None:
        return stereographic
    y, x = _spatial_coords(ds, da)
    (x0, x1), (y0, y1) = _edges(x, da.shape[-1]), _edges(y, da.shape[-2])
    pad_x, pad_y = (x1 - x0) / 2, (y1 - y0) / 2
    return _GridProjection(source, (x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y))


# ------------------------------------------------------------------------------------------ grid, style


@dataclass(frozen=True)
class _Grid:
    """How a variable's (y, x) plane is drawn.

    ``kind`` is "grid" (1-D coords in ``crs``), "curvilinear" (2-D lon/lat in degrees) or "plain" (an image
    without geography); ``extent`` holds the cell edges (x0, x1, y0, y1) in the axes' units.
    """

    kind: str
    crs: ccrs.CRS | None
    extent: tuple[float, float, float, float]
    x: np.ndarray
    y: np.ndarray
    regular: bool
    lonlat: tuple[np.ndarray, np.ndarray] | None = None
    labels: tuple[str, str] = ("x", "y")
    features: tuple[cfeature.Feature, ...] = ()

    @property
    def aspect(self) -> float:
        x0, x1, y0, y1 = self.extent
        return (y1 - y0) / (x1 - x0)


def _is_regular(v: np.ndarray) -> bool:
    steps = np.diff(v)
    return v.size < 3 or bool(np.allclose(steps, steps[0], rtol=1e-3, atol=0))


def _grid_of(ds: xr.Dataset, var: str) -> _Grid:
    da = ds[var]
    ydim, xdim = (str(d) for d in da.dims[-2:])
    crs = crs_of(ds, var)
    if crs is not None and _grid_mapping(da) is None and _geographic_kind(ds, da) == "curvilinear":
        lat_name, lon_name = ("lat", "lon") if "lat" in ds.coords else ("latitude", "longitude")
        lon, lat = np.asarray(ds[lon_name].values, float), np.asarray(ds[lat_name].values, float)
        extent = (np.nanmin(lon), np.nanmax(lon), np.nanmin(lat), np.nanmax(lat))
        features = _projected_features(ccrs.PlateCarree(), extent)
        return _Grid("curvilinear", crs, extent, lon, lat, False, lonlat=(lon, lat), features=features)
    y, x = _spatial_coords(ds, da)
    y = np.arange(da.shape[-2], dtype=float) if y is None else y
    x = np.arange(da.shape[-1], dtype=float) if x is None else x
    if isinstance(crs, ccrs.PlateCarree) and x.max() > 180.0:
        # 0..360 longitudes: centre the map on the date line so the field stays one piece.
        crs, x = ccrs.PlateCarree(central_longitude=180.0), x - 180.0
    (x0, x1), (y0, y1) = _edges(x, x.size), _edges(y, y.size)
    if crs is None:
        return _Grid("plain", None, (x0, x1, y0, y1), x, y, _is_regular(x) and _is_regular(y), (xdim, ydim))
    features = _projected_features(crs, (x0, x1, y0, y1))
    return _Grid("grid", crs, (x0, x1, y0, y1), x, y, _is_regular(x) and _is_regular(y), features=features)


def _lonlat_box(crs: ccrs.CRS, extent: tuple[float, float, float, float]) -> tuple[float, ...] | None:
    """A lon/lat box holding the projected ``extent``, with margins; None where it would wrap the globe."""
    x0, x1, y0, y1 = extent
    t = np.linspace(0.0, 1.0, 33)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t, np.full_like(t, x0)])
    ys = np.concatenate([np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1), y1 - (y1 - y0) * t])
    points = ccrs.PlateCarree().transform_points(crs, xs, ys)
    ok = np.isfinite(points[:, :2]).all(axis=1)
    lon, lat = points[ok, 0], points[ok, 1]
    poles = crs.transform_points(ccrs.PlateCarree(), np.zeros(2), np.array([90.0, -90.0]))
    holds_pole = ((poles[:, 0] > x0) & (poles[:, 0] < x1) & (poles[:, 1] > y0) & (poles[:, 1] < y1)).any()
    if not lon.size or holds_pole or lon.max() - lon.min() > 300:
        return None
    # Margins of 2 degrees: a projected box's edges bulge between the sampled points.
    lon0, lon1 = max(lon.min() - 2, -180.0), min(lon.max() + 2, 180.0)
    return (lon0, lon1, max(lat.min() - 2, -90.0), min(lat.max() + 2, 90.0))


def _graticule(box: tuple[float, ...] | None) -> cfeature.Feature:
    """Meridians and parallels, about 3 to 8 across ``box``: they place a map where coastlines are sparse."""
    lon0, lon1, lat0, lat1 = box if box is not None else (-180.0, 180.0, -90.0, 90.0)
    span = max(lon1 - lon0, lat1 - lat0)
    step = next((s for s in (0.5, 1.0, 2.0, 5.0, 10.0, 15.0) if span / s <= 8), 30.0)
    lons = np.arange(np.floor(lon0 / step) * step, lon1 + step, step)
    lats = np.arange(np.floor(lat0 / step) * step, lat1 + step, step)
    dense_lat, dense_lon = np.linspace(max(lat0, -89.9), min(lat1, 89.9), 100), np.linspace(lon0, lon1, 200)
    lines = [shapely.LineString(np.column_stack([np.full(100, lon), dense_lat])) for lon in lons]
    lats = lats[np.abs(lats) < 90]
    lines += [shapely.LineString(np.column_stack([dense_lon, np.full(200, lat)])) for lat in lats]
    return cfeature.ShapelyFeature(lines, ccrs.PlateCarree(), facecolor="none", **_FEATURE_STYLE["graticule"])


def _projected_features(crs: ccrs.CRS, extent: tuple[float, float, float, float]) -> tuple[Any, ...]:
    """Map features projected into ``crs`` and clipped to ``extent`` once, for every panel of a grid.

    cartopy would otherwise re-project every coastline for each new axes, which dominates drawing time.
    """
    centred = isinstance(crs, ccrs.PlateCarree) and crs.proj4_params.get("lon_0", 0.0) != 0.0
    box = None if centred else _lonlat_box(crs, extent)
    clip = shapely.box(extent[0], extent[2], extent[1], extent[3])
    projected = []
    for feature in [*_map_features(), _graticule(box)]:
        geometries = []
        for geometry in feature.intersecting_geometries(box):
            # Outlines only, projected as lines: cartopy's polygon projection relies on ring orientation,
            # which GSHHS lake rings get wrong, and turns such lakes into stray fragments.
            outline = geometry.boundary if geometry.geom_type in ("Polygon", "MultiPolygon") else geometry
            clipped = crs.project_geometry(outline, ccrs.PlateCarree()).intersection(clip)
            if not clipped.is_empty:
                geometries.append(clipped)
        projected.append(cfeature.ShapelyFeature(geometries, crs, **feature.kwargs))
    return tuple(projected)


def _oriented(grid: _Grid, values: np.ndarray) -> np.ndarray:
    """Rows south to north and columns west to east, as origin="lower" expects (ERA5 latitude descends)."""
    v = np.asarray(values, dtype=float)
    if grid.kind == "curvilinear":
        return v
    if grid.y.size > 1 and grid.y[0] > grid.y[-1]:
        v = v[::-1]
    if grid.x.size > 1 and grid.x[0] > grid.x[-1]:
        v = v[:, ::-1]
    return v


@dataclass(frozen=True)
class _Style:
    cmap: mcolors.Colormap
    norm: mcolors.Normalize
    extend: str
    label: str
    ticks: Sequence[float] | None = None


def _units(attrs: dict[str, Any]) -> str:
    return str(attrs.get("units", "")).strip()


def _is_precipitation(attrs: dict[str, Any]) -> bool:
    units = _units(attrs).lower().replace(" ", "")
    standard_name = str(attrs.get("standard_name", "")).lower()
    rate_units = {"mmh-1", "mm/h", "mmh**-1", "mmhr-1", "mm/hr", "mmh^-1"}
    return units in rate_units or "precipitation" in standard_name or "rain" in standard_name


def _finite_range(reference: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(reference, dtype=float)
    finite = finite[np.isfinite(finite)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _cmap(name: str | mcolors.Colormap) -> mcolors.Colormap:
    cmap = matplotlib.colormaps[name] if isinstance(name, str) else name
    return cmap.with_extremes(bad=_NO_DATA)


def _style_for(name: str, attrs: dict[str, Any], product: str, reference: np.ndarray) -> _Style:
    """Colour map and scale for ``product`` ("value", "spread" or "probability") of a variable.

    ``reference`` holds the values that set the limits (the truth, when members are shown next to it).
    """
    units = _units(attrs)
    label = f"{attrs.get('long_name') or name} ({units or '1'})"
    if product == "probability":
        levels = np.linspace(0.0, 1.0, 11)
        cmap = _cmap(matplotlib.colormaps["YlGnBu"].resampled(10))
        return _Style(cmap, mcolors.BoundaryNorm(levels, cmap.N), "neither", "probability (1)", levels[::2])
    if product == "spread":
        vmax = max(_finite_range(reference)[1], 1e-6)
        label = f"ensemble spread ({units or '1'})"
        return _Style(_cmap("viridis"), mcolors.Normalize(0.0, vmax), "max", label)
    if _is_precipitation(attrs):
        # Dry (< 0.1 mm h-1) is transparent, so the map shows through; no coverage is grey.
        cmap = mcolors.ListedColormap(_RAIN_COLOURS).with_extremes(
            under=(1.0, 1.0, 1.0, 0.0), over=_RAIN_OVER, bad=_NO_DATA
        )
        return _Style(cmap, mcolors.BoundaryNorm(RAIN_LEVELS, cmap.N), "max", label, RAIN_LEVELS)
    lo, hi = _finite_range(reference)
    if units.lower() in _TEMPERATURE_UNITS:
        # Diverging about the field's mean: warm and cold anomalies stand out whatever the season.
        centre = float(np.nanmean(reference)) if np.isfinite(reference).any() else 0.0
        half = max(hi - centre, centre - lo, 1e-6)
        return _Style(_cmap("RdBu_r"), mcolors.Normalize(centre - half, centre + half), "neither", label)
    if lo < 0.0 < hi:
        half = max(-lo, hi)
        return _Style(_cmap("RdBu_r"), mcolors.Normalize(-half, half), "neither", label)
    return _Style(_cmap("viridis"), mcolors.Normalize(lo, hi if hi > lo else lo + 1.0), "neither", label)


# -------------------------------------------------------------------------------------------- drawing


def _figure_size(n_panels: int, aspect: float) -> tuple[float, float]:
    """Figure size in inches: panels of ``PANEL_WIDTH`` in rows of at most 5; whole pixels at ``DPI``."""
    ncols = min(n_panels, 5)
    nrows = -(-n_panels // ncols)
    map_height = round(PANEL_WIDTH * float(np.clip(aspect, 0.5, 1.6)), 2)
    return PANEL_WIDTH * ncols, round(map_height * nrows + MARGIN_HEIGHT, 2)


def _new_figure(grid: _Grid, n_panels: int) -> tuple[Figure, list[Any]]:
    """A figure (no pyplot state) with ``n_panels`` map or image axes, decorated but empty."""
    fig = Figure(figsize=_figure_size(n_panels, grid.aspect), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ncols = min(n_panels, 5)
    nrows = -(-n_panels // ncols)
    axes = [fig.add_subplot(nrows, ncols, i + 1, projection=grid.crs) for i in range(n_panels)]
    for ax in axes:
        if grid.crs is None:
            ax.set_xlabel(grid.labels[0])
            ax.set_ylabel(grid.labels[1])
            ax.set_aspect("equal")
            continue
        ax.set_extent(grid.extent, crs=grid.crs if grid.kind == "grid" else ccrs.PlateCarree())
        for feature in grid.features:
            ax.add_feature(feature, zorder=3)
    return fig, axes


def _draw_field(ax: Any, grid: _Grid, values: np.ndarray, style: _Style) -> Any:
    """Draw one (y, x) field on ``ax``; returns the artist (an image on regular grids, else a mesh)."""
    v = np.ma.masked_invalid(_oriented(grid, values))
    kwargs: dict[str, Any] = {"cmap": style.cmap, "norm": style.norm}
    if grid.kind == "curvilinear":
        lon, lat = grid.lonlat  # type: ignore[misc]
        return ax.pcolormesh(lon, lat, v, transform=ccrs.PlateCarree(), shading="nearest", **kwargs)
    if grid.crs is not None:
        kwargs["transform"] = grid.crs
    if grid.regular:
        return ax.imshow(v, origin="lower", extent=grid.extent, interpolation="nearest", **kwargs)
    return ax.pcolormesh(np.sort(grid.x), np.sort(grid.y), v, shading="nearest", **kwargs)


def _update_field(artist: Any, grid: _Grid, values: np.ndarray) -> None:
    v = np.ma.masked_invalid(_oriented(grid, values))
    if isinstance(artist, matplotlib.image.AxesImage):
        artist.set_data(v)
    else:
        artist.set_array(v.ravel())


def _colorbar(fig: Figure, artist: Any, axes: list[Any], style: _Style) -> None:
    bar = fig.colorbar(
        artist, ax=axes, orientation="horizontal", extend=style.extend, shrink=0.8, aspect=40, pad=0.02
    )
    bar.set_label(style.label, fontsize=8)
    if style.ticks is not None:
        bar.set_ticks(list(style.ticks))
    bar.ax.tick_params(labelsize=7)


def _save_png(fig: Figure, path: Path) -> Path:
    with publish(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# --------------------------------------------------------------------------------------- times, titles


@dataclass(frozen=True)
class _Stamp:
    """Init, lead and valid time of one lead index, as shown in titles and file names."""

    init: pd.Timestamp
    lead: pd.Timedelta
    valid: pd.Timestamp
    tag: str

    @property
    def text(self) -> str:
        minutes = round(self.lead.total_seconds() / 60)
        hours, rest = divmod(minutes, 60)
        lead = f"+{rest} min" if hours == 0 else f"+{hours} h" + (f" {rest} min" if rest else "")
        same_day = self.valid.normalize() == self.init.normalize()
        valid = self.valid.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M")
        return f"init {self.init:%Y-%m-%d %H:%M}, {lead}, valid {valid}"


def _lead_tags(leads: np.ndarray) -> list[str]:
    """File-name tags: ``+Nh`` when every lead is whole hours, else ``HHMM``; seconds if those collide."""
    seconds = (leads / np.timedelta64(1, "s")).round().astype(int)
    minutes = [int(s) // 60 for s in seconds]
    if all(s % 3600 == 0 for s in seconds):
        return [f"+{s // 3600}h" for s in seconds]
    tags = [f"{m // 60:02d}{m % 60:02d}" for m in minutes]
    return tags if len(set(tags)) == len(tags) else [f"+{s}s" for s in seconds]


def _stamps(ds: xr.Dataset) -> list[_Stamp]:
    init = pd.Timestamp(ds[schema.INIT_TIME].values)
    leads = np.asarray(ds[schema.LEAD_TIME].values).astype("timedelta64[ns]")
    if schema.VALID_TIME in ds.coords:
        valid = np.asarray(ds[schema.VALID_TIME].values).reshape(-1)
    else:
        valid = np.datetime64(init) + leads
    tags = _lead_tags(leads)
    return [
        _Stamp(init, pd.Timedelta(lead), pd.Timestamp(v), tag)
        for lead, v, tag in zip(leads, valid, tags, strict=True)
    ]


def _title(name: str, attrs: dict[str, Any], product: str, stamp: _Stamp) -> str:
    long_name = attrs.get("long_name")
    what = f"{name} ({long_name})" if long_name and long_name != name else name
    units = _units(attrs) or "1"
    units = "1" if "probability" in product else units
    return f"{what} {product} ({units})\n{stamp.text}"


# ------------------------------------------------------------------------------------------- products


def _single_map(grid: _Grid, values: np.ndarray, style: _Style, title: str, path: Path) -> Path:
    fig, (ax,) = _new_figure(grid, 1)
    artist = _draw_field(ax, grid, values, style)
    ax.set_title(title, fontsize=9)
    _colorbar(fig, artist, [ax], style)
    return _save_png(fig, path)


def _probability_map(name: str, da: xr.DataArray, grid: _Grid, stamp: _Stamp, path: Path) -> Path:
    """One panel per threshold of ``<var>_probability`` (dims threshold, y, x at one lead)."""
    style = _style_for(name, da.attrs, "probability", np.empty(0))
    thresholds = da[schema.THRESHOLD]
    units = _units(thresholds.attrs) or _units(da.attrs)
    fig, axes = _new_figure(grid, thresholds.size)
    artist = None
    for ax, k in zip(axes, range(thresholds.size), strict=True):
        artist = _draw_field(ax, grid, da.isel({schema.THRESHOLD: k}).values, style)
        ax.set_title(f"P({name} > {float(thresholds[k]):g} {units})", fontsize=8)
    fig.suptitle(_title(name, da.attrs, "exceedance probability", stamp), fontsize=10)
    _colorbar(fig, artist, axes, style)
    return _save_png(fig, path)


def _truth_at(truth: xr.Dataset | None, var: str, valid: pd.Timestamp, shape: tuple[int, ...]) -> Any:
    """The truth field of ``var`` at ``valid`` (its datetime dim selected), or None where it has none."""
    if truth is None or var not in truth:
        return None
    da = truth[var]
    time_dims = [d for d in da.dims if d in da.coords and np.issubdtype(da[d].dtype, np.datetime64)]
    if time_dims:
        try:
            da = da.sel({time_dims[0]: valid.to_datetime64()})
        except KeyError:
            return None
    if da.shape != shape:
        raise ValueError(f"truth {var!r} has grid shape {da.shape}; the forecast has {shape}")
    return da


def _members_map(
    ds: xr.Dataset, var: str, grid: _Grid, index: int, stamp: _Stamp, kw: dict[str, Any]
) -> Path:
    """The first ``kw['members']`` members next to the truth, all on the truth's colour scale."""
    da = ds[var].isel({schema.LEAD_TIME: index})
    shown = da.isel({schema.MEMBER: slice(0, kw["members"])})
    truth = _truth_at(kw["truth"], var, stamp.valid, da.shape[1:])
    reference = truth.values if truth is not None else shown.values
    style = _style_for(var, da.attrs, "value", np.asarray(reference, dtype=float))
    panels = ([("truth", truth.values)] if truth is not None else []) + [
        (f"member {int(m)}", shown.sel({schema.MEMBER: m}).values) for m in shown[schema.MEMBER].values
    ]
    fig, axes = _new_figure(grid, len(panels))
    artist = None
    for ax, (label, values) in zip(axes, panels, strict=True):
        artist = _draw_field(ax, grid, values, style)
        ax.set_title(label, fontsize=9)
    fig.suptitle(_title(var, da.attrs, "members", stamp), fontsize=10)
    _colorbar(fig, artist, axes, style)
    return _save_png(fig, kw["out_dir"] / f"{var}_members_lead{stamp.tag}.png")


def _animate_mean(var: str, mean: xr.DataArray, grid: _Grid, stamps: list[_Stamp], path: Path) -> Path:
    """An animated GIF of the ensemble mean, one frame per lead time, on one colour scale."""
    style = _style_for(var, mean.attrs, "value", np.asarray(mean.values, dtype=float))
    fig, (ax,) = _new_figure(grid, 1)
    artist = _draw_field(ax, grid, mean.isel({schema.LEAD_TIME: 0}).values, style)
    title = ax.set_title(_title(var, mean.attrs, "ensemble mean", stamps[0]), fontsize=9)
    _colorbar(fig, artist, [ax], style)
    fig.canvas.draw()
    # Freeze the layout after the first frame so that titles of other widths do not make frames jump.
    fig.set_layout_engine("none")
    frames = []
    for i, stamp in enumerate(stamps):
        _update_field(artist, grid, mean.isel({schema.LEAD_TIME: i}).values)
        title.set_text(_title(var, mean.attrs, "ensemble mean", stamp))
        fig.canvas.draw()
        rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
        frames.append(rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    with publish(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=500, loop=0)
    return path


def _lead_indices(lead_times: Sequence[int] | None, n: int) -> list[int]:
    if lead_times is None:
        return sorted({0, n // 2, n - 1})
    indices = []
    for i in lead_times:
        if not -n <= int(i) < n:
            raise ValueError(f"lead index {i} is out of range for {n} lead times")
        indices.append(int(i) % n)
    return list(dict.fromkeys(indices))


def plot_forecast(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    lead_times: Sequence[int] | None = None,
    truth: xr.Dataset | None = None,
    members: int = 4,
    animate: bool = True,
) -> list[Path]:
    """Write PNG maps and a GIF of an ensemble forecast; returns the paths written.

    Parameters
    ----------
    ds
        A forecast in the output format: per variable ``<var>`` (member, lead_time, y, x), ``<var>_mean``
        and ``<var>_spread`` (lead_time, y, x), optionally ``<var>_probability`` (threshold, lead_time, y, x).
    out_dir
        Folder for the files (created); each file is written to a temporary name, then renamed.
    lead_times
        Lead-time *indices* to draw; default the first, middle and last.
    truth
        Observations with a datetime dim (e.g. ``time``) on the forecast's grid; the field at each valid
        time is drawn next to the members, and its colour scale is theirs.
    members
        How many members (the first ones) the members panel shows; 0 draws none.
    animate
        Also write ``<var>_mean.gif``, the ensemble mean over all lead times.

    Returns
    -------
    Paths of ``<var>_mean_lead<tag>.png``, ``<var>_spread_lead<tag>.png``,
    ``<var>_probability_lead<tag>.png``, ``<var>_members_lead<tag>.png`` and ``<var>_mean.gif``, where
    ``tag`` is ``+Nh`` when all leads are whole hours, else ``HHMM``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = schema.forecast_variables(ds)
    if not names:
        raise ValueError("forecast holds no variable with a 'member' dim")
    stamps = _stamps(ds)
    indices = _lead_indices(lead_times, ds.sizes[schema.LEAD_TIME])
    kw = {"members": members, "truth": truth, "out_dir": out}
    written: list[Path] = []
    for var in names:
        grid = _grid_of(ds, var)
        # The mean is a display fallback for forecasts written without derived products, not a score.
        mean = ds[f"{var}_mean"] if f"{var}_mean" in ds else ds[var].mean(schema.MEMBER, keep_attrs=True)
        mean_style = _style_for(var, ds[var].attrs, "value", np.asarray(mean.values, dtype=float))
        spread = ds.get(f"{var}_spread")
        spread_style = None if spread is None else _style_for(var, ds[var].attrs, "spread", spread.values)
        for i in indices:
            stamp, at = stamps[i], {schema.LEAD_TIME: i}
            title = _title(var, ds[var].attrs, "ensemble mean", stamp)
            path = out / f"{var}_mean_lead{stamp.tag}.png"
            written.append(_single_map(grid, mean.isel(at).values, mean_style, title, path))
            if spread is not None and spread_style is not None:
                title = _title(var, ds[var].attrs, "ensemble spread", stamp)
                path = out / f"{var}_spread_lead{stamp.tag}.png"
                written.append(_single_map(grid, spread.isel(at).values, spread_style, title, path))
            if f"{var}_probability" in ds:
                path = out / f"{var}_probability_lead{stamp.tag}.png"
                written.append(_probability_map(var, ds[f"{var}_probability"].isel(at), grid, stamp, path))
            if members > 0:
                written.append(_members_map(ds, var, grid, i, stamp, kw))
        if animate:
            mean = mean.assign_attrs(ds[var].attrs)
            written.append(_animate_mean(var, mean, grid, stamps, out / f"{var}_mean.gif"))
    return written
