"""The forecast product: input + checkpoint -> forecast file and maps. Used by ``forecast`` and ``run``."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from dydiff_earth import io, schema
from dydiff_earth.config import ForecastConfig
from dydiff_earth.data import Fields, open_fields
from dydiff_earth.errors import InputError, MissingVariableError
from dydiff_earth.forecast import DiffusionForecaster, LoadedModel, ProgressFn, add_derived, load_model

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


def open_inputs(request: ForecastRequest, source: str, device: torch.device) -> tuple[LoadedModel, Fields]:
    """The request's model and its input fields, opened with the model's normalisation."""
    if request.input is None and request.checkpoint not in (None, DEFAULT_MODEL):
        raise InputError("--checkpoint without --input: give the data the checkpoint was trained for")
    model = load_model(request.checkpoint or DEFAULT_MODEL, device)
    names = list(request.variables) if request.variables else [v.name for v in model.variables]
    try:
        fields = open_fields(source, names, stats=model.variables)
    except MissingVariableError as exc:
        trained = ", ".join(repr(v.name) for v in model.variables)
        raise MissingVariableError(
            f"checkpoint {Path(model.path).name} was trained on {trained}: {exc}"
        ) from None
    if request.checkpoint is None and request.input is not None:
        _explain_default(model, fields)
    return model, fields


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

            maps = plot_forecast(ds, request.maps, truth=observed(fields, ds))
    return ForecastResult(
        output=request.output,
        maps=maps,
        init_time=ds[schema.INIT_TIME].values,
        members=ds.sizes[schema.MEMBER],
        lead_times=lead_times,
        seconds=time.perf_counter() - start,
        dataset=ds,
    )


def _explain_default(model: object, fields: Fields) -> None:
    """No ``--checkpoint``: the shipped model serves only data like its own; say what to do otherwise."""
    from dydiff_earth.forecast import check_compatible

    try:
        check_compatible(model, fields)  # type: ignore[arg-type]
    except InputError as exc:
        raise InputError(
            f"no --checkpoint given and the shipped {DEFAULT_MODEL!r} model does not fit this input ({exc}); "
            "train one with `dydiff-earth train` and pass --checkpoint"
        ) from None


__all__ = ["ForecastRequest", "ForecastResult", "open_inputs", "run_forecast"]
