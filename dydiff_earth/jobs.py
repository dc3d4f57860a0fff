"""Scheduled forecast jobs (``dydiff-earth run JOB.yaml``): one tick, idempotent, locked, atomic, retained.

A tick finds the newest init time whose context is complete, and forecasts it unless its output exists
and is complete. Exit codes (``TickResult.code``): 0 done or nothing to do, 2 bad job file or input,
3 stale input, 1 unexpected failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from dydiff_earth import config, io, probmatch, schema
from dydiff_earth.errors import InputError, StaleInputError
from dydiff_earth.sources import is_url

if TYPE_CHECKING:
    from dydiff_earth.data import Fields
    from dydiff_earth.forecast import LoadedModel

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
    #: solver steps and their spacing, "time" (the paper's) or "logsnr" (log signal-to-noise ratio);
    #: 0 and "": the checkpoint's recommendation, else 10 and "time"
    sampling_steps: int = 0
    #: reverse-process solver ("ddim" or "dpmpp2m") and network arithmetic ("fp32", "bf16" or "auto")
    solver: str = "dpmpp2m"
    precision: str = "fp32"
    #: precipitation after sampling: "cdf" (given the last observation's values, ranks kept) or "none"
    prob_matching: str = "cdf"
    #: rain at lead time k only within k cells of the rain observed at the init time (STEPS's mask)
    rain_mask: bool = True
    spacing: str = ""
    #: the members' spread inflation factor; 0: the checkpoint's recommendation, else 1 (as sampled).
    #: The scale it acts above is always the checkpoint's.
    inflation: float = 0.0
    thresholds: tuple[float, ...] = ()
    seed: int = 0
    output_dir: str = "forecasts"
    #: file name by init time (strftime fields); .nc or .zarr
    output_pattern: str = "forecast_%Y%m%dT%H%M.nc"
    maps: bool = True
    #: show temperatures on the maps in K or degC ("" : the input's units); files keep the input's units
    map_units: str = ""
    #: newest input frame may be at most this old (pandas duration: 30min, 2h, 1d)
    max_input_age: str = "30min"
    #: keep the newest N outputs (an integer) or those younger than a duration (e.g. "2d"); "" keeps all
    retention: str = ""
    log_file: str = "run.log"
    device: str = "auto"
    batch_size: int = 8
    #: raw radar files as ``input`` (a glob): each tick first ingests new files into this zarr store
    #: (default ``<output_dir>/input.zarr``), see `dydiff_earth.native.ingest`
    store: str = ""
    #: their format (default: detected), valid time pattern in the names, block-mean factor
    format: str = ""
    time_pattern: str = ""
    coarsen: int = 1


def load_job(path: str | Path) -> tuple[JobConfig, Path]:
    """Parse a job file into a :class:`JobConfig` (paths resolved); a one-line error names a bad key."""
    p = Path(path)
    raw = config.load_yaml(p)
    if raw.get("retention") is None:
        raw.pop("retention", None)  # `retention:` left empty keeps all, like ""
    elif isinstance(raw["retention"], int) and not isinstance(raw["retention"], bool):
        raw["retention"] = str(raw["retention"])  # YAML reads `retention: 288` as an int
    try:
        job = config.from_dict(JobConfig, raw)
        _check(job)
    except InputError as exc:
        raise InputError(f"{p.name}: {exc}") from None
    base = p.resolve().parent

    def resolve(value: str) -> str:
        if is_url(value) or Path(value).is_absolute():
            return value
        return os.path.normpath(base / value)  # no ".." left

    # A shipped model is a bare name ("demo"); anything with a suffix or a slash is a path.
    named = Path(job.checkpoint).suffix == "" and "/" not in job.checkpoint
    checkpoint = job.checkpoint if named and not (base / job.checkpoint).exists() else resolve(job.checkpoint)
    return (
        JobConfig(
            **{
                **job.__dict__,
                "input": resolve(job.input),
                "checkpoint": checkpoint,
                "output_dir": resolve(job.output_dir),
                "log_file": resolve(job.log_file),
                "store": resolve(job.store) if job.store else "",
            }
        ),
        p,
    )


def _check(job: JobConfig) -> None:
    """Values a job cannot run with, named by key (the caller prefixes the file name)."""
    if not job.input:
        raise InputError("key 'input' is required (the zarr store or NetCDF files to forecast from)")
    if job.map_units and job.map_units not in schema.DISPLAY_UNITS:
        raise InputError(
            f"key 'map_units' must be {' or '.join(schema.DISPLAY_UNITS)}, not {job.map_units!r}"
        )
    config.check_choice(job.solver, config.SOLVERS, "key 'solver'")
    config.check_choice(job.precision, config.PRECISIONS, "key 'precision'")
    config.check_choice(job.prob_matching, probmatch.MATCHINGS, "key 'prob_matching'")
    if job.spacing:
        config.check_choice(job.spacing, config.SPACINGS, "key 'spacing'")
    if job.inflation and not 0 < job.inflation < float("inf"):
        raise InputError(
            f"key 'inflation' must be 0 (the checkpoint's recommendation) or a positive factor, "
            f"not {job.inflation}"
        )
    for key in ("members", "batch_size", "coarsen"):
        if getattr(job, key) < 1:
            raise InputError(f"key {key!r} must be at least 1, not {getattr(job, key)}")
    for key, default in (
        ("lead_times", "the model's horizon"),
        ("sampling_steps", "the checkpoint's recommendation"),
    ):
        if getattr(job, key) < 0:
            raise InputError(f"key {key!r} must be 0 ({default}) or more, not {getattr(job, key)}")
    _duration(job.max_input_age, "max_input_age")
    if job.retention.isdigit():
        if int(job.retention) < 1:
            raise InputError("key 'retention' must keep at least 1 output; leave it out to keep all")
    elif job.retention:
        _duration(job.retention, "retention")
    if job.format:
        from dydiff_earth.native import format_name

        format_name(job.format)  # an unknown format is refused with the known ones listed
    if not job.output_pattern.endswith(io.FORECAST_SUFFIXES):
        raise InputError(f"key 'output_pattern' must end in .nc or .zarr, not {job.output_pattern!r}")
    if Path(job.output_pattern).is_absolute() or ".." in Path(job.output_pattern).parts:
        raise InputError(
            f"key 'output_pattern' names files inside output_dir: no '..' and no absolute path, "
            f"not {job.output_pattern!r}"
        )


def _duration(text: str, key: str) -> pd.Timedelta:
    # A bare number is refused: pandas would read "30" as 30 nanoseconds. "7d" is pandas' "7D" (the
    # lower-case unit is deprecated there, but it is what people write).
    try:
        value = pd.Timedelta(re.sub(r"(\d)\s*d$", r"\1D", text)) if re.search(r"[A-Za-z]", text) else None
    except (ValueError, TypeError):
        value = None
    if value is None:
        raise InputError(f"key {key!r} must be a duration such as 30min, 2h or 1d, not {text!r}")
    if value <= pd.Timedelta(0):
        raise InputError(f"key {key!r} must be positive, not {text!r}")
    return value


@dataclass(frozen=True)
class TickResult:
    """The outcome of one tick: exit code and the one line that was logged."""

    code: int
    message: str
    outputs: tuple[Path, ...] = field(default=())


def _iso(t: object) -> str:
    """A time as one token for ``key=value`` log lines: ``2024-06-01T12:35:00``."""
    return pd.Timestamp(t).isoformat()  # type: ignore[arg-type]


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


def inside_output_dir(job: JobConfig, path: Path) -> Path:
    """``path`` if it stays inside the job's output directory once symlinks are followed.

    A job writes and deletes only there: a symlink in the output directory that leads elsewhere (to a
    system directory, another job's outputs) is refused with an ``InputError``, not followed.
    """
    root = Path(job.output_dir).resolve()
    real = path.resolve()
    if real != root and root not in real.parents:
        raise InputError(
            f"{path} leads outside the job's output_dir {job.output_dir} (to {real}); "
            "a job writes only inside its output_dir: remove the link"
        )
    return path


def output_path(job: JobConfig, init: np.datetime64) -> Path:
    """Where the forecast of ``init`` goes (inside the output directory, symlinks followed)."""
    return inside_output_dir(job, Path(job.output_dir) / pd.Timestamp(init).strftime(job.output_pattern))


def maps_dir(job: JobConfig, output: Path) -> Path:
    """Where the maps of ``output`` go (inside the output directory, symlinks followed)."""
    return inside_output_dir(job, Path(job.output_dir) / "maps" / output.name.rsplit(".", 1)[0])


def is_complete(path: Path, init: np.datetime64, members: int, lead_times: int | None = None) -> bool:
    """True when ``path`` is a readable forecast of ``init`` with ``members`` members (and ``lead_times``).

    The last member's last lead time of every variable is read too: a file truncated or damaged after
    it was published can still have a readable header.
    """
    if not path.exists():
        return False
    try:
        with io.open_forecast(path) as ds:
            schema.validate_forecast(ds)
            same_init = bool(ds[schema.INIT_TIME].values == np.datetime64(init, "ns"))
            leads_ok = lead_times is None or ds.sizes[schema.LEAD_TIME] == lead_times
            for name in schema.forecast_variables(ds):
                ds[name].isel({schema.MEMBER: -1, schema.LEAD_TIME: -1}).values  # noqa: B018 (read it)
            return same_init and leads_ok and ds.sizes[schema.MEMBER] == members
    except Exception:  # any failure to read means "rebuild it"
        return False


def _temporaries(directory: Path) -> list[Path]:
    """What a killed run leaves: ``io.publish`` temporaries (``.*.tmp``), stores moved aside (``.*.old``)."""
    if not directory.is_dir():
        return []
    found = [*directory.rglob(".*.tmp"), *directory.rglob(".*.old")]
    # Outermost first, and nothing inside one already listed (a temporary zarr store is a directory).
    return [p for p in sorted(found) if not any(q in p.parents for q in found)]


def _clean_temporaries(directory: Path) -> int:
    """Remove temporaries of killed runs; call only while holding the lock, so none is being written."""
    doomed = _temporaries(directory)
    for tmp in doomed:
        io.remove(tmp)
    return len(doomed)


def outputs(job: JobConfig) -> list[tuple[pd.Timestamp, Path]]:
    """The job's outputs in its output dir, as ``(init time, path)`` oldest first.

    A path counts when ``output_pattern`` parses it back to a time, so other files (and hidden
    temporaries) never do, and the order is by init time whatever the pattern's field order.
    """
    # One "*" per run of strftime fields: "%Y%m%dT%H%M" -> "*T*" (pathlib refuses "**" inside a name).
    pattern = re.sub(r"(%[A-Za-z])+", "*", job.output_pattern.replace("%%", "%"))
    base = Path(job.output_dir)
    found = []
    for path in base.glob(pattern):
        try:
            when = datetime.strptime(path.relative_to(base).as_posix(), job.output_pattern)
        except ValueError:
            continue
        found.append((pd.Timestamp(when), path))
    return sorted(found)


def _expired(job: JobConfig, inits: list[pd.Timestamp], now: pd.Timestamp) -> set[pd.Timestamp]:
    """The init times retention removes: all but the newest N, or those older than a duration at ``now``."""
    if not job.retention:
        return set()
    if job.retention.isdigit():
        return set(sorted(set(inits))[: -int(job.retention)])
    horizon = now - _duration(job.retention, "retention")
    return {t for t in inits if t < horizon}


def _retain(job: JobConfig, now: pd.Timestamp) -> list[Path]:
    """Apply retention; returns what was removed."""
    found = outputs(job)
    expired = _expired(job, [when for when, _ in found], now)
    doomed = [p for when, p in found if when in expired]
    for p in doomed:
        io.remove(p)  # a link is unlinked, never followed
        maps = maps_dir(job, p)
        if maps.exists():
            io.remove(maps)
    return doomed


class Written(NamedTuple):
    """One forecast a tick wrote (what ``latest.json`` records of it)."""

    init: np.datetime64
    output: Path
    seconds: float
    members: int
    lead_times: int


def _forecast_one(job: JobConfig, init: np.datetime64, inputs: tuple[LoadedModel, Fields]) -> Written:
    """Forecast ``init`` into its output file: the unit of work of a tick, here or on a dask worker."""
    from dydiff_earth.pipeline import ForecastRequest, run_forecast

    out = output_path(job, init)
    request = ForecastRequest(
        input=job.input,
        checkpoint=job.checkpoint,
        variables=job.variables or None,
        init_time=str(pd.Timestamp(init)),
        lead_times=job.lead_times or None,
        forecast=config.ForecastConfig(
            members=job.members,
            sampling_steps=job.sampling_steps or None,
            seed=job.seed,
            batch_size=job.batch_size,
            solver=job.solver,
            precision=job.precision,
            prob_matching=job.prob_matching,
            rain_mask=job.rain_mask,
            spacing=job.spacing or None,
            inflation=job.inflation or None,
        ),
        thresholds=job.thresholds,
        output=out,
        maps=maps_dir(job, out) if job.maps else None,
        map_units=job.map_units or None,
        device=job.device,
        command_line=f"dydiff-earth run (job {job.output_pattern})",
    )
    result = run_forecast(request, inputs=inputs)
    return Written(init, out, result.seconds, result.members, result.lead_times)


def _forecast_on_worker(job: JobConfig, sha256: str, init: np.datetime64) -> Written:
    """:func:`_forecast_one` on a dask worker, which loads the checkpoint (``sha256``) and the input once."""
    from dydiff_earth import cluster
    from dydiff_earth.data import open_fields
    from dydiff_earth.forecast import load_model
    from dydiff_earth.train import resolve_device

    device = resolve_device(job.device)
    model = cluster.worker_cached(
        ("model", job.checkpoint, sha256, str(device)), lambda: load_model(job.checkpoint, device)
    )
    if model.sha256 != sha256:
        raise InputError(f"{model.path} changed while the backfill was going on; run it again")
    names = list(job.variables) or [v.name for v in model.variables]
    fields = cluster.worker_cached(
        ("fields", job.input, tuple(names), model.variables),
        lambda: open_fields(job.input, names, stats=model.variables),
    )
    return _forecast_one(job, init, (model, fields))


def _record(job: JobConfig, written: Written, now: pd.Timestamp, age: pd.Timedelta) -> None:
    """``latest.json`` names the newest forecast; written by the tick's own process only, one at a time."""
    if not _newer_than_status(job, written.init):
        return  # a backfill of older init times leaves latest.json on the newest one
    status = {
        "init_time": _iso(written.init),
        "output": str(written.output),
        "duration_seconds": round(written.seconds, 2),
        "members": written.members,
        "lead_times": written.lead_times,
        "input_age_seconds": age.total_seconds(),
        "written": now.isoformat(),
    }
    with io.publish(Path(job.output_dir) / STATUS_FILE) as tmp:
        tmp.write_text(json.dumps(status, indent=2) + "\n")


def _newer_than_status(job: JobConfig, init: np.datetime64) -> bool:
    try:
        recorded = json.loads((Path(job.output_dir) / STATUS_FILE).read_text())["init_time"]
        return pd.Timestamp(init) >= pd.Timestamp(recorded)
    except (OSError, ValueError, KeyError, TypeError):
        return True


def _clock(now: str | None) -> pd.Timestamp:
    """``--now`` (naive is UTC; an offset is converted) or the current time, as naive UTC like the input."""
    if now is None:
        return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    try:
        clock = pd.Timestamp(now)
    except (ValueError, TypeError):
        raise InputError(f"--now {now!r} is not an ISO time such as 2024-06-01T12:40") from None
    if pd.isna(clock):
        raise InputError(f"--now {now!r} is not an ISO time such as 2024-06-01T12:40")
    return clock.tz_convert("UTC").tz_localize(None) if clock.tzinfo else clock


def _backfill_inits(fields: Fields, text: str, context: int) -> list[np.datetime64]:
    """Init times inside ``START:END`` (inclusive; a partial date covers its period) with a full context."""
    from dydiff_earth.data import parse_time_range
    from dydiff_earth.forecast import init_index

    span = parse_time_range(text)
    inside = pd.DatetimeIndex(fields.times).slice_indexer(span.start, span.stop)
    inits = []
    for i in range(len(fields.times))[inside]:
        with contextlib.suppress(InputError):  # too little context before it: not an init time
            inits.append(fields.times[init_index(fields, str(fields.times[i]), context)])
    return inits


def tick(
    job: JobConfig,
    *,
    now: str | None = None,
    backfill: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> TickResult:
    """One run of the job (see the module docstring); never raises for expected outcomes.

    A backfill may spread its init times over a local dask cluster of ``workers`` processes or the one
    at ``scheduler`` (workers must see the job's paths). An init that fails is logged with its time and
    the others are kept (exit code 1); when none could be written, the first failure is raised.
    """
    from dydiff_earth import cluster
    from dydiff_earth.data import open_fields
    from dydiff_earth.forecast import latest_complete_init, load_model
    from dydiff_earth.train import resolve_device

    started = time.perf_counter()
    cluster.check_options(workers, scheduler)
    if backfill is None and (workers is not None or scheduler is not None):
        raise InputError(
            "--workers and --scheduler spread a --backfill; a plain tick forecasts one init time"
        )
    clock = _clock(now)
    job = _ingest(job)
    # Loaded once per tick and reused by every forecast of it (a backfill may write many).
    model = load_model(job.checkpoint, resolve_device(job.device))
    fields = open_fields(
        job.input, list(job.variables) or [v.name for v in model.variables], stats=model.variables
    )
    newest = pd.Timestamp(fields.times[-1])
    age = clock - newest
    if backfill is None and age > _duration(job.max_input_age, "max_input_age"):
        raise StaleInputError(
            f"newest input frame {_iso(newest)} is {age} old at {_iso(clock)}, more than max_input_age "
            f"{job.max_input_age}; is the feed running?"
        )
    leads = job.lead_times or model.horizon
    waiting = ""
    if backfill is None:
        idx = latest_complete_init(fields, model.context)
        if idx is None:
            return TickResult(
                0, _log(job, f"init=none status=waiting reason=no {model.context} contiguous frames yet")
            )
        if idx < len(fields.times) - 1:  # a gap among the newest frames: their init needs more frames
            seg = fields.segments[-1]
            waiting = (
                f" waiting=gap-before-{_iso(fields.times[seg.start])} "
                f"frames-after-gap={seg.length}/{model.context}"
            )
        inits = [fields.times[idx]]
    else:
        inits = _backfill_inits(fields, backfill, model.context)
        # Retention would delete them again right away, and the next backfill would redo them.
        expired = _expired(job, [*(when for when, _ in outputs(job)), *map(pd.Timestamp, inits)], clock)
        inits = [t for t in inits if pd.Timestamp(t) not in expired]
    todo = [t for t in inits if not is_complete(output_path(job, t), t, job.members, leads)]
    if not todo:
        _tidy(job)
        newest_init = _iso(inits[-1]) if inits else "none"
        return TickResult(0, _log(job, f"init={newest_init} status=up-to-date{waiting}"))
    with _lock(Path(job.output_dir)) as previous:
        if previous is None:
            return TickResult(
                0,
                _log(job, f"init={_iso(todo[-1])} status=skipped reason=another run holds the lock"),
            )
        _clean_temporaries(Path(job.output_dir))
        # Written by a run that held the lock before us: not again.
        pending = [t for t in todo if not is_complete(output_path(job, t), t, job.members, leads)]
        written, failures = _forecast_all(job, pending, (model, fields), clock, age, workers, scheduler)
        removed = _retain(job, clock)
    if failures and not written:
        raise failures[0][1]
    for init, error in failures:
        _log(job, f"init={_iso(init)} status=failed error={cluster.describe(error)}")
    took = f" took-over-lock-of={previous}" if previous else ""
    failed = f" failed={len(failures)}" if failures else ""
    line = (
        f"init={_iso(todo[-1])} status=written outputs={len(written)}{failed} removed={len(removed)} "
        f"input_age={age.total_seconds():.0f}s duration={time.perf_counter() - started:.1f}s{took}{waiting}"
    )
    return TickResult(1 if failures else 0, _log(job, line), tuple(w.output for w in written))


def _forecast_all(
    job: JobConfig,
    todo: list[np.datetime64],
    inputs: tuple[LoadedModel, Fields],
    clock: pd.Timestamp,
    age: pd.Timedelta,
    workers: int | None,
    scheduler: str | None,
) -> tuple[list[Written], list[tuple[np.datetime64, BaseException]]]:
    """Forecast every init of ``todo``, here or on dask workers; what was written and what failed."""
    import functools

    from dydiff_earth import cluster

    written: list[Written] = []
    failures: list[tuple[np.datetime64, BaseException]] = []
    with cluster.client(workers, scheduler) as client:
        if client is None:
            func = functools.partial(_forecast_one, job, inputs=inputs)
        else:
            func = functools.partial(_forecast_on_worker, job, inputs[0].sha256)
        for i, result, error in cluster.map_completed(func, todo, client):
            if error is not None:
                failures.append((todo[i], error))
                continue
            assert result is not None
            written.append(result)
            _record(job, result, clock, age)
    return sorted(written), sorted(failures, key=lambda f: f[0])


def _ingest(job: JobConfig) -> JobConfig:
    """Where ``input`` names raw radar files, ingest the new ones into the job's store and read from it."""
    from dydiff_earth import native

    if not native.is_native(job.input, job.format or None):
        return job
    store = job.store or os.path.join(job.output_dir, "input.zarr")
    result = native.ingest(
        job.input,
        store,
        format=job.format or None,
        time_pattern=job.time_pattern or None,
        coarsen=job.coarsen,
    )
    for path, reason in result.skipped:
        _log(job, f"ingest status=skipped file={path} reason={reason}")
    if result.added:
        newest = _iso(result.newest) if result.newest is not None else "none"
        _log(job, f"ingest status=added frames={result.added} total={result.total} newest={newest}")
    return dataclasses.replace(job, input=store)


def _tidy(job: JobConfig) -> None:
    """Clean temporaries of a run killed after its output landed (e.g. while writing latest.json)."""
    directory = Path(job.output_dir)
    if _temporaries(directory):
        with _lock(directory) as previous:
            if previous is not None:
                _clean_temporaries(directory)


def run_job(
    job: JobConfig,
    *,
    now: str | None = None,
    backfill: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> TickResult:
    """:func:`tick`, with every outcome (errors included) logged in one line and mapped to its exit code."""
    try:
        return tick(job, now=now, backfill=backfill, workers=workers, scheduler=scheduler)
    except StaleInputError as exc:
        return TickResult(3, _log(job, f"init=none status=stale-input {exc}"))
    except InputError as exc:
        return TickResult(2, _log(job, f"init=none status=bad-input {exc}"))
    except Exception as exc:  # an operator needs the line in the log, not only a traceback on stderr
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return TickResult(1, _log(job, f"init=none status=failed error={type(exc).__name__}: {first}"))


class FeedState(NamedTuple):
    """What :func:`append_frames` did: frames added, frames in the store, its newest frame time (ISO)."""

    added: int
    total: int
    newest: str


def append_frames(source: str | Path, store: str | Path, frames: int = 1) -> FeedState:
    """Append the next ``frames`` frames of ``source`` to the zarr ``store`` (a simulated live feed).

    The first call creates the store (atomically); later calls append the source's frames after the
    store's newest time along time, as a radar ingest would.
    """
    from dydiff_earth.data import NORMALISATION_ATTR, open_fields

    if frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    fields = open_fields(source)
    tdim = fields.time_dim
    src = fields.dataset.drop_attrs(deep=False)
    for var in src.variables.values():
        var.encoding = {}
    target = Path(store)
    have, last = 0, None
    if target.exists():
        # Not open_fields: a store of one frame is a valid feed, just too short to forecast from.
        try:
            with io.open_zarr(target) as current:
                have, last = current.sizes[tdim], current[tdim].values[-1]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(
                f"{target} is not a zarr store with a {tdim!r} dim to append to ({exc})"
            ) from None
    start = 0 if last is None else int(np.searchsorted(fields.times, last, side="right"))
    chunk = src.isel({tdim: slice(start, start + frames)})
    added = chunk.sizes[tdim]
    if added == 0:
        return FeedState(0, have, _iso(last))
    if last is None:
        attrs = {k: v for k, v in fields.dataset.attrs.items() if k != NORMALISATION_ATTR}
        # Fixed time units: left to xarray, one frame gets "days since <it>", which cannot hold the
        # next frame 5 min later, and appends keep the units of the first write (times would go wrong).
        encoding = {tdim: {"units": "seconds since 1970-01-01T00:00:00", "dtype": "int64"}}
        title = {"title": "dydiff-earth simulated feed"}
        io.write_zarr(chunk.assign_attrs(attrs | title), target, encoding=encoding)
    else:
        # Appending rewrites only variables along time; the store keeps its grid and the time encoding
        # (units, dtype) of its first write, so the new datetimes are encoded the same way. It appends to
        # a hard-linked clone swapped in whole, so that a tick reading the store never sees half a frame.
        chunk = chunk.drop_vars([n for n, v in chunk.variables.items() if tdim not in v.dims])
        with io.publish(target) as tmp:
            io.link_tree(target, tmp)
            io.to_zarr(chunk, tmp, append_dim=tdim, mode="a")
    return FeedState(added, have + added, _iso(chunk[tdim].values[-1]))
