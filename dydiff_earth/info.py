"""What a data source or a checkpoint holds, from its metadata and a small sample (``dydiff-earth info``).

`describe` answers before a long run: the variables, units, grid and CRS, time axis (range, step,
segments and gaps), NaN fraction and size on disk of a zarr store or NetCDF file, or the variables,
units, time step, context, horizon, preset, gamma ratio, frame, training data and sha256 of a checkpoint.
It reads metadata and at most `SAMPLE_FRAMES` frames of data; a checkpoint's tensors are never loaded,
only their names and shapes from the safetensors header. The result is a JSON-able dict; `render` lays
it out as text. Problems that would stop ``train`` or ``forecast`` are listed under ``problems``
rather than raised, so that a file can be inspected even when it cannot be used as it is.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from dydiff_earth import config, inflation, io, sources
from dydiff_earth.data import describe_step, time_segments
from dydiff_earth.errors import InputError

#: Evenly spaced frames read for value statistics (NaN fraction, range).
SAMPLE_FRAMES = 4
#: Gaps listed one by one; beyond this only their number is given.
MAX_GAPS = 10
_PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"})


def describe(path: str | Path) -> dict[str, Any]:
    """Describe a data source (zarr store, NetCDF file) or a checkpoint (``.safetensors``).

    Parameters
    ----------
    path : str or Path
        A zarr store, a NetCDF file, a ``.safetensors`` checkpoint (or a directory holding
        ``model.safetensors``), or the name of a shipped model such as ``demo``.

    Returns
    -------
    dict
        JSON-able; ``kind`` is ``"data"`` or ``"checkpoint"``. An unreadable file is an `InputError`.
    """
    p = Path(path)
    if not p.exists():
        shipped = Path(__file__).with_name("models") / f"{path}.safetensors"
        if str(path) and "/" not in str(path) and shipped.is_file():
            return describe_checkpoint(shipped)
        raise InputError(f"{path} does not exist; check the path")
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        raise InputError(
            f"{path} looks like a pickle (torch.save) file; dydiff-earth reads only safetensors "
            "checkpoints and never unpickles"
        )
    if p.suffix == ".safetensors" or (p.is_dir() and (p / "model.safetensors").is_file()):
        return describe_checkpoint(p)
    if p.is_file() and _is_safetensors(p):
        return describe_checkpoint(p)
    return describe_data(p)


# ----------------------------------------------------------------------------------------- checkpoints


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then ``{``."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size


def _header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]]]:
    """The metadata and ``name -> (dtype, shape)`` of a safetensors file, without reading its tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            shapes = {}
            for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                part = f.get_slice(name)
                shapes[name] = (str(part.get_dtype()), list(part.get_shape()))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path} is not a readable safetensors checkpoint: {reason}") from None
    return meta, shapes


def _preset_name(model: dict[str, Any]) -> str:
    """The preset whose configuration the checkpoint's model matches, else ``custom``."""
    for name, cfg in config.PRESETS.items():
        known = json.loads(json.dumps(dataclasses.asdict(cfg)))
        if model and all(known.get(k) == v for k, v in model.items()):
            return name
    return "custom"


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Describe a checkpoint from its safetensors header: no tensor is loaded.

    Returns
    -------
    dict
        ``kind="checkpoint"``, ``path``, ``size_bytes``, ``sha256``, ``variables`` (name, units,
        transform, mean, std, scale), ``time_step``/``time_step_seconds``, ``context``, ``horizon``,
        ``patch``, ``preset``, ``model``, ``gamma_ratio``, ``diffusion``, ``frame``, ``covariates``,
        ``sampler`` (the recommended solver steps and spacing, or None), ``grid``, ``training``
        (data, steps, losses, options), ``tensors`` and ``parameters``.
    """
    p = Path(path)
    file = p / "model.safetensors" if p.is_dir() else p
    if not file.is_file():
        raise InputError(f"checkpoint {path} not found")
    header, shapes = _header(file)
    extra = (
        json.loads((p / "config.json").read_text()) if p.is_dir() and (p / "config.json").is_file() else {}
    )
    try:
        meta = {**extra, **(json.loads(header["dydiff_earth"]) if "dydiff_earth" in header else {})}
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: checkpoint metadata is not valid JSON ({exc.msg})") from None
    if meta.get("format") != io.CHECKPOINT_FORMAT:
        raise InputError(
            f"{path} is a safetensors file but not a dydiff-earth checkpoint "
            f"(format {meta.get('format')!r}, expected {io.CHECKPOINT_FORMAT!r})"
        )
    diffusion = meta.get("diffusion") or {}
    step_s = meta.get("time_step_seconds")
    step = np.timedelta64(int(step_s), "s") if isinstance(step_s, (int, float)) and step_s > 0 else None
    model = meta.get("model") or {}
    return {
        "kind": "checkpoint",
        "path": str(p),
        "size_bytes": file.stat().st_size,
        "sha256": io.file_sha256(file),
        "format": meta.get("format"),
        "package_version": meta.get("package_version"),
        "variables": [
            {
                **{k: v.get(k) for k in ("name", "units", "transform", "mean", "std")},
                "scale": v.get("scale", 1.0),  # log1p(x / scale); models made before it have 1
            }
            for v in meta.get("variables") or []
        ],
        "time_step": describe_step(step) if step is not None else None,
        "time_step_seconds": step_s,
        "context": meta.get("context"),
        "horizon": meta.get("horizon"),
        "patch": meta.get("patch"),
        "preset": meta.get("preset") or _preset_name(model),
        "model": model,
        "gamma_ratio": diffusion.get("gamma_ratio"),
        "diffusion": diffusion,
        "frame": meta.get("frame", "eulerian"),
        "covariates": list(meta.get("covariates", [])),
        "sampler": meta.get("sampler"),
        "grid": meta.get("grid"),
        "training": {
            "data": meta.get("data"),
            "steps": meta.get("step"),
            "train_loss": meta.get("train_loss"),
            "validation_loss": meta.get("validation_loss"),
            "options": meta.get("train"),
        },
        "tensors": len(shapes),
        "parameters": sum(math.prod(shape) for _, shape in shapes.values()),
    }


# ------------------------------------------------------------------------------------------------ data


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _crs(ds: xr.Dataset, names: list[str]) -> dict[str, Any] | None:
    """The grid-mapping variable's name and its CF attributes (projection name, proj4, WKT, EPSG)."""
    for name in names:
        value = ds[name].attrs.get("grid_mapping") or ds[name].encoding.get("grid_mapping")
        if not value:
            continue
        gm = str(value).split(":")[0].split()[0]
        if gm in ds.variables:
            attrs = ds[gm].attrs
            keep = ("grid_mapping_name", "proj4", "proj4_params", "proj4text", "epsg_code", "crs_wkt")
            return {"variable": gm, **{k: str(attrs[k]) for k in keep if k in attrs}}
    return None


def _axis(ds: xr.Dataset, dim: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": dim, "size": int(ds.sizes[dim])}
    if dim in ds.coords and ds[dim].size and np.issubdtype(ds[dim].dtype, np.number):
        values = ds[dim].values
        out.update(
            first=float(values[0]),
            last=float(values[-1]),
            spacing=float(np.median(np.diff(values))) if values.size > 1 else None,
            units=str(ds[dim].attrs.get("units", "")),
        )
    return out


def _time(ds: xr.Dataset, tdim: str, problems: list[str]) -> tuple[dict[str, Any], xr.Dataset]:
    """Range, step, segments and gaps of the time axis; checks that would stop a run go to ``problems``."""
    try:
        ds = sources.as_datetimes(ds, tdim)
        times = ds[tdim].values.astype("datetime64[ns]")
    except InputError as exc:
        problems.append(str(exc))
        return {"dim": tdim, "frames": int(ds.sizes[tdim])}, ds
    out: dict[str, Any] = {"dim": tdim, "frames": len(times)}
    if len(times):
        out.update(start=str(times[0])[:19], end=str(times[-1])[:19])
    try:
        sources.check_times(times, tdim)
    except InputError as exc:
        problems.append(str(exc))
        return out, ds
    if len(times) < 2:
        problems.append(f"{len(times)} frame(s); at least 2 are needed to know the time step")
        return out, ds
    step, segments = time_segments(times)
    gaps = [
        {"after": str(times[a.stop - 1])[:19], "before": str(times[b.start])[:19]}
        for a, b in itertools.pairwise(segments)
    ]
    out.update(
        step=describe_step(step),
        step_seconds=float(step / np.timedelta64(1, "s")),
        segments=len(segments),
        longest_segment=max(s.length for s in segments),
        gaps=gaps[:MAX_GAPS],
        gap_count=len(gaps),
    )
    return out, ds


def _sample(ds: xr.Dataset, tdim: str | None, names: list[str], label: str) -> dict[str, dict[str, Any]]:
    """NaN fraction, infinities and finite range of each variable in `SAMPLE_FRAMES` evenly spaced frames."""
    tasks = {}
    frames = None
    if tdim is not None and ds.sizes.get(tdim):
        n = ds.sizes[tdim]
        frames = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_FRAMES)).round().astype(int))
    for name in names:
        da = ds[name]
        if da.dtype.kind not in "fiu" or da.ndim == 0:  # 0-d: a grid mapping or a constant
            continue
        if frames is not None and tdim in da.dims:
            da = da.isel({tdim: frames})
        data = da.data.astype(np.float64)
        finite = np.isfinite(data)
        values = np.where(finite, data, np.nan)
        tasks[name] = {
            "values": int(data.size),
            "nan": np.isnan(data).sum(),
            "inf": np.isinf(data).sum(),
            "min": np.nanmin(values) if data.size else np.nan,
            "max": np.nanmax(values) if data.size else np.nan,
        }
    with sources.reading(f"a sample of {label}"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmin of an all-NaN sample
        (computed,) = dask.compute(tasks)
    out = {}
    for name, c in computed.items():
        size = max(c["values"], 1)
        lo, hi = float(c["min"]), float(c["max"])
        out[name] = {
            "sampled_frames": None if frames is None or tdim not in ds[name].dims else len(frames),
            "nan_fraction": round(float(c["nan"]) / size, 6),
            "inf": int(c["inf"]),
            "min": lo if np.isfinite(lo) else None,
            "max": hi if np.isfinite(hi) else None,
        }
    return out


def describe_data(path: str | Path) -> dict[str, Any]:
    """Describe a zarr store or NetCDF file from its metadata and `SAMPLE_FRAMES` frames.

    Returns
    -------
    dict
        ``kind="data"``, ``path``, ``format``, ``size_bytes`` (on disk), ``uncompressed_bytes``,
        ``variables`` (name, dims, shape, dtype, units, long/standard name, sample statistics),
        ``grid`` (dims with their coordinate ranges, CRS), ``time`` (range, step, segments, gaps),
        ``usable`` (variables that ``train``/``forecast`` would take) and ``problems``.
    """
    p = Path(path)
    ds = sources.open_raw(p)
    fmt = "zarr" if p.is_dir() else "netcdf"
    problems: list[str] = []
    names = [str(n) for n in ds.data_vars]
    try:
        tdim: str | None = sources.find_time_dim(ds)
    except InputError as exc:
        tdim = None
        problems.append(str(exc))
    try:
        ydim, xdim = sources.find_spatial_dims(ds)
        grid: dict[str, Any] | None = {"y": _axis(ds, ydim), "x": _axis(ds, xdim), "crs": _crs(ds, names)}
    except InputError as exc:
        ydim = xdim = None
        grid = None
        problems.append(str(exc))
    time_info = None
    if tdim is not None:
        with sources.reading(str(p)):
            time_info, ds = _time(ds, tdim, problems)
    try:
        stats = _sample(ds, tdim, names, str(p))
    except InputError as exc:  # a damaged chunk: say so, and still describe what the metadata tells
        stats = {}
        problems.append(str(exc))
    variables = []
    for name in names:
        da = ds[name]
        entry = {
            "name": name,
            "dims": [str(d) for d in da.dims],
            "shape": [int(s) for s in da.shape],
            "dtype": str(da.dtype),
            "units": da.attrs.get("units"),
            "standard_name": da.attrs.get("standard_name"),
            "long_name": da.attrs.get("long_name"),
            **stats.get(name, {}),
        }
        variables.append(entry)
        if entry.get("inf"):
            problems.append(f"variable {name!r} holds infinite values in the sample; mask them as NaN")
        if entry.get("nan_fraction") == 1.0 and entry.get("sampled_frames"):
            problems.append(f"variable {name!r} is all NaN in {entry['sampled_frames']} sampled frames")
    usable = []
    if tdim is not None and ydim is not None and xdim is not None:
        dims = {tdim, ydim, xdim}
        usable = [v["name"] for v in variables if set(v["dims"]) == dims and v["dtype"][0] in "fiu"]
        if not usable:
            problems.append(f"no variable has exactly the dims ({tdim}, {ydim}, {xdim})")
    if not problems:
        try:  # the checks `train` and `forecast` make when they open it (no data read)
            sources.open_source(p, usable or None)
        except InputError as exc:
            problems.append(str(exc))
    return {
        "kind": "data",
        "path": str(p),
        "format": fmt,
        "size_bytes": _disk_size(p),
        "uncompressed_bytes": int(sum(v.nbytes for v in ds.data_vars.values())),
        "attributes": {k: str(v) for k, v in ds.attrs.items() if k in ("title", "institution", "source")},
        "variables": variables,
        "grid": grid,
        "time": time_info,
        "usable": usable,
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------- output


def to_json(info: dict[str, Any]) -> str:
    """``info`` as indented JSON."""
    return json.dumps(info, indent=2, default=str)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render(info: dict[str, Any]) -> Any:
    """A rich renderable (tables) of `describe`'s result, for the terminal."""
    from rich.console import Group
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    var_table = Table(box=None, header_style="bold", pad_edge=False)
    if info["kind"] == "checkpoint":
        for key, value in _checkpoint_rows(info):
            head.add_row(key, value)
        for column in ("variable", "units", "transform", "mean", "std"):
            var_table.add_column(column)
        for v in info["variables"]:
            scaled = v["transform"] == "log1p" and v["scale"] != 1.0
            transform = f"log1p(x / {_number(v['scale'])})" if scaled else v["transform"]
            var_table.add_row(v["name"], v["units"], transform, _number(v["mean"]), _number(v["std"]))
        return Group(head, "", var_table)
    for key, value in _data_rows(info):
        head.add_row(key, value)
    for column in ("variable", "dims", "dtype", "units", "NaN", "min", "max"):
        var_table.add_column(column)
    for v in info["variables"]:
        nan = v.get("nan_fraction")
        var_table.add_row(
            v["name"],
            f"({', '.join(v['dims'])}) {' x '.join(map(str, v['shape']))}",
            v["dtype"],
            str(v.get("units") or "-"),
            "-" if nan is None else f"{100 * nan:.1f}%",
            _number(v.get("min")),
            _number(v.get("max")),
        )
    parts: list[Any] = [head, "", var_table]
    if info["problems"]:
        parts += ["", *(f"[bold red]problem:[/] {text}" for text in info["problems"])]
    return Group(*parts)


def _checkpoint_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    training = info["training"]
    data = training.get("data") or {}
    grid = info.get("grid") or {}
    losses = ", ".join(
        f"{k.split('_')[0]} {training[k]:.4g}" for k in ("train_loss", "validation_loss") if training.get(k)
    )
    if losses and (training.get("options") or {}).get("objective") == "crps":
        losses += ": fair CRPS of sampled members"  # in the variables' units, not the denoising loss
    rows = [
        ("checkpoint", info["path"]),
        (
            "size",
            f"{_bytes(info['size_bytes'])}, {info['tensors']} tensors, {info['parameters']:,} parameters",
        ),
        ("sha256", info["sha256"]),
        ("variables", ", ".join(f"{v['name']} [{v['units']}]" for v in info["variables"])),
        ("time step", str(info["time_step"])),
        ("context / horizon", f"{info['context']} / {info['horizon']} frames (patch {info['patch']})"),
        ("preset", str(info["preset"])),
        ("gamma ratio", _number(info["gamma_ratio"])),
        ("frame", str(info["frame"])),
        ("covariates", ", ".join(info["covariates"]) or "none"),
        ("sampler", _sampler(info.get("sampler"))),
        (
            "trained grid",
            f"{grid.get('dims')} {grid.get('shape')}, grid mapping {grid.get('grid_mapping')}"
            + (f", cells of {grid['cell_km']:.3g} km" if grid.get("cell_km") else ""),
        ),
        (
            "training data",
            f"{data.get('source')}: {str(data.get('time_start', ''))[:16]} to "
            f"{str(data.get('time_end', ''))[:16]}, {data.get('frames')} frames, "
            f"{data.get('segments')} segments",
        ),
        ("training steps", f"{training.get('steps')}" + (f" ({losses})" if losses else "")),
        ("package version", str(info.get("package_version"))),
    ]
    return rows


def _sampler(sampler: dict[str, Any] | None) -> str:
    chosen = {**config.DEFAULT_SAMPLER, **(sampler or {})}
    text = f"{chosen['sampling_steps']} steps, {chosen['spacing']} spacing"
    if chosen["inflation"] != 1:
        text += f", spread inflation {inflation.describe(chosen['inflation'], chosen['inflation_scale'])}"
    if not sampler:
        return f"none recommended (forecasts default to {text})"
    return text + (f" ({sampler['evidence']})" if sampler.get("evidence") else "")


def _data_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("data", f"{info['path']} ({info['format']})"),
        ("size", f"{_bytes(info['size_bytes'])} on disk, {_bytes(info['uncompressed_bytes'])} uncompressed"),
    ]
    rows += [(k, v) for k, v in info["attributes"].items()]
    grid = info.get("grid")
    if grid:
        axes = []
        for axis in (grid["y"], grid["x"]):
            text = f"{axis['name']} {axis['size']}"
            if axis.get("first") is not None:
                text += (
                    f" ({_number(axis['first'])} to {_number(axis['last'])}, step {_number(axis['spacing'])}"
                )
                text += f" {axis['units']})" if axis.get("units") else ")"
            axes.append(text)
        rows.append(("grid", " x ".join(axes)))
        crs = grid.get("crs")
        if crs:
            proj = crs.get("proj4") or crs.get("proj4_params") or crs.get("proj4text") or crs.get("epsg_code")
            described = ", ".join(str(x) for x in (crs.get("grid_mapping_name"), proj) if x)
            rows.append(("crs", f"{crs['variable']}: {described or 'no projection attributes'}"))
        else:
            rows.append(("crs", "none (coordinates as given)"))
    t = info.get("time")
    if t:
        text = f"{t.get('start', '?')} to {t.get('end', '?')}, {t['frames']} frames"
        if "step" in t:
            text += f", step {t['step']}, {t['segments']} segment(s), longest {t['longest_segment']} frames"
        rows.append(("time", text))
        if t.get("gap_count"):
            listed = "; ".join(f"{g['after']} -> {g['before']}" for g in t["gaps"])
            more = f" (+{t['gap_count'] - len(t['gaps'])} more)" if t["gap_count"] > len(t["gaps"]) else ""
            rows.append(("gaps", f"{t['gap_count']}: {listed}{more}"))
    rows.append(("usable", ", ".join(info["usable"]) or "none"))
    return rows


__all__ = ["SAMPLE_FRAMES", "describe", "describe_checkpoint", "describe_data", "render", "to_json"]
