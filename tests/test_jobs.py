"""Scheduled jobs (``dydiff-earth run``/``feed``) end to end: real zarr feeds, files, locks and exit codes.

The model is an untrained tiny checkpoint: its forecasts are meaningless but finite and deterministic,
which is all the plumbing needs. Most ticks run in-process through typer's CliRunner (one torch import);
the SIGKILL test runs the real console script.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from _processes import sigkill_when
from typer.testing import CliRunner

from dydiff_earth import io, jobs, schema, testing
from dydiff_earth.cli import app
from dydiff_earth.data import open_fields

T0 = pd.Timestamp("2024-06-01T12:00")  # first frame of testing.tiny_field
STEP = pd.Timedelta("5min")
FAST = {"members": 2, "sampling_steps": 2, "maps": False, "batch_size": 2}


def at(i: int) -> str:
    """ISO time of frame ``i``."""
    return (T0 + i * STEP).isoformat()


def name(i: int) -> str:
    """Output name of init frame ``i`` under the default ``output_pattern``."""
    return (T0 + i * STEP).strftime("forecast_%Y%m%dT%H%M.nc")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a small, busy machine, more threads make these tiny forecasts 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained checkpoint (context 2, horizon 2) for ``tiny_field`` data."""
    work = tmp_path_factory.mktemp("model")
    io.write_zarr(testing.tiny_field(12), work / "train.zarr")
    return testing.tiny_checkpoint(work / "model.safetensors", open_fields(work / "train.zarr"))


def source(tmp: Path, frames: int = 12, gaps: tuple[int, ...] = ()) -> Path:
    """A complete record to feed from (the "radar archive")."""
    path = tmp / "source.zarr"
    io.write_zarr(testing.tiny_field(frames, gaps=gaps), path)
    return path


def write_job(tmp: Path, model: Path, **keys: object) -> Path:
    """A job file in ``tmp/jobs`` with paths relative to it, as users write them."""
    (tmp / "jobs").mkdir(exist_ok=True)
    (tmp / "models").mkdir(exist_ok=True)
    ckpt = tmp / "models" / "model.safetensors"
    if not ckpt.exists():
        ckpt.symlink_to(model)
    values = {
        "input": "../feed.zarr",
        "checkpoint": "../models/model.safetensors",
        "output_dir": "../out",
        "log_file": "../out/run.log",
        "max_input_age": "30min",
        **FAST,
        **keys,
    }
    path = tmp / "jobs" / "job.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run(job: Path, *args: str) -> tuple[int, str]:
    """``dydiff-earth run JOB [args]`` in-process: exit code and the printed line(s)."""
    result = CliRunner().invoke(app, ["run", str(job), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.strip()


def outputs(out: Path) -> dict[str, float]:
    """Visible forecast files and their modification times (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("forecast_*"))}


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if p.name != jobs.LOCK_FILE)


def log_lines(tmp: Path) -> list[str]:
    return (tmp / "out" / "run.log").read_text().splitlines()


def check_forecast(path: Path, init: str, members: int = 2) -> None:
    """A complete, readable forecast of ``init``."""
    assert jobs.is_complete(path, np.datetime64(init), members, 2)
    with io.open_forecast(path) as ds:
        assert ds.sizes[schema.MEMBER] == members
        assert np.isfinite(ds["precip"].values).all()


# --- the simulated feed -------------------------------------------------------------------------------------


def test_feed_appends_frames_with_exact_times(tmp_path: Path) -> None:
    src = source(tmp_path, frames=6)
    feed = tmp_path / "feed.zarr"
    # One frame first: xarray alone would encode it as "days since" and the 5-min appends would break.
    assert jobs.append_frames(src, feed, 1) == (1, 1, at(0))
    assert jobs.append_frames(src, feed, 1) == (1, 2, at(1))
    result = CliRunner().invoke(app, ["feed", str(src), "--output", str(feed), "--frames", "3"])
    assert result.exit_code == 0, result.output
    assert f"appended 3 frame(s) to {feed}: 5 in all, newest {at(4)}" in result.output
    assert jobs.append_frames(src, feed, 4) == (1, 6, at(5))
    assert jobs.append_frames(src, feed, 1) == (0, 6, at(5))  # the source is used up
    with xr.open_zarr(feed, consolidated=False) as got, xr.open_zarr(src, consolidated=False) as want:
        np.testing.assert_array_equal(got["time"].values, want["time"].values)
        np.testing.assert_array_equal(got["precip"].values, want["precip"].values)  # exact copy
        assert got["precip"].attrs["units"] == "mm h-1"
    bad = CliRunner().invoke(app, ["feed", str(src), "--output", str(feed), "--frames", "0"])
    assert bad.exit_code == 2 and "--frames" in bad.output


# --- ticks over a growing feed ------------------------------------------------------------------------------


def test_ticks_follow_a_growing_feed_once_per_init(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 2)  # the model's context: the first init time is frame 1
    for i in range(1, 4):
        if i > 1:
            jobs.append_frames(src, feed, 1)
        code, line = run(job, "--now", at(i))
        assert code == 0, line
        assert f"init={at(i)} status=written outputs=1" in line
    assert list(outputs(out)) == [name(1), name(2), name(3)]
    for i in (1, 2, 3):
        check_forecast(out / name(i), at(i))
    written = [line for line in log_lines(tmp_path) if "status=written" in line]
    assert len(written) == 3  # each init once

    status = json.loads((out / jobs.STATUS_FILE).read_text())
    assert status["init_time"] == at(3)
    assert Path(status["output"]) == out / name(3)
    assert status["members"] == 2 and status["lead_times"] == 2
    assert status["duration_seconds"] > 0
    assert status["input_age_seconds"] == 0.0  # --now is the newest frame's time

    # Re-running the same tick (cron firing twice, a manual run) changes nothing.
    before = outputs(out)
    status_before = (out / jobs.STATUS_FILE).stat().st_mtime_ns
    code, line = run(job, "--now", (T0 + 3 * STEP + pd.Timedelta("2min")).isoformat())
    assert code == 0 and f"init={at(3)} status=up-to-date" in line
    assert outputs(out) == before
    assert (out / jobs.STATUS_FILE).stat().st_mtime_ns == status_before
    assert log_lines(tmp_path)[-1].endswith(line)  # every outcome is one line in the log too
    assert hidden(out) == []


def test_a_gap_waits_for_a_contiguous_context(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path, gaps=(4,)), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 4)  # frames 0..3
    code, line = run(job, "--now", at(3))
    assert code == 0 and "status=written" in line
    jobs.append_frames(src, feed, 1)  # frame 5: frame 4 is missing, one frame after the gap
    code, line = run(job, "--now", at(5))
    assert code == 0, line
    assert f"init={at(3)} status=up-to-date waiting=gap-before-{at(5)} frames-after-gap=1/2" in line
    assert list(outputs(out)) == [name(3)]  # no forecast from a context that spans the gap
    jobs.append_frames(src, feed, 1)  # frame 6: two contiguous frames after the gap
    code, line = run(job, "--now", at(6))
    assert code == 0 and f"init={at(6)} status=written outputs=1" in line
    assert list(outputs(out)) == [name(3), name(6)]


def test_a_stale_feed_exits_3(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model, max_input_age="30min")
    jobs.append_frames(src, feed, 4)
    code, line = run(job, "--now", (T0 + 3 * STEP + pd.Timedelta("2h")).isoformat())
    assert code == 3
    assert "status=stale-input" in line and f"newest input frame {at(3)}" in line
    assert "max_input_age 30min" in line and "is the feed running?" in line
    assert "stale-input" in log_lines(tmp_path)[-1]
    assert outputs(out) == {}
    # 30 min after the newest frame is still fresh; an offset in --now is converted to UTC.
    code, line = run(job, "--now", (T0 + 3 * STEP + pd.Timedelta("30min")).isoformat() + "-01:00")
    assert code == 3
    code, line = run(job, "--now", (T0 + 3 * STEP + pd.Timedelta("30min")).isoformat() + "Z")
    assert code == 0 and "status=written" in line


def test_a_corrupted_output_is_rebuilt(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 3)
    assert run(job, "--now", at(2))[0] == 0
    path = out / name(2)
    good = path.read_bytes()
    for size in (len(good) // 2, 0):
        path.write_bytes(good[:size])
        assert not jobs.is_complete(path, np.datetime64(at(2)), 2, 2)
        code, line = run(job, "--now", at(2))
        assert code == 0 and f"init={at(2)} status=written outputs=1" in line, size
        check_forecast(path, at(2))
        assert path.read_bytes() != good[:size]
    # A complete forecast of another init time under this name (a changed pattern) is not this init's.
    assert not jobs.is_complete(path, np.datetime64(at(1)), 2, 2)
    assert not jobs.is_complete(path, np.datetime64(at(2)), 3, 2)  # fewer members than the job asks


# --- killed runs and overlapping runs -----------------------------------------------------------------------


def test_sigkill_while_writing_leaves_no_partial_output(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    # A zarr output is a tree of files: the slowest write, the widest window for a partial output.
    # More members and steps than elsewhere, so that the run is still going when it is killed.
    pattern = "forecast_%Y%m%dT%H%M.zarr"
    job = write_job(
        tmp_path, model, output_pattern=pattern, thresholds=[0.5, 1, 2, 4], members=4, sampling_steps=10
    )
    jobs.append_frames(src, feed, 8)
    exe = Path(sys.executable).parent / "dydiff-earth"
    backfill = f"{at(1)}:{at(7)}"  # 7 forecasts, each written under a hidden temporary first

    def complete(path: Path) -> bool:
        init = np.datetime64(datetime.strptime(path.name, pattern))
        return jobs.is_complete(path, init, 4, 2)

    proc = subprocess.Popen(
        [str(exe), "run", str(job), "--backfill", backfill],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    # Kill at the first sight of a temporary (mid-write) once one output has landed.
    caught_tmp = sigkill_when(
        proc, lambda: bool(list(out.glob("forecast_*")) and list(out.glob(".forecast_*.tmp")))
    )
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed; make it slower"
    visible = sorted(out.glob("forecast_*"))
    assert visible, "killed before any output"
    assert all(complete(p) for p in visible)  # complete or absent, never partial
    leftovers = hidden(out)
    assert all(n.startswith(".") and n.endswith((".tmp", ".old")) for n in leftovers)
    if caught_tmp:
        assert any(n.endswith(".tmp") for n in leftovers)

    # The next run (same backfill, as an operator would) cleans the temporaries and finishes the rest.
    code, line = run(job, "--backfill", backfill)
    assert code == 0 and "status=written" in line
    assert f"took-over-lock-of={proc.pid}" in line  # the killed run's pid was left in the lock file
    assert len(list(out.glob("forecast_*"))) == 7
    assert all(complete(p) for p in out.glob("forecast_*"))
    assert hidden(out) == []


def test_a_temporary_left_behind_is_cleaned_by_the_next_tick(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 3)
    out.mkdir()
    (out / f".{name(2)}.0123abcd.tmp").write_bytes(b"half a netcdf")  # killed mid-write
    (out / f".{jobs.STATUS_FILE}.4567cdef.tmp").write_text("{")
    code, line = run(job, "--now", at(2))
    assert code == 0 and "status=written" in line
    assert hidden(out) == []
    # Killed after the output landed (while writing latest.json): an up-to-date tick still tidies.
    (out / f".{jobs.STATUS_FILE}.89abcdef.tmp").write_text("{")
    code, line = run(job, "--now", at(2))
    assert code == 0 and "status=up-to-date" in line
    assert hidden(out) == []


def test_overlapping_runs_are_serialized(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 3)
    out.mkdir()
    fd = os.open(out / jobs.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another run" in the middle of its forecast
        code, line = run(job, "--now", at(2))
        assert code == 0
        assert f"init={at(2)} status=skipped reason=another run holds the lock" in line
        assert outputs(out) == {} and not (out / jobs.STATUS_FILE).exists()
    finally:
        os.close(fd)  # closing releases the flock
    code, line = run(job, "--now", at(2))
    assert code == 0 and "status=written outputs=1" in line
    assert "took-over-lock-of" not in line
    assert (out / jobs.LOCK_FILE).read_text() == ""  # a finished run leaves no pid behind


def test_a_lock_file_of_a_dead_run_is_taken_over(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that existed and is gone: the run that wrote the lock file was killed
    out.mkdir()
    (out / jobs.LOCK_FILE).write_text(str(dead.pid))
    code, line = run(job, "--now", at(2))
    assert code == 0
    assert "status=written outputs=1" in line and f"took-over-lock-of={dead.pid}" in line
    check_forecast(out / name(2), at(2))


# --- backfill and retention ---------------------------------------------------------------------------------


def test_backfill_fills_a_range_and_resumes(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 12)
    code, line = run(job, "--now", at(11))  # the live tick, before the outage is backfilled
    assert code == 0 and f"init={at(11)} status=written" in line

    # The range includes frame 0, which has no context before it: it is not an init time.
    code, line = run(job, "--backfill", f"{at(0)}:{at(3)}")
    assert code == 0 and "status=written outputs=3" in line
    assert list(outputs(out)) == [name(1), name(2), name(3), name(11)]
    # latest.json stays on the newest init time, not the last one backfilled.
    assert json.loads((out / jobs.STATUS_FILE).read_text())["init_time"] == at(11)

    # Resumable: a second call is a no-op; a lost output is redone alone. Backfill ignores staleness.
    before = outputs(out)
    code, line = run(job, "--backfill", f"{at(0)}:{at(3)}", "--now", "2030-01-01T00:00")
    assert code == 0 and f"init={at(3)} status=up-to-date" in line
    assert outputs(out) == before
    (out / name(2)).unlink()
    # ISO times with a Z, and a trailing partial minute range, parse too.
    code, line = run(job, "--backfill", f"{at(2)}Z:{at(2)}Z")
    assert code == 0 and f"init={at(2)} status=written outputs=1" in line
    assert set(outputs(out)) == set(before)

    code, line = run(job, "--backfill", f"{at(3)}:{at(1)}")
    assert code == 2 and "ends before it starts" in line
    code, line = run(job, "--backfill", "yesterday")
    assert code == 2 and "bad time range" in line


def test_backfill_by_date_covers_the_whole_day(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path, frames=3), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model)
    jobs.append_frames(src, feed, 3)
    code, line = run(job, "--backfill", "2024-06-01:2024-06-01")  # a date is its whole day (inclusive)
    assert code == 0 and "status=written outputs=2" in line
    assert list(outputs(out)) == [name(1), name(2)]


def test_retention_keeps_the_newest_outputs(tmp_path: Path, model: Path) -> None:
    src, feed, out = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out"
    job = write_job(tmp_path, model, retention=2, maps=True)
    jobs.append_frames(src, feed, 2)
    (tmp_path / "out").mkdir()
    (out / "notes.txt").write_text("not an output")  # other files are never touched
    for i in range(1, 4):
        if i > 1:
            jobs.append_frames(src, feed, 1)
        code, line = run(job, "--now", at(i))
        assert code == 0 and "status=written" in line, line
    assert "outputs=1 removed=1" in line
    assert list(outputs(out)) == [name(2), name(3)]
    assert sorted(p.name for p in (out / "maps").iterdir()) == [name(2)[:-3], name(3)[:-3]]
    assert any((out / "maps" / name(3)[:-3]).glob("*.png"))
    assert (out / "notes.txt").exists()
    # Backfilling what retention would delete again is skipped, so backfill stays a no-op.
    code, line = run(job, "--backfill", f"{at(1)}:{at(3)}")
    assert code == 0 and "status=up-to-date" in line
    assert list(outputs(out)) == [name(2), name(3)]


def test_retention_by_age_uses_init_times(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "out"
    job, _ = jobs.load_job(write_job(tmp_path, model, retention="10min", output_pattern="%d-%m-%Y_%H%M.nc"))
    out.mkdir()
    for i in range(4):  # day-first names: sorting by name would not be by time
        (out / (T0 + i * STEP).strftime("%d-%m-%Y_%H%M.nc")).write_text("x")
    (out / (T0 + 4 * STEP).strftime(".%d-%m-%Y_%H%M.nc.0123abcd.tmp")).write_text("x")
    assert [when for when, _ in jobs.outputs(job)] == [T0 + i * STEP for i in range(4)]
    removed = jobs._retain(job, T0 + 3 * STEP + pd.Timedelta("2min"))
    assert sorted(p.name for p in removed) == ["01-06-2024_1200.nc", "01-06-2024_1205.nc"]
    assert sorted(p.name for p in out.glob("*.nc")) == ["01-06-2024_1210.nc", "01-06-2024_1215.nc"]


# --- job files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"members": 2, "memebrs": 3}, "unknown key 'memebrs'"),
        ({"members": "eight"}, "key 'members' must be an integer"),
        ({"maps": "yes"}, "key 'maps' must be true or false"),
        ({"input": None}, "key 'input' must be text"),
        ({"input": ""}, "key 'input' is required"),
        ({"max_input_age": "soon"}, "key 'max_input_age' must be a duration"),
        ({"max_input_age": "30"}, "key 'max_input_age' must be a duration"),  # not 30 nanoseconds
        ({"max_input_age": "-5min"}, "key 'max_input_age' must be positive"),
        ({"retention": "forever"}, "key 'retention' must be a duration"),
        ({"retention": 0}, "key 'retention' must keep at least 1"),
        ({"members": 0}, "key 'members' must be at least 1"),
        ({"sampling_steps": -1}, "key 'sampling_steps' must be 0 (the checkpoint's recommendation) or more"),
        ({"sampling_steps": "five"}, "key 'sampling_steps' must be an integer"),
        ({"solver": "euler"}, "key 'solver' must be ddim or dpmpp2m, not 'euler'"),
        ({"precision": "fp16"}, "key 'precision' must be fp32, bf16 or auto, not 'fp16'"),
        ({"prob_matching": "quantile"}, "key 'prob_matching' must be cdf or none, not 'quantile'"),
        ({"spacing": "karras"}, "key 'spacing' must be time or logsnr, not 'karras'"),
        ({"inflation": -2}, "key 'inflation' must be 0 (the checkpoint's recommendation) or a positive"),
        ({"rain_mask": "yes"}, "key 'rain_mask' must be true or false"),
        ({"output_pattern": "f_%Y.grib"}, "key 'output_pattern' must end in .nc or .zarr"),
        ({"output_pattern": "../f_%Y%m%dT%H%M.nc"}, "key 'output_pattern' names files inside output_dir"),
        ({"output_pattern": "/tmp/f_%Y%m%dT%H%M.nc"}, "key 'output_pattern' names files inside output_dir"),
    ],
)
def test_a_bad_job_file_exits_2_naming_the_key(
    tmp_path: Path, model: Path, keys: dict, expected: str
) -> None:
    job = write_job(tmp_path, model, **keys)
    if keys.get("input", "x") is None:
        values = yaml.safe_load(job.read_text())
        del values["input"]
        job.write_text(yaml.safe_dump(values))
        expected = "key 'input' is required"
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: job.yaml: "), lines
    assert expected in lines[0]


@pytest.mark.parametrize("link", ["maps", "output"])
def test_a_symlink_out_of_the_output_dir_is_refused_not_followed(
    tmp_path: Path, model: Path, link: str
) -> None:
    src, feed, out, elsewhere = source(tmp_path), tmp_path / "feed.zarr", tmp_path / "out", tmp_path / "etc"
    job = write_job(tmp_path, model, maps=True)
    jobs.append_frames(src, feed, 2)
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "passwd").write_text("keep me")
    if link == "maps":
        (out / "maps").symlink_to(elsewhere, target_is_directory=True)
    else:
        (out / name(1)).symlink_to(elsewhere / "passwd")
    code, line = run(job, "--now", at(1))
    assert code == 2 and "leads outside the job's output_dir" in line, line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["passwd"]
    assert (elsewhere / "passwd").read_text() == "keep me"


def test_retention_unlinks_a_link_and_never_deletes_its_target(tmp_path: Path, model: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "etc"
    job, _ = jobs.load_job(write_job(tmp_path, model, retention=1))
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.nc").write_text("keep me")
    (out / name(1)).symlink_to(elsewhere / "precious.nc")
    (out / name(2)).write_text("x")
    removed = jobs._retain(job, T0 + 3 * STEP)
    assert [p.name for p in removed] == [name(1)]
    assert not (out / name(1)).is_symlink() and (elsewhere / "precious.nc").read_text() == "keep me"


def test_a_missing_input_or_checkpoint_exits_2_in_the_log(tmp_path: Path, model: Path) -> None:
    job = write_job(tmp_path, model)  # ../feed.zarr was never created
    code, line = run(job)
    assert code == 2
    assert "status=bad-input" in line and str(tmp_path / "feed.zarr") in line
    assert "bad-input" in log_lines(tmp_path)[-1]
    jobs.append_frames(source(tmp_path), tmp_path / "feed.zarr", 3)
    job = write_job(tmp_path, model, checkpoint="../models/missing.safetensors")
    code, line = run(job, "--now", at(2))
    assert code == 2 and str(tmp_path / "models" / "missing.safetensors") in line
    code, line = run(write_job(tmp_path, model), "--now", "around noon")
    assert code == 2 and "--now 'around noon' is not an ISO time" in line


def test_relative_paths_are_relative_to_the_job_file(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_path = write_job(tmp_path, model)
    job, path = jobs.load_job(job_path)
    assert path == job_path
    assert job.input == str(tmp_path / "feed.zarr")
    assert job.checkpoint == str(tmp_path / "models" / "model.safetensors")
    assert (job.output_dir, job.log_file) == (str(tmp_path / "out"), str(tmp_path / "out" / "run.log"))
    demo = tmp_path / "demo"
    demo.mkdir()
    assert jobs.load_job(write_job(demo, model, checkpoint="demo"))[0].checkpoint == "demo"  # shipped name

    jobs.append_frames(source(tmp_path), tmp_path / "feed.zarr", 3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # cron runs from another directory
    code, line = run(Path("..") / "jobs" / "job.yaml", "--now", at(2))
    assert code == 0 and "status=written" in line
    assert (tmp_path / "out" / name(2)).exists() and not any(elsewhere.iterdir())


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("pipelines/*.yaml")))
def test_shipped_job_files_load(path: Path) -> None:
    job, _ = jobs.load_job(path)
    assert Path(job.input).is_absolute() and Path(job.output_dir).is_absolute()
    assert job.output_pattern.endswith((".nc", ".zarr"))
