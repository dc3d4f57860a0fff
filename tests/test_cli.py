"""The command line as a new user meets it: help, lazy imports, one-line errors (exit 2), happy paths.

Most tests go through `typer.testing.CliRunner`; a few run the installed console script in a fresh
process to check what a shell sees (exit status, exactly one line on stderr, no traceback).
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _processes import sigkill_when
from typer.testing import CliRunner

from dydiff_earth import io
from dydiff_earth.cli import app
from dydiff_earth.testing import tiny_field

COMMANDS = ("synth", "prepare", "train", "forecast", "plot", "evaluate", "skill", "run", "feed")
SCRIPT = Path(sys.executable).with_name("dydiff-earth")
#: Fast forecast options: the tiny checkpoint, two members, two DDIM steps.
QUICK = ("--members", "2", "--sampling-steps", "2", "--quiet")

runner = CliRunner()


def invoke(args: Sequence[object]) -> object:
    return runner.invoke(app, [str(a) for a in args])


def listing(root: Path) -> set[Path]:
    """Every path under ``root``, hidden temporaries included."""
    return set(root.rglob("*"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default outputs (dydiff-output/...) are relative: keep them out of the checkout.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12-frame 16 x 16 precip store, its tiny checkpoint (context 2, horizon 2) and variants."""
    from dydiff_earth.data import open_fields
    from dydiff_earth.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("cli-inputs")
    store = io.write_zarr(tiny_field(12), root / "precip.zarr")
    return {
        "store": store,
        "checkpoint": tiny_checkpoint(root / "tiny.safetensors", open_fields(store)),
        "t2m": io.write_zarr(tiny_field(12, name="t2m", units="K"), root / "t2m.zarr"),
        "mm": io.write_zarr(tiny_field(12, units="mm"), root / "mm.zarr"),
        "10min": io.write_zarr(tiny_field(12, step="10min"), root / "10min.zarr"),
        "gap": io.write_zarr(tiny_field(12, gaps=(5,)), root / "gap.zarr"),
        "fine": io.write_zarr(tiny_field(12, spacing=0.0125), root / "fine.zarr"),
    }


def assert_user_error(args: Sequence[object], *needles: str, root: Path | None = None) -> str:
    """Exit 2, one ``error:`` line naming the problem, nothing on stdout, nothing left under ``root``."""
    root = root or Path.cwd()
    before = listing(root)
    result = invoke(args)
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, message, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: "), message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, (needle, message)
    assert listing(root) == before, "bad input left files behind"
    return message


# --- help and imports --------------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_answers_help(command: str) -> None:
    result = invoke([command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and command in result.stdout


def test_importing_the_cli_does_not_import_torch_or_cartopy() -> None:
    code = "import dydiff_earth.cli, sys; print('torch' in sys.modules, 'cartopy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- bad input: data ---------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    assert_user_error(["train", "--data", tmp_path / "nowhere.zarr"], "nowhere.zarr", "does not exist")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset\n")
    assert_user_error(["prepare", tmp_path / "notes.txt", "-o", "out.zarr"], "notes.txt", "unknown format")


def test_misspelled_variable_lists_the_available_ones(tmp_path: Path) -> None:
    ds = tiny_field(12)
    ds["precip_error"] = ds["precip"] * 0.1
    io.write_zarr(ds, tmp_path / "two.zarr")
    message = assert_user_error(
        ["train", "--data", tmp_path / "two.zarr", "--variables", "precp", "-o", "m.safetensors"], "'precp'"
    )
    available = message.split("available: ")[1]
    assert set(available.split(", ")) == {"precip", "precip_error"}
    assert "did you mean 'precip'" in message


def test_no_time_dim(tmp_path: Path) -> None:
    ds = tiny_field(12).rename(time="frame")
    ds["frame"].attrs = {}
    ds.to_netcdf(tmp_path / "frames.nc")
    assert_user_error(["train", "--data", tmp_path / "frames.nc", "-o", "m.safetensors"], "no time dim")


@pytest.mark.parametrize(
    ("order", "needle"),
    [([0, 2, 1, *range(3, 12)], "not increasing"), ([0, 1, 1, *range(2, 11)], "appears twice")],
    ids=["non-monotonic", "duplicated"],
)
def test_bad_time_axis(tmp_path: Path, order: list[int], needle: str) -> None:
    tiny_field(12).isel(time=order).to_netcdf(tmp_path / "bad-times.nc")
    assert_user_error(["train", "--data", tmp_path / "bad-times.nc", "-o", "m.safetensors"], needle)


def test_all_nan_variable(tmp_path: Path) -> None:
    ds = tiny_field(12)
    ds["precip"][:] = np.nan
    io.write_zarr(ds, tmp_path / "nan.zarr")
    assert_user_error(["train", "--data", tmp_path / "nan.zarr", "-o", "m.safetensors"], "all NaN")


@pytest.mark.parametrize(
    ("window", "needle"),
    [
        ("2024-06-02:2024-06-01", "ends before it starts"),
        ("yesterday", "bad time range"),
        ("2030-01-01:2030-01-02", "0 frame(s) selected"),
    ],
)
def test_bad_time_range(inputs: dict[str, Path], window: str, needle: str) -> None:
    args = ["train", "--data", inputs["store"], "--time", window, "-o", "m.safetensors"]
    assert_user_error(args, needle)


# --- bad input: options ------------------------------------------------------------------------------------


def test_fewer_frames_than_one_window(inputs: dict[str, Path]) -> None:
    args = ["train", "--data", inputs["store"], "--preset", "tiny", "--context", "8", "--horizon", "8"]
    assert_user_error([*args, "-o", "m.safetensors"], "needs 16 consecutive frames", "longest segment has 12")


def test_crop_larger_than_the_grid(inputs: dict[str, Path]) -> None:
    args = ["train", "--data", inputs["store"], "--preset", "tiny", "--patch", "999", "-o", "m.safetensors"]
    assert_user_error(args, "patch 999", "16x16")


def test_resume_without_checkpoint(inputs: dict[str, Path]) -> None:
    args = ["train", "--data", inputs["store"], "--preset", "tiny", "--resume", "-o", "m.safetensors"]
    assert_user_error(args, "--resume", "m.safetensors")


def test_rain_scale_is_recorded_and_kept(inputs: dict[str, Path]) -> None:
    """``--rain-scale`` goes into the checkpoint; a resume or fine-tune that would change it is refused."""
    from dydiff_earth.forecast import load_model

    args = ["train", "--data", inputs["store"], "--preset", "tiny", "--context", "2", "--horizon", "2"]
    args += ["--patch", "16", "--batch-size", "2", "--frame", "eulerian", "--quiet", "-o", "m.safetensors"]
    result = invoke([*args, "--steps", "1", "--rain-scale", "0.1"])
    assert result.exit_code == 0, result.output
    assert [v.scale for v in load_model("m.safetensors").variables] == [0.1]
    shown = invoke(["info", "m.safetensors"])
    assert "log1p(x / 0.1)" in " ".join(shown.stdout.split()), shown.stdout
    assert_user_error([*args, "--steps", "2", "--resume"], "--resume", "scale 0.1", "scale 1", "--rain-scale")
    tune = ["--init-from", "m.safetensors", "--steps", "1", "--rain-scale", "1", "-o", "t.safetensors"]
    assert_user_error([*args[:-2], *tune], "rain scale 1", "model's 0.1")
    assert_user_error([*args, "--rain-scale", "0"], "rain scale must be a positive number")


def test_negative_lead_weight_power(inputs: dict[str, Path]) -> None:
    args = ["train", "--data", inputs["store"], "--lead-weight-power", "-1", "-o", "m.safetensors"]
    assert_user_error(args, "--lead-weight-power", "-1.0")


def test_unknown_preset(inputs: dict[str, Path]) -> None:
    args = ["train", "--data", inputs["store"], "--preset", "huge", "-o", "m.safetensors"]
    assert_user_error(args, "'huge'", "tiny, radar, radar-fast, radar-deep, small, paper")


def test_synth_unknown_kind() -> None:
    assert_user_error(["synth", "lava", "-o", "lava.zarr"], "'lava'", "turbulence or precip")


def test_prepare_coarsen_zero(inputs: dict[str, Path]) -> None:
    assert_user_error(["prepare", inputs["store"], "--coarsen", "0", "-o", "p.zarr"], "--coarsen")


# --- bad input: forecast -----------------------------------------------------------------------------------


def forecast_args(inputs: dict[str, Path], source: str = "store", **options: object) -> list[object]:
    args: list[object] = ["forecast", "--input", inputs[source], "--checkpoint", inputs["checkpoint"]]
    options = {"output": "f.nc", **options}
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value]
    return [*args, *QUICK, "--no-maps"]


def test_forecast_checkpoint_not_found(inputs: dict[str, Path]) -> None:
    args = ["forecast", "--input", inputs["store"], "--checkpoint", "missing.safetensors", *QUICK]
    message = assert_user_error([*args, "-o", "f.nc"], "missing.safetensors", "not found")
    assert "()" not in message, "an empty list of shipped models reads as a glitch"


def test_forecast_pickle_checkpoint(inputs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    args = ["forecast", "--input", inputs["store"], "--checkpoint", tmp_path / "model.pt", *QUICK]
    assert_user_error([*args, "-o", "f.nc"], "model.pt", "not a dydiff-earth checkpoint")


@pytest.mark.parametrize(
    ("source", "needles"),
    [
        ("t2m", ("'precip'", "t2m")),
        ("mm", ("'mm'", "'mm h-1'")),
        ("10min", ("time step",)),
        ("fine", ("grid cells of 4.58 km", "the input's are 1.15 km", "--coarsen 4")),
    ],
    ids=["variable", "units", "time-step", "cell-size"],
)
def test_forecast_checkpoint_does_not_match(
    inputs: dict[str, Path], source: str, needles: tuple[str, ...]
) -> None:
    message = assert_user_error(forecast_args(inputs, source), *needles)
    assert "checkpoint" in message or "model" in message, message
    if source == "10min":  # both steps, however they are spelled
        assert re.search(r"00:05:00|\b5 ?min", message) and re.search(r"00:10:00|\b10 ?min", message), message


def test_forecast_without_checkpoint_takes_the_shipped_model_that_fits(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    from dydiff_earth import synthetic

    synth = io.write_zarr(synthetic.precip(sequences=1, frames=8, size=16, seed=3), tmp_path / "s.zarr")
    for store, name in ((synth, "demo"), (inputs["store"], "radar-4km-v1")):
        args = ["forecast", "--input", store, *QUICK, "--lead-times", "1", "--no-maps", "-o", "f.nc"]
        result = invoke(args)
        assert result.exit_code == 0, result.output
        assert f"the shipped model {name!r} fits this input" in result.stderr
        assert Path(xr.open_dataset("f.nc").attrs["checkpoint"]).stem == name
    # Nothing shipped takes u and v: one line listing what each model expects, and how to train one.
    turbulence = io.write_zarr(synthetic.turbulence(sequences=1, frames=8, size=16), tmp_path / "u.zarr")
    message = assert_user_error(
        ["forecast", "--input", turbulence, *QUICK, "-o", "f.nc"],
        "no shipped model fits",
        "dydiff-earth train",
    )
    assert "radar-4km-v1 (precip in mm h-1 every 5 minutes on 3.99 km cells)" in message, message
    # Observed rain on cells a quarter of the models' size: how to block-average it for the radar model.
    message = assert_user_error(
        ["forecast", "--input", inputs["fine"], *QUICK, "-o", "f.nc"],
        "no shipped model fits",
        "fine.zarr (precip in mm h-1 every 5 minutes on 1.15 km cells)",
        "checkpoint radar-4km-v1 learnt grid cells of 3.99 km",
        "--coarsen 3",
    )


def test_forecast_gap_inside_the_context(inputs: dict[str, Path]) -> None:
    # Frame 5 (12:25) is missing: a context of 2 frames ending at 12:30 would straddle the gap.
    args = forecast_args(inputs, "gap", init_time="2024-06-01T12:30")
    assert_user_error(args, "contiguous context frames", "gap")


def test_forecast_bad_output_suffix(inputs: dict[str, Path]) -> None:
    assert_user_error(forecast_args(inputs, output="forecast.txt"), "forecast.txt", ".nc", ".zarr")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("solver", "heun"),
        ("precision", "fp16"),
        ("prob_matching", "quantile"),
        ("spacing", "karras"),
        ("inflation", "0"),
        ("inflation_scale", "-1"),
    ],
)
def test_forecast_unknown_solver_precision_matching_spacing_or_inflation(
    inputs: dict[str, Path], option: str, value: str
) -> None:
    assert_user_error(forecast_args(inputs, **{option: value}), f"--{option.replace('_', '-')}", value)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--sampling-steps", "0", "--spacing", "time"], ["--sampling-steps", "at least 1"]),
        (["--sampling-steps", "5", "--spacing", "karras"], ["--spacing", "karras"]),
        (["--sampling-steps", "5", "--spacing", "time", "--inflation", "-1"], ["--inflation", "-1"]),
    ],
)
def test_recommend_refuses_a_sampler_that_cannot_run(
    inputs: dict[str, Path], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(inputs["checkpoint"].read_bytes())
    assert_user_error(["recommend", ckpt, *args], *needles, root=tmp_path)
    assert ckpt.read_bytes() == inputs["checkpoint"].read_bytes()


def test_forecast_in_emulated_bf16_runs_with_a_one_line_warning(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dydiff_earth import forecast

    monkeypatch.setattr(forecast, "native_bf16", lambda device: False)
    result = invoke(forecast_args(inputs, precision="bf16"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "bfloat16" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: this cpu has no bfloat16"), result.stderr
    assert "UserWarning" not in result.stderr and "precision auto" in warnings[0]


def test_forecast_cuda_on_a_cpu_machine(inputs: dict[str, Path]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_user_error(forecast_args(inputs, device="cuda"), "'cuda'", "--device cpu")


# --- what a shell sees -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing-input", "pickle-checkpoint"])
def test_console_script_prints_one_line_and_exits_2(
    inputs: dict[str, Path], tmp_path: Path, case: str
) -> None:
    if case == "missing-input":
        args = ["train", "--data", str(tmp_path / "nowhere.zarr")]
    else:
        (tmp_path / "model.pt").write_bytes(pickle.dumps({"weights": [1.0]}))
        args = ["forecast", "--input", str(inputs["store"]), "--checkpoint", "model.pt", "-o", "f.nc"]
    env = {**os.environ, "COLUMNS": "60"}  # a narrow terminal must not wrap the message
    done = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model.pt"] if case != "missing-input" else [])


# --- happy paths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "names"), [("turbulence", {"u", "v"}), ("precip", {"precip"})])
def test_synth(tmp_path: Path, kind: str, names: set[str]) -> None:
    args = ["synth", kind, "-o", "s.zarr", "--sequences", "2", "--frames", "6", "--size", "16"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)
    assert set(ds.data_vars) == names
    assert ds.sizes["time"] == 12 and ds.sizes[ds[next(iter(names))].dims[-1]] == 16
    assert np.isfinite(ds[next(iter(names))].values).all()


def test_prepare_real_radar(shared_data: Path, tmp_path: Path) -> None:
    args = ["prepare", shared_data / "radar_mch.nc", "--coarsen", "8", "-o", "radar.zarr"]
    result = invoke([*args, "--time", "2015-05-15T16:00:2015-05-15T16:30"])
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "radar.zarr", consolidated=False)
    times = ds["time"].values
    assert len(times) == 7  # 16:00 .. 16:30 every 5 min, both ends included
    assert times[0] == np.datetime64("2015-05-15T16:00") and times[-1] == np.datetime64("2015-05-15T16:30")
    assert (ds.sizes["y"], ds.sizes["x"]) == (640 // 8, 710 // 8)
    assert ds["precip"].attrs["units"] == "mm h-1" and ds["precip"].dtype == np.float32


def test_train_tiny_writes_a_checkpoint(tmp_path: Path) -> None:
    from dydiff_earth.forecast import load_model

    synth = invoke(["synth", "turbulence", "-o", "t.zarr", "--sequences", "1", "--frames", "12"])
    assert synth.exit_code == 0, synth.output
    args = ["train", "--data", "t.zarr", "--preset", "tiny", "--steps", "3", "--quiet", "-o", "m.safetensors"]
    args += ["--context", "2", "--horizon", "2", "--patch", "16", "--batch-size", "2"]
    args += ["--lead-weight-power", "1"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "after 3 steps" in result.stderr
    model = load_model(tmp_path / "m.safetensors")
    assert {v.name for v in model.variables} == {"u", "v"}
    assert (model.context, model.horizon, model.patch, model.meta["step"]) == (2, 2, 16, 3)
    assert model.meta["diffusion"]["lead_weight_power"] == 1.0


@pytest.mark.slow
def test_train_issue_command(tmp_path: Path) -> None:
    """The issue's ``train --data <synth turbulence store> --preset tiny --steps 50`` writes a checkpoint."""
    synth = invoke(["synth", "turbulence", "-o", "t.zarr", "--sequences", "2", "--frames", "24"])
    assert synth.exit_code == 0, synth.output
    result = invoke(["train", "--data", "t.zarr", "--preset", "tiny", "--steps", "50", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.safetensors").is_file() and "after 50 steps" in result.stderr


@pytest.fixture(scope="module")
def forecast_file(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A forecast from the frame at 12:35 (index 7), so the store holds its valid times 12:40 and 12:45."""
    out = tmp_path_factory.mktemp("cli-forecast")
    args = ["forecast", "--input", inputs["store"], "--checkpoint", inputs["checkpoint"], *QUICK]
    args += ["--init-time", "2024-06-01T12:35", "--output", out / "x.nc", "--maps", out / "maps"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return out / "x.nc", out / "maps"


def test_forecast_writes_a_file_and_maps(forecast_file: tuple[Path, Path]) -> None:
    path, maps = forecast_file
    ds = xr.open_dataset(path, decode_timedelta=True)
    assert ds.sizes["member"] == 2 and ds.sizes["lead_time"] == 2
    assert ds["precip"].dims == ("member", "lead_time", "latitude", "longitude")
    assert ds["init_time"].values == np.datetime64("2024-06-01T12:35")
    assert {"precip_mean", "precip_spread"} <= set(ds.data_vars)
    assert ds["precip"].attrs["units"] == "mm h-1"
    assert np.isfinite(ds["precip"].values).all()
    assert list(maps.glob("*.png"))


def test_plot(forecast_file: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke(["plot", forecast_file[0], "-o", tmp_path / "maps"])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "maps").glob("*.png"))


def test_evaluate(forecast_file: tuple[Path, Path], inputs: dict[str, Path], tmp_path: Path) -> None:
    args = ["evaluate", "--forecast", forecast_file[0], "--truth", inputs["store"], "-o", "scores.nc"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    scores = xr.open_dataset(tmp_path / "scores.nc", decode_timedelta=True)
    assert scores.sizes["lead_time"] == 2
    crps = [n for n in scores.data_vars if str(n).endswith("crps_fair")]
    assert crps and all(np.isfinite(scores[n].values).all() for n in crps)


def _tree(path: Path) -> dict[str, bytes]:
    """A file's bytes, or every file of a store by relative path."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_sigkill_while_forecasting_leaves_the_published_output_whole(
    inputs: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    """A forecast killed at once (SIGKILL) while it writes its output over an existing one: the old
    output stays byte for byte, and nothing partial is visible."""
    out = tmp_path / f"x{suffix}"
    base = ["forecast", "--input", inputs["store"], "--checkpoint", inputs["checkpoint"], "--output", out]
    first = invoke([*base, *QUICK, "--init-time", "2024-06-01T12:35"])
    assert first.exit_code == 0, first.output
    before = _tree(out)
    listed = listing(tmp_path)
    # Larger: 8 members, 24 lead times (12 rollout rounds), four probability thresholds.
    args = [str(a) for a in [*base, "--members", "8", "--sampling-steps", "4", "--lead-times", "24"]]
    args += ["--thresholds", "0.5,1,2,4", "--quiet"]
    proc = subprocess.Popen(
        [str(SCRIPT), *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL
    )
    caught_tmp = sigkill_when(proc, lambda: bool(list(tmp_path.glob(f".x{suffix}.*.tmp"))))
    assert proc.returncode == -signal.SIGKILL, "the forecast ended before it was killed; make it slower"
    assert _tree(out) == before
    assert not [p for p in listing(tmp_path) - listed if not p.relative_to(tmp_path).parts[0].startswith(".")]
    if caught_tmp:  # killed mid-write: what it wrote is under a hidden temporary name
        assert list(tmp_path.glob(f".x{suffix}.*.tmp"))
