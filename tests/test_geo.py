"""Tests of dydiff_earth.geo: CRS from CF grid mappings, offline map data, projected map features."""

from __future__ import annotations

import warnings
from pathlib import Path

import _forecast_fixtures as fixtures
import cartopy
import cartopy.crs as ccrs
import numpy as np
import pyproj
import pytest
import shapely

from dydiff_earth import geo

DEBIAN_DATA = Path("/usr/share/cartopy/data")


def test_polar_stereographic_crs_matches_grid() -> None:
    ds = fixtures.polar_stereographic_precip(n_members=3, n_leads=2)
    crs = geo.crs_of(ds, "precip")
    assert isinstance(crs, ccrs.Stereographic)
    # The grid's own 2-D lat/lon land on its x/y through the returned CRS (to 1 m).
    xy = crs.transform_points(ccrs.Geodetic(), ds.lon.values.ravel(), ds.lat.values.ravel())
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    np.testing.assert_allclose(xy[:, 0], xx.ravel(), atol=1.0)
    np.testing.assert_allclose(xy[:, 1], yy.ravel(), atol=1.0)


def test_crs_from_cf_attributes_alone() -> None:
    ds = fixtures.polar_stereographic_precip()
    ds["crs"].attrs.pop("proj4")
    assert isinstance(geo.crs_of(ds, "precip"), ccrs.Stereographic)


def test_crs_of_kinds() -> None:
    assert isinstance(geo.crs_of(fixtures.latlon_precip(), "precip"), ccrs.PlateCarree)
    assert geo.crs_of(fixtures.turbulence(), "u") is None
    broken = fixtures.polar_stereographic_precip()
    broken["precip"].attrs["grid_mapping"] = "missing"
    with pytest.raises(ValueError, match="missing"):
        geo.crs_of(broken, "precip")


def test_configure_cartopy_with_debian_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (DEBIAN_DATA / "shapefiles").is_dir():
        pytest.skip(f"{DEBIAN_DATA} absent (apt-get install python-cartopy-data)")
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", Path("."))
    assert geo.configure_cartopy() is True
    assert Path(cartopy.config["pre_existing_data_dir"]) == DEBIAN_DATA
    assert geo._map_features(), "coastlines from the Debian data"


def test_projected_features_without_map_data(no_map_data: Path) -> None:
    ds = fixtures.polar_stereographic_precip()
    x0, x1 = geo.cell_edges(ds.x.values, ds.x.size)
    y0, y1 = geo.cell_edges(ds.y.values, ds.y.size)
    with pytest.warns(UserWarning, match="no offline map data"):
        (graticule,) = geo.projected_features(geo.crs_of(ds, "precip"), (x0, x1, y0, y1))
    lines = list(graticule.geometries())
    # Meridians and parallels cross the grid, projected and clipped to its box (1 m tolerance).
    assert lines and all(shapely.box(x0, y0, x1, y1).buffer(1.0).covers(line) for line in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        geo.projected_features(geo.crs_of(ds, "precip"), (x0, x1, y0, y1))


def _geodesic_cell_km(lon: np.ndarray, lat: np.ndarray) -> float:
    """Independent reference: neighbour distances along pyproj's geodesics on the WGS 84 ellipsoid."""
    geod = pyproj.Geod(ellps="WGS84")
    along_y = geod.inv(lon[:-1], lat[:-1], lon[1:], lat[1:])[2]
    along_x = geod.inv(lon[:, :-1], lat[:, :-1], lon[:, 1:], lat[:, 1:])[2]
    return float(np.sqrt(np.median(along_y) * np.median(along_x))) / 1e3


def test_cell_size_is_the_geodesic_spacing_of_neighbours() -> None:
    # A 0.25 degree grid over the British Isles (ERA5's) and a 40 km polar stereographic one over Finland.
    lat, lon = np.meshgrid(np.arange(58.0, 49.9, -0.25), np.arange(-10.0, 2.01, 0.25), indexing="ij")
    ds = fixtures.polar_stereographic_precip()
    for lo, la in ((lon, lat), (ds.lon.values.astype(float), ds.lat.values.astype(float))):
        # On the sphere, not the ellipsoid: within half a percent.
        assert geo.cell_size_km(lo, la) == pytest.approx(_geodesic_cell_km(lo, la), rel=5e-3)
    # At its standard parallel (60 N) the projection's 40 km are 40 km on the ground: a few % either side.
    assert geo.cell_size_km(ds.lon.values, ds.lat.values) == pytest.approx(40.0, rel=0.05)
    # A latitude/longitude cell's side is its area's: 0.25 degrees is 27.8 km north-south at any latitude.
    equator = np.meshgrid(np.arange(-1.0, 1.01, 0.25), np.arange(0.0, 2.01, 0.25), indexing="ij")
    assert geo.cell_size_km(equator[1], equator[0]) == pytest.approx(2 * np.pi * 6371.0088 / 1440, rel=1e-3)


def test_shipped_coastline_is_natural_earth_50m(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded from the shipped TopoJSON, Great Britain's coast passes Land's End and the cliffs of Dover
    # (within 0.1 degree: 1:50 million draws a tip a few km short) in hundreds of vertices, where GSHHS
    # crude (Debian's) draws it with 94.
    (feature,) = [f for f in geo._map_features((-11.0, 3.0, 49.0, 59.0)) if f.kwargs["edgecolor"] == "black"]
    lines = shapely.MultiLineString(list(feature.geometries()))
    for lon, lat in ((-5.714, 50.066), (1.36, 51.13)):
        assert lines.distance(shapely.Point(lon, lat)) < 0.1
    britain = lines.intersection(shapely.box(-6.0, 50.0, 2.0, 58.7))
    assert shapely.get_num_coordinates(britain) > 300
    # Where a detailed coastline file is installed, that one is drawn instead (with the shipped borders).
    monkeypatch.setattr(geo, "first_existing", lambda names: Path(names[0]) if "coast" in names[0] else None)
    monkeypatch.setattr(geo, "_read_feature", lambda path, kind, box: path)
    features = geo._map_features()
    assert [f for f in features if isinstance(f, Path)] == [Path(geo._COASTLINES[0])]
    assert [f.kwargs["linestyle"] for f in features if not isinstance(f, Path)] == ["--"]


def test_shipped_borders_are_the_lines_countries_share() -> None:
    # Around Switzerland (no border file on Debian): the borders pass the tripoints of Basel (France,
    # Germany) and of the Muenstertal (Italy, Austria). No border runs along a coast: from the Gulf of
    # Genoa's shore (Genoa) the nearest border is more than 50 km away, at Menton or in the Alps.
    box = (5.0, 11.0, 43.5, 48.5)
    (feature,) = [f for f in geo._map_features(box) if f.kwargs.get("linestyle") == "--"]
    borders = shapely.MultiLineString(list(feature.geometries()))
    for lon, lat in ((7.589, 47.590), (10.47, 46.63)):
        assert borders.distance(shapely.Point(lon, lat)) < 0.05
    assert borders.distance(shapely.Point(8.93, 44.41)) > 0.5
    coastline = geo._shipped_feature(geo.SHIPPED_MAP, "coastline", box)
    coast = shapely.MultiLineString(list(coastline.geometries()))
    assert borders.intersection(coast.buffer(1e-6)).length < 1e-3
