from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from dydiff_earth import forecast as forecast_module
from dydiff_earth import io, probmatch, schema, testing
from dydiff_earth.config import ForecastConfig
from dydiff_earth.data import denormalize, load_frames, open_fields
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import (
    DiffusionForecaster,
    PersistenceForecaster,
    init_index,
    latest_complete_init,
    load_model,
    member_generator,
    recommend_sampler,
)
from dydiff_earth.patches import window_motion


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fc") / "field.zarr"
    ds = testing.tiny_field(frames=12, size=(16, 24))
    ds["precip"][:, :2, :3] = np.nan  # a corner without coverage
    return io.write_zarr(ds, path)


@pytest.fixture(scope="module")
def model(store: Path, tmp_path_factory: pytest.TempPathFactory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    testing.tiny_checkpoint(ckpt, open_fields(store), context=2, horizon=2, patch=16)
    return load_model(ckpt)


def _forecast(model, store, **kw) -> xr.Dataset:
    options = {
        k: kw.pop(k)
        for k in (
            "batch_size",
            "solver",
            "precision",
            "eta",
            "prob_matching",
            "spacing",
            "rain_mask",
            "inflation",
            "inflation_scale",
        )
        if k in kw
    }
    cfg = ForecastConfig(sampling_steps=3, **{"batch_size": 8, **options})
    fields = open_fields(store, stats=model.variables)
    args = {"init_time": None, "lead_times": 2, "n_members": 4, "seed": 1} | kw
    return DiffusionForecaster(model, cfg)(fields, **args)


def test_output_format_matches_the_input_grid(model, store: Path) -> None:
    ds = _forecast(model, store)
    schema.validate_forecast(ds)
    src = xr.open_zarr(store, consolidated=False)
    assert ds["precip"].dims == ("member", "lead_time", "latitude", "longitude")
    np.testing.assert_array_equal(ds["latitude"], src["latitude"])
    np.testing.assert_array_equal(ds["longitude"], src["longitude"])
    assert ds["precip"].attrs["units"] == "mm h-1"
    assert ds[schema.INIT_TIME].values == src["time"].values[-1]
    np.testing.assert_array_equal(
        ds[schema.VALID_TIME], ds[schema.INIT_TIME].values + ds[schema.LEAD_TIME].values
    )
    # NaN exactly where the input has no coverage; rain rates are never negative.
    assert ds["precip"].isel(member=0, lead_time=0)[:2, :3].isnull().all()
    assert np.isfinite(ds["precip"].values[..., 2:, 3:]).all()
    assert float(ds["precip"].min()) >= 0.0
    assert {"precip_mean", "precip_spread"} <= set(ds.data_vars)
    # Rain also gets the probability-matched mean: the mean's ranks, the pooled members' values.
    matched = ds["precip_matched_mean"]
    assert matched.dims == ("lead_time", "latitude", "longitude")
    np.testing.assert_array_equal(matched.values, probmatch.matched_mean(ds["precip"].values))
    assert matched.attrs["units"] == "mm h-1" and "Ebert" in matched.attrs["cell_methods"]
    for key in ("checkpoint_sha256", "seed", "rng_scheme", "sampler", "sampling_steps", "input_time_range"):
        assert key in ds.attrs


def test_members_depend_only_on_seed_init_and_index(model, store: Path) -> None:
    eight = _forecast(model, store, n_members=8)
    two = _forecast(model, store, n_members=2)
    np.testing.assert_array_equal(two["precip"].values, eight["precip"].values[:2])
    one_by_one = _forecast(model, store, n_members=8, batch_size=1)
    np.testing.assert_array_equal(one_by_one["precip"].values, eight["precip"].values)
    other_seed = _forecast(model, store, n_members=2, seed=2)
    assert not np.allclose(other_seed["precip"].values, two["precip"].values, equal_nan=True)
    assert eight["precip"].std("member").mean() > 0


def test_inflation_widens_the_members_and_keeps_the_member_contract(model, store: Path) -> None:
    raw = {"prob_matching": "none", "rain_mask": False}
    sampled = _forecast(model, store, n_members=8, **raw)
    wide = _forecast(model, store, n_members=8, inflation=2.0, **raw)
    assert sampled.attrs["spread_inflation"] == "1 (as sampled)"
    assert wide.attrs["spread_inflation"].startswith("2 at all scales (")
    assert wide.attrs["inflation_group_size"] == 8 and "inflation_group_size" not in sampled.attrs
    assert float(wide["precip"].std("member").mean()) > 1.2 * float(sampled["precip"].std("member").mean())
    # Two members are the first two of eight: the rest of their group is drawn, then dropped; the
    # members of a second group leave the first one's as they are.
    two = _forecast(model, store, n_members=2, inflation=2.0, **raw)
    np.testing.assert_array_equal(two["precip"].values, wide["precip"].values[:2])
    nine = _forecast(model, store, n_members=9, inflation=2.0, **raw)
    np.testing.assert_array_equal(nine["precip"].values[:8], wide["precip"].values)
    # Widened above 2 cells only: the members move apart less than at every scale, and it is recorded.
    smooth = _forecast(model, store, n_members=8, inflation=2.0, inflation_scale=2.0, **raw)
    assert "above 2 grid cells" in smooth.attrs["spread_inflation"]
    spread = [float(ds["precip"].std("member").mean()) for ds in (sampled, smooth, wide)]
    assert spread[0] < spread[1] < spread[2], spread
    one_by_one = _forecast(model, store, n_members=8, inflation=2.0, batch_size=3, **raw)
    np.testing.assert_array_equal(one_by_one["precip"].values, wide["precip"].values)


def test_solver_and_precision_change_the_numbers_not_the_member_contract(model, store: Path) -> None:
    ddim = _forecast(model, store, n_members=3, solver="ddim")
    dpm = _forecast(model, store, n_members=3, solver="dpmpp2m")
    bf16 = _forecast(model, store, n_members=3, solver="dpmpp2m", precision="bf16")
    assert dpm.attrs["sampler"].startswith("dpm-solver++(2m)") and ddim.attrs["sampler"].startswith("ddim")
    assert dpm.attrs["sampler"].endswith("evenly spaced in time from 981 to 1")
    assert bf16.attrs["precision"].startswith("bf16") and dpm.attrs["precision"].startswith("fp32")
    a, b, c = (ds["precip"].values for ds in (ddim, dpm, bf16))
    finite = np.isfinite(a)
    assert np.array_equal(finite, np.isfinite(b)) and np.array_equal(finite, np.isfinite(c))
    assert not np.allclose(a[finite], b[finite]) and not np.allclose(b[finite], c[finite])
    # bfloat16 is in the network only: close to float32 (an untrained net; a loose bound), never NaN.
    assert np.abs(c[finite] - b[finite]).mean() < 0.1 * np.abs(b[finite]).mean() + 0.1
    one_by_one = _forecast(model, store, n_members=3, solver="dpmpp2m", precision="bf16", batch_size=1)
    np.testing.assert_array_equal(one_by_one["precip"].values, c)


def test_logsnr_spacing_is_recorded_and_keeps_the_member_contract(model, store: Path) -> None:
    spaced = _forecast(model, store, n_members=3, spacing="logsnr")
    assert spaced.attrs["sampler"].endswith("evenly spaced in log signal-to-noise ratio from 981 to 1")
    two = _forecast(model, store, n_members=2, spacing="logsnr")
    np.testing.assert_array_equal(two["precip"].values, spaced["precip"].values[:2])
    timed = _forecast(model, store, n_members=2)  # 3 steps: 981, 491, 1 against 981, 327, 1
    finite = np.isfinite(timed["precip"].values)
    assert not np.allclose(timed["precip"].values[finite], two["precip"].values[finite])


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(model, store: Path, monkeypatch) -> None:
    """Emulated bfloat16 is many times slower than float32 (16 x on an AVX2 CPU): auto avoids it."""
    for native, chosen in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(forecast_module, "native_bf16", lambda device, _n=native: _n)
        ds = _forecast(model, store, n_members=2, precision="auto")
        assert ds.attrs["precision"].startswith(chosen)
        same = _forecast(model, store, n_members=2, precision=chosen)
        np.testing.assert_array_equal(ds["precip"].values, same["precip"].values)
    # Asked for without the hardware, bf16 runs as asked and says what it costs.
    monkeypatch.setattr(forecast_module, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="no bfloat16 in hardware"):
        assert DiffusionForecaster(model, ForecastConfig(precision="bf16")).config.precision == "bf16"
    monkeypatch.undo()
    assert isinstance(forecast_module.native_bf16(torch.device("cpu")), bool)  # this machine's answer


def test_stochastic_ddim_members_keep_the_member_contract(model, store: Path) -> None:
    """With eta > 0 the fresh noise of every step comes from each member's own generator."""
    still = _forecast(model, store, n_members=3, solver="ddim")
    stirred = _forecast(model, store, n_members=3, solver="ddim", eta=1.0)
    assert stirred.attrs["sampler"].startswith("ddim (eta = 1)") and still.attrs["sampler"].startswith(
        "ddim (eta = 0)"
    )
    a, b = still["precip"].values, stirred["precip"].values
    finite = np.isfinite(a)
    assert np.array_equal(finite, np.isfinite(b)) and not np.allclose(a[finite], b[finite])
    one_by_one = _forecast(model, store, n_members=3, solver="ddim", eta=1.0, batch_size=1)
    np.testing.assert_array_equal(one_by_one["precip"].values, b)
    one = _forecast(model, store, n_members=1, solver="ddim", eta=1.0)
    np.testing.assert_array_equal(one["precip"].values, b[:1])


@pytest.mark.parametrize(
    "cfg",
    [
        ForecastConfig(solver="ddim", eta=1.5),
        ForecastConfig(solver="ddim", eta=-0.1),
        ForecastConfig(solver="dpmpp2m", eta=0.5),
    ],
)
def test_eta_outside_ddim_or_its_range_is_an_input_error(model, cfg: ForecastConfig) -> None:
    with pytest.raises(InputError, match="--eta must lie in"):
        DiffusionForecaster(model, cfg)


@pytest.mark.parametrize(
    ("key", "value"),
    [("solver", "heun"), ("precision", "fp16"), ("prob_matching", "quantile"), ("spacing", "karras")],
)
def test_unknown_solver_precision_matching_or_spacing_is_an_input_error(model, key: str, value: str) -> None:
    with pytest.raises(InputError, match=f"{key} must be"):
        DiffusionForecaster(model, ForecastConfig(**{key: value}))


def test_the_rain_mask_weighs_each_lead_time_of_every_member(model, store: Path) -> None:
    masked = _forecast(model, store, n_members=3, prob_matching="none")
    free = _forecast(model, store, n_members=3, prob_matching="none", rain_mask=False)
    assert masked.attrs["rain_mask"].startswith("rain at lead time k only within k cells")
    assert free.attrs["rain_mask"] == "none"
    fields = open_fields(store, stats=model.variables)
    last = len(fields.times) - 1
    observed = denormalize(load_frames(fields, slice(last, last + 1)), model.variables)[0, 0]
    covered = np.isfinite(masked["precip"].values[0, 0])
    observed[~covered] = np.nan
    context = load_frames(fields, slice(last - model.context + 1, last + 1))
    weights = probmatch.rain_mask(observed, 2, window_motion(context, model.variables, model.context))
    assert (weights[:, covered] < 1).any()  # the mask does something here
    expected = free["precip"].values * weights
    np.testing.assert_allclose(masked["precip"].values[..., covered], expected[..., covered], rtol=1e-6)


def test_cdf_matching_gives_each_member_the_observed_values_in_its_own_ranks(model, store: Path) -> None:
    sampled = _forecast(model, store, n_members=3, prob_matching="none")
    matched = _forecast(model, store, n_members=3, prob_matching="cdf")
    assert sampled.attrs["prob_matching"] == "none" and matched.attrs["prob_matching"].startswith("cdf")
    # The last observation as the forecast reads it (normalised and back: dry is ~1e-8, not 0).
    fields = open_fields(store, stats=model.variables)
    last = len(fields.times) - 1
    observed = denormalize(load_frames(fields, slice(last, last + 1)), model.variables)[0, 0]
    covered = np.isfinite(matched["precip"].values[0, 0])
    wet = observed[covered]
    for before, after in zip(sampled["precip"].values, matched["precip"].values, strict=True):
        for lead_before, lead_after in zip(before, after, strict=True):
            b, a = lead_before[covered], lead_after[covered]
            assert (a[b == 0] == wet.min()).all()  # dry stays dry
            # Ranks kept: sorted by the sample (ties by the result), the result never decreases ...
            assert (np.diff(a[np.lexsort((a, b))]) >= 0).all()
            # ... and its values are the observed ones, the heaviest included.
            assert np.isin(a, wet).all() and a.max() == wet.max()
    # Each member on its own: the first two of three are the two of two.
    pair = _forecast(model, store, n_members=2, prob_matching="cdf")
    np.testing.assert_array_equal(pair["precip"].values, matched["precip"].values[:2])


@pytest.mark.parametrize(("height", "width", "ph", "pw"), [(5, 7, 8, 16), (16, 24, 16, 32), (3, 2, 16, 16)])
def test_padding_mirrors_the_field_at_its_south_and_east_edges(height, width, ph, pw) -> None:
    """Padding wider than the field too (a small domain under a model's training patch)."""
    field = torch.arange(2 * height * width, dtype=torch.float32).reshape(2, height, width)
    padded = forecast_module._MirrorPad(height, width, ph, pw)(field)

    def mirror(i: int, n: int) -> int:  # the edge cell repeated, then the field backwards, and so on
        j = i % (2 * n)
        return j if j < n else 2 * n - 1 - j

    expected = field[:, [mirror(i, height) for i in range(ph)]][..., [mirror(i, width) for i in range(pw)]]
    np.testing.assert_array_equal(padded.numpy(), expected.numpy())


def test_member_generator_keys() -> None:
    t = np.datetime64("2024-06-01T12:00")
    a = torch_draw(member_generator(0, t, 3))
    assert a == torch_draw(member_generator(0, t, 3))
    assert a != torch_draw(member_generator(0, t, 4))
    assert a != torch_draw(member_generator(1, t, 3))
    assert a != torch_draw(member_generator(0, t + np.timedelta64(5, "m"), 3))


def torch_draw(gen) -> float:
    import torch

    return float(torch.randn(1, generator=gen))


def test_rollout_past_the_trained_horizon(model, store: Path) -> None:
    ds = _forecast(model, store, lead_times=5, n_members=2)
    assert ds.sizes["lead_time"] == 5
    assert np.isfinite(ds["precip"].values[..., 2:, 3:]).all()


def test_explicit_init_time_and_context_errors(tmp_path: Path, model) -> None:
    path = io.write_zarr(testing.tiny_field(frames=10, size=(16, 24), gaps=(6,)), tmp_path / "gap.zarr")
    fields = open_fields(path, stats=model.variables)
    times = fields.times
    assert init_index(fields, str(times[3]), 2) == 3
    with pytest.raises(InputError, match="contiguous context frames"):
        init_index(fields, str(times[0]), 2)  # not enough frames before it
    with pytest.raises(InputError, match="gap before"):
        init_index(fields, str(times[6]), 2)  # the first frame after the gap
    with pytest.raises(InputError, match="not a time of the input"):
        init_index(fields, "1999-01-01T00:00", 2)
    with pytest.raises(InputError, match="not an ISO time"):
        init_index(fields, "yesterday-ish", 2)
    assert latest_complete_init(fields, 2) == len(times) - 1
    assert latest_complete_init(fields, 4) == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "rain"}, "checkpoint needs variable 'precip'"),
        ({"units": "kg m-2 s-1"}, "expects units 'mm h-1', input has 'kg m-2 s-1'"),
        ({"step": "10min"}, "time step of 5 minutes, input has 10 minutes"),
    ],
)
def test_mismatch_names_both_sides(tmp_path: Path, model, change: dict, message: str) -> None:
    from dydiff_earth.forecast import check_compatible

    path = io.write_zarr(testing.tiny_field(frames=8, size=(16, 24), **change), tmp_path / "other.zarr")
    with pytest.raises(InputError, match=message):
        check_compatible(model, open_fields(path))


class _TileAwareNet:
    """A stand-in network whose answer depends on the position inside its tile (the worst case for seams)."""

    def __call__(self, x, t, context, valid):
        import torch

        ramp = torch.linspace(-1.0, 1.0, x.shape[-1])
        return x + ramp  # a different offset at the left and right edge of every tile


def _seam_ratio(field: np.ndarray, shape: tuple[int, int], tile: int, overlap: int) -> float:
    """Mean |d/dx| across tile borders over mean |d/dx| elsewhere."""
    from dydiff_earth.patches import tiles

    grad = np.abs(np.diff(field, axis=-1)).reshape(-1, field.shape[-1] - 1).mean(axis=0)
    edges = {xs.start - 1 for _, xs in tiles(shape, tile, overlap) if xs.start > 0}
    edges |= {xs.stop - 1 for _, xs in tiles(shape, tile, overlap) if xs.stop < shape[1]}
    borders = sorted(edges)
    return float(grad[borders].mean() / np.delete(grad, borders).mean())


@pytest.mark.parametrize(("overlap", "seamless"), [(8, True), (0, False)])
def test_tile_blending_removes_seams(overlap: int, seamless: bool) -> None:
    """Blended noise estimates are smooth across tile borders; pasted tiles (no overlap) are not."""
    import torch

    from dydiff_earth.forecast import TiledDenoiser

    shape, tile = (16, 80), 16
    tiled = TiledDenoiser(_TileAwareNet(), torch.ones((1, 1, *shape)), tile, overlap)  # type: ignore[arg-type]
    x = torch.zeros((2, 3, 1, *shape))
    eps = tiled(x, torch.zeros(2, dtype=torch.long), x[:, :2]).numpy()
    ratio = _seam_ratio(eps, shape, tile, overlap)
    # Measured: 1.8 blended (a smooth transition across the 8-pixel overlap), 15 pasted (a jump).
    assert (ratio < 2.5) if seamless else (ratio > 5.0), f"seam ratio {ratio:.2f}"


def test_full_domain_members_are_finite_and_cover_the_grid(tmp_path: Path) -> None:
    """A 48-wide domain from a 16-pixel model: every pixel is sampled, members differ."""
    path = io.write_zarr(testing.tiny_field(frames=6, size=(16, 48)), tmp_path / "wide.zarr")
    fields = open_fields(path)
    ckpt = testing.tiny_checkpoint(tmp_path / "m.safetensors", fields, context=2, horizon=2, patch=16)
    ds = DiffusionForecaster(load_model(ckpt), ForecastConfig(sampling_steps=3))(
        fields, init_time=None, lead_times=2, n_members=2, seed=0
    )
    assert ds.sizes["longitude"] == 48 and np.isfinite(ds["precip"].values).all()
    assert not np.array_equal(ds["precip"].values[0], ds["precip"].values[1])


def test_persistence_repeats_the_last_frame(store: Path) -> None:
    fields = open_fields(store)
    ds = PersistenceForecaster()(fields, init_time=None, lead_times=3, n_members=1, seed=0)
    schema.validate_forecast(ds)
    last = xr.open_zarr(store, consolidated=False)["precip"].isel(time=-1).values
    for k in range(3):
        np.testing.assert_allclose(ds["precip"].values[0, k], last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_write_and_reopen(model, store: Path, tmp_path: Path, suffix: str) -> None:
    ds = _forecast(model, store, n_members=2)
    out = io.write_forecast(ds, tmp_path / f"f{suffix}")
    back = io.open_forecast(out)
    schema.validate_forecast(back)
    np.testing.assert_allclose(back["precip"].values, ds["precip"].values, rtol=1e-6)
    assert back[schema.LEAD_TIME].dtype.kind == "m"
    assert back[schema.INIT_TIME].attrs["standard_name"] == "forecast_reference_time"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(
    model, store: Path, tmp_path: Path, monkeypatch
) -> None:
    ds = _forecast(model, store, n_members=2)
    out = io.write_forecast(ds, tmp_path / "f.nc")
    before = out.read_bytes()

    def broken(self, path, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        io.write_forecast(ds, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.nc"]


def test_forecast_on_the_real_era5_grid(shared_data: Path, tmp_path: Path) -> None:
    """ERA5 (latitude descending, GRIB scalar coords): the forecast keeps the grid and drops the rest."""
    from dydiff_earth.data import prepare

    store = prepare(
        shared_data / "era5_t2m_uk_2019-03.nc", tmp_path / "era5.zarr", time="2019-03-01:2019-03-02"
    )
    fields = open_fields(store)
    ckpt = testing.tiny_checkpoint(tmp_path / "era5.safetensors", fields, context=2, horizon=2, patch=32)
    ds = DiffusionForecaster(load_model(ckpt), ForecastConfig(sampling_steps=2))(
        fields, init_time="2019-03-02T06:00", lead_times=3, n_members=2, seed=0
    )
    schema.validate_forecast(ds)
    src = xr.open_dataset(shared_data / "era5_t2m_uk_2019-03.nc")
    assert ds["t2m"].dims == ("member", "lead_time", "latitude", "longitude")
    np.testing.assert_array_equal(ds["latitude"], src["latitude"])  # descending, as in the input
    np.testing.assert_array_equal(ds["longitude"], src["longitude"])
    assert ds["t2m"].attrs["units"] == "K" and ds["t2m"].attrs["long_name"] == src["t2m"].attrs["long_name"]
    assert not {"step", "number", "time"} & set(ds.coords)
    assert str(ds[schema.VALID_TIME].values[0])[:16] == "2019-03-02T07:00"
    assert "t2m_matched_mean" not in ds  # a temperature's mean is its summary; matching is for rain


def test_motion_frame_model_forecasts_the_whole_domain_reproducibly(store: Path, tmp_path: Path) -> None:
    """A ``radar``-preset motion-frame model: full-domain sampling (24 wide padded to 32), member-keyed."""
    fields = open_fields(store)
    ckpt = testing.tiny_checkpoint(
        tmp_path / "lag.safetensors",
        fields,
        context=3,
        horizon=2,
        patch=16,
        model="radar",
        frame="lagrangian",
    )
    model = load_model(ckpt)
    assert model.frame == "lagrangian" and model.departure_scale.shape == (5,)
    a = _forecast(model, store, n_members=3, lead_times=3, batch_size=1)
    b = _forecast(model, store, n_members=2, lead_times=3, batch_size=2)
    np.testing.assert_array_equal(a["precip"].values[:2], b["precip"].values)
    values = a["precip"].values
    assert values.shape == (3, 3, 16, 24)
    assert np.isnan(values[..., :2, :3]).all() and np.isfinite(values[..., 2:, 3:]).all()
    assert a.attrs["frame"].startswith("lagrangian")


def test_members_sharing_a_full_domain_call_equal_one_member_calls(store: Path, tmp_path: Path) -> None:
    """The GPU path (all members in one call) gives the CPU path's noise estimates, rounding aside."""
    from dydiff_earth.forecast import FullDomainDenoiser

    fields = open_fields(store)
    ckpt = testing.tiny_checkpoint(
        tmp_path / "m.safetensors", fields, context=2, horizon=2, patch=16, model="radar"
    )
    net = load_model(ckpt).denoiser
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn((3, 4, 1, 16, 32), generator=gen), torch.randn((3, 2, 1, 16, 32), generator=gen)
    valid, t = (torch.rand((4, 1, 16, 32), generator=gen) > 0.2).float(), torch.tensor([900, 500, 10])
    with torch.no_grad():
        one = FullDomainDenoiser(net, valid)(x, t, context)
        for n in (2, 3):
            np.testing.assert_allclose(
                FullDomainDenoiser(net, valid, per_call=n)(x, t, context), one, atol=1e-5
            )
    assert not torch.allclose(one[0], one[1])


def test_a_context_without_valid_data_is_refused(model, tmp_path: Path) -> None:
    ds = testing.tiny_field(frames=6, size=(16, 24))
    ds["precip"][3:] = np.nan  # an outage over the last context frames
    store = io.write_zarr(ds, tmp_path / "outage.zarr")
    with pytest.raises(InputError, match="no grid point has valid data"):
        _forecast(model, store)


def test_a_recommended_sampler_fills_only_what_the_forecast_leaves_open(store: Path, tmp_path: Path) -> None:
    ckpt = testing.tiny_checkpoint(
        tmp_path / "m.safetensors", open_fields(store), context=2, horizon=2, patch=16
    )
    before, _ = io.load_checkpoint(ckpt)
    plain = DiffusionForecaster(load_model(ckpt))
    assert (plain.config.sampling_steps, plain.config.spacing) == (10, "time")  # DEFAULT_SAMPLER
    recommend_sampler(ckpt, 3, "logsnr", "measured on the probe", 1.5, 2.0)
    after, meta = io.load_checkpoint(ckpt)
    assert meta["sampler"] == {
        "sampling_steps": 3,
        "spacing": "logsnr",
        "inflation": 1.5,
        "inflation_scale": 2.0,
        "evidence": "measured on the probe",
    }
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model = load_model(ckpt)
    told = _forecast(model, store, spacing="logsnr", inflation=1.5, inflation_scale=2.0)  # 3 steps, as asked
    untold = DiffusionForecaster(model, ForecastConfig(batch_size=8))
    assert untold.timesteps == [981, 327, 1]
    fields = open_fields(store, stats=model.variables)
    same = untold(fields, init_time=None, lead_times=2, n_members=4, seed=1)
    np.testing.assert_array_equal(same["precip"].values, told["precip"].values)
    assert same.attrs["sampler"] == told.attrs["sampler"]
    # What the forecast does say wins, one choice at a time.
    timed = DiffusionForecaster(model, ForecastConfig(spacing="time", inflation=1.0))
    assert (timed.config.sampling_steps, timed.config.spacing, timed.config.inflation) == (3, "time", 1.0)


@pytest.mark.parametrize(
    ("steps", "spacing", "factor"), [(0, "logsnr", 1.0), (5, "karras", 1.0), (5, "time", 0.0)]
)
def test_recommending_a_sampler_that_cannot_run_is_an_input_error(
    store: Path, tmp_path: Path, steps: int, spacing: str, factor: float
) -> None:
    ckpt = testing.tiny_checkpoint(tmp_path / "m.safetensors", open_fields(store))
    before = ckpt.read_bytes()
    with pytest.raises(InputError, match=r"--sampling-steps|--spacing|--inflation"):
        recommend_sampler(ckpt, steps, spacing, None, factor)
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize(
    "lie",
    [
        {"context": "four"},
        {"variables": "twice"},
        {"model": {"channels": [8]}},
        {"sampler": {"sampling_steps": 0}},
        {"sampler": {"spacing": "karras"}},
        {"sampler": {"solver": "heun"}},
        {"sampler": {"inflation": -1.0}},
        {"sampler": {"inflation_scale": "wide"}},
    ],
    ids=[
        "context",
        "variables",
        "shapes",
        "sampler-steps",
        "sampler-spacing",
        "sampler-key",
        "inflation",
        "inflation-scale",
    ],
)
def test_checkpoint_metadata_that_lies_is_refused(store: Path, tmp_path: Path, lie: dict) -> None:
    ckpt = testing.tiny_checkpoint(tmp_path / "m.safetensors", open_fields(store))
    weights, meta = io.load_checkpoint(ckpt)
    meta = {k: v for k, v in meta.items() if k != "format"}
    if "variables" in lie:
        lie = {"variables": meta["variables"] * 2}
    if "model" in lie:
        lie = {"model": {**meta["model"], **lie["model"]}}
    io.save_checkpoint(ckpt, weights, {**meta, **lie})
    with pytest.raises(InputError, match="does not match this version's model"):
        load_model(ckpt)
