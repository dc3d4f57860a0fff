"""Geography of a gridded field: its CRS (from CF grid-mapping attributes) and offline map data.

Owns CRS detection (`crs_of`: CF ``grid_mapping`` -> cartopy CRS) and the map features drawn under a
field: coastlines, borders and lakes read straight from shapefiles on disk, plus a graticule, projected
and clipped once per grid. Drawing itself lives in :mod:`dydiff_earth.plotting`.

Map data comes only from local files: cartopy's default Natural Earth download would hang or fail on
machines without network, so features are read straight from shapefiles found on disk (Debian's
``python-cartopy-data`` ships GSHHS coastlines and lakes under ``/usr/share/cartopy/data``); coastlines
and country borders come from Natural Earth's 1:50m countries shipped in the package where nothing as
detailed is on disk. A map is drawn without them, with one warning, when none are found.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cartopy
import cartopy.crs as ccrs
import cartopy.feature as cfeature
import cartopy.io.shapereader as shapereader
import numpy as np
import pyproj
import shapely
import xarray as xr

#: Folders searched for offline map data, after cartopy's own configured folders.
LOCAL_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/cartopy/data"),)

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
#: Coastline files on disk no more detailed than the one shipped (below), which is drawn instead.
_COARSE_COASTLINES = {Path(name).name for name in _COASTLINES[-2:]}
#: Natural Earth 1:50m countries and land as TopoJSON (``dydiff_earth/mapdata/README.md``): the coastlines
#: drawn where no file at least as detailed is on disk, and the borders where none is. Debian's
#: python-cartopy-data holds GSHHS crude coastlines and no borders; its coast of Great Britain has 94
#: points (635 in the shipped land).
SHIPPED_MAP = Path(__file__).parent / "mapdata" / "countries-50m.json"
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


def first_existing(names: Sequence[str]) -> Path | None:
    """The first of ``names`` (relative to a cartopy data folder) found in any data folder, or None."""
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
    return first_existing(_COASTLINES) is not None


@functools.lru_cache(maxsize=16)
def _read_feature(path: Path, kind: str, box: tuple[float, ...] | None = None) -> cfeature.Feature:
    # pyshp logs a warning per malformed GSHHS lake ring; those rings still draw correctly.
    logging.getLogger("shapefile").setLevel(logging.ERROR)
    # Only the shapes whose bounding box meets ``box`` (lon0, lon1, lat0, lat1): pyshp skips the others
    # unparsed (0.6 s less for the 10 maps of the embedded forecast, measured).
    bbox = None if box is None else (box[0], box[2], box[1], box[3])
    geometries = list(shapereader.Reader(str(path), bbox=bbox).geometries())
    return cfeature.ShapelyFeature(geometries, ccrs.PlateCarree(), facecolor="none", **_FEATURE_STYLE[kind])


def _arc_indices(arcs: list) -> list[int]:
    """The arcs of a TopoJSON geometry's ``arcs`` member (nested rings), as indices into the topology's arcs
    (a negative index ``~i`` is arc ``i`` reversed, TopoJSON specification 2.2.2)."""
    if arcs and isinstance(arcs[0], int):
        return [i if i >= 0 else ~i for i in arcs]
    return [i for part in arcs for i in _arc_indices(part)]


@functools.lru_cache(maxsize=1)
def _shipped_lines(path: Path) -> dict[str, tuple[np.ndarray, ...]]:
    """Coastlines and land borders of a quantised TopoJSON topology of countries and land, each line
    ``(n, 2)`` longitude and latitude.

    Positions are delta-encoded integers, summed, then scaled and translated (TopoJSON specification,
    2.1.2-2.1.3). The topology's arcs are shared: an arc of the merged land is a coast; an arc of two
    countries and not of the land is a border between them (as ``topojson.mesh`` with ``a !== b``).
    """
    topo = json.loads(path.read_text())
    scale, translate = (np.asarray(topo["transform"][key], float) for key in ("scale", "translate"))
    coast = {i for g in topo["objects"]["land"]["geometries"] for i in _arc_indices(g["arcs"])}
    owners: dict[int, int] = {}
    for g in topo["objects"]["countries"]["geometries"]:
        for i in set(_arc_indices(g.get("arcs", []))):
            owners[i] = owners.get(i, 0) + 1
    borders = {i for i, n in owners.items() if n > 1} - coast

    def decode(indices: set[int]) -> tuple[np.ndarray, ...]:
        arcs = (np.asarray(topo["arcs"][i], float) for i in sorted(indices))
        return tuple(np.cumsum(arc, axis=0) * scale + translate for arc in arcs if len(arc) > 1)

    return {"coastline": decode(coast), "border": decode(borders)}


@functools.lru_cache(maxsize=16)
def _shipped_feature(path: Path, kind: str, box: tuple[float, ...] | None = None) -> cfeature.Feature:
    """The shipped coastlines or borders (``kind``) as a feature, those that meet the lon/lat ``box`` when
    given."""
    lines = [shapely.LineString(arc) for arc in _shipped_lines(path)[kind]]
    if box is not None:
        area = shapely.box(box[0], box[2], box[1], box[3])
        lines = [line for line in lines if line.intersects(area)]
    return cfeature.ShapelyFeature(lines, ccrs.PlateCarree(), facecolor="none", **_FEATURE_STYLE[kind])


def _map_features(box: tuple[float, ...] | None = None) -> list[cfeature.Feature]:
    """The coastline, border and lake features found on disk, or shipped (those that meet the lon/lat
    ``box``, when given); warns once when there are none."""
    global _warned_no_map_data
    configure_cartopy()
    found = {
        kind: first_existing(names)
        for kind, names in (("coastline", _COASTLINES), ("border", _BORDERS), ("lake", _LAKES))
    }
    features = []
    coast = found["coastline"]
    shipped = SHIPPED_MAP.is_file()
    if (coast is None or coast.name in _COARSE_COASTLINES) and shipped:
        features.append(_shipped_feature(SHIPPED_MAP, "coastline", box))
        found["coastline"] = None
    if found["border"] is None and shipped:
        features.append(_shipped_feature(SHIPPED_MAP, "border", box))
    features += [_read_feature(path, kind, box) for kind, path in found.items() if path is not None]
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


def source_crs(attrs: dict[str, Any], name: str) -> pyproj.CRS:
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


def spatial_coords(ds: xr.Dataset, da: xr.DataArray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """1-D coordinate values of the variable's last two dims (y, x), None where there is none."""
    ydim, xdim = da.dims[-2:]
    y = np.asarray(ds[ydim].values, float) if ydim in ds.coords and ds[ydim].ndim == 1 else None
    x = np.asarray(ds[xdim].values, float) if xdim in ds.coords and ds[xdim].ndim == 1 else None
    return y, x


def cell_edges(values: np.ndarray | None, n: int) -> tuple[float, float]:
    """Outer cell edges (low, high) of ``n`` cell centres ``values`` (their index where None), one axis."""
    v = np.arange(n, dtype=float) if values is None else values
    step = abs(float(v[1] - v[0])) if v.size > 1 else 1.0
    return float(v.min()) - step / 2, float(v.max()) + step / 2


#: Mean radius of the Earth (IUGG), km: the sphere on which :func:`cell_size_km` measures distances.
EARTH_RADIUS_KM = 6371.0088


def _great_circle_km(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    """Haversine distance between points given in degrees, on the sphere of :data:`EARTH_RADIUS_KM`."""
    p1, p2, dlon = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def cell_size_km(lon: np.ndarray, lat: np.ndarray) -> float:
    """The typical size of a grid cell, km: the geometric mean of the median distances between
    neighbouring cell centres along each axis of ``(H, W)`` longitude and latitude (degrees).

    One number for a grid's resolution whatever its projection: a radar composite of 1 km cells in a
    Swiss or polar stereographic projection and one of 1 km on another plane give about the same, and a
    latitude/longitude grid's cells, narrower towards the poles, their area's side. Medians, so that a
    few odd cells (near a pole, along a seam) do not move it.
    """
    along_y = _great_circle_km(lon[:-1], lat[:-1], lon[1:], lat[1:])
    along_x = _great_circle_km(lon[:, :-1], lat[:, :-1], lon[:, 1:], lat[:, 1:])
    return float(np.sqrt(np.median(along_y) * np.median(along_x)))


def geographic_kind(ds: xr.Dataset, da: xr.DataArray) -> str | None:
    """ "grid" for 1-D latitude/longitude dims, "curvilinear" for 2-D lat/lon coords, else None."""
    ydim, xdim = da.dims[-2:]
    if (ydim, xdim) in (("latitude", "longitude"), ("lat", "lon")):
        return "grid"
    names = {str(n) for n in da.coords} | {str(n) for n in ds.coords}
    if {"lat", "lon"} <= names or {"latitude", "longitude"} <= names:
        return "curvilinear"
    return None


def grid_mapping_name(da: xr.DataArray) -> str | None:
    """The name of the variable's CF grid-mapping variable, or None."""
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
    name = grid_mapping_name(da)
    if name is None:
        return ccrs.PlateCarree() if geographic_kind(ds, da) else None
    if name not in ds.variables:
        raise ValueError(f"variable {var!r} names grid mapping {name!r}, which the dataset lacks")
    source = source_crs(dict(ds[name].attrs), name)
    if source.is_geographic and not source.is_derived:
        return ccrs.PlateCarree()
    stereographic = _stereographic(source)
    if stereographic is not None:
        return stereographic
    y, x = spatial_coords(ds, da)
    (x0, x1), (y0, y1) = cell_edges(x, da.shape[-1]), cell_edges(y, da.shape[-2])
    pad_x, pad_y = (x1 - x0) / 2, (y1 - y0) / 2
    return _GridProjection(source, (x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y))


# ------------------------------------------------------------------------------------- projected features


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


def projected_features(crs: ccrs.CRS, extent: tuple[float, float, float, float]) -> tuple[Any, ...]:
    """Map features projected into ``crs`` and clipped to ``extent`` once, for every panel of a grid.

    cartopy would otherwise re-project every coastline for each new axes, which dominates drawing time.
    """
    centred = isinstance(crs, ccrs.PlateCarree) and crs.proj4_params.get("lon_0", 0.0) != 0.0
    box = None if centred else _lonlat_box(crs, extent)
    clip = shapely.box(extent[0], extent[2], extent[1], extent[3])
    projected = []
    for feature in [*_map_features(box), _graticule(box)]:
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
