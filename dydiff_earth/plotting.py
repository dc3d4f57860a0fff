"""Maps and animations of ensemble forecasts: figures, colour maps, titles and the GIF; never computes scores.

Where a field has a CRS its maps are drawn with cartopy; the CRS and the offline map features (coastlines,
borders, lakes, graticule) come from :mod:`dydiff_earth.geo`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cartopy.crs as ccrs
import cartopy.feature as cfeature
import matplotlib
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from PIL import Image

from dydiff_earth import schema
from dydiff_earth.errors import InputError
from dydiff_earth.geo import (
    cell_edges,
    configure_cartopy,
    crs_of,
    geographic_kind,
    grid_mapping_name,
    projected_features,
    spatial_coords,
)
from dydiff_earth.io import publish

# configure_cartopy and crs_of moved to geo.py; they stay importable from here.
__all__ = [
    "DPI",
    "MARGIN_HEIGHT",
    "PANEL_WIDTH",
    "RAIN_LEVELS",
    "configure_cartopy",
    "crs_of",
    "in_display_units",
    "plot_forecast",
]

logger = logging.getLogger(__name__)

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

_KELVIN = {"k", "kelvin"}
_CELSIUS = {"degc", "degree_celsius", "degrees_celsius", "celsius", "°c", "deg c"}
_TEMPERATURE_UNITS = _KELVIN | _CELSIUS


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
    if crs is not None and grid_mapping_name(da) is None and geographic_kind(ds, da) == "curvilinear":
        lat_name, lon_name = ("lat", "lon") if "lat" in ds.coords else ("latitude", "longitude")
        lon, lat = np.asarray(ds[lon_name].values, float), np.asarray(ds[lat_name].values, float)
        extent = (np.nanmin(lon), np.nanmax(lon), np.nanmin(lat), np.nanmax(lat))
        features = projected_features(ccrs.PlateCarree(), extent)
        return _Grid("curvilinear", crs, extent, lon, lat, False, lonlat=(lon, lat), features=features)
    y, x = spatial_coords(ds, da)
    y = np.arange(da.shape[-2], dtype=float) if y is None else y
    x = np.arange(da.shape[-1], dtype=float) if x is None else x
    if isinstance(crs, ccrs.PlateCarree) and x.max() > 180.0:
        # 0..360 longitudes: centre the map on the date line so the field stays one piece.
        crs, x = ccrs.PlateCarree(central_longitude=180.0), x - 180.0
    (x0, x1), (y0, y1) = cell_edges(x, x.size), cell_edges(y, y.size)
    if crs is None:
        return _Grid("plain", None, (x0, x1, y0, y1), x, y, _is_regular(x) and _is_regular(y), (xdim, ydim))
    features = projected_features(crs, (x0, x1, y0, y1))
    return _Grid("grid", crs, (x0, x1, y0, y1), x, y, _is_regular(x) and _is_regular(y), features=features)


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


def _offset(units: str, to: str) -> float | None:
    """What to add to a temperature in ``units`` to show it in ``to`` (K or degC); None if not one."""
    have = units.strip().lower()
    kelvin = 0.0 if have in _KELVIN else 273.15 if have in _CELSIUS else None
    if kelvin is None:
        return None
    return kelvin - (273.15 if to == "degC" else 0.0)


def in_display_units(
    ds: xr.Dataset, truth: xr.Dataset | None, units: str | None
) -> tuple[xr.Dataset, xr.Dataset | None]:
    """The forecast (members, mean, thresholds) and truth with temperatures shown in ``units``.

    For the maps only; the file keeps the input's units. Spreads are differences and keep their
    values. ``None`` changes nothing; a variable that is not a temperature is left as it is.
    """
    if units is None:
        return ds, truth
    if units not in schema.DISPLAY_UNITS:
        raise InputError(f"display units must be {' or '.join(schema.DISPLAY_UNITS)}, not {units!r}")
    ds = ds.copy()
    truth = None if truth is None else truth.copy()
    for var in schema.forecast_variables(ds):
        shift = _offset(_units(ds[var].attrs), units)
        if shift is None:
            continue
        for name in (var, f"{var}_mean", f"{var}_matched_mean"):
            if name in ds:
                ds[name] = (ds[name] + shift).assign_attrs({**ds[name].attrs, "units": units})
        if f"{var}_spread" in ds:
            ds[f"{var}_spread"] = ds[f"{var}_spread"].assign_attrs(units=units)
        if f"{var}_probability" in ds and schema.THRESHOLD in ds.coords:
            threshold = ds[schema.THRESHOLD]
            ds = ds.assign_coords({schema.THRESHOLD: (threshold + shift).assign_attrs(units=units)})
        if truth is not None and var in truth:
            truth[var] = (truth[var] + shift).assign_attrs({**truth[var].attrs, "units": units})
    return ds, truth


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
    # Fixed-aspect maps: compress removes the gaps between them. The padding keeps room for each panel's
    # title, which the layout does not see on map axes (without it the suptitle ran over the middle one).
    layout = ConstrainedLayoutEngine(compress=True, h_pad=0.12)
    fig = Figure(figsize=_figure_size(n_panels, grid.aspect), dpi=DPI, layout=layout)
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


def _mean_map(
    grid: _Grid,
    means: list[tuple[str, np.ndarray]],
    last: Any,
    style: _Style,
    title: str,
    stamp: _Stamp,
    path: Path,
) -> Path:
    """The ensemble mean (and the matched mean, when there is one) next to the last observation.

    A forecast map is read against what was seen at the init time: where the rain was, how much of it.
    ``means`` are the ``(label, field)`` panels; ``last`` is None where no observation is at hand.
    """
    panels = ([(f"observed at init {stamp.init:%H:%M}", last.values)] if last is not None else []) + means
    if len(panels) == 1:
        return _single_map(grid, panels[0][1], style, title, path)
    fig, axes = _new_figure(grid, len(panels))
    artist = None
    for ax, (label, values) in zip(axes, panels, strict=True):
        artist = _draw_field(ax, grid, values, style)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _colorbar(fig, artist, axes, style)
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


#: The names :func:`plot_forecast` writes, and the only files it removes from its folder.
MAP_NAME = re.compile(r".+_(?:(?:mean|spread|probability|members)_lead(?:\d{4,}|\+\d+[hs])\.png|mean\.gif)")


def plot_forecast(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    lead_times: Sequence[int] | None = None,
    truth: xr.Dataset | None = None,
    members: int = 4,
    animate: bool = True,
    units: str | None = None,
) -> list[Path]:
    """Write PNG maps and a GIF of an ensemble forecast; returns the paths written.

    Parameters
    ----------
    ds
        A forecast in the output format: per variable ``<var>`` (member, lead_time, y, x), ``<var>_mean``
        and ``<var>_spread`` (lead_time, y, x), optionally ``<var>_probability`` (threshold, lead_time, y, x).
    out_dir
        Folder for the files (created); each file is written to a temporary name, then renamed. Maps of
        an earlier forecast there (:data:`MAP_NAME`) that this one does not redraw are removed after, so
        that the folder never shows two forecasts at once (a map of +20 min beside another's +35 min).
    lead_times
        Lead-time *indices* to draw; default the first, middle and last.
    truth
        Observations with a datetime dim (e.g. ``time``) on the forecast's grid; the field at each valid
        time is drawn next to the members, and its colour scale is theirs; the field at the init time (the
        last observation) next to the ensemble mean.
    members
        How many members (the first ones) the members panel shows; 0 draws none.
    animate
        Also write ``<var>_mean.gif``, the ensemble mean over all lead times.
    units
        Show temperatures in ``K`` or ``degC`` (:func:`in_display_units`); default: the file's units.

    Returns
    -------
    Paths of ``<var>_mean_lead<tag>.png``, ``<var>_spread_lead<tag>.png``,
    ``<var>_probability_lead<tag>.png``, ``<var>_members_lead<tag>.png`` and ``<var>_mean.gif``, where
    ``tag`` is ``+Nh`` when all leads are whole hours, else ``HHMM``.
    """
    ds, truth = in_display_units(ds, truth, units)
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
        matched = ds.get(f"{var}_matched_mean")
        spread = ds.get(f"{var}_spread")
        spread_style = None if spread is None else _style_for(var, ds[var].attrs, "spread", spread.values)
        for i in indices:
            stamp, at = stamps[i], {schema.LEAD_TIME: i}
            title = _title(var, ds[var].attrs, "ensemble mean", stamp)
            path = out / f"{var}_mean_lead{stamp.tag}.png"
            last = _truth_at(truth, var, stamp.init, mean.shape[1:])
            means = [("ensemble mean", mean.isel(at).values)]
            if matched is not None:
                means.append(("probability-matched mean", matched.isel(at).values))
            written.append(_mean_map(grid, means, last, mean_style, title, stamp, path))
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
    for stale in sorted(set(out.iterdir()) - set(written)):
        if MAP_NAME.fullmatch(stale.name) and stale.is_file():
            stale.unlink()
    return written
