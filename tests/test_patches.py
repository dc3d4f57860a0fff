from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.utils.data import DataLoader

from dydiff_earth import io
from dydiff_earth.data import Fields, load_frames, open_fields, window_starts
from dydiff_earth.errors import InputError
from dydiff_earth.patches import WindowStream, blend_weight, tile_starts, tiles

CONTEXT, HORIZON = 2, 2


def _write(path: Path, ny: int = 12, nx: int = 16) -> Path:
    """Two segments (10 and 7 frames, gap between); rain only in the top-left quarter; a NaN corner."""
    times = pd.date_range("2020-01-01", periods=10, freq="5min").append(
        pd.date_range("2020-01-01T02:00", periods=7, freq="5min")
    )
    rng = np.random.default_rng(0)
    values = np.zeros((len(times), ny, nx), dtype=np.float32)
    values[:, : ny // 2, : nx // 2] = rng.gamma(1.0, 2.0, (len(times), ny // 2, nx // 2))
    values[:, -3:, -3:] = np.nan
    ds = xr.Dataset(
        {"precip": (("time", "y", "x"), values, {"units": "mm h-1"})},
        coords={"time": times, "y": np.arange(ny) * 1.0, "x": np.arange(nx) * 1.0},
    )
    return io.write_zarr(ds.chunk({"time": 1}), path)


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> Fields:
    return open_fields(_write(tmp_path_factory.mktemp("patches") / "rain.zarr"))


def _key(sample: dict) -> tuple:
    return (sample["start"], sample["y0"], sample["x0"], sample["frames"].numpy().tobytes())


def test_sample_contents(fields: Fields) -> None:
    stream = WindowStream(fields, CONTEXT, HORIZON, patch=None, length=1)
    (sample,) = list(stream)
    s = CONTEXT + HORIZON
    assert sample["frames"].shape == (s, 1, 12, 16) and sample["frames"].dtype == torch.float32
    assert sample["valid"].shape == (s, 1, 12, 16) and sample["valid"].dtype == torch.float32
    raw = load_frames(fields, slice(sample["start"], sample["start"] + s))
    np.testing.assert_array_equal(sample["valid"].numpy(), np.isfinite(raw).astype(np.float32))
    assert sample["valid"][:, 0, -3:, -3:].sum() == 0 and sample["valid"][:, 0, :-3].min() == 1
    assert torch.isfinite(sample["frames"]).all()
    assert (sample["frames"][sample["valid"].expand_as(sample["frames"]) == 0] == 0).all()
    np.testing.assert_array_equal(sample["frames"].numpy(), np.nan_to_num(raw, nan=0.0))


def test_reproducible_from_seed(fields: Fields) -> None:
    first = [_key(s) for s in WindowStream(fields, CONTEXT, HORIZON, 4, seed=3, length=6)]
    again = [_key(s) for s in WindowStream(fields, CONTEXT, HORIZON, 4, seed=3, length=6)]
    other = [_key(s) for s in WindowStream(fields, CONTEXT, HORIZON, 4, seed=4, length=6)]
    assert len(first) == 6 and first == again and first != other


def test_infinite_stream_has_no_length(fields: Fields) -> None:
    stream = WindowStream(fields, CONTEXT, HORIZON, 4)
    with pytest.raises(TypeError):
        len(stream)
    samples = [s for _, s in zip(range(25), stream, strict=False)]
    assert len(samples) == 25


def test_windows_stay_in_one_segment(fields: Fields) -> None:
    s = CONTEXT + HORIZON
    allowed = set(window_starts(fields, s))
    assert allowed == set(range(0, 7)) | set(range(10, 14))
    starts = {sample["start"] for sample in WindowStream(fields, CONTEXT, HORIZON, 4, length=60)}
    assert starts <= allowed and len(starts) > 5
    for start in starts:
        steps = np.diff(fields.times[start : start + s])
        assert (steps == fields.time_step).all()


def test_starts_restrict_windows(fields: Fields) -> None:
    # 7..9 would cross the gap after frame 9, so only 10 and 11 remain.
    stream = WindowStream(fields, CONTEXT, HORIZON, 4, starts=[7, 8, 9, 10, 11], length=20)
    assert {sample["start"] for sample in stream} == {10, 11}
    with pytest.raises(InputError, match="none of the 2 given window starts"):
        WindowStream(fields, CONTEXT, HORIZON, 4, starts=[8, 9])


def test_crop_larger_than_grid(fields: Fields) -> None:
    with pytest.raises(InputError, match="patch 13 does not fit the grid 12x16"):
        WindowStream(fields, CONTEXT, HORIZON, 13)


def test_too_few_frames(fields: Fields) -> None:
    with pytest.raises(InputError, match="needs 11 consecutive frames but the longest segment has 10"):
        WindowStream(fields, 5, 6, 4)


def _collect(loader: DataLoader) -> list[tuple]:
    return [_key(sample) for sample in loader]


def test_shards_partition_the_stream(fields: Fields, monkeypatch: pytest.MonkeyPatch) -> None:
    single = _collect(
        DataLoader(WindowStream(fields, CONTEXT, HORIZON, 4, seed=1, length=13), batch_size=None)
    )
    assert len(single) == 13
    sharded = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = WindowStream(fields, CONTEXT, HORIZON, 4, seed=1, length=13)
        part = _collect(DataLoader(stream, batch_size=None, num_workers=2))
        assert len(part) == (7 if rank == 0 else 6)  # samples 0, 2, 4, ... go to rank 0
        sharded.extend(part)
    # Same multiset: every sample once, none twice, none missing.
    assert sorted(sharded) == sorted(single)


def test_rain_weighted_prefers_rain(fields: Fields) -> None:
    def rainy_fraction(weighted: bool) -> float:
        stream = WindowStream(fields, CONTEXT, HORIZON, 4, seed=0, rain_weighted=weighted, length=40)
        rain_level = (np.log1p(0.1) - fields.variables[0].mean) / fields.variables[0].std
        return float(np.mean([(s["frames"][CONTEXT - 1] >= rain_level).float().mean() for s in stream]))

    plain, weighted = rainy_fraction(False), rainy_fraction(True)
    # Rain covers a quarter of the grid: about 0.25 of plain crops' pixels; weighting must raise it clearly.
    assert 0.1 < plain < 0.45
    assert weighted > plain + 0.15  # measured: 0.32 plain, 0.54 weighted


def test_rain_weighted_needs_precipitation(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.zarr")
    fields = open_fields(path, transforms={"precip": "none"})
    with pytest.raises(InputError, match="rain_weighted needs"):
        WindowStream(fields, CONTEXT, HORIZON, 4, rain_weighted=True)


# ---------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 8), (33, 32, 4), (64, 16, 0), (7, 5, 4)])
def test_tile_starts_cover(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(0 < b - a <= tile - overlap for a, b in itertools.pairwise(starts))
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_tile_larger_than_domain() -> None:
    assert tile_starts(20, 32, 8) == [0]
    assert tiles((20, 40), 32, 8) == [(slice(0, 20), slice(0, 32)), (slice(0, 20), slice(8, 40))]
    with pytest.raises(InputError):
        tile_starts(20, 8, 8)


def test_blend_weight_shape() -> None:
    w = blend_weight(16, 20, 4)
    assert w.shape == (16, 20) and w.dtype == np.float32
    assert (w > 0).all() and w.max() == 1.0
    assert (w[4:-4, 4:-4] == 1).all() and (w[:4] < 1).all() and (w[:, -4:] < 1).all()
    np.testing.assert_allclose(w, w[::-1, ::-1])  # symmetric ramps
    assert (np.diff(w[:5, 10]) > 0).all()  # rising towards the interior
    assert (blend_weight(5, 6, 0) == 1).all()


def test_blending_identical_tiles_reproduces_field() -> None:
    shape, tile, overlap = (45, 70), 16, 6
    field = np.random.default_rng(0).normal(size=shape)
    total = np.zeros(shape)
    weight_sum = np.zeros(shape)
    for ys, xs in tiles(shape, tile, overlap):
        w = blend_weight(ys.stop - ys.start, xs.stop - xs.start, overlap)
        total[ys, xs] += w * field[ys, xs]
        weight_sum[ys, xs] += w
    assert (weight_sum > 0).all()
    np.testing.assert_allclose(total / weight_sum, field, rtol=1e-6, atol=1e-12)


# --- the motion frame ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drifting(tmp_path_factory: pytest.TempPathFactory) -> Fields:
    """Rain cells drifting east 0.7 cells per step on a 24 x 24 grid."""
    from dydiff_earth import testing

    path = tmp_path_factory.mktemp("motion") / "drift.zarr"
    return open_fields(io.write_zarr(testing.tiny_field(frames=10, size=(24, 24)), path))


def test_motion_stream_yields_departures_from_the_init_frame(drifting: Fields) -> None:
    from dydiff_earth.patches import DepartureWindowStream

    stream = DepartureWindowStream(drifting, 3, 3, 16, seed=1, augment=False)
    assert len(stream.starts) == 5 and stream.scale.shape == (6,) and stream.scale[2] == 1.0
    s = stream.sample(0)
    assert s["frames"].shape == (6, 1, 16, 16) and s["condition"].shape == (1, 16, 16)
    assert not s["frames"][2].any()  # the init frame departs from itself by nothing
    # Scaled departures have unit RMS over the data by construction; the stream reproduces itself.
    dep = stream.departures / stream.scale[:, None, None, None]
    rms = np.sqrt(np.nanmean(dep**2, axis=(0, 2, 3, 4)))
    np.testing.assert_allclose(np.delete(rms, 2), 1.0, rtol=1e-4)
    assert _key(stream.sample(7)) == _key(
        DepartureWindowStream(drifting, 3, 3, 16, seed=1, augment=False).sample(7)
    )


def test_motion_frame_departures_are_smaller_than_observed_changes(drifting: Fields) -> None:
    from dydiff_earth.patches import DepartureWindowStream

    stream = DepartureWindowStream(drifting, 3, 3, None, seed=0, augment=False)
    windows = np.stack([load_frames(drifting, slice(s, s + 6)) for s in stream.starts])
    observed = np.sqrt(np.nanmean((windows[:, 3:] - windows[:, 2:3]) ** 2))
    lagrangian = np.sqrt(np.nanmean(stream.departures[:, 3:] ** 2))
    assert lagrangian < 0.5 * observed, (lagrangian, observed)


def test_motion_stream_symmetries_are_rotations_and_flips(drifting: Fields) -> None:
    from dydiff_earth.patches import DepartureWindowStream

    plain = DepartureWindowStream(drifting, 3, 3, 16, seed=2, augment=False)
    augmented = DepartureWindowStream(drifting, 3, 3, 16, seed=2, scale=plain.scale)
    seen = set()
    for i in range(24):
        a, b = plain.sample(i), augmented.sample(i)
        assert (a["start"], a["y0"], a["x0"]) == (b["start"], b["y0"], b["x0"])
        ca, cb = a["condition"].numpy()[0], b["condition"].numpy()[0]
        matches = [
            k + 4 * f
            for k in range(4)
            for f in range(2)
            if np.array_equal(np.rot90(ca, k)[:, :: -1 if f else 1], cb)
        ]
        assert matches, "augmented condition is not a rotation or flip of the crop"
        seen.add(matches[0])
    assert len(seen) > 4


def test_mixed_stream_draws_in_proportion_and_reproduces(drifting: Fields, fields: Fields) -> None:
    from dydiff_earth.patches import MixedStream

    a = WindowStream(drifting, CONTEXT, HORIZON, 8, seed=0)
    b = WindowStream(fields, CONTEXT, HORIZON, 8, seed=0)
    mixed = MixedStream([a, b], [3.0, 1.0], seed=5, length=400)
    assert len(list(mixed)) == 400
    from_a = np.mean([_key(mixed.sample(i)) == _key(a.sample(i)) for i in range(400)])
    assert 0.68 < from_a < 0.82
    assert _key(mixed.sample(11)) == _key(MixedStream([a, b], [3.0, 1.0], seed=5).sample(11))
    with pytest.raises(InputError, match="one weight per stream"):
        MixedStream([a, b], [1.0])


def test_motion_stream_rain_weighting_prefers_rain(fields: Fields) -> None:
    from dydiff_earth.patches import DepartureWindowStream

    def wet(stream: DepartureWindowStream) -> float:
        return float(
            np.mean([(stream.sample(i)["condition"] >= stream.rain_level).float().mean() for i in range(60)])
        )

    plain = DepartureWindowStream(fields, 2, 2, 6, seed=3, augment=False)
    weighted = DepartureWindowStream(fields, 2, 2, 6, seed=3, augment=False, rain_weighted=True)
    assert wet(weighted) > 1.2 * wet(plain), (wet(weighted), wet(plain))


# ------------------------------------------------------------------------------------- fuzzing the stream


@st.composite
def _records(draw: st.DrawFn) -> tuple[xr.Dataset, int, int, int]:
    """Small records of any grid, NaN pattern, gaps and dtype, with a window and crop that may not fit."""
    nt, ny, nx = draw(st.integers(2, 8)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    steps = draw(st.lists(st.sampled_from([5, 5, 5, 15]), min_size=nt - 1, max_size=nt - 1))
    times = np.datetime64("2020-01-01T00:00") + np.cumsum([0, *steps]).astype("timedelta64[m]")
    values = draw(arrays(np.float64, (nt, ny, nx), elements=st.floats(0, 30, allow_nan=False)))
    values[draw(arrays(bool, (nt, ny, nx)))] = np.nan
    values[0, 0, 0] = 1.0  # at least one valid value: an all-NaN record is refused when opened
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    ds = xr.Dataset(
        {"precip": (("time", "y", "x"), values.astype(dtype), {"units": "mm h-1"})},
        coords={"time": times, "y": np.arange(ny) * 1e3, "x": np.arange(nx) * 1e3},
    )
    context, horizon, patch = draw(st.integers(1, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 7))
    return ds, context, horizon, patch


@settings(max_examples=40, deadline=None)
@given(_records())
def test_window_stream_documented_errors_or_samples_of_the_right_shape(
    case: tuple[xr.Dataset, int, int, int],
) -> None:
    """Any record and window: an `InputError`, or finite frames of the window's shape whose validity
    mask is exactly where the record is finite, from one contiguous segment."""
    import tempfile

    ds, context, horizon, patch = case
    with tempfile.TemporaryDirectory() as tmp:
        io.write_zarr(ds, Path(tmp) / "r.zarr")
        try:
            fields = open_fields(Path(tmp) / "r.zarr")
            stream = WindowStream(fields, context, horizon, patch, seed=3)
        except InputError:
            return
        window = context + horizon
        for i in range(3):
            s = stream.sample(i)
            assert s["frames"].shape == (window, 1, patch, patch) and s["frames"].dtype == torch.float32
            assert torch.isfinite(s["frames"]).all()
            raw = ds["precip"].values[s["start"] : s["start"] + window, s["y0"] : s["y0"] + patch]
            raw = raw[:, :, s["x0"] : s["x0"] + patch]
            np.testing.assert_array_equal(s["valid"][:, 0].numpy() == 1, np.isfinite(raw))
            gaps = np.diff(ds["time"].values[s["start"] : s["start"] + window])
            assert (gaps == fields.time_step).all()  # the record's own step
