"""Members split across devices: the numbers of one device, whatever the split (CPU stands in for GPUs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dydiff_earth import io, testing
from dydiff_earth.cli import app
from dydiff_earth.config import ForecastConfig
from dydiff_earth.data import open_fields
from dydiff_earth.devices import MultiDeviceForecaster, parse_devices, split_members
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import DiffusionForecaster, load_model


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a small, busy machine, more threads make these tiny forecasts 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return io.write_zarr(
        testing.tiny_field(frames=8, size=(16, 16)), tmp_path_factory.mktemp("dev") / "f.zarr"
    )


@pytest.fixture(scope="module")
def checkpoint(store: Path) -> Path:
    return testing.tiny_checkpoint(store.parent / "tiny.safetensors", open_fields(store))


def test_split_members_covers_every_member_once_in_order() -> None:
    assert split_members(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert split_members(2, 4) == [range(0, 1), range(1, 2)]
    for n in range(1, 12):
        for parts in range(1, 5):
            blocks = split_members(n, parts)
            assert [k for b in blocks for k in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_members_over_three_devices_equal_one_device(store: Path, checkpoint: Path) -> None:
    model = load_model(checkpoint)
    fields = open_fields(store, stats=model.variables)
    cfg = ForecastConfig(members=5, sampling_steps=3, batch_size=2)
    kw = {"init_time": None, "lead_times": 3, "n_members": 5, "seed": 7}  # 3 leads: a rollout past L = 2
    one = DiffusionForecaster(model, cfg)(fields, **kw)
    seen: list[tuple[int, int]] = []
    split = MultiDeviceForecaster(model, cfg, devices=["cpu"] * 3, progress=lambda d, t: seen.append((d, t)))
    many = split(fields, **kw)
    np.testing.assert_array_equal(many["precip"].values, one["precip"].values)
    assert np.isfinite(one["precip"].values).all() and one["precip"].std("member").max() > 0
    # Progress over all devices together, ending at members x rounds x steps.
    assert seen[-1] == (5 * 2 * 3, 5 * 2 * 3) and all(t == 30 for _, t in seen)


def test_cli_devices_cpu_cpu_writes_the_single_device_numbers(
    store: Path, checkpoint: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    common = [
        "--input",
        str(store),
        "--checkpoint",
        str(checkpoint),
        "--members",
        "3",
        "--sampling-steps",
        "2",
    ]
    common += ["--no-maps", "--quiet"]
    outs = {}
    for name, extra in (("one", ["--device", "cpu"]), ("two", ["--devices", "cpu,cpu"])):
        result = runner.invoke(app, ["forecast", *common, "-o", str(tmp_path / f"{name}.nc"), *extra])
        assert result.exit_code == 0, result.output
        with io.open_forecast(tmp_path / f"{name}.nc") as ds:
            outs[name] = ds["precip"].values
    np.testing.assert_array_equal(outs["two"], outs["one"])
    both = runner.invoke(app, ["forecast", *common, "--device", "cpu", "--devices", "cpu,cpu"])
    assert both.exit_code == 2 and "not both" in both.output


def test_device_lists() -> None:
    assert parse_devices("cpu, cpu") == [torch.device("cpu")] * 2
    if not torch.cuda.is_available():
        assert parse_devices("all") == [torch.device("cpu")]
        with pytest.raises(InputError, match="CUDA is not available"):
            parse_devices("cuda:0,cuda:1")
    with pytest.raises(InputError, match="unknown device"):
        parse_devices("tpu")
    with pytest.raises(InputError, match="device list"):
        parse_devices(" , ")
