"""The mean diurnal change of a record, per grid cell, and the path it traces from an init time.

Hourly 2 m temperature rises after sunrise and falls after sunset, more over land than over sea. The mean
change of each cell from one time of day to the next over a training record is the cheapest forecast of
that cycle: persistence plus these changes is the ``diurnal`` baseline, and a weather model forecasts
departures from it (the ``diurnal`` frame), so that a model that has learned nothing forecasts the
baseline and what it learns is the weather and its uncertainty.

Pure numpy; nothing here knows about models. Changes are ``(slots, C, H, W)`` with ``slots`` the time
steps of a day; slot ``s`` holds the mean change *into* the time of day ``s x step`` from the step before.
"""

from __future__ import annotations

import numpy as np

from dydiff_earth.data import Fields, load_frames
from dydiff_earth.errors import InputError

SECONDS_PER_DAY = 86400
#: Checkpoint tensor holding a diurnal-frame model's mean change ``(slots, C, H, W)``, normalised units.
TENSOR = "diurnal_change"
#: Frames read at a time when averaging a record.
RECORD_CHUNK = 256


def step_seconds(fields: Fields) -> int:
    """The record's time step in seconds, which must divide a day."""
    seconds = int(fields.time_step / np.timedelta64(1, "s"))
    if seconds <= 0 or SECONDS_PER_DAY % seconds:
        raise InputError(
            f"the diurnal cycle needs a time step that divides a day, not {seconds} s ({fields.source})"
        )
    return seconds


def time_of_day(times: np.ndarray, seconds: int) -> np.ndarray:
    """Slot of the day (``0 .. day / seconds - 1``) of each time."""
    since_epoch = (np.asarray(times).astype("datetime64[s]") - np.datetime64(0, "s")).astype(np.int64)
    return (since_epoch % SECONDS_PER_DAY) // seconds


def mean_change(fields: Fields, transform: object = None) -> np.ndarray:
    """float64 ``(slots, C, H, W)``: mean change of each cell into each slot of the day.

    Over every pair of consecutive frames of ``fields`` (within its segments, finite values only), in
    normalised units, or in the variables' units when ``transform`` maps normalised frames to them (e.g.
    ``lambda v: denormalize(v, fields.variables)``). A slot never seen adds no change.
    """
    seconds = step_seconds(fields)
    slots = SECONDS_PER_DAY // seconds
    total = np.zeros((slots, len(fields.variables), *fields.shape))
    count = np.zeros_like(total)
    for seg in fields.segments:
        # Chunks overlap by one frame, so every consecutive pair of the segment is counted once.
        for lo in range(seg.start, seg.stop - 1, RECORD_CHUNK - 1):
            hi = min(lo + RECORD_CHUNK, seg.stop)
            frames = load_frames(fields, slice(lo, hi))
            frames = (frames if transform is None else transform(frames)).astype(np.float64)  # type: ignore[operator]
            change = np.diff(frames, axis=0)
            slot = time_of_day(fields.times[lo + 1 : hi], seconds)
            finite = np.isfinite(change)
            np.add.at(total, slot, np.where(finite, change, 0.0))
            np.add.at(count, slot, finite)
    if not count.any():
        raise InputError(f"no two consecutive frames in {fields.source} to learn the diurnal cycle from")
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def path(change: np.ndarray, times: np.ndarray, init: int) -> np.ndarray:
    """``(S, C, H, W)``: the mean diurnal change accumulated from frame ``init`` to each frame of ``times``.

    Zero at ``init``; after it the sum of the changes into each later frame's slot, before it minus the
    sum of the changes between it and ``init``. ``times`` are evenly spaced by the table's step.
    """
    seconds = SECONDS_PER_DAY // change.shape[0]
    into = change[time_of_day(times, seconds)]  # (S, C, H, W): the mean change into each frame
    out = np.zeros_like(into)
    for k in range(init + 1, len(out)):
        out[k] = out[k - 1] + into[k]
    for k in range(init - 1, -1, -1):
        out[k] = out[k + 1] - into[k + 1]
    return out


__all__ = ["SECONDS_PER_DAY", "TENSOR", "mean_change", "path", "step_seconds", "time_of_day"]
