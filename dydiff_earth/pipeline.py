"""The forecast product: input + checkpoint -> forecast file and maps. Used by ``forecast`` and ``run``."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from dydiff_earth import io, schema
from dydiff_earth.config import ForecastConfig
from dydiff_earth.covariates import grid_cell_km
from dydiff_earth.data import Fields, VariableSpec, describe_step, open_fields
from dydiff_earth.errors import InputError, MissingVariableError
from dydiff_earth.forecast import (
    MODELS_DIR,
    DiffusionForecaster,
    LoadedModel,
    ProgressFn,
    add_derived,
    cell_size_mismatch,
    check_compatible,
    load_model,
)

DEFAULT_MODEL = "demo"
DEFAULT_OUTPUT_DIR = Path("dydiff-output")


@dataclass(frozen=True)
class ForecastRequest:
    """Everything one forecast run needs; ``None`` input and checkpoint mean the embedded demo."""

    input: str | None = None
    checkpoint: str | None = None
    variables: tuple[str, ...] | None = None
    init_time: str | None = None
    #: number of lead times; default the model's trained horizon
    lead_times: int | None = None
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    thresholds: tuple[float, ...] = ()
    output: Path = DEFAULT_OUTPUT_DIR / "forecast.nc"
    maps: Path | None = DEFAULT_OUTPUT_DIR / "maps"
    #: show temperatures on the maps in K or degC (None: the input's units); the file keeps the input's
    map_units: str | None = None
    device: str = "auto"
    command_line: str = ""
    #: split the members over these devices (``cuda:0,cuda:1``, ``all``); empty: ``device`` alone
    devices: str | None = None


@dataclass(frozen=True)
class ForecastResult:
    """What a run wrote."""

    output: Path
    maps: list[Path]
    init_time: np.datetime64
    members: int
    lead_times: int
    seconds: float
    dataset: xr.Dataset = field(repr=False)
    #: the checkpoint's path (a shipped model's name when one was chosen for the input)
    model: str = ""


def _demo_input(workdir: Path) -> str:
    """The embedded sample (synthetic rain cells on a lat/lon grid), generated on the fly as a zarr store."""
    from dydiff_earth import synthetic

    path = workdir / "demo-input.zarr"
    io.write_zarr(synthetic.demo_sample(), path)
    return str(path)


def observed(fields: Fields, ds: xr.Dataset) -> xr.Dataset | None:
    """Observed frames at the forecast's init and valid times, where the input has them (for maps)."""
    valid = np.concatenate([np.atleast_1d(ds[schema.INIT_TIME].values), ds[schema.VALID_TIME].values.ravel()])
    have = np.isin(valid, fields.times)
    if not have.any():
        return None
    return fields.dataset.sel({fields.time_dim: valid[have]})[list(fields.names)]


def shipped_models() -> list[str]:
    """Names of the models in the package."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.safetensors"))


def _describe(variables: Sequence[VariableSpec], step: np.timedelta64, cell_km: float | None) -> str:
    names = ", ".join(f"{v.name} in {v.units or 'no units'}" for v in variables)
    return f"{names} every {describe_step(step)}" + (f" on {cell_km:.3g} km cells" if cell_km else "")


def _expects(model: LoadedModel) -> str:
    return _describe(model.variables, model.time_step, model.meta.get("grid", {}).get("cell_km"))


def _open_for(model: LoadedModel, source: str, variables: tuple[str, ...] | None) -> Fields:
    names = list(variables) if variables else [v.name for v in model.variables]
    try:
        return open_fields(source, names, stats=model.variables)
    except MissingVariableError as exc:
        trained = ", ".join(repr(v.name) for v in model.variables)
        raise MissingVariableError(
            f"checkpoint {Path(model.path).name} was trained on {trained}: {exc}"
        ) from None


def _synthetic(fields: Fields) -> bool:
    """Made by ``dydiff-earth synth`` (which records its generator), not observed."""
    return "generator" in fields.dataset.attrs and "dydiff_earth.synthetic" in str(
        fields.dataset.attrs.get("history", "")
    )


def choose_model(
    source: str, variables: tuple[str, ...] | None, device: torch.device
) -> tuple[LoadedModel, Fields]:
    """The shipped model whose variables, units, time step and size of grid cells the input has, and the
    input.

    The ``demo`` model (trained on synthetic rain) serves synthetic inputs; observations go to a model
    trained on observations when one fits (``radar-4km-v1`` for 5-minute rain rates). When none fits,
    one line lists the shipped models with what each expects and how to train one.
    """
    fits, tried, regrid, opened = [], [], [], None
    for name in shipped_models():
        model = load_model(name, device)
        # A missing variable or other units or time step rule a model out; an unreadable input does not
        # (its error is raised as it is, for every model would fail alike).
        try:
            fields = _open_for(model, source, variables)
        except MissingVariableError:
            fields = None
        fit = fields is not None
        if fields is not None:
            opened = fields
            # Metadata only: fails on nothing but a mismatch; the grid is checked apart, to say how to fix it.
            try:
                check_compatible(model, fields, cells=False)
            except InputError:
                fit = False
            else:
                if mismatch := cell_size_mismatch(model, fields):
                    fit = False
                    regrid.append((name, mismatch))
        if fit:
            fits.append((name, model, fields))
        else:
            tried.append(f"{name} ({_expects(model)})")
    if not fits:
        given = ""
        if opened is not None:
            given = f" ({_describe(opened.variables, opened.time_step, grid_cell_km(opened))})"
        if regrid:
            # All but the grid fits: say how to block-average it, for the model the input would go to.
            synthetic = opened is not None and _synthetic(opened)
            _, mismatch = min(regrid, key=lambda r: (r[0] == DEFAULT_MODEL) != synthetic)
            raise InputError(f"no --checkpoint given and no shipped model fits {source}{given}: {mismatch}")
        raise InputError(
            f"no --checkpoint given and no shipped model fits {source}{given}: {'; '.join(tried)}. Train "
            "your own: dydiff-earth train --data STORE --output model.safetensors, then --checkpoint "
            "model.safetensors"
        )
    synthetic = _synthetic(fits[0][2])
    fits.sort(key=lambda fit: (fit[0] == DEFAULT_MODEL) != synthetic)
    return fits[0][1], fits[0][2]


def open_inputs(request: ForecastRequest, source: str, device: torch.device) -> tuple[LoadedModel, Fields]:
    """The request's model and its input fields, opened with the model's normalisation.

    Without a checkpoint, the embedded demo runs the ``demo`` model and any other input the shipped
    model that fits it (:func:`choose_model`).
    """
    if request.input is None and request.checkpoint not in (None, DEFAULT_MODEL):
        raise InputError("--checkpoint without --input: give the data the checkpoint was trained for")
    if request.checkpoint is None and request.input is not None:
        return choose_model(source, request.variables, device)
    model = load_model(request.checkpoint or DEFAULT_MODEL, device)
    return model, _open_for(model, source, request.variables)


def run_forecast(
    request: ForecastRequest,
    progress: ProgressFn | None = None,
    *,
    inputs: tuple[LoadedModel, Fields] | None = None,
) -> ForecastResult:
    """Forecast, write ``request.output`` atomically and draw maps into ``request.maps``.

    ``inputs`` (from :func:`open_inputs`) lets a caller that forecasts several init times, such as a
    backfill, load the checkpoint and open the input once.
    """
    from dydiff_earth.train import resolve_device

    start = time.perf_counter()
    devices = None
    if request.devices is not None:
        from dydiff_earth.devices import MultiDeviceForecaster, parse_devices

        devices = parse_devices(request.devices)
    device = devices[0] if devices else resolve_device(request.device)
    with tempfile.TemporaryDirectory(prefix="dydiff-") as work:
        if inputs is None:
            source = request.input if request.input is not None else _demo_input(Path(work))
            inputs = open_inputs(request, source, device)
        model, fields = inputs
        # Where the results go is checked once the inputs are known good, before any sampling.
        io.check_writable(Path(request.output))
        if request.maps is not None:
            io.check_writable(Path(request.maps))
        lead_times = request.lead_times or model.horizon
        forecaster = (
            MultiDeviceForecaster(model, request.forecast, devices=devices, progress=progress)
            if devices
            else DiffusionForecaster(model, request.forecast, device=device, progress=progress)
        )
        ds = forecaster(
            fields,
            init_time=request.init_time,
            lead_times=lead_times,
            n_members=request.forecast.members,
            seed=request.forecast.seed,
        )
        if request.thresholds:  # mean and spread come with the forecast; probabilities on request
            ds = add_derived(ds, request.thresholds)
        if request.command_line:
            ds.attrs["command_line"] = request.command_line
        io.write_forecast(ds, request.output)
        maps: list[Path] = []
        if request.maps is not None:
            from dydiff_earth.plotting import plot_forecast

            maps = plot_forecast(ds, request.maps, truth=observed(fields, ds), units=request.map_units)
    return ForecastResult(
        output=request.output,
        maps=maps,
        init_time=ds[schema.INIT_TIME].values,
        members=ds.sizes[schema.MEMBER],
        lead_times=lead_times,
        seconds=time.perf_counter() - start,
        dataset=ds,
        model=model.path,
    )


__all__ = [
    "ForecastRequest",
    "ForecastResult",
    "choose_model",
    "open_inputs",
    "run_forecast",
    "shipped_models",
]
