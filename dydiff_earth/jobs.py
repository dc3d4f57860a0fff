"""Scheduled forecast jobs (``dydiff-earth run JOB.yaml``): one tick, idempotent, locked, atomic, retained.

A tick finds the newest init time whose context is complete, and forecasts it unless its output exists
and is complete. Exit codes (``TickResult.code``): 0 done or nothing to do, 2 bad job file or input,
3 stale input, 1 unexpected failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dydiff_earth import config, io, schema
from dydiff_earth.errors import InputError, StaleInputError

STATUS_FILE = "latest.json"
LOCK_FILE = ".dydiff-run.lock"


@dataclass(frozen=True)
class JobConfig:
    """A declarative job file (``pipelines/*.yaml``); relative paths are relative to the job file."""

    input: str = ""
    variables: tuple[str, ...] = ()
    checkpoint: str = "demo"
    members: int = 8
    lead_times: int = 0  # 0: the model's trained horizon
    sampling_steps: int = 50
    thresholds: tuple[float, ...] = ()
    seed: int = 0
    output_dir: str = "forecasts"
    #: file name by init time (strftime fields); .nc or .zarr
    output_pattern: str = "forecast_%Y%m%dT%H%M.nc"
    maps: bool = True
    #: newest input frame may be at most this old (pandas duration: 30min, 2h, 1d)
    max_input_age: str = "30min"
    #: keep the newest N outputs (an integer) or those younger than a duration (e.g. "2d"); "" keeps all
    retention: str = ""
    log_file: str = "run.log"
    device: str = "auto"
    batch_size: int = 8


def load_job(path: str | Path) -> tuple[JobConfig, Path]:
    """Parse a job file into a :class:`JobConfig` (paths resolved); a one-line error names a bad key."""
    p = Path(path)
    raw = config.load_yaml(p)
    if "retention" in raw and raw["retention"] is not None:
        raw["retention"] = str(raw["retention"])
    job = config.from_dict(JobConfig, raw, where=f"{p.name}: ")
    if not job.input:
        raise InputError(
            f"{p.name}: key 'input' is required (the zarr store or NetCDF files to forecast from)"
        )
    for key in ("max_input_age",):
        _duration(getattr(job, key), key)
    if job.retention and not job.retention.isdigit():
        _duration(job.retention, "retention")
    if not job.output_pattern.endswith(io.FORECAST_SUFFIXES):
        raise InputError(f"{p.name}: output_pattern must end in .nc or .zarr, got {job.output_pattern!r}")
    base = p.resolve().parent

    def resolve(value: str) -> str:
        return value if Path(value).is_absolute() else str(base / value)

    checkpoint = resolve(job.checkpoint) if (base / job.checkpoint).exists() else job.checkpoint
    return (
        JobConfig(
            **{
                **job.__dict__,
                "input": resolve(job.input),
                "checkpoint": checkpoint,
                "output_dir": resolve(job.output_dir),
                "log_file": resolve(job.log_file),
            }
        ),
        p,
    )


def _duration(text: str, key: str) -> pd.Timedelta:
    try:
        value = pd.Timedelta(text)
    except (ValueError, TypeError):
        raise InputError(f"key {key!r} must be a duration such as 30min, 2h or 1d, not {text!r}") from None
    if value <= pd.Timedelta(0):
        raise InputError(f"key {key!r} must be positive, not {text!r}")
    return value


@dataclass(frozen=True)
class TickResult:
    """The outcome of one tick: exit code and the one line that was logged."""

    code: int
    message: str
    outputs: tuple[Path, ...] = field(default=())


def _log(job: JobConfig, line: str) -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    Path(job.log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(job.log_file, "a") as f:
        f.write(f"{stamp} {line}\n")
    return line


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[str | None]:
    """An exclusive ``flock`` on the output directory, or ``None`` when another run holds it.

    The kernel releases a ``flock`` when its process dies (even by SIGKILL), so a lock left by a killed
    run is taken over simply by locking again; the pid written inside says whose it was.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        previous = os.read(fd, 64).decode(errors="replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield previous
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def output_path(job: JobConfig, init: np.datetime64) -> Path:
    """Where the forecast of ``init`` goes."""
    return Path(job.output_dir) / pd.Timestamp(init).strftime(job.output_pattern)


def is_complete(path: Path, init: np.datetime64, members: int) -> bool:
    """True when ``path`` is a readable forecast of ``init`` with all members and finite lead times."""
    if not path.exists():
        return False
    try:
        with io.open_forecast(path) as ds:
            schema.validate_forecast(ds)
            same_init = ds[schema.INIT_TIME].values == np.datetime64(init, "ns")
            return bool(same_init) and ds.sizes[schema.MEMBER] == members
    except Exception:  # any failure to read means "rebuild it"
        return False


def _clean_temporaries(directory: Path) -> None:
    """Temporaries left by a killed run (only called while holding the lock, so none is being written)."""
    for tmp in directory.glob(".*.tmp"):
        io._remove(tmp)


def _retain(job: JobConfig, now: pd.Timestamp) -> list[Path]:
    """Apply retention; returns what was removed."""
    if not job.retention:
        return []
    pattern = re.sub(r"%[A-Za-z]", "*", job.output_pattern)
    outputs = sorted(Path(job.output_dir).glob(pattern), key=lambda p: p.name)
    if job.retention.isdigit():
        doomed = outputs[: max(len(outputs) - int(job.retention), 0)]
    else:
        horizon = now - _duration(job.retention, "retention")
        doomed = [p for p in outputs if pd.Timestamp(p.stat().st_mtime, unit="s") < horizon]
    for p in doomed:
        io._remove(p)
        maps = Path(job.output_dir) / "maps" / p.name.rsplit(".", 1)[0]
        if maps.exists():
            io._remove(maps)
    return doomed


def _forecast_one(job: JobConfig, init: np.datetime64, now: pd.Timestamp, age: pd.Timedelta) -> Path:
    from dydiff_earth.pipeline import ForecastRequest, run_forecast

    out = output_path(job, init)
    request = ForecastRequest(
        input=job.input,
        checkpoint=job.checkpoint,
        variables=job.variables or None,
        init_time=str(pd.Timestamp(init)),
        lead_times=job.lead_times or None,
        forecast=config.ForecastConfig(
            members=job.members, sampling_steps=job.sampling_steps, seed=job.seed, batch_size=job.batch_size
        ),
        thresholds=job.thresholds,
        output=out,
        maps=Path(job.output_dir) / "maps" / out.name.rsplit(".", 1)[0] if job.maps else None,
        device=job.device,
        command_line=f"dydiff-earth run (job {job.output_pattern})",
    )
    result = run_forecast(request)
    status = {
        "init_time": str(pd.Timestamp(init)),
        "output": str(out),
        "duration_seconds": round(result.seconds, 2),
        "members": result.members,
        "lead_times": result.lead_times,
        "input_age_seconds": age.total_seconds(),
        "written": now.isoformat(),
    }
    with io.publish(Path(job.output_dir) / STATUS_FILE) as tmp:
        tmp.write_text(json.dumps(status, indent=2) + "\n")
    return out


def tick(job: JobConfig, *, now: str | None = None, backfill: str | None = None) -> TickResult:
    """One run of the job (see the module docstring); never raises for expected outcomes."""
    from dydiff_earth.data import open_fields, parse_time_range
    from dydiff_earth.forecast import init_index, latest_complete_init, load_model

    started = time.perf_counter()
    clock = pd.Timestamp(now).tz_localize(None) if now else pd.Timestamp.now(tz="UTC").tz_localize(None)
    model = load_model(job.checkpoint)
    fields = open_fields(
        job.input, list(job.variables) or [v.name for v in model.variables], stats=model.variables
    )
    newest = pd.Timestamp(fields.times[-1])
    age = clock - newest
    if backfill is None and age > _duration(job.max_input_age, "max_input_age"):
        raise StaleInputError(
            f"newest input frame {newest} is {age} old at {clock}, more than max_input_age "
            f"{job.max_input_age}; is the feed running?"
        )
    if backfill is None:
        idx = latest_complete_init(fields, model.context)
        if idx is None:
            return TickResult(
                0, _log(job, f"init=none status=waiting reason=no {model.context} contiguous frames yet")
            )
        inits = [fields.times[idx]]
    else:
        span = parse_time_range(backfill)
        inits = []
        for t in fields.times:
            inside = (span.start is None or t >= np.datetime64(pd.Timestamp(span.start))) and (
                span.stop is None or t <= np.datetime64(pd.Timestamp(span.stop))
            )
            if inside:
                with contextlib.suppress(InputError):
                    inits.append(fields.times[init_index(fields, str(t), model.context)])
    todo = [t for t in inits if not is_complete(output_path(job, t), t, job.members)]
    if not todo:
        return TickResult(
            0, _log(job, f"init={pd.Timestamp(inits[-1]) if inits else 'none'} status=up-to-date")
        )
    with _lock(Path(job.output_dir)) as previous:
        if previous is None:
            return TickResult(
                0,
                _log(job, f"init={pd.Timestamp(todo[-1])} status=skipped reason=another run holds the lock"),
            )
        _clean_temporaries(Path(job.output_dir))
        written = []
        for init in todo:
            if is_complete(output_path(job, init), init, job.members):
                continue  # written by a run that held the lock before us
            written.append(_forecast_one(job, init, clock, age))
        removed = _retain(job, clock)
    took = f" took-over-lock-of={previous}" if previous else ""
    line = (
        f"init={pd.Timestamp(todo[-1])} status=written outputs={len(written)} removed={len(removed)} "
        f"input_age={age} duration={time.perf_counter() - started:.1f}s{took}"
    )
    return TickResult(0, _log(job, line), tuple(written))


def run_job(job: JobConfig, *, now: str | None = None, backfill: str | None = None) -> TickResult:
    """:func:`tick`, with every outcome (errors included) logged in one line and mapped to its exit code."""
    try:
        return tick(job, now=now, backfill=backfill)
    except StaleInputError as exc:
        return TickResult(3, _log(job, f"init=none status=stale-input {exc}"))
    except InputError as exc:
        return TickResult(2, _log(job, f"init=none status=bad-input {exc}"))
    except Exception as exc:  # an operator needs the line in the log, not only a traceback on stderr
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return TickResult(1, _log(job, f"init=none status=failed error={type(exc).__name__}: {first}"))


def append_frames(source: str | Path, store: str | Path, frames: int = 1) -> tuple[int, int]:
    """Append the next ``frames`` frames of ``source`` to the zarr ``store`` (a simulated live feed).

    The first call creates the store (atomically); later calls append along time, as a radar ingest
    would. Returns ``(frames added, frames in the store)``.
    """
    from dydiff_earth.data import open_fields

    if frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    fields = open_fields(source)
    src = fields.dataset.drop_attrs(deep=False)
    tdim = fields.time_dim
    for var in src.variables.values():
        var.encoding = {}
    target = Path(store)
    have = 0
    if target.exists():
        with open_fields(target).dataset as current:
            have = current.sizes[tdim]
    chunk = src.isel({tdim: slice(have, have + frames)})
    added = chunk.sizes[tdim]
    if added == 0:
        return 0, have
    if have == 0:
        io.write_zarr(
            chunk.assign_attrs(fields.dataset.attrs | {"title": "dydiff-earth simulated feed"}), target
        )
    else:
        chunk = chunk.drop_vars([n for n, v in chunk.variables.items() if tdim not in v.dims])
        chunk.to_zarr(target, append_dim=tdim, mode="a", zarr_format=3, consolidated=False)
    return added, have + added
