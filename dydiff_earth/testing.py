"""Tiny datasets and checkpoints for tests, docs and notebooks (never used by production paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from dydiff_earth import diurnal, io
from dydiff_earth.config import DiffusionConfig, TrainConfig, preset
from dydiff_earth.data import Fields
from dydiff_earth.model import ConditionedDenoiser
from dydiff_earth.motion import DEPARTURE_FRAMES
from dydiff_earth.train import checkpoint_meta


def tiny_field(
    frames: int = 12,
    size: tuple[int, int] = (16, 16),
    *,
    step: str = "5min",
    name: str = "precip",
    units: str = "mm h-1",
    gaps: tuple[int, ...] = (),
    seed: int = 0,
    spacing: float = 0.05,
) -> xr.Dataset:
    """A small CF dataset on a lat/lon grid of ``spacing`` degrees: smooth blobs drifting east, ``gaps``
    frame indices removed."""
    rng = np.random.default_rng(seed)
    ny, nx = size
    lat = 47.0 + spacing * np.arange(ny)
    lon = 8.0 + spacing * np.arange(nx)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    centres = rng.uniform(0, min(ny, nx), size=(3, 2))
    values = np.zeros((frames, ny, nx), np.float32)
    for t in range(frames):
        for cy, cx in centres:
            values[t] += 8.0 * np.exp(-((yy - cy) ** 2 + ((xx - cx - 0.7 * t) % nx) ** 2) / 6.0)
    times = pd.date_range("2024-06-01T12:00", periods=frames, freq=step).values
    keep = np.setdiff1d(np.arange(frames), gaps)
    ds = xr.Dataset(
        {name: (("time", "latitude", "longitude"), values[keep], {"units": units, "long_name": name})},
        coords={
            "time": ("time", times[keep], {"standard_name": "time", "axis": "T"}),
            "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
        attrs={"Conventions": "CF-1.8", "title": "dydiff-earth test field"},
    )
    return ds


def tiny_checkpoint(
    path: str | Path,
    fields: Fields,
    *,
    context: int = 2,
    horizon: int = 2,
    patch: int = 16,
    seed: int = 0,
    gamma_ratio: float = 0.5,
    model: str = "tiny",
    frame: str = "eulerian",
    covariates: tuple[str, ...] = (),
) -> Path:
    """An untrained checkpoint (preset ``model``) for ``fields``, with small random output weights.

    Its samples are meaningless but deterministic, which is what tests of plumbing, RNG keying, tiling
    and file formats need without a training run. In a departure frame the departure scale is 1 at every
    position and the condition takes ``covariates``; the diurnal frame's cycle is zero.
    """
    torch.manual_seed(seed)
    model_cfg = preset(model)
    channels = len(fields.variables)
    departures = frame in DEPARTURE_FRAMES
    condition = channels + len(covariates) if departures else 0
    net = ConditionedDenoiser(model_cfg, channels=channels, context=context, condition_channels=condition)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:  # the zero-initialised output layer: give it a small random response
                p.normal_(0.0, 0.02)
    cfg = TrainConfig(context=context, horizon=horizon, patch=patch, steps=0)
    meta = checkpoint_meta(fields, model_cfg, DiffusionConfig(gamma_ratio=gamma_ratio), cfg, step=0)
    meta["frame"] = frame
    if departures:
        meta["departure_scale"] = [1.0] * (context + horizon)
    if covariates:
        meta["covariates"] = list(covariates)
    tensors = dict(net.state_dict())
    if frame == "diurnal":  # no cycle: the diurnal frame then forecasts departures from persistence
        tensors[diurnal.TENSOR] = torch.zeros((24, channels, *fields.shape))
    return io.save_checkpoint(path, tensors, meta)
