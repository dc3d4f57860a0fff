"""Bad inputs over every command, as a table: each ends with exit status 2 and one line, no traceback, no
output written and an existing output untouched.

Inputs are tiny real files (NetCDF, zarr 3) damaged the way archives are: other formats, truncated and
empty files, corrupted chunks in the frames a command reads, broken time axes, fields with no valid value,
infinities and undeclared fill values, rain below zero, wrong units, 1-D, 4-D and degenerate grids. The
forecasting model is an untrained ``tiny`` checkpoint (plumbing only, seconds to build); no test trains
more than one step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from dydiff_earth import io
from dydiff_earth.cli import app
from dydiff_earth.testing import tiny_field

runner = CliRunner()
#: Fast forecast options: two members, two DDIM steps, no progress bar.
QUICK = ["--members", "2", "--sampling-steps", "2", "--quiet"]


def _netcdf(path: Path, ds: xr.Dataset | None = None) -> Path:
    (ds if ds is not None else tiny_field(12)).to_netcdf(path)
    return path


def _zarr(path: Path, ds: xr.Dataset) -> Path:
    # One frame per chunk, as `prepare` writes: a corrupted chunk then damages exactly one frame.
    return io.write_zarr(ds.chunk({"time": 1}), path)


def _corrupt(store: Path, frames: Sequence[int]) -> Path:
    for t in frames:
        (store / "precip" / "c" / str(t) / "0" / "0").write_bytes(b"\x00not zstd\xff" * 8)
    return store


def _with(values: Callable[[np.ndarray], None], **kw: object) -> xr.Dataset:
    ds = tiny_field(12, **kw)  # type: ignore[arg-type]
    data = ds["precip"].values.copy()
    values(data)
    ds["precip"].values = data
    return ds


def _set(index: object, value: float) -> Callable[[np.ndarray], None]:
    def change(a: np.ndarray) -> None:
        a[index] = value  # type: ignore[index]

    return change


def _build(root: Path) -> dict[str, Path]:
    """Every input of the table, written once under ``root``."""
    from dydiff_earth.data import open_fields
    from dydiff_earth.testing import tiny_checkpoint

    f: dict[str, Path] = {}
    f["good"] = _zarr(root / "good.zarr", tiny_field(12))
    f["checkpoint"] = tiny_checkpoint(root / "tiny.safetensors", open_fields(f["good"]))
    good_nc = _netcdf(root / "good.nc")
    (root / "notes.txt").write_text("not a dataset\n")
    f["text"] = root / "notes.txt"
    (root / "text.nc").write_text("a text file with the wrong name\n")
    f["not-netcdf"] = root / "text.nc"
    (root / "empty.nc").write_bytes(b"")
    f["zero-byte"] = root / "empty.nc"
    data = good_nc.read_bytes()
    (root / "truncated.nc").write_bytes(data[: len(data) // 2])
    f["truncated"] = root / "truncated.nc"
    f["directory"] = root / "not-a-store"
    f["directory"].mkdir()
    # Frame 10 is read by a forecast from the latest init (context 2: frames 10, 11) and by training's
    # statistics, but not by the 8-frame validity sample of a forecast: the failure comes from the read.
    f["corrupt-chunk"] = _corrupt(_zarr(root / "corrupt.zarr", tiny_field(12)), [10])
    f["corrupt-all"] = _corrupt(_zarr(root / "corrupt-all.zarr", tiny_field(12)), range(12))
    f["duplicated-times"] = _netcdf(root / "dup.nc", tiny_field(12).isel(time=[0, 1, 1, *range(2, 11)]))
    f["backwards-times"] = _netcdf(root / "back.nc", tiny_field(12).isel(time=[0, 2, 1, *range(3, 12)]))
    f["all-nan"] = _zarr(root / "nan.zarr", _with(_set(slice(None), np.nan)))
    f["inf"] = _zarr(root / "inf.zarr", _with(_set((slice(None), 3, 3), np.inf)))
    f["fill-1e30"] = _zarr(root / "huge.zarr", _with(_set((slice(None), 0, 0), 1e30)))
    f["negative-rain"] = _zarr(root / "negative.zarr", _with(lambda a: np.negative(a + 0.5, out=a)))
    f["kelvin"] = _zarr(root / "kelvin.zarr", tiny_field(12, units="K"))
    one_d = tiny_field(12).isel(latitude=0, drop=True)
    f["1-d"] = _zarr(root / "1d.zarr", one_d)
    f["4-d"] = _zarr(root / "4d.zarr", tiny_field(12).expand_dims(level=[850, 500], axis=1))
    f["1-row-grid"] = _zarr(root / "row.zarr", tiny_field(12, size=(1, 16)))
    f["zeros"] = _zarr(root / "zeros.zarr", _with(_set(slice(None), 0.0)))
    forecast = root / "forecast.nc"
    args = ["forecast", "-i", f["good"], "--checkpoint", f["checkpoint"], "-o", forecast, "--no-maps"]
    result = runner.invoke(app, [str(a) for a in [*args, *QUICK, "--init-time", "2024-06-01T12:35"]])
    assert result.exit_code == 0, result.output
    f["forecast"] = forecast
    (root / "not-a-forecast.nc").write_bytes(b"")
    f["not-a-forecast"] = root / "not-a-forecast.nc"
    return f


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("bad-inputs"))


# --- the table ---------------------------------------------------------------------------------------------
# A case: command line with {placeholders} for the files, the words the one line must hold, and the outputs
# it names (relative to the working directory; each exists beforehand with known content).

CK = "{checkpoint}"
TRAIN = ["--preset", "tiny", "--steps", "1", "--context", "2", "--horizon", "2", "--patch", "8", "--quiet"]
TRAIN += ["--batch-size", "1", "--checkpoint-every", "1"]
SKILL = ["--members", "2", "--sampling-steps", "2", "--lead-times", "2", "--report", "skill", "--quiet"]


def commands(source: str) -> dict[str, list[str]]:
    """Each data-reading command with ``source`` as its data."""
    return {
        "prepare": ["prepare", source, "-o", "out.zarr"],
        "train": ["train", "--data", source, *TRAIN, "-o", "model.safetensors"],
        "forecast": ["forecast", "-i", source, "--checkpoint", CK, "-o", "f.nc", "--no-maps", *QUICK],
        "evaluate": ["evaluate", "--forecast", "{forecast}", "--truth", source, "-o", "scores.nc"],
        "skill": ["skill", "--data", source, "--checkpoint", CK, "--baselines", "persistence", *SKILL],
        "plot": ["plot", "{forecast}", "--truth", source, "-o", "maps"],
        "run": ["run", "job.yaml", source],  # the source goes into the job file
        "feed": ["feed", source, "-o", "feed.zarr"],
        "info": ["info", source],
    }


#: Files no command can read, with the words of the error; every command that reads data refuses them.
UNREADABLE = {
    "text": "unknown format",
    "not-netcdf": "not a NetCDF file",
    "zero-byte": "empty (0 bytes)",
    "truncated": "truncated.nc",
    "directory": "not a zarr store",
}
#: Readable files whose content is wrong; `prepare` converts values as they are, `info` lists them.
INVALID = {
    "duplicated-times": "appears twice",
    "backwards-times": "not increasing",
    "1-d": "no spatial dims",
    "4-d": "has dims",
    "1-row-grid": "the grid is 1 x 16",
}
#: Values no field holds: refused by every command that uses values (not `prepare`, not `info`).
VALUES = {
    "all-nan": "all NaN",
    "inf": "infinite values",
    "fill-1e30": "fill values nobody declared",
    "negative-rain": "negative",
}
VALUE_COMMANDS = ("train", "forecast", "evaluate", "skill", "plot", "run", "feed")


def _cases() -> list[object]:
    cases = []
    for name, needle in UNREADABLE.items():
        for command, args in commands("{" + name + "}").items():
            cases.append(pytest.param(args, [needle], id=f"{command}-{name}"))
    for name, needle in INVALID.items():
        for command, args in commands("{" + name + "}").items():
            if command != "info":
                cases.append(pytest.param(args, [needle], id=f"{command}-{name}"))
    for name, needle in VALUES.items():
        for command in VALUE_COMMANDS:
            cases.append(pytest.param(commands("{" + name + "}")[command], [needle], id=f"{command}-{name}"))
    # Corrupted chunks: in the frames a command reads (the error names the store and the frames).
    for command in ("prepare", "train", "forecast", "evaluate", "skill", "feed"):
        source = "{corrupt-chunk}" if command in ("forecast", "train") else "{corrupt-all}"
        needle = "corrupt.zarr" if source == "{corrupt-chunk}" else "corrupt-all.zarr"
        cases.append(
            pytest.param(commands(source)[command], [needle, "decompression"], id=f"{command}-chunk")
        )
    # Wrong units for the model (K where it was trained on mm h-1).
    for command in ("forecast", "skill", "run"):
        cases.append(pytest.param(commands("{kelvin}")[command], ["'K'", "mm h-1"], id=f"{command}-units"))
    good = commands("{good}")
    options = {
        "forecast-members-0": ([*good["forecast"], "--members", "0"], ["--members"]),
        "forecast-steps-0": ([*good["forecast"], "--sampling-steps", "0"], ["--sampling-steps"]),
        "forecast-suffix": ([*good["forecast"][:-6], "-o", "f.txt", "--no-maps"], [".nc", ".zarr"]),
        "forecast-init-time": ([*good["forecast"], "--init-time", "2031-01-01"], ["2031"]),
        "forecast-thresholds": ([*good["forecast"], "--thresholds", "a,b"], ["--thresholds"]),
        "train-gamma-ratio": ([*good["train"], "--gamma-ratio", "2"], ["--gamma-ratio"]),
        "train-patch": ([*good["train"], "--patch", "999"], ["patch 999"]),
        "train-preset": ([*good["train"], "--preset", "huge"], ["'huge'"]),
        "train-time": ([*good["train"], "--time", "2030-01-01:2030-01-02"], ["0 frame(s)"]),
        "train-objective": ([*good["train"], "--objective", "mse"], ["--objective"]),
        "train-crps-base": ([*good["train"], "--objective", "crps"], ["--init-from"]),
        "prepare-coarsen": ([*good["prepare"], "--coarsen", "0"], ["--coarsen"]),
        "prepare-coarsen-big": ([*good["prepare"], "--coarsen", "99"], ["coarsen 99"]),
        "feed-frames": ([*good["feed"], "--frames", "0"], ["--frames"]),
        "skill-members": ([*good["skill"], "--members", "0"], ["--members"]),
        "skill-steps-0": ([*good["skill"], "--sampling-steps", "0"], ["--sampling-steps"]),
        "skill-leads-0": ([*good["skill"], "--lead-times", "0"], ["--lead-times"]),
        "evaluate-thresholds": ([*good["evaluate"], "--thresholds", "x"], ["--thresholds"]),
        "evaluate-not-a-forecast": (
            ["evaluate", "--forecast", "{not-a-forecast}", "--truth", "{good}"],
            ["forecast"],
        ),
        "plot-not-a-forecast": (["plot", "{not-a-forecast}", "-o", "maps"], ["not-a-forecast.nc"]),
        "info-missing": (["info", "nowhere.zarr"], ["does not exist"]),
    }
    for key, (args, needles) in options.items():
        cases.append(pytest.param(args, needles, id=key))
    # Outputs that cannot be written: a path under a regular file (refused even for root).
    blocked = "blocker/out"
    unwritable = {
        "prepare": ["prepare", "{good}", "-o", f"{blocked}.zarr"],
        "train": ["train", "--data", "{good}", *TRAIN, "-o", f"{blocked}.safetensors"],
        "forecast": [
            "forecast",
            "-i",
            "{good}",
            "--checkpoint",
            CK,
            "-o",
            f"{blocked}.nc",
            "--no-maps",
            *QUICK,
        ],
        "evaluate": ["evaluate", "--forecast", "{forecast}", "--truth", "{good}", "-o", f"{blocked}.nc"],
        "feed": ["feed", "{good}", "-o", f"{blocked}.zarr"],
    }
    for command, args in unwritable.items():
        cases.append(pytest.param(args, ["blocker"], id=f"{command}-unwritable"))
    return cases


OUTPUTS = ("out.zarr", "model.safetensors", "f.nc", "scores.nc", "skill", "maps", "forecasts")
JOB = """input: {source}
checkpoint: {checkpoint}
members: 2
sampling_steps: 2
lead_times: 2
output_dir: forecasts
maps: false
max_input_age: 100000d
log_file: run.log
"""


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.name != "run.log"  # `run` logs every outcome, its bad input included, by design
    }


@pytest.mark.parametrize(("template", "needles"), _cases())
def test_bad_input(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    template: list[str],
    needles: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    names = {k: str(v) for k, v in files.items()}
    args = [a.format(**names) for a in template]
    if args[0] == "run":
        (tmp_path / "job.yaml").write_text(JOB.format(source=args.pop(2), **names))
    # Existing outputs with known content: a failure must leave them as they were.
    (tmp_path / "blocker").write_text("a regular file where a directory is needed\n")
    for name in OUTPUTS:
        if name.endswith((".nc", ".safetensors")):
            (tmp_path / name).write_bytes(b"previous output\n")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "kept.txt").write_text("previous output\n")
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    text = (result.stderr or "").strip() + (result.stdout or "").strip()
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text, (needle, text)
    assert _snapshot(tmp_path) == before, "a failed command changed or left files"


def test_all_zero_rain_is_a_valid_input(files: dict[str, Path], tmp_path: Path) -> None:
    """No rain at all is a boring forecast, not an error: training and forecasting both accept it."""
    args = ["forecast", "-i", files["zeros"], "--checkpoint", files["checkpoint"], "-o", tmp_path / "f.nc"]
    result = runner.invoke(app, [str(a) for a in [*args, "--no-maps", *QUICK]])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(tmp_path / "f.nc") as ds:
        assert np.isfinite(ds["precip"].values).all() and (ds["precip"].values >= 0).all()
    args = ["train", "--data", files["zeros"], *TRAIN, "-o", tmp_path / "m.safetensors"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.safetensors").is_file()


def test_unknown_job_key(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = JOB.format(source=files["good"], checkpoint=files["checkpoint"]) + "memebrs: 4\n"
    (tmp_path / "job.yaml").write_text(job)
    result = runner.invoke(app, ["run", "job.yaml"])
    text = result.stderr.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1, text
    assert "memebrs" in text and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_an_unwritable_output_is_refused_before_any_work(files: dict[str, Path], tmp_path: Path) -> None:
    """Neither a training step nor a sampling step is spent on results that could not be written."""
    from dydiff_earth import config, pipeline
    from dydiff_earth.data import open_fields
    from dydiff_earth.errors import InputError
    from dydiff_earth.train import fit

    (tmp_path / "blocker").write_text("a file where a directory should be")
    steps: list[int] = []
    cfg = config.TrainConfig(context=2, horizon=2, patch=8, batch_size=1, steps=1)
    with pytest.raises(InputError, match="blocker"):
        fit(
            open_fields(files["good"]),
            config.preset("tiny"),
            config.DiffusionConfig(),
            cfg,
            tmp_path / "blocker" / "m.safetensors",
            progress=lambda step, *_: steps.append(step),
        )
    request = pipeline.ForecastRequest(
        input=str(files["good"]),
        checkpoint=str(files["checkpoint"]),
        output=tmp_path / "blocker" / "f.nc",
        forecast=config.ForecastConfig(members=2, sampling_steps=2),
        maps=None,
    )
    with pytest.raises(InputError, match="blocker"):
        pipeline.run_forecast(request, progress=lambda *a: steps.append(0))
    assert steps == []
