"""Skill studies and backfills on a real dask.distributed cluster of two worker processes.

Member-keyed randomness makes a forecast the same numbers wherever it runs with the same number of torch
threads (CPU kernels round differently at other thread counts; dask's workers run one each), so the
distributed results must equal those of a serial run on one thread exactly; an init that fails on a
worker is reported with its time and the others are kept. One local cluster serves the module (joined
with ``--scheduler``); one test starts its own through ``--workers``, as users do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import distributed
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from dydiff_earth import cluster, io, jobs, testing, verify
from dydiff_earth.cli import app
from dydiff_earth.data import open_fields
from dydiff_earth.errors import InputError

#: Frames 8 and 9 are lost (all NaN): the model's 2-frame context at the init of frame 9 has no data.
OUTAGE = (8, 9)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The serial runs on one torch thread, like each worker."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as local:
        yield local


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = testing.tiny_field(frames=24, size=(16, 16))
    ds["precip"][list(OUTAGE)] = np.nan
    return io.write_zarr(ds, tmp_path_factory.mktemp("cluster") / "rain.zarr")


@pytest.fixture(scope="module")
def model(store: Path) -> Path:
    """A tiny untrained checkpoint (context 2, horizon 2): meaningless but deterministic forecasts."""
    return testing.tiny_checkpoint(store.parent / "tiny.safetensors", open_fields(store.parent / "rain.zarr"))


def _skill(store: Path, model: Path, report: Path, **where: object) -> verify.SkillResult:
    calls: list[tuple[str, int, int]] = []
    result = verify.skill(
        str(store),
        [str(model)],
        [],
        init_stride=6,
        members=3,
        lead_times=2,
        sampling_steps=2,
        thresholds=(1.0,),
        report_dir=report,
        progress=lambda system, done, total: calls.append((system, done, total)),
        **where,  # type: ignore[arg-type]
    )
    # Progress as in the serial run: each system counts up to its number of init times.
    for system in ("tiny", "persistence"):
        counts = [done for name, done, _ in calls if name == system]
        assert counts == list(range(1, len(counts) + 1)) and counts[-1] == 4, (system, counts)
    return result


def test_skill_on_two_workers_equals_the_serial_run(
    dask_cluster: distributed.LocalCluster, store: Path, model: Path, tmp_path: Path
) -> None:
    serial = _skill(store, model, tmp_path / "serial")
    spread = _skill(store, model, tmp_path / "spread", scheduler=dask_cluster.scheduler_address)
    # Init times 3, 9, 15, 21; the model cannot forecast from the outage at 9, so it is left out.
    outage = "2024-06-01T12:45:00"
    for result in (serial, spread):
        assert [(f.init_time, f.system) for f in result.failed] == [(outage, "tiny")]
        assert "no grid point has valid data" in result.failed[0].error
        assert len(result.init_times) == 3 and np.datetime64(outage) not in result.init_times
    assert spread.init_times == serial.init_times
    assert spread.summary["systems"] == serial.summary["systems"]
    xr.testing.assert_equal(spread.scores.drop_attrs(), serial.scores.drop_attrs())
    assert np.isfinite(spread.scores["crps_fair"].sel(system="tiny")).all()
    # Each worker loaded the checkpoint at most once for the 4 inits (and at least one worker did).
    with distributed.Client(dask_cluster, set_as_default=False) as client:
        loaded = client.run(lambda: sum(key[0] == "model" for key in cluster._CACHE))
    assert sorted(loaded.values())[-1] == 1, loaded


def test_backfill_on_two_workers_writes_what_the_serial_backfill_writes(
    store: Path, model: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    lines = {}
    for name, extra in (("serial", []), ("spread", ["--workers", "2"])):
        out = tmp_path / name
        out.mkdir()
        job = out / "job.yaml"
        keys = {"input": str(store), "checkpoint": str(model), "output_dir": str(out), "maps": False}
        job.write_text(yaml.safe_dump({**keys, "members": 2, "sampling_steps": 2, "batch_size": 2}))
        result = runner.invoke(
            app, ["run", str(job), "--backfill", "2024-06-01T12:35:2024-06-01T13:05", *extra]
        )
        # Inits 12:35 .. 13:05 (frames 7 .. 13); those of frames 8 to 10 have no data in their context.
        assert result.exit_code == 1, result.output
        lines[name] = (out / "run.log").read_text().splitlines()
    for name in lines:
        failed = sorted(line.split()[1] for line in lines[name] if "status=failed" in line)
        assert failed == [f"init=2024-06-01T12:{m}:00" for m in (40, 45, 50)], lines[name]
        assert "outputs=4 failed=3" in lines[name][-1]
    serial = sorted((tmp_path / "serial").glob("forecast_*.nc"))
    spread = sorted((tmp_path / "spread").glob("forecast_*.nc"))
    assert [p.name for p in spread] == [p.name for p in serial] and len(serial) == 4
    for a, b in zip(serial, spread, strict=True):
        with io.open_forecast(a) as x, io.open_forecast(b) as y:
            np.testing.assert_array_equal(x["precip"].values, y["precip"].values)
    status = yaml.safe_load((tmp_path / "spread" / jobs.STATUS_FILE).read_text())
    assert status["init_time"] == "2024-06-01T13:05:00"  # the newest, whatever order workers finished in


def test_cluster_options_are_checked_before_any_work(store: Path, model: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not both"):
        verify.skill(str(store), [], [], report_dir=tmp_path / "r", workers=2, scheduler="tcp://x:1")
    with pytest.raises(InputError, match="at least 1"):
        verify.skill(str(store), [], [], report_dir=tmp_path / "r", workers=0)
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"input": str(store), "checkpoint": str(model), "output_dir": str(tmp_path)})
    )
    result = CliRunner().invoke(app, ["run", str(job), "--workers", "2"])
    assert result.exit_code == 2 and "spread a --backfill" in result.output


def _task_environment(_: int) -> tuple[str | None, str]:
    import os

    import dask.base

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), str(dask.base.get_scheduler())


def test_tasks_read_their_input_in_their_own_thread_without_dask_malloc_trimming() -> None:
    """Both cost a forecast 2.6 x its CPU time on a worker (docs/scaling.md)."""
    with cluster.client(workers=1) as local:
        (_, (trim, scheduler), error), *_ = cluster.map_completed(_task_environment, [0], local)
    assert error is None
    assert trim is None
    assert "synchronous" in scheduler or "get_sync" in scheduler, scheduler
