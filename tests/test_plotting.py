"""Tests of dydiff_earth.plotting: files written, styles, lead tags, plotting without map data, radar grid.

CRS detection and offline map data are tested in test_geo.py.
"""

from __future__ import annotations

import urllib.request
import warnings
from pathlib import Path

import _forecast_fixtures as fixtures
import cartopy
import cartopy.crs as ccrs
import matplotlib
import numpy as np
import pytest
import xarray as xr
from PIL import Image

from dydiff_earth import plotting, probmatch, schema

matplotlib.use("Agg")


def _expected_size(n_panels: int, ds: xr.Dataset, var: str) -> tuple[int, int]:
    width, height = plotting._figure_size(n_panels, plotting._grid_of(ds, var).aspect)
    return round(width * plotting.DPI), round(height * plotting.DPI)


def _check_png(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size, path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to open a URL, in urllib and in cartopy's downloader."""
    calls: list[str] = []

    def refuse(url, *args, **kwargs):
        calls.append(str(url))
        raise OSError("network access in a plotting test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    if hasattr(cartopy.io, "urlopen"):
        monkeypatch.setattr(cartopy.io, "urlopen", refuse)
    return calls


def test_latlon_precip_writes_maps_members_and_gif(tmp_path: Path, no_network: list[str]) -> None:
    ds = fixtures.latlon_precip(n_members=3, n_leads=3)
    truth = fixtures.truth_for(ds, "precip")
    paths = plotting.plot_forecast(ds, tmp_path, truth=truth, members=2, lead_times=[0, -1])
    names = {p.name for p in paths}
    for tag in ("0030", "0130"):
        for product in ("mean", "spread", "probability", "members"):
            assert f"precip_{product}_lead{tag}.png" in names
    assert "precip_mean.gif" in names and len(paths) == 9
    _check_png(tmp_path / "precip_mean_lead0030.png", _expected_size(1, ds, "precip"))
    _check_png(tmp_path / "precip_probability_lead0030.png", _expected_size(3, ds, "precip"))
    _check_png(tmp_path / "precip_members_lead0130.png", _expected_size(3, ds, "precip"))  # truth + 2
    with Image.open(tmp_path / "precip_mean.gif") as gif:
        assert gif.n_frames == ds.sizes[schema.LEAD_TIME]
        assert gif.size == _expected_size(1, ds, "precip")
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    assert no_network == []


def test_default_leads_are_first_middle_last(tmp_path: Path) -> None:
    ds = fixtures.turbulence(n_members=2, n_leads=5).drop_vars(["v", "v_mean", "v_spread"])
    paths = plotting.plot_forecast(ds, tmp_path, members=0, animate=False)
    assert sorted(p.name for p in paths) == sorted(
        f"u_{product}_lead+{h}h.png" for product in ("mean", "spread") for h in (1, 3, 5)
    )


def test_a_folder_shows_one_forecast_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes_mean.txt").write_text("the user's")
    rain = fixtures.latlon_precip(n_members=2, n_leads=3)
    first = plotting.plot_forecast(rain, tmp_path, members=1)
    assert all(plotting.MAP_NAME.fullmatch(p.name) for p in first)  # what it writes, it may remove
    # Another forecast (hourly leads, other variables) into the same folder: none of the first's maps stay.
    ds = fixtures.turbulence(n_members=2, n_leads=5).drop_vars(["v", "v_mean", "v_spread"])
    second = plotting.plot_forecast(ds, tmp_path, members=0)
    assert all(plotting.MAP_NAME.fullmatch(p.name) for p in second)
    assert sorted(tmp_path.iterdir()) == sorted([*second, tmp_path / "notes_mean.txt"])


def test_polar_stereographic_case(tmp_path: Path, no_network: list[str]) -> None:
    ds = fixtures.polar_stereographic_precip(n_members=3, n_leads=2)
    assert isinstance(plotting._grid_of(ds, "precip").crs, ccrs.Stereographic)
    paths = plotting.plot_forecast(ds, tmp_path, truth=fixtures.truth_for(ds, "precip"), members=2)
    assert len(paths) == 2 * 4 + 1
    _check_png(tmp_path / "precip_members_lead0100.png", _expected_size(3, ds, "precip"))
    assert no_network == []


def test_turbulence_is_drawn_as_plain_images(tmp_path: Path) -> None:
    ds = fixtures.turbulence(n_members=2, n_leads=3)
    paths = plotting.plot_forecast(ds, tmp_path, lead_times=[1], members=2)
    assert {p.name for p in paths} == {
        f"{v}_{product}_lead+2h.png" for v in ("u", "v") for product in ("mean", "spread", "members")
    } | {"u_mean.gif", "v_mean.gif"}
    _check_png(tmp_path / "u_members_lead+2h.png", _expected_size(2, ds, "u"))
    with Image.open(tmp_path / "v_mean.gif") as gif:
        assert gif.n_frames == 3


def test_descending_latitude_is_drawn_south_up() -> None:
    ds = fixtures.latlon_precip()
    grid = plotting._grid_of(ds, "precip")
    lat = ds.latitude.values
    field = np.repeat(lat[:, None], ds.longitude.size, axis=1)
    _fig, (ax,) = plotting._new_figure(grid, 1)
    style = plotting._style_for("lat", {}, "value", field)
    image = plotting._draw_field(ax, grid, field, style)
    # With origin="lower", row 0 is the bottom of the map: it must hold the southernmost latitude.
    assert image.get_array()[0, 0] == lat.min() and image.get_array()[-1, 0] == lat.max()
    assert image.get_extent()[2] < image.get_extent()[3]


def test_styles() -> None:
    precip = plotting._style_for("precip", {"units": "mm h-1"}, "value", np.array([0.0, 5.0]))
    assert isinstance(precip.norm, matplotlib.colors.BoundaryNorm)
    assert precip.cmap(precip.norm(0.05))[3] == 0.0  # dry is transparent
    t2m = plotting._style_for("t2m", {"units": "K"}, "value", np.array([270.0, 280.0, 284.0]))
    assert t2m.cmap.name.startswith("RdBu_r") and t2m.norm.vmin + t2m.norm.vmax == pytest.approx(2 * 278.0)
    u = plotting._style_for("u", {"units": "1"}, "value", np.array([-1.0, 3.0]))
    assert (u.norm.vmin, u.norm.vmax) == (-3.0, 3.0)
    probability = plotting._style_for("precip", {}, "probability", np.empty(0))
    assert probability.norm.boundaries.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())


def test_lead_tags() -> None:
    minutes = np.array([5, 30, 90], dtype="timedelta64[m]")
    assert plotting._lead_tags(minutes) == ["0005", "0030", "0130"]
    assert plotting._lead_tags(np.array([6, 48], dtype="timedelta64[h]")) == ["+6h", "+48h"]


def test_without_map_data_plots_and_warns_once(
    tmp_path: Path, no_map_data: Path, no_network: list[str]
) -> None:
    assert plotting.configure_cartopy() is False
    ds = fixtures.polar_stereographic_precip(n_members=2, n_leads=2)
    with pytest.warns(UserWarning, match="no offline map data"):
        paths = plotting.plot_forecast(ds, tmp_path / "a", lead_times=[0], members=0, animate=False)
    assert len(paths) == 3 and all(p.stat().st_size > 1000 for p in paths)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plotting.plot_forecast(ds, tmp_path / "b", lead_times=[0], members=0, animate=False)
    assert no_network == []


def _radar_forecast(path: Path, n_leads: int = 3, n_members: int = 2) -> tuple[xr.Dataset, xr.Dataset]:
    """A fake forecast on the real radar grid (every 8th pixel) from a few observed frames, and its truth."""
    src = xr.open_dataset(path)
    sub = src.isel(time=slice(100, 101 + n_leads), y=slice(None, None, 8), x=slice(None, None, 8)).load()
    src.close()
    frames = sub.precip.values[1:]
    rng = np.random.default_rng(0)
    values = np.stack([frames * rng.uniform(0.5, 1.5, frames.shape) for _ in range(n_members)])
    spatial = {name: (sub[name].dims, sub[name].values, sub[name].attrs) for name in ("y", "x", "lat", "lon")}
    ds = fixtures.forecast(
        {"precip": (values, dict(sub.precip.attrs))},
        spatial,
        step=np.timedelta64(5, "m"),
        thresholds={"precip": (1.0,)},
        extra={"crs": sub.crs},
    )
    ds = ds.assign_coords(
        init_time=((), sub.time.values[0], {"standard_name": "forecast_reference_time"}),
        valid_time=(schema.LEAD_TIME, sub.time.values[1:], {"standard_name": "time"}),
    )
    return ds, sub[["precip"]]


def test_real_radar_grid(shared_data: Path, tmp_path: Path, no_network: list[str]) -> None:
    path = shared_data / "radar_mch.nc"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    ds, truth = _radar_forecast(path)
    crs = plotting.crs_of(ds, "precip")
    xy = crs.transform_points(ccrs.Geodetic(), ds.lon.values.ravel(), ds.lat.values.ravel())
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    # The grid's own lat/lon land within 10 m of its Swiss oblique Mercator x/y (Bessel datum shift included).
    np.testing.assert_allclose(xy[:, 0], xx.ravel(), atol=10.0)
    np.testing.assert_allclose(xy[:, 1], yy.ravel(), atol=10.0)
    paths = plotting.plot_forecast(ds, tmp_path, truth=truth, lead_times=[1], members=2)
    assert len(paths) == 5
    _check_png(tmp_path / "precip_members_lead0010.png", _expected_size(3, ds, "precip"))
    with Image.open(tmp_path / "precip_mean.gif") as gif:
        assert gif.n_frames == 3
    assert no_network == []


def test_mean_is_drawn_next_to_the_last_observation(tmp_path: Path) -> None:
    """With an observation at the init time the mean map has two panels: what was seen, what is forecast."""
    ds = fixtures.latlon_precip(n_members=2, n_leads=2)
    truth = fixtures.truth_for(ds, "precip")
    init = truth.isel({schema.TIME: [0]}).assign_coords({schema.TIME: [ds[schema.INIT_TIME].values]})
    with_init = xr.concat([init, truth], schema.TIME)
    plotting.plot_forecast(ds, tmp_path / "a", truth=with_init, members=0, lead_times=[0], animate=False)
    plotting.plot_forecast(ds, tmp_path / "b", truth=truth, members=0, lead_times=[0], animate=False)
    _check_png(tmp_path / "a" / "precip_mean_lead0030.png", _expected_size(2, ds, "precip"))
    _check_png(tmp_path / "b" / "precip_mean_lead0030.png", _expected_size(1, ds, "precip"))
    # The probability-matched mean, where the file has one, is a third panel on the same scale.
    ds["precip_matched_mean"] = ds["precip_mean"].copy(data=probmatch.matched_mean(ds["precip"].values))
    plotting.plot_forecast(ds, tmp_path / "c", truth=with_init, members=0, lead_times=[0], animate=False)
    _check_png(tmp_path / "c" / "precip_mean_lead0030.png", _expected_size(3, ds, "precip"))


def test_temperatures_can_be_shown_in_celsius_without_touching_the_forecast() -> None:
    ds = fixtures.latlon_precip(n_members=2, n_leads=2)
    ds = ds.drop_vars(["precip_probability", schema.THRESHOLD], errors="ignore").rename(
        {"precip": "t2m", "precip_mean": "t2m_mean", "precip_spread": "t2m_spread"}
    )
    ds["t2m"] = (ds["t2m"] + 270.0).assign_attrs(units="K")
    ds["t2m_mean"] = ds["t2m"].mean(schema.MEMBER)
    prob = xr.zeros_like(ds["t2m_mean"]).expand_dims({schema.THRESHOLD: [273.15]})
    ds["t2m_probability"] = prob.assign_coords({schema.THRESHOLD: ("threshold", [273.15], {"units": "K"})})
    truth = fixtures.truth_for(ds, "t2m")
    shown, seen = plotting.in_display_units(ds, truth, "degC")
    np.testing.assert_allclose(shown["t2m"].values, ds["t2m"].values - 273.15, rtol=1e-6)
    np.testing.assert_allclose(shown["t2m_mean"].values, ds["t2m_mean"].values - 273.15, rtol=1e-6)
    np.testing.assert_allclose(seen["t2m"].values, truth["t2m"].values - 273.15, rtol=1e-6)
    np.testing.assert_array_equal(shown["t2m_spread"].values, ds["t2m_spread"].values)
    assert shown["t2m"].attrs["units"] == "degC" and float(shown[schema.THRESHOLD][0]) == pytest.approx(0.0)
    assert ds["t2m"].attrs["units"] == "K" and float(ds[schema.THRESHOLD][0]) == 273.15  # a copy
    back, _ = plotting.in_display_units(shown, None, "K")
    np.testing.assert_allclose(back["t2m"].values, ds["t2m"].values, rtol=1e-6)
    rain, _ = plotting.in_display_units(fixtures.latlon_precip(n_members=1, n_leads=1), None, "degC")
    assert rain["precip"].attrs.get("units") != "degC"  # not a temperature: left as it is
