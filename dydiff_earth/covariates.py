"""What a weather model is told besides its frames: where each cell lies, whether it is land, and the sun.

Hourly 2 m temperature swings with the sun and differs over land and sea; four context frames cannot tell
a network the time of day, the season or where the coast is. Covariates are fields on the grid computed
from its coordinates, offline map data and the init time:

- ``latitude`` (degrees / 90), ``sin_longitude``, ``cos_longitude``: where the cell is on Earth;
- ``land``: the fraction of the cell that is land, rasterised from the offline coastline polygons that the
  maps use (GSHHS or Natural Earth, :mod:`dydiff_earth.geo`);
- ``sin_solar_hour``, ``cos_solar_hour``: local mean solar time at the cell (UTC + longitude / 15 h) at the
  init time, the phase of the diurnal cycle;
- ``sin_day_of_year``, ``cos_day_of_year``: the season at the init time.

Lead times lie at fixed offsets from the init time, so the init time's phase fixes every frame's. Pure
numpy, pyproj and shapely; nothing here knows about models.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyproj
import shapely

from dydiff_earth import geo
from dydiff_earth.data import Fields
from dydiff_earth.errors import InputError

#: All covariates, in channel order.
NAMES: tuple[str, ...] = (
    "latitude",
    "sin_longitude",
    "cos_longitude",
    "land",
    "sin_solar_hour",
    "cos_solar_hour",
    "sin_day_of_year",
    "cos_day_of_year",
)

#: Land polygons (level-1 shorelines enclose land), best first; paths relative to a cartopy data folder.
LAND_SHAPEFILES: tuple[str, ...] = (
    "shapefiles/natural_earth/physical/ne_50m_land.shp",
    "shapefiles/gshhs/l/GSHHS_l_L1.shp",
    "shapefiles/gshhs/i/GSHHS_i_L1.shp",
    "shapefiles/natural_earth/physical/ne_10m_land.shp",
    "shapefiles/natural_earth/physical/ne_110m_land.shp",
    "shapefiles/gshhs/c/GSHHS_c_L1.shp",
)

#: Sub-cell points per axis when rasterising land: the land fraction of a cell in steps of 1/16.
LAND_OVERSAMPLE = 4

_SECONDS_PER_DAY = 86400.0
_DAYS_PER_YEAR = 365.2425


def grid_lonlat(fields: Fields) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of every cell centre, each ``(H, W)``.

    From 1-D latitude/longitude dims, 2-D latitude/longitude coordinates, or projected x/y coordinates
    and the CF grid mapping; an ``InputError`` for a grid without geography.
    """
    ds = fields.dataset
    da = ds[fields.names[0]]
    ydim, xdim = fields.y_dim, fields.x_dim
    kind = geo.geographic_kind(ds, da)
    if kind == "grid":
        lat, lon = np.meshgrid(ds[ydim].values.astype(float), ds[xdim].values.astype(float), indexing="ij")
        return lon, lat
    if kind == "curvilinear":
        names = ("latitude", "longitude") if "latitude" in ds.coords else ("lat", "lon")
        lat, lon = (np.asarray(ds[n].transpose(ydim, xdim).values, float) for n in names)
        return lon, lat
    name = geo.grid_mapping_name(da)
    y, x = geo.spatial_coords(ds, da)
    if name is None or name not in ds.variables or y is None or x is None:
        raise InputError(
            f"{fields.source}: covariates need geographic coordinates (latitude/longitude, or x/y with a "
            "CF grid mapping); train without them: --covariates none"
        )
    crs = geo.source_crs(dict(ds[name].attrs), name)
    xx, yy = np.meshgrid(x, y)
    lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    return np.asarray(lon, float), np.asarray(lat, float)


def grid_cell_km(fields: Fields) -> float | None:
    """The size of the grid's cells in km (:func:`dydiff_earth.geo.cell_size_km`), None for a grid
    without geography (or of one cell along an axis)."""
    if min(fields.shape) < 2:
        return None
    try:
        lon, lat = grid_lonlat(fields)
    except (InputError, ValueError, RuntimeError):  # no geography, or a grid mapping pyproj cannot read
        return None
    return geo.cell_size_km(lon, lat)


@functools.lru_cache(maxsize=4)
def _land(path: Path) -> shapely.Geometry:
    from cartopy.io import shapereader

    # pyshp logs a warning per GSHHS ring made only of holes; the union is still the land.
    logging.getLogger("shapefile").setLevel(logging.ERROR)
    return shapely.unary_union(list(shapereader.Reader(str(path)).geometries()))


def land_shapefile() -> Path:
    """The offline land polygons, or an ``InputError`` saying how to install them."""
    geo.configure_cartopy()
    path = geo.first_existing(LAND_SHAPEFILES)
    if path is None:
        raise InputError(
            "the land covariate needs offline coastline data: apt-get install python-cartopy-data "
            "(or put Natural Earth ne_50m_land in cartopy's data folder)"
        )
    return path


def land_fraction(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Fraction ``(H, W)`` of each cell that is land, from ``LAND_OVERSAMPLE``^2 points per cell.

    Cell extents are taken half-way to the neighbouring centres along each grid axis.
    """
    land = _land(land_shapefile())
    ny, nx = lon.shape
    # Sub-cell offsets in index space, centred: -3/8, -1/8, 1/8, 3/8 of a cell for 4 points.
    offsets = (np.arange(LAND_OVERSAMPLE) + 0.5) / LAND_OVERSAMPLE - 0.5
    iy, ix = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    hits = np.zeros((ny, nx))
    for dy in offsets:
        for dx in offsets:
            px = _interp2(lon, iy + dy, ix + dx)
            py = _interp2(lat, iy + dy, ix + dx)
            hits += shapely.contains_xy(land, px, py)
    return hits / LAND_OVERSAMPLE**2


def _interp2(values: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``values`` at fractional indices, extrapolating linearly at the edges."""
    ny, nx = values.shape
    y0 = np.clip(np.floor(iy).astype(int), 0, max(ny - 2, 0))
    x0 = np.clip(np.floor(ix).astype(int), 0, max(nx - 2, 0))
    y1, x1 = np.minimum(y0 + 1, ny - 1), np.minimum(x0 + 1, nx - 1)
    fy, fx = iy - y0, ix - x0
    top = values[y0, x0] * (1 - fx) + values[y0, x1] * fx
    bottom = values[y1, x0] * (1 - fx) + values[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class Covariates:
    """The covariate fields of one grid, static parts computed once.

    Parameters
    ----------
    fields : Fields
        The grid (its coordinates; values are not read).
    names : sequence of str
        Covariates to give, a subset of :data:`NAMES` in any order (the order of the channels).
    """

    def __init__(self, fields: Fields, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise InputError(f"unknown covariate(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
        self.names = tuple(names)
        lon, lat = grid_lonlat(fields) if self.names else (np.zeros(fields.shape), np.zeros(fields.shape))
        self.lon = lon
        static = {
            "latitude": lambda: lat / 90.0,
            "sin_longitude": lambda: np.sin(np.deg2rad(lon)),
            "cos_longitude": lambda: np.cos(np.deg2rad(lon)),
            "land": lambda: land_fraction(lon, lat),
        }
        self.static = {n: static[n]().astype(np.float32) for n in self.names if n in static}

    def __len__(self) -> int:
        return len(self.names)

    def at(self, init_time: np.datetime64) -> np.ndarray:
        """float32 ``(K, H, W)`` covariates for a window whose init time (last context frame) is given."""
        seconds = (np.datetime64(init_time, "s") - np.datetime64("1970-01-01T00:00:00", "s")).astype(float)
        utc_hours = (seconds % _SECONDS_PER_DAY) / 3600.0
        solar = 2 * np.pi * (utc_hours + self.lon / 15.0) / 24.0
        day = np.datetime64(init_time, "D")
        year_start = day.astype("datetime64[Y]").astype("datetime64[D]")
        phase = 2 * np.pi * ((day - year_start).astype(float) + utc_hours / 24.0) / _DAYS_PER_YEAR
        timed = {
            "sin_solar_hour": lambda: np.sin(solar),
            "cos_solar_hour": lambda: np.cos(solar),
            "sin_day_of_year": lambda: np.full(self.lon.shape, np.sin(phase)),
            "cos_day_of_year": lambda: np.full(self.lon.shape, np.cos(phase)),
        }
        fields = [self.static[n] if n in self.static else timed[n]() for n in self.names]
        return np.stack(fields).astype(np.float32) if fields else np.zeros((0, *self.lon.shape), np.float32)
