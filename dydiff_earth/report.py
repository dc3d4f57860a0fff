"""Skill reports: a self-contained ``index.html``, ``summary.md`` and PNGs drawn from a scores dataset.

The report never computes a score: it draws what :func:`dydiff_earth.metrics.score_all` /
:func:`~dydiff_earth.metrics.combine_systems` wrote (dims ``system, lead_time, ...``) and tabulates the
headline numbers of ``summary["systems"]`` (:func:`dydiff_earth.verify.headline`). Only display
aggregates happen here (rank histograms averaged over lead times, reliability bins pooled by their
counts). Figures are drawn on ``matplotlib.figure.Figure`` objects, never pyplot's global state.
"""

from __future__ import annotations

import base64
import html
import io as _bytes
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colors as mcolors
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dydiff_earth import __version__, io, schema

DPI = 100
#: Rain-rate class boundaries (mm h-1) of the example maps; below the first is dry (white).
RAIN_LEVELS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: Light to dark blues for light rain, then greens, yellows and reds for heavy rain (one per class).
_RAIN_COLOURS = ("#c6dbef", "#6baed6", "#2171b5", "#41ab5d", "#fed976", "#fd8d3c", "#e31a1c", "#800026")
_NO_DATA = "0.82"
#: The reference system is drawn grey and dashed so that the systems under test stand out.
_REFERENCE = "persistence"

#: Headline columns: key in ``summary["systems"][name]``, label, which value is best.
_COLUMNS = (
    ("crps_fair", "fair CRPS", "min"),
    ("crps_skill", "CRPS skill vs persistence", "max"),
    ("rmse", "RMSE of mean", "min"),
    ("ssr", "spread/skill", "one"),
)


# --- helpers ------------------------------------------------------------------------------------------------


def _with_system(scores: xr.Dataset) -> xr.Dataset:
    """Scores of one forecast (no ``system`` dim) become a one-system dataset."""
    if schema.SYSTEM in scores.dims:
        return scores
    return scores.expand_dims({schema.SYSTEM: [str(scores.attrs.get("system", "forecast"))]})


def _systems(scores: xr.Dataset) -> list[str]:
    return [str(s) for s in scores[schema.SYSTEM].values]


def _style(systems: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Line style per system, stable across figures."""
    cycle = matplotlib.colormaps["tab10"].colors
    out, k = {}, 0
    for name in systems:
        if name == _REFERENCE:
            out[name] = {"color": "0.45", "linestyle": "--", "marker": "s"}
        else:
            out[name] = {"color": cycle[k % len(cycle)], "linestyle": "-", "marker": "o"}
            k += 1
    return out


def _leads(scores: xr.Dataset | xr.DataArray) -> tuple[np.ndarray, str]:
    """Lead times as numbers and the axis label: minutes up to 3 h, hours beyond."""
    minutes = scores[schema.LEAD_TIME].values / np.timedelta64(1, "m")
    if minutes.max() > 180:
        return minutes / 60.0, "lead time (h)"
    return minutes, "lead time (min)"


def _lead_tag(value: np.timedelta64) -> str:
    minutes = float(value / np.timedelta64(1, "m"))
    return f"+{minutes / 60:g} h" if minutes > 180 else f"+{minutes:g} min"


def _prefixes(scores: xr.Dataset) -> list[str]:
    return sorted(str(n)[: -len("crps_fair")] for n in scores.data_vars if str(n).endswith("crps_fair"))


def _units(da: xr.DataArray) -> str:
    return str(da.attrs.get("units", "1"))


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = _bytes.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _grid(n: int, ncols: int, width: float, height: float) -> tuple[Figure, list[Any]]:
    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# --- figures of scores -------------------------------------------------------------------------------------


def _curve(
    ax: Any, scores: xr.Dataset, var: str, style: Mapping, select: Mapping | None = None, **kw
) -> None:
    x, _ = _leads(scores)
    for name in _systems(scores):
        da = scores[var].sel({schema.SYSTEM: name, **(select or {})})
        if np.isfinite(da.values).any():
            ax.plot(x, da.values, label=name, **{**style[name], "markersize": 3, **kw})


def curves_figure(scores: xr.Dataset, prefix: str = "") -> Figure:
    """Fair CRPS, RMSE, CSI and FSS against lead time, one line per system."""
    style = _style(_systems(scores))
    units = _units(scores[prefix + "crps_fair"])
    panels: list[tuple[str, dict, str, str]] = [
        (prefix + "crps_fair", {}, "fair CRPS", f"fair CRPS ({units})"),
        (prefix + "rmse", {}, "RMSE of the ensemble mean", f"RMSE ({units})"),
    ]
    pools = scores["pool"].values if "pool" in scores.coords else []
    for var, label in (
        ("csi", "CSI of the mean"),
        ("matched_csi", "CSI of the probability-matched mean"),
        ("pooled_matched_csi", ""),
        ("fss", "FSS"),
    ):
        if var == "pooled_matched_csi":
            # At the first pool (pixelwise) it is the matched mean: only a coarser pool says more.
            if len(pools) < 2:
                continue
            label = f"CSI, matched mean of the {pools[1]}×{pools[1]} maxima"
        if prefix + var in scores:
            for t in scores[schema.THRESHOLD].values:
                title = f"{label}, ≥ {t:g} {units}"
                panels.append((prefix + var, {schema.THRESHOLD: t}, title, var.split("_")[-1].upper()))
    fig, axes = _grid(len(panels), 2, 5.4, 3.4)
    xlabel = _leads(scores)[1]
    for ax, (var, select, title, ylabel) in zip(axes, panels, strict=True):
        if var.endswith("pooled_matched_csi"):
            _curve(ax, scores, var, style, {**select, "pool": pools[1]})
        elif var.endswith("csi"):
            _curve(ax, scores, var, style, {**select, "pool": pools[0]})
            if len(pools) > 1:
                _curve(ax, scores, var, style, {**select, "pool": pools[1]}, alpha=0.5, linestyle=":")
                ax.plot([], [], color="0.3", linestyle=":", label=f"max-pooled {pools[1]}×{pools[1]}")
                ax.legend(fontsize=7, handles=ax.get_lines()[-1:], loc="upper right")
        elif var.endswith("fss"):
            scale = int(scores["scale"].values[0])
            _curve(ax, scores, var, style, {**select, "scale": scale})
            title += f", window {scale}"
        else:
            _curve(ax, scores, var, style, select)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def ssr_figure(scores: xr.Dataset, prefix: str = "") -> Figure:
    """Spread-skill ratio against lead time with the perfect-ensemble line at 1."""
    style = _style(_systems(scores))
    fig, (ax,) = _grid(1, 1, 6.0, 3.6)
    _curve(ax, scores, prefix + "ssr", style)
    ax.axhline(1.0, color="k", linewidth=1, label="calibrated (1)")
    ax.set(
        title="Spread-skill ratio (1-member systems have none)",
        xlabel=_leads(scores)[1],
        ylabel="spread / RMSE (1)",
    )
    finite = scores[prefix + "ssr"].values[np.isfinite(scores[prefix + "ssr"].values)]
    ax.set_ylim(0, max(1.25, 1.1 * float(finite.max())) if finite.size else 1.25)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def isolated_figure(scores: xr.Dataset, prefix: str = "") -> Figure:
    """Share of lone event points of the members and of the truth at the first threshold, per lead time."""
    style = _style(_systems(scores))
    fig, (ax,) = _grid(1, 1, 6.0, 3.6)
    first = {schema.THRESHOLD: scores[schema.THRESHOLD].values[0]}
    _curve(ax, scores, prefix + "isolated_forecast", style, first)
    truth = scores[prefix + "isolated_truth"].sel(first).isel({schema.SYSTEM: 0})
    ax.plot(_leads(scores)[0], truth.values, color="k", linestyle="--", label="truth")
    units = _units(scores[prefix + "crps_fair"])
    ax.set(
        title=f"Lone points at or above {first[schema.THRESHOLD]:g} {units}",
        xlabel=_leads(scores)[1],
        ylabel="share of event points (1)",
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def rank_figure(scores: xr.Dataset, prefix: str = "") -> Figure:
    """Rank histograms, one panel per system, averaged over lead times; flat is calibrated."""
    systems = _systems(scores)
    style = _style(systems)
    fig, axes = _grid(len(systems), 4, 3.4, 2.8)
    for ax, name in zip(axes, systems, strict=True):
        da = (
            scores[prefix + "rank_histogram"].sel({schema.SYSTEM: name}).mean(schema.LEAD_TIME).dropna("rank")
        )
        ranks = da["rank"].values
        ax.bar(ranks, da.values, color=style[name]["color"], width=0.85)
        if len(ranks):
            ax.axhline(1.0 / len(ranks), color="k", linewidth=1, linestyle="--")
        members = max(len(ranks) - 1, 0)
        ax.set(title=f"{name} ({members} member{'s' if members != 1 else ''})", xlabel="rank of truth")
        ax.set(ylabel="relative frequency", xticks=ranks)
    return fig


def reliability_figure(scores: xr.Dataset, prefix: str = "") -> Figure:
    """Observed frequency against forecast probability per threshold, bins pooled over lead times."""
    style = _style(_systems(scores))
    units = _units(scores[prefix + "crps_fair"])
    thresholds = scores[schema.THRESHOLD].values
    fig, axes = _grid(len(thresholds), 3, 4.0, 3.8)
    for ax, t in zip(axes, thresholds, strict=True):
        for name in _systems(scores):
            sel = {schema.SYSTEM: name, schema.THRESHOLD: t}
            count = scores[prefix + "reliability_count"].sel(sel).fillna(0)
            n = count.sum(schema.LEAD_TIME)
            p = (scores[prefix + "reliability_forecast_probability"].sel(sel).fillna(0) * count).sum(
                schema.LEAD_TIME
            ) / n
            o = (scores[prefix + "reliability_observed_frequency"].sel(sel).fillna(0) * count).sum(
                schema.LEAD_TIME
            ) / n
            keep = n.values > 0
            ax.plot(p.values[keep], o.values[keep], label=name, **{**style[name], "markersize": 3})
        ax.plot([0, 1], [0, 1], color="k", linewidth=1, label="perfect")
        ax.set(
            title=f"Reliability, ≥ {t:g} {units}",
            xlabel="forecast probability",
            ylabel="observed frequency",
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def spectra_figure(scores: xr.Dataset, prefix: str = "") -> Figure:
    """Radially averaged power of members (solid) and truth (dashed) at up to three lead times."""
    style = _style(_systems(scores))
    n = scores.sizes[schema.LEAD_TIME]
    picks = sorted({0, n // 2, n - 1})
    fig, axes = _grid(len(picks), 3, 4.2, 3.6)
    units = _units(scores[prefix + "power_truth"])
    for ax, i in zip(axes, picks, strict=True):
        one = scores.isel({schema.LEAD_TIME: i})
        wavelength = one["wavelength"].values
        for name in _systems(scores):
            ax.loglog(
                wavelength,
                one[prefix + "power_forecast"].sel({schema.SYSTEM: name}).values,
                color=style[name]["color"],
                label=name,
            )
        truth = one[prefix + "power_truth"].isel({schema.SYSTEM: 0}).values
        ax.loglog(wavelength, truth, color="k", linestyle="--", label="truth")
        ax.invert_xaxis()
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        tag = _lead_tag(scores[schema.LEAD_TIME].values[i])
        ax.set(title=f"Power spectrum, {tag}", xlabel="wavelength (grid points)", ylabel=f"power ({units})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    return fig


# --- example maps -------------------------------------------------------------------------------------------


def _is_rain(attrs: Mapping) -> bool:
    units = str(attrs.get("units", "")).lower().replace(" ", "")
    return units in ("mmh-1", "mm/h", "mmhr-1") or "precipitation" in str(attrs.get("standard_name", ""))


def _map_style(attrs: Mapping, reference: np.ndarray) -> dict[str, Any]:
    if _is_rain(attrs):
        cmap = mcolors.ListedColormap(_RAIN_COLOURS).with_extremes(
            under="white", over="#d400d4", bad=_NO_DATA
        )
        return {"cmap": cmap, "norm": mcolors.BoundaryNorm(RAIN_LEVELS, cmap.N)}
    finite = reference[np.isfinite(reference)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=_NO_DATA)
    return {"cmap": cmap, "norm": mcolors.Normalize(lo, hi if hi > lo else lo + 1)}


def example_figure(name: str, forecast: xr.Dataset, truth: xr.Dataset) -> Figure:
    """Truth, ensemble mean (and matched mean, where the forecast has one) and two members of one case.

    Up to three lead times, one column each.
    """
    var = schema.forecast_variables(forecast)[0]
    da = forecast[var]
    if da.sizes[schema.MEMBER] == 1:
        rows = [("truth", truth[var]), ("forecast", da.isel({schema.MEMBER: 0}))]
    else:
        mean = forecast[f"{var}_mean"] if f"{var}_mean" in forecast else da.mean(schema.MEMBER)
        rows = [("truth", truth[var]), ("ensemble mean", mean)]
        if f"{var}_matched_mean" in forecast:
            rows.append(("matched mean", forecast[f"{var}_matched_mean"]))
        rows += [(f"member {k}", da.isel({schema.MEMBER: k})) for k in range(2)]
    n = da.sizes[schema.LEAD_TIME]
    leads = sorted({0, n // 2, n - 1})
    ydim = da.dims[-2]
    upper = ydim in da.coords and da[ydim].size > 1 and float(da[ydim][0]) > float(da[ydim][-1])
    h, w = da.shape[-2:]
    panel = 3.0
    fig = Figure(figsize=(panel * len(leads) + 1.0, panel * h / w * len(rows) + 0.9), layout="constrained")
    axes = fig.subplots(len(rows), len(leads), squeeze=False)
    style = _map_style(da.attrs, truth[var].values)
    image = None
    for r, (label, field) in enumerate(rows):
        for c, i in enumerate(leads):
            ax = axes[r, c]
            values = np.asarray(field.isel({schema.LEAD_TIME: i}).values, dtype=float)
            image = ax.imshow(values, origin="upper" if upper else "lower", interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}, {_lead_tag(da[schema.LEAD_TIME].values[i])}", fontsize=9)
    label = f"{da.attrs.get('long_name', var)} ({da.attrs.get('units', '1')})"
    fig.colorbar(image, ax=axes, shrink=0.6, extend="both" if _is_rain(da.attrs) else "neither", label=label)
    init = str(forecast[schema.INIT_TIME].values)[:16] if schema.INIT_TIME in forecast.coords else ""
    fig.suptitle(f"{name}: example case from {init} (grey: no data)")
    return fig


# --- table --------------------------------------------------------------------------------------------------


def _columns(summary: Mapping, units: str) -> list[tuple[str, str, str]]:
    rows = summary.get("systems", {})
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    with_units = {"crps_fair", "rmse"}
    cols = [
        (k, f"{label} ({units})" if k in with_units and units else label, rule) for k, label, rule in _COLUMNS
    ]
    cols = [c for c in cols if c[0] in keys]
    for prefix in ("csi@", "fss@"):
        for key in keys:
            if key.startswith(prefix):
                cols.append((key, f"{prefix[:3].upper()} ≥ {key[4:]} {units}".rstrip(), "max"))
    if "n_points" in keys:
        cols.append(("n_points", "verified points", "none"))
    return cols


def _best(values: list[float | None], rule: str) -> set[int]:
    finite = [(i, v) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    if rule == "none" or len(finite) < 2:
        return set()
    key = {"min": lambda v: v, "max": lambda v: -v, "one": lambda v: abs(v - 1.0)}[rule]
    best = min(key(v) for _, v in finite)
    return {i for i, v in finite if np.isclose(key(v), best, rtol=1e-9, atol=1e-12)}


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.4g}"


def table_rows(summary: Mapping, units: str = "") -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header labels and, per system, ``(text, is_best)`` cells (best value per column).

    ``units`` (of the forecast variable) label the CRPS, RMSE and threshold columns.
    """
    systems = list(summary.get("systems", {}))
    cols = _columns(summary, units)
    cells = [[(name, False)] for name in systems]
    for key, _, rule in cols:
        values = [summary["systems"][s].get(key) for s in systems]
        best = _best(values, rule)
        for i, v in enumerate(values):
            cells[i].append((_fmt(v), i in best))
    return ["system", *(label for _, label, _ in cols)], cells


# --- pages --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 1.5em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.meta { color: #555; font-size: 0.9em; }
"""


def _notes(summary: Mapping) -> list[str]:
    return [
        "Scores are averaged over init times and verified points, then (in the table) over lead times.",
        "Fair CRPS: Ferro (2014), unbiased for the ensemble's distribution; with one member it is the MAE.",
        "CRPS skill vs persistence = 1 − CRPS / CRPS(persistence); above 0 beats persistence.",
        "Spread/skill: ensemble spread over the RMSE of the ensemble mean, finite-ensemble corrected "
        "(Fortin et al. 2014); 1 is calibrated. CSI is of the ensemble mean, pixelwise; FSS: Roberts & "
        "Lean (2008).",
    ]


def _meta(summary: Mapping) -> list[str]:
    opts = summary.get("options", {})
    lines = [f"{k}: {v}" for k, v in opts.items() if v not in (None, [], "")]
    for key in ("forecast", "truth"):
        if key in summary:
            lines.append(f"{key}: {summary[key]}")
    inits = summary.get("init_times", [])
    if inits:
        lines.append(f"{len(inits)} init times: {', '.join(map(str, inits))}")
    return lines


def _html(summary: Mapping, images: list[tuple[str, str, str, bytes]], units: str) -> str:
    header, rows = table_rows(summary, units)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>dydiff-earth skill report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>dydiff-earth skill report</h1>",
        '<ul class="meta">' + "".join(f"<li>{esc(line)}</li>" for line in _meta(summary)) + "</ul>",
        "<h2>Headline scores</h2>",
        '<table id="headline"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        cells = "".join(f"<td><b>{esc(t)}</b></td>" if best else f"<td>{esc(t)}</td>" for t, best in row)
        parts.append(f"<tr>{cells}</tr>")
    parts += ["</tbody></table>", '<p class="meta">Best value per column in bold.</p>', '<ul class="meta">']
    parts += [f"<li>{esc(n)}</li>" for n in _notes(summary)] + ["</ul>"]
    for title, fname, caption, data in images:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure id="{esc(fname)}"><h2>{esc(title)}</h2><img src="{uri}" alt="{esc(title)}">'
            f"<figcaption>{esc(caption)} ({esc(fname)})</figcaption></figure>"
        )
    parts.append(f'<p class="meta">dydiff-earth {esc(__version__)}</p></body></html>')
    return "\n".join(parts) + "\n"


def _markdown(summary: Mapping, images: list[tuple[str, str, str, bytes]], units: str) -> str:
    header, rows = table_rows(summary, units)
    lines = ["# dydiff-earth skill report", ""]
    lines += [f"- {line}" for line in _meta(summary)] + ["", "## Headline scores", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        lines.append("| " + " | ".join(f"**{t}**" if best else t for t, best in row) + " |")
    lines += ["", "Best value per column in bold.", ""] + [f"- {n}" for n in _notes(summary)] + [""]
    for title, fname, caption, _ in images:
        lines += [f"## {title}", "", f"![{title}]({fname})", "", caption, ""]
    return "\n".join(lines)


_CAPTIONS = {
    "curves": "Fair CRPS and RMSE of the ensemble mean (lower is better), CSI of the ensemble mean and FSS "
    "(higher is better) against lead time; persistence is grey and dashed.",
    "ssr": "Ensemble spread over the RMSE of the ensemble mean; below 1 the ensemble is under-dispersive.",
    "rank": "Where the truth falls among the sorted members, averaged over lead times: flat (dashed) is "
    "calibrated, U-shaped under-dispersive, a tall last bar means members too low.",
    "reliability": "Observed event frequency against forecast probability (fraction of members), bins "
    "pooled over lead times; the diagonal is reliable.",
    "spectra": "Radially averaged power of the members (solid) and the observations (dashed): missing power "
    "at short wavelengths means blurry forecasts.",
    "isolated": "Share of the members' event points (the observations': dashed) with at most 2 of their 8 "
    "neighbours also events: speckle that the power spectra, averaged over the domain, hide.",
    "example": "Observations, ensemble mean (and, for rain, the probability-matched mean) and two members "
    "of one case (the init time with most signal).",
}


def _figures(
    scores: xr.Dataset, examples: Mapping[str, xr.Dataset] | None, truth: xr.Dataset | None
) -> list[tuple[str, str, str, Figure]]:
    """``(title, file name, caption, figure)`` of every figure of the report."""
    out: list[tuple[str, str, str, Figure]] = []
    for p in _prefixes(scores):
        tag = p.rstrip("_")
        suffix, name = (f" ({tag})", f"{tag}_") if tag else ("", "")
        parts = [
            ("Scores against lead time", "curves", curves_figure),
            ("Spread-skill ratio", "ssr", ssr_figure),
            ("Rank histograms", "rank", rank_figure),
            ("Reliability diagrams", "reliability", reliability_figure),
            ("Power spectra", "spectra", spectra_figure),
            ("Lone event points (speckle)", "isolated", isolated_figure),
        ]
        for title, key, draw in parts:
            needs = {"reliability": "reliability_count", "isolated": "isolated_forecast"}.get(key)
            if needs and p + needs not in scores:
                continue
            out.append((title + suffix, f"{name}{key}.png", _CAPTIONS[key], draw(scores, p)))
    for k, (system, ds) in enumerate((examples or {}).items()):
        if truth is not None:
            fig = example_figure(system, ds, truth)
            out.append((f"Example maps: {system}", f"example_{k}.png", _CAPTIONS["example"], fig))
    return out


def write_report(
    scores: xr.Dataset,
    out_dir: Path,
    *,
    summary: dict,
    examples: dict[str, xr.Dataset] | None = None,
    truth: xr.Dataset | None = None,
) -> Path:
    """Write ``index.html`` (images embedded), ``summary.md`` and the PNGs into ``out_dir``, atomically.

    Parameters
    ----------
    scores : xr.Dataset
        ``combine_systems`` output (dims ``system, lead_time, ...``) or one ``score_all`` output.
    out_dir : Path
        Directory replaced whole once everything is written.
    summary : dict
        ``systems`` (headline numbers per system, :func:`dydiff_earth.verify.headline`), and optionally
        ``options``, ``init_times``, ``forecast``, ``truth`` shown as metadata.
    examples : dict, optional
        System name -> forecast dataset of one case (dims ``member, lead_time, y, x``) for maps.
    truth : xr.Dataset, optional
        Observations of that case, dims ``lead_time, y, x``.

    Returns
    -------
    Path
        ``out_dir / "index.html"``.
    """
    scores = _with_system(scores)
    out_dir = Path(out_dir)
    with io.publish(out_dir) as tmp:
        tmp.mkdir(parents=True)
        images = []
        for title, fname, caption, fig in _figures(scores, examples, truth):
            data = _png(fig)
            (tmp / fname).write_bytes(data)
            images.append((title, fname, caption, data))
        units = _units(scores[_prefixes(scores)[0] + "crps_fair"]) if _prefixes(scores) else ""
        (tmp / "index.html").write_text(_html(summary, images, units), encoding="utf-8")
        (tmp / "summary.md").write_text(_markdown(summary, images, units), encoding="utf-8")
    return out_dir / "index.html"


__all__ = [
    "curves_figure",
    "example_figure",
    "isolated_figure",
    "rank_figure",
    "reliability_figure",
    "spectra_figure",
    "ssr_figure",
    "table_rows",
    "write_report",
]
