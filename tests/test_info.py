"""`dydiff-earth info`: every shipped model and every file of ../shared/data described, from metadata and a
sample only; text and JSON; damaged or foreign files refused in one line or listed as problems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr.storage
from typer.testing import CliRunner

from dydiff_earth import info, io, motion
from dydiff_earth.cli import app
from dydiff_earth.errors import InputError
from dydiff_earth.testing import tiny_field

MODELS = sorted((Path(info.__file__).parent / "models").glob("*.safetensors"))
SHARED_FILES = ("radar_mch.nc", "radar_fmi.nc", "era5_t2m_uk_2019-03.nc")
runner = CliRunner()


def run_info(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, ["info", *map(str, args)])
    # Text wraps at the terminal's width; JSON is unaffected by joining whitespace.
    return result.exit_code, result.stdout if "--json" in args else " ".join(result.stdout.split())


def test_shipped_models_are_all_there() -> None:
    assert [p.name for p in MODELS] and "demo.safetensors" in [p.name for p in MODELS]


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.stem)
def test_describes_every_shipped_model(model: Path) -> None:
    code, out = run_info(model, "--json")
    assert code == 0, out
    described = json.loads(out)
    assert described["kind"] == "checkpoint"
    assert described["sha256"] == io.file_sha256(model)
    assert described["variables"] and all(v["name"] and v["units"] for v in described["variables"])
    assert described["time_step_seconds"] > 0 and described["time_step"]
    assert described["context"] >= 1 and described["horizon"] >= 1
    assert described["preset"] in (*info.config.PRESETS, "custom")
    assert 0.0 <= described["gamma_ratio"] <= 1.0
    assert described["frame"] in motion.FRAMES
    # Every shipped model says which sampler its forecasts take, and on what evidence.
    assert described["sampler"]["spacing"] in info.config.SPACINGS and described["sampler"]["evidence"]
    assert described["training"]["steps"] >= 0 and described["training"]["data"]["frames"] > 0
    # Parameters counted from the header's shapes agree with the weights actually stored.
    tensors, _ = io.load_checkpoint(model)
    assert described["parameters"] == sum(t.numel() for t in tensors.values())
    assert described["tensors"] == len(tensors)


def test_demo_by_name_as_text() -> None:
    code, out = run_info("demo")
    assert code == 0, out
    for needle in (
        "precip",
        "mm h-1",
        "5 minutes",
        "4 / 6 frames",
        "radar",
        "gamma ratio",
        "lagrangian",
        "sha256",
        "5 steps, logsnr spacing",
    ):
        assert needle in out, (needle, out)


@pytest.mark.parametrize("name", SHARED_FILES)
def test_describes_every_shared_data_file(shared_data: Path, name: str) -> None:
    code, out = run_info(shared_data / name, "--json")
    assert code == 0, out
    described = json.loads(out)
    assert described["kind"] == "data" and described["problems"] == []
    assert described["size_bytes"] == (shared_data / name).stat().st_size
    variable = next(v for v in described["variables"] if v["name"] in described["usable"])
    assert variable["units"] in ("mm h-1", "K")
    assert 0.0 <= variable["nan_fraction"] < 0.5 and variable["sampled_frames"] == info.SAMPLE_FRAMES
    time = described["time"]
    expected = {"radar_mch.nc": (120, 3, "5 minutes"), "radar_fmi.nc": (80, 2, "5 minutes")}
    frames, segments, step = expected.get(name, (744, 1, "1 hour"))
    assert (time["frames"], time["segments"], time["step"]) == (frames, segments, step)
    assert time["gap_count"] == segments - 1
    if name.startswith("radar"):
        assert "+proj=" in described["grid"]["crs"]["proj4"]


def test_text_of_a_radar_file(shared_data: Path) -> None:
    code, out = run_info(shared_data / "radar_mch.nc")
    assert code == 0, out
    for needle in ("precip", "mm h-1", "somerc", "5 minutes", "3 segment(s)", "gaps", "%"):
        assert needle in out, (needle, out)


def test_reads_only_a_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = io.write_zarr(tiny_field(40).chunk({"time": 1}), tmp_path / "a.zarr")
    reads: list[str] = []
    original = zarr.storage.LocalStore.get

    async def counting_get(
        self: zarr.storage.LocalStore, key: str, *args: object, **kwargs: object
    ) -> object:
        reads.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    described = info.describe(store)
    assert {key for key in reads if key.startswith("precip/c/")} == {
        f"precip/c/{t}/0/0" for t in (0, 13, 26, 39)
    }
    assert described["time"]["frames"] == 40 and described["usable"] == ["precip"]


def test_gaps_nan_and_problems_listed(tmp_path: Path) -> None:
    ds = tiny_field(12, gaps=(5,))
    ds["precip"][:, :4] = np.nan  # 4 of 16 rows
    described = info.describe(io.write_zarr(ds, tmp_path / "a.zarr"))
    (variable,) = described["variables"]
    assert variable["nan_fraction"] == pytest.approx(0.25)
    assert described["time"]["gap_count"] == 1 and described["time"]["segments"] == 2
    backwards = tiny_field(12).isel(time=[0, 2, 1, *range(3, 12)])
    described = info.describe(io.write_zarr(backwards, tmp_path / "b.zarr"))
    assert any("not increasing" in p for p in described["problems"])


def test_corrupted_chunk_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    store = io.write_zarr(tiny_field(12).chunk({"time": 1}), tmp_path / "a.zarr")
    (store / "precip" / "c" / "11" / "0" / "0").write_bytes(b"not zstd" * 4)
    code, out = run_info(store, "--json")
    assert code == 0, out
    (problem,) = json.loads(out)["problems"]
    assert "a.zarr" in problem and "decompression" in problem


@pytest.mark.parametrize(
    ("content", "suffix", "needle"),
    [
        (b"", ".nc", "empty"),
        (b"hello world", ".nc", "not a NetCDF"),
        (b"\x80\x04K\x01.", ".pt", "pickle"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{broken", ".safetensors", "not a readable safetensors"),
    ],
)
def test_foreign_files_are_one_line_errors(tmp_path: Path, content: bytes, suffix: str, needle: str) -> None:
    path = tmp_path / f"file{suffix}"
    path.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        info.describe(path)


def test_safetensors_without_our_metadata(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match="not a dydiff-earth checkpoint"):
        info.describe(tmp_path / "x.safetensors")
