"""Metrics against references (properscoring, scores, brute-force loops) and analytic identities."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import scores.probability
import scores.spatial
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dydiff_earth import metrics
from dydiff_earth.schema import INIT_TIME, LEAD_TIME, MEMBER, SYSTEM

DIMS = (INIT_TIME, LEAD_TIME, "y", "x")
TOL = 1e-12


def make_pair(
    shape: tuple[int, ...] = (2, 3, 16, 18), members: int = 4, seed: int = 0, rain: bool = False
) -> tuple[xr.DataArray, xr.DataArray]:
    """Forecast (member, init_time, lead_time, y, x) and truth; gamma-distributed with zeros if ``rain``."""
    rng = np.random.default_rng(seed)

    def draw(s: tuple[int, ...]) -> np.ndarray:
        return rng.gamma(0.6, 2.0, s) * (rng.random(s) > 0.4) if rain else rng.normal(size=s)

    coords = {LEAD_TIME: np.arange(shape[1]), MEMBER: np.arange(members)}
    truth = xr.DataArray(draw(shape), dims=DIMS, coords={LEAD_TIME: coords[LEAD_TIME]}, attrs={"units": "mm"})
    forecast = xr.DataArray(
        draw((members, *shape)), dims=(MEMBER, *DIMS), coords=coords, attrs={"units": "mm"}
    )
    return forecast, truth


def per_lead(da: xr.DataArray) -> np.ndarray:
    """Values as (lead_time, points) for brute-force reductions over init times and space."""
    return da.transpose(LEAD_TIME, INIT_TIME, "y", "x").values.reshape(da.sizes[LEAD_TIME], -1)


# ---- CRPS --------------------------------------------------------------------------------------------------


def test_ordinary_crps_matches_properscoring() -> None:
    forecast, truth = make_pair()
    got = metrics.CRPS(fair=False).compute(forecast, truth)["crps"]
    expected = properscoring.crps_ensemble(truth.values, forecast.values, axis=0).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(got.values, expected, rtol=1e-10)


def test_fair_crps_matches_brute_force() -> None:
    forecast, truth = make_pair(shape=(2, 2, 3, 4), members=3)
    x, y = forecast.values, truth.values
    m = x.shape[0]
    per_point = np.zeros(y.shape)
    for idx in np.ndindex(y.shape):
        members = x[(slice(None), *idx)]
        spread = sum(abs(a - b) for a in members for b in members) / (2 * m * (m - 1))
        per_point[idx] = np.mean(abs(members - y[idx])) - spread
    got = metrics.CRPS(fair=True).compute(forecast, truth)["crps_fair"]
    np.testing.assert_allclose(got.values, per_point.mean(axis=(0, 2, 3)), rtol=1e-10)


def test_fair_crps_of_member_groups_matches_brute_force() -> None:
    # 11 members in groups of 4, 4 and 3; one masked point. Only pairs from different groups count.
    forecast, truth = make_pair(shape=(2, 2, 3, 4), members=11)
    truth[1, 0, 2, 1] = np.nan
    x, y = forecast.values, truth.values
    group = np.arange(11) // 4
    per_point = np.full(y.shape, np.nan)
    for idx in np.ndindex(y.shape):
        if np.isfinite(y[idx]):
            members = x[(slice(None), *idx)]
            pairs = [(i, j) for i in range(11) for j in range(11) if group[i] != group[j]]
            spread = sum(abs(members[i] - members[j]) for i, j in pairs) / (2 * len(pairs))
            per_point[idx] = np.mean(abs(members - y[idx])) - spread
    got = metrics.CRPS(group_size=4).compute(forecast, truth)["crps_fair"]
    np.testing.assert_allclose(got.values, np.nanmean(per_point, axis=(0, 2, 3)), rtol=1e-10)
    assert "different groups of 4" in got.attrs["long_name"]


def test_fair_crps_of_groups_of_one_is_the_fair_crps_and_of_one_group_is_nan() -> None:
    forecast, truth = make_pair(members=5)
    plain = metrics.CRPS(fair=True).compute(forecast, truth)["crps_fair"]
    ones = metrics.CRPS(group_size=1).compute(forecast, truth)["crps_fair"]
    np.testing.assert_allclose(ones.values, plain.values, rtol=1e-10)
    assert np.isnan(metrics.CRPS(group_size=5).compute(forecast, truth)["crps_fair"]).all()
    with pytest.raises(ValueError, match="group_size"):
        metrics.CRPS(fair=False, group_size=2)


def test_fair_crps_of_dependent_groups_is_unbiased_only_with_pairs_across_groups() -> None:
    # Members of a group share a draw, so they are closer to one another than independent draws; every
    # member is still N(0, 1.25), whose CRPS against each truth value is known in closed form.
    rng = np.random.default_rng(3)
    shape, groups, size = (1, 1, 400, 500), 3, 4
    shared = np.repeat(rng.normal(size=(groups, *shape)), size, axis=0)
    forecast = xr.DataArray(shared + 0.5 * rng.normal(size=shared.shape), dims=(MEMBER, *DIMS))
    truth = xr.DataArray(rng.normal(0.0, 1.3, shape), dims=DIMS)
    exact = properscoring.crps_gaussian(truth.values, 0.0, np.sqrt(1.25)).mean()
    grouped = float(metrics.CRPS(group_size=size).compute(forecast, truth)["crps_fair"][0])
    plain = float(metrics.CRPS(fair=True).compute(forecast, truth)["crps_fair"][0])
    assert abs(grouped / exact - 1) < 0.01, (grouped, exact)
    assert plain / exact - 1 > 0.1, (plain, exact)


def test_crps_by_init_time_matches_brute_force_and_averages_to_the_score() -> None:
    forecast, truth = make_pair(shape=(3, 2, 4, 5), members=3)
    truth[0, 1, 2, 3] = np.nan  # one masked point: each case averages over its own valid points
    x, y = forecast.values, truth.values
    got = metrics.CRPS(fair=True, keep=(INIT_TIME,)).compute(forecast, truth)["crps_fair_by_init_time"]
    assert got.dims == (LEAD_TIME, INIT_TIME)
    for i, lead in np.ndindex(3, 2):
        per_point = [
            np.mean(abs(x[:, i, lead, a, b] - y[i, lead, a, b]))
            - abs(x[:, i, lead, a, b][:, None] - x[:, i, lead, a, b][None]).sum() / (2 * 3 * 2)
            for a, b in np.ndindex(4, 5)
            if np.isfinite(y[i, lead, a, b])
        ]
        np.testing.assert_allclose(got.values[lead, i], np.mean(per_point), rtol=1e-10)
    whole = metrics.CRPS(fair=True).compute(forecast.isel({LEAD_TIME: [0]}), truth.isel({LEAD_TIME: [0]}))
    np.testing.assert_allclose(whole["crps_fair"].values[0], got.values[0].mean(), rtol=1e-10)


def test_mse_by_init_time_matches_brute_force_and_roots_to_the_rmse() -> None:
    forecast, truth = make_pair(shape=(3, 2, 4, 5), members=3)
    truth[0, 1, 2, 3] = np.nan
    mean, y = forecast.values.mean(axis=0), truth.values
    got = metrics.MSE(keep=(INIT_TIME,)).compute(forecast, truth)["mse_by_init_time"]
    assert got.dims == (LEAD_TIME, INIT_TIME)
    for i, lead in np.ndindex(3, 2):
        np.testing.assert_allclose(
            got.values[lead, i], np.nanmean((mean[i, lead] - y[i, lead]) ** 2), rtol=1e-10
        )
    # Lead 0 has no masked point, so every case weighs the same: the root of the case mean is the RMSE.
    rmse = metrics.RMSE().compute(forecast, truth)["rmse"]
    np.testing.assert_allclose(np.sqrt(got.values[0].mean()), rmse.values[0], rtol=1e-10)


def test_fair_crps_of_one_member_is_mae() -> None:
    forecast, truth = make_pair(members=1)
    crps = metrics.CRPS(fair=True).compute(forecast, truth)["crps_fair"]
    mae = metrics.MAE().compute(forecast, truth)["mae"]
    np.testing.assert_allclose(crps.values, mae.values, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda m: arrays(np.float64, (m + 1, 3), elements=st.floats(-1e3, 1e3, allow_subnormal=False))
    )
)
def test_fair_crps_is_below_ordinary_and_both_nonnegative(values: np.ndarray) -> None:
    # Rows 0..M-1 are members, row M the truth; points on x. Fair >= 0 by the triangle inequality.
    forecast = xr.DataArray(values[:-1, None, None, :], dims=(MEMBER, LEAD_TIME, "y", "x"))
    truth = xr.DataArray(values[-1][None, None, :], dims=(LEAD_TIME, "y", "x"))
    fair = float(metrics.CRPS(fair=True).compute(forecast, truth)["crps_fair"][0])
    ordinary = float(metrics.CRPS(fair=False).compute(forecast, truth)["crps"][0])
    scale = 1e-9 * (1 + np.abs(values).max())
    assert -scale <= fair <= ordinary + scale
    assert ordinary >= -scale


# ---- identities through score_all --------------------------------------------------------------------------


def test_perfect_forecast_scores_perfectly() -> None:
    _, truth = make_pair(rain=True)
    forecast = truth.expand_dims({MEMBER: 3}).transpose(MEMBER, ...)
    ds = metrics.score_all(
        forecast.to_dataset(name="rain"), truth.to_dataset(name="rain"), thresholds=(0.5, 2.0), pools=(1, 2)
    )
    for name in ("crps_fair", "crps", "rmse", "mae", "bias", "spread", "brier"):
        np.testing.assert_allclose(ds[name].values, 0.0, atol=TOL, err_msg=name)
    for name in ("csi", "pod", "fss", "frequency_bias"):
        np.testing.assert_allclose(ds[name].values, 1.0, atol=TOL, err_msg=name)
    np.testing.assert_allclose(ds["far"].values, 0.0, atol=TOL)
    np.testing.assert_allclose(ds["power_forecast"].values, ds["power_truth"].values, rtol=1e-12)


@pytest.mark.parametrize("c", [-0.7, 1.3])
def test_constant_error_gives_that_error(c: float) -> None:
    _, truth = make_pair()
    forecast = (truth + c).expand_dims({MEMBER: 4}).transpose(MEMBER, ...)
    ds = metrics.score_all(forecast.to_dataset(name="t"), truth.to_dataset(name="t"))
    for name in ("crps_fair", "crps", "mae", "rmse"):
        np.testing.assert_allclose(ds[name].values, abs(c), rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(ds["bias"].values, c, rtol=1e-9)
    np.testing.assert_allclose(ds["spread"].values, 0.0, atol=TOL)


def test_nan_in_truth_or_member_masks_points_and_scores_equal_the_subset() -> None:
    forecast, truth = make_pair(rain=True)
    rng = np.random.default_rng(5)
    truth = truth.where(rng.random(truth.shape) > 0.2)
    forecast = forecast.copy()
    forecast[1, 0, 1, 2, 3] = np.nan  # a member NaN at a point with finite truth masks it too
    valid = truth.notnull() & forecast.notnull().all(MEMBER)
    assert bool(truth[0, 1, 2, 3].notnull())
    options = {"thresholds": (1.0,), "pools": (1,), "fss_windows": (1,)}
    ds = metrics.score_all(forecast.to_dataset(name="r"), truth.to_dataset(name="r"), **options)
    np.testing.assert_array_equal(ds["n_points"].values, per_lead(valid).sum(axis=1))
    # Not the rank histogram: its tie-breaking draws are laid over the grid, so a subset draws others.
    pointwise = ["crps_fair", "crps", "rmse", "mae", "bias", "spread", "ssr", "brier"]
    pointwise += ["reliability_count", "reliability_observed_frequency"]
    for lead in range(truth.sizes[LEAD_TIME]):
        keep = per_lead(valid)[lead]
        sub_truth = xr.DataArray(per_lead(truth)[lead][keep][None, None, :], dims=(LEAD_TIME, "y", "x"))
        members = [per_lead(forecast.isel({MEMBER: k}))[lead][keep] for k in range(forecast.sizes[MEMBER])]
        sub_forecast = xr.DataArray(np.stack(members)[:, None, None, :], dims=(MEMBER, LEAD_TIME, "y", "x"))
        sub = metrics.score_all(sub_forecast.to_dataset(name="r"), sub_truth.to_dataset(name="r"), **options)
        for name in pointwise:
            np.testing.assert_allclose(
                ds[name].isel({LEAD_TIME: lead}).values, sub[name].isel({LEAD_TIME: 0}).values, rtol=1e-10
            )


# ---- ensemble calibration ----------------------------------------------------------------------------------


def test_calibrated_ensemble_has_ssr_near_one_and_a_flat_rank_histogram() -> None:
    forecast, truth = make_pair(shape=(2, 2, 100, 100), members=5, seed=3)  # 20 000 points per lead time
    ssr = metrics.SpreadSkill().compute(forecast, truth)["ssr"]
    # Without the sqrt((M+1)/M) correction the ratio would be sqrt(5/6) = 0.91; sampling noise is ~0.01.
    np.testing.assert_allclose(ssr.values, 1.0, atol=0.03)
    freq = metrics.RankHistogram().compute(forecast, truth)["rank_histogram"]
    assert freq.sizes["rank"] == 6
    # Each frequency has standard deviation sqrt(p (1 - p) / n) = 0.0026; allow about 5 of them.
    np.testing.assert_allclose(freq.values, 1 / 6, atol=0.013)


def test_random_tie_breaking_keeps_discrete_calibrated_ensembles_flat() -> None:
    rng = np.random.default_rng(8)
    shape = (1, 1, 100, 100)
    truth = xr.DataArray(rng.poisson(1.0, shape).astype(float), dims=DIMS)
    forecast = xr.DataArray(rng.poisson(1.0, (4, *shape)).astype(float), dims=(MEMBER, *DIMS))
    freq = metrics.RankHistogram(seed=1).compute(forecast, truth)["rank_histogram"]
    np.testing.assert_allclose(freq.values, 0.2, atol=0.02)  # ties are everywhere; std ~0.004


def test_rank_histogram_matches_brute_force_and_scores() -> None:
    forecast, truth = make_pair(shape=(2, 2, 3, 4), members=3, rain=True, seed=4)
    got = metrics.RankHistogram(seed=7).compute(forecast, truth)["rank_count"]
    u = np.random.default_rng(7).random(truth.shape)
    counts = np.zeros((truth.sizes[LEAD_TIME], 4), dtype=int)
    for idx in np.ndindex(truth.shape):
        members, y = forecast.values[(slice(None), *idx)], truth.values[idx]
        ties = int(np.sum(members == y))
        counts[idx[1], int(np.sum(members < y)) + int(np.floor(u[idx] * (ties + 1)))] += 1
    np.testing.assert_array_equal(got.values, counts)
    # Without ties, the ranks are those of scores (which numbers them 1..M+1).
    forecast, truth = make_pair(members=3)
    ours = metrics.RankHistogram().compute(forecast, truth)["rank_histogram"]
    theirs = scores.probability.rank_histogram(forecast, truth, MEMBER, preserve_dims=[LEAD_TIME])
    np.testing.assert_allclose(ours.values, theirs.transpose(LEAD_TIME, "rank").values, rtol=1e-12)


# ---- categorical ------------------------------------------------------------------------------------------


def test_categorical_closed_forms_on_a_hand_made_table() -> None:
    # 10 points: hits 3, misses 2, false alarms 1, correct negatives 4 at threshold 1.
    observed = np.array([2, 2, 2, 2, 2, 0, 0, 0, 0, 0], dtype=float)
    forecast_ = np.array([2, 2, 2, 0, 0, 2, 0, 0, 0, 0], dtype=float)
    truth = xr.DataArray(observed[None, None, :], dims=(LEAD_TIME, "y", "x"))
    forecast = xr.DataArray(
        np.stack([forecast_ - 0.5, forecast_ + 0.5])[:, None, None, :], dims=(MEMBER, *truth.dims)
    )
    ds = metrics.Categorical(thresholds=(1.0,), pools=(1,)).compute(forecast, truth).squeeze()
    h, m, f, n = 3, 2, 1, 10
    random_hits = (h + m) * (h + f) / n
    assert float(ds["csi"]) == pytest.approx(h / (h + m + f))
    assert float(ds["pod"]) == pytest.approx(h / (h + m))
    assert float(ds["far"]) == pytest.approx(f / (h + f))
    assert float(ds["frequency_bias"]) == pytest.approx((h + f) / (h + m))
    assert float(ds["ets"]) == pytest.approx((h - random_hits) / (h + m + f - random_hits))
    assert float(ds["ets"]) == pytest.approx(0.25)


def test_max_pooled_categorical_scores_match_brute_force() -> None:
    forecast, truth = make_pair(shape=(2, 2, 7, 8), members=3, rain=True, seed=2)
    truth = truth.copy()
    truth[0, 1, 0, 1] = np.nan
    threshold, pools = 1.0, (1, 2, 3)
    ds = metrics.Categorical(thresholds=(threshold,), pools=pools).compute(forecast, truth)
    mean = forecast.mean(MEMBER).values
    for p in pools:
        for lead in range(2):
            table = np.zeros(4)  # hits, misses, false alarms, correct negatives
            for init in range(2):
                for i in range(0, 7 - p + 1, p):
                    for j in range(0, 8 - p + 1, p):
                        obs = truth.values[init, lead, i : i + p, j : j + p]
                        if np.isnan(obs).any():
                            continue
                        o = (obs >= threshold).any()
                        f = (mean[init, lead, i : i + p, j : j + p] >= threshold).any()
                        table[0 if o and f else 1 if o else 2 if f else 3] += 1
            h, m, fa, _ = table
            got = ds.sel(pool=p, threshold=threshold).isel({LEAD_TIME: lead})
            assert float(got["csi"]) == pytest.approx(h / (h + m + fa))
            assert float(got["pod"]) == pytest.approx(h / (h + m))
            assert float(got["far"]) == pytest.approx(fa / (h + fa))


def test_the_matched_mean_is_scored_like_the_mean_under_its_own_names() -> None:
    from dydiff_earth.probmatch import matched_mean

    forecast, truth = make_pair(shape=(2, 2, 7, 8), members=3, rain=True, seed=5)
    plain = metrics.Categorical(thresholds=(1.0, 4.0), pools=(1, 2)).compute(forecast, truth)
    matched = metrics.Categorical(thresholds=(1.0, 4.0), pools=(1, 2), summary="matched_mean")
    got = matched.compute(forecast, truth)
    scores = [str(v) for v in plain.data_vars if v != metrics.N_POINTS]
    assert set(got.data_vars) == {metrics.N_POINTS, *(f"matched_{v}" for v in scores)}
    # The same scores as the plain ones of a one-member ensemble holding the matched mean.
    summary = forecast.isel({MEMBER: slice(0, 1)}).copy(data=matched_mean(forecast.values)[None])
    again = metrics.Categorical(thresholds=(1.0, 4.0), pools=(1, 2)).compute(summary, truth)
    for name in scores:
        np.testing.assert_array_equal(got[f"matched_{name}"].values, again[name].values)
    with pytest.raises(ValueError, match="summary"):
        metrics.Categorical(thresholds=(1.0,), summary="median")


def brute_force_pooled_matched(members: np.ndarray, pool: int) -> np.ndarray:
    """Each member's window maxima, then Ebert's matched mean of them, one window at a time in loops."""
    m, height, width = members.shape
    h, w = height // pool, width // pool
    maxima = np.full((m, h, w), np.nan)
    for k in range(m):
        for i in range(h):
            for j in range(w):
                window = members[k, i * pool : (i + 1) * pool, j * pool : (j + 1) * pool]
                maxima[k, i, j] = np.nan if np.isnan(window).any() else window.max()
    out = np.full((h, w), np.nan)
    cells = [(i, j) for i in range(h) for j in range(w) if np.isfinite(maxima[:, i, j]).all()]
    pooled = sorted(v for i, j in cells for v in maxima[:, i, j])
    by_mean = sorted(cells, key=lambda c: maxima[:, c[0], c[1]].mean())
    for rank, (i, j) in enumerate(by_mean):
        out[i, j] = pooled[rank * m + m // 2]
    return out


def test_the_pooled_matched_mean_matches_the_members_window_maxima_at_each_pools_scale() -> None:
    forecast, truth = make_pair(shape=(2, 2, 8, 10), members=3, rain=True, seed=7)
    truth[0, 1, 2, 5] = np.nan  # masks one window of every pool
    pools, thresholds = (1, 2, 4), (1.0, 4.0)
    got = metrics.Categorical(thresholds, pools, summary="pooled_matched_mean").compute(forecast, truth)
    valid = np.isfinite(truth.values)
    members = np.where(valid, forecast.values, np.nan)
    for p in pools:
        for t in thresholds:
            for lead in range(2):
                table = np.zeros(4)
                for init in range(2):
                    summary = brute_force_pooled_matched(members[:, init, lead], p)
                    observed = brute_force_pooled_matched(truth.values[None, init, lead], p)
                    seen = np.isfinite(summary)
                    f, o = summary[seen] >= t, observed[seen] >= t
                    table += [(f & o).sum(), (~f & o).sum(), (f & ~o).sum(), (~f & ~o).sum()]
                h, mi, fa, _ = table
                score = got.sel(pool=p, threshold=t).isel({LEAD_TIME: lead})
                assert float(score["pooled_matched_csi"]) == pytest.approx(h / (h + mi + fa))
                assert float(score["pooled_matched_frequency_bias"]) == pytest.approx((h + fa) / (h + mi))
    # At pool 1 it is the matched mean; for one member, every summary is the member.
    matched = metrics.Categorical(thresholds, pools, summary="matched_mean").compute(forecast, truth)
    np.testing.assert_array_equal(got["pooled_matched_csi"].sel(pool=1), matched["matched_csi"].sel(pool=1))
    one = forecast.isel({MEMBER: slice(0, 1)})
    plain = metrics.Categorical(thresholds, pools).compute(one, truth)
    again = metrics.Categorical(thresholds, pools, summary="pooled_matched_mean").compute(one, truth)
    np.testing.assert_array_equal(again["pooled_matched_csi"].values, plain["csi"].values)


# ---- FSS --------------------------------------------------------------------------------------------------


def brute_force_fss(forecast: xr.DataArray, truth: xr.DataArray, threshold: float, n: int) -> np.ndarray:
    x, y = forecast.values, truth.values
    valid = ~np.isnan(y) & ~np.isnan(x).any(axis=0)
    probability = (x >= threshold).mean(axis=0)
    event = (y >= threshold).astype(float)
    out = []
    for lead in range(y.shape[1]):
        diff = ref = 0.0
        for init in range(y.shape[0]):
            for i in range(y.shape[2] - n + 1):
                for j in range(y.shape[3] - n + 1):
                    v = valid[init, lead, i : i + n, j : j + n]
                    if not v.any():
                        continue
                    pf = probability[init, lead, i : i + n, j : j + n][v].mean()
                    po = event[init, lead, i : i + n, j : j + n][v].mean()
                    diff += (pf - po) ** 2
                    ref += pf**2 + po**2
        out.append(1 - diff / ref)
    return np.array(out)


def test_fss_matches_brute_force_with_nans() -> None:
    forecast, truth = make_pair(shape=(2, 2, 6, 7), members=3, rain=True, seed=6)
    truth = truth.copy()
    truth[0, 0, 1:3, 2] = np.nan
    ds = metrics.FSS(thresholds=(0.5, 2.0), windows=(1, 3)).compute(forecast, truth)
    for threshold in (0.5, 2.0):
        for n in (1, 3):
            expected = brute_force_fss(forecast, truth, threshold, n)
            np.testing.assert_allclose(
                ds["fss"].sel(threshold=threshold, scale=n).values, expected, rtol=1e-10
            )
    # The forecast at a masked point changes nothing.
    changed = forecast.copy()
    changed[:, 0, 0, 1:3, 2] = 100.0
    again = metrics.FSS(thresholds=(0.5, 2.0), windows=(1, 3)).compute(changed, truth)
    xr.testing.assert_allclose(again["fss"], ds["fss"])


def test_fss_of_one_member_matches_scores_fss_2d() -> None:
    forecast, truth = make_pair(shape=(2, 2, 10, 12), members=1, rain=True, seed=9)
    ours = metrics.FSS(thresholds=(1.0,), windows=(3,)).compute(forecast, truth)["fss"].squeeze()
    theirs = scores.spatial.fss_2d(
        forecast.isel({MEMBER: 0}),
        truth,
        event_threshold=1.0,
        window_size=(3, 3),
        spatial_dims=("y", "x"),
        preserve_dims=[LEAD_TIME],
        threshold_operator=np.greater_equal,
    )
    np.testing.assert_allclose(ours.values, theirs.values, rtol=1e-10)


# ---- Isolated event points (speckle) ----------------------------------------------------------------------


def brute_force_isolated(field: np.ndarray, threshold: float, max_neighbours: int) -> np.ndarray:
    """Share of events with at most ``max_neighbours`` event neighbours, per lead, over all other axes."""
    events = np.nan_to_num(field, nan=-np.inf) >= threshold
    lone, total = np.zeros(field.shape[-3]), np.zeros(field.shape[-3])
    for index in np.ndindex(field.shape[:-2]):
        lead = index[-1]
        for i in range(field.shape[-2]):
            for j in range(field.shape[-1]):
                if not events[index][i, j]:
                    continue
                near = events[index][max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].sum() - 1
                lone[lead] += near <= max_neighbours
                total[lead] += 1
    return lone / total


def test_isolated_points_match_brute_force_with_nans() -> None:
    forecast, truth = make_pair(shape=(2, 3, 7, 9), members=3, rain=True, seed=12)
    truth = truth.copy()
    truth[1, 2, 2:5, 4] = np.nan
    ds = metrics.Isolated(thresholds=(0.5, 2.0), max_neighbours=2).compute(forecast, truth)
    masked = forecast.where(truth.notnull())
    for threshold in (0.5, 2.0):
        for name, field in (("isolated_forecast", masked.values), ("isolated_truth", truth.values)):
            expected = brute_force_isolated(field, threshold, 2)
            np.testing.assert_allclose(ds[name].sel(threshold=threshold).values, expected, rtol=1e-12)


def test_isolated_points_tell_speckle_from_patches() -> None:
    patch = np.zeros((1, 1, 1, 12, 12))  # member, init time, lead time, y, x
    patch[..., 3:7, 2:8] = 3.0  # one block: its corners have 3 event neighbours, nothing is lone
    speckle = np.zeros((1, 1, 1, 12, 12))
    speckle[..., ::3, ::3] = 3.0  # single points three cells apart
    truth = xr.DataArray(patch[0], dims=DIMS)
    for field, share in ((patch, 0.0), (speckle, 1.0)):
        forecast = xr.DataArray(field, dims=(MEMBER, *DIMS))
        ds = metrics.Isolated(thresholds=(1.0,)).compute(forecast, truth)
        assert ds["isolated_forecast"].item() == share
        assert ds["isolated_truth"].item() == 0.0
    nothing = metrics.Isolated(thresholds=(5.0,)).compute(xr.DataArray(patch, dims=(MEMBER, *DIMS)), truth)
    assert np.isnan(nothing["isolated_truth"].item())


# ---- Brier and reliability --------------------------------------------------------------------------------


def test_brier_and_reliability_match_brute_force() -> None:
    forecast, truth = make_pair(shape=(2, 2, 10, 10), members=5, rain=True, seed=11)
    threshold = 1.0
    brier = metrics.Brier(thresholds=(threshold,)).compute(forecast, truth)["brier"].squeeze()
    reliability = metrics.Reliability(thresholds=(threshold,), bins=5).compute(forecast, truth).squeeze()
    probability = per_lead((forecast >= threshold).mean(MEMBER))
    event = per_lead(truth >= threshold).astype(float)
    np.testing.assert_allclose(brier.values, ((probability - event) ** 2).mean(axis=1), rtol=1e-12)
    index = np.minimum(np.round(probability * 5).astype(int), 4)  # p = k/5: bin k, p = 1 in the last bin
    for b in range(5):
        inside = index == b
        np.testing.assert_array_equal(reliability["reliability_count"].isel(bin=b).values, inside.sum(axis=1))
        expected = [event[lead][inside[lead]].mean() if inside[lead].any() else np.nan for lead in range(2)]
        got = reliability["reliability_observed_frequency"].isel(bin=b).values
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(reliability["bin"].values, [0.1, 0.3, 0.5, 0.7, 0.9])


# ---- power spectrum ---------------------------------------------------------------------------------------


def test_power_spectrum_of_white_noise_is_flat_and_a_wave_peaks_at_its_wavenumber() -> None:
    forecast, truth = make_pair(shape=(4, 1, 64, 64), members=2, seed=12)
    ds = metrics.PowerSpectrum().compute(forecast, truth)
    np.testing.assert_allclose(ds["power_forecast"].values, 1.0, atol=0.2)  # variance 1 at every wavenumber
    x = np.arange(64)
    wave = np.broadcast_to(np.cos(2 * np.pi * 8 * x / 64), (1, 1, 64, 64))
    truth = xr.DataArray(wave, dims=DIMS)
    ds = metrics.PowerSpectrum().compute(truth.expand_dims({MEMBER: 1}), truth)
    assert float(ds["power_truth"].squeeze().idxmax()) == pytest.approx(8 / 64)


def test_smoothing_removes_power_at_high_wavenumbers() -> None:
    forecast, truth = make_pair(shape=(2, 1, 32, 32), members=2, seed=13)
    blurry = forecast.rolling(x=3, y=3, center=True, min_periods=1).mean()
    ds = metrics.PowerSpectrum().compute(blurry, truth).squeeze()
    high = ds["wavelength"] <= 4
    assert float(ds["power_forecast"].where(high).mean()) < 0.3 * float(ds["power_truth"].where(high).mean())


# ---- score_all and combine_systems ------------------------------------------------------------------------


def test_score_all_names_dims_and_attributes() -> None:
    forecast, truth = make_pair(rain=True)
    fc = xr.Dataset({"rain": forecast, "temp": forecast, "rain_mean": forecast.mean(MEMBER)})
    tr = xr.Dataset({"rain": truth, "temp": truth})
    ds = metrics.score_all(fc, tr, thresholds=(1.0, 2.0), pools=(1, 2), fss_windows=(3,))
    assert "rain_crps_fair" in ds and "temp_csi" in ds and "rain_mean_crps" not in ds
    assert ds["rain_csi"].dims == (LEAD_TIME, "threshold", "pool")
    assert ds["rain_fss"].dims == (LEAD_TIME, "threshold", "scale")
    assert ds["rain_rank_histogram"].dims == (LEAD_TIME, "rank")
    assert ds["rain_reliability_count"].dims == (LEAD_TIME, "threshold", "bin")
    assert ds["rain_power_truth"].dims == (LEAD_TIME, "wavenumber")
    assert ds["rain_crps_fair_by_init_time"].dims == (LEAD_TIME, INIT_TIME)
    assert ds["rain_crps"].attrs["units"] == "mm" and "long_name" in ds["rain_crps"].attrs
    assert "Ferro" in ds.attrs["references"]
    single = metrics.score_all(forecast.to_dataset(name="rain"), truth.to_dataset(name="rain"))
    assert "crps_fair" in single and "csi" not in single and "brier" not in single


def test_score_all_is_lazy_friendly_and_matches_eager() -> None:
    forecast, truth = make_pair(rain=True)
    eager = metrics.score_all(forecast.to_dataset(name="r"), truth.to_dataset(name="r"), thresholds=(1.0,))
    lazy = metrics.score_all(
        forecast.chunk({INIT_TIME: 1}).to_dataset(name="r"),
        truth.chunk({INIT_TIME: 1}).to_dataset(name="r"),
        thresholds=(1.0,),
    )
    xr.testing.assert_allclose(lazy.compute(), eager)


def test_misaligned_lead_times_are_an_error() -> None:
    forecast, truth = make_pair()
    with pytest.raises(ValueError):
        metrics.RMSE().compute(forecast, truth.assign_coords({LEAD_TIME: truth[LEAD_TIME] + 1}))


def test_combine_systems_stacks_along_system() -> None:
    forecast, truth = make_pair(rain=True)
    model = metrics.score_all(forecast.to_dataset(name="r"), truth.to_dataset(name="r"), thresholds=(1.0,))
    baseline = metrics.score_all((forecast * 0).to_dataset(name="r"), truth.to_dataset(name="r"))
    both = metrics.combine_systems({"dydiff": model, "zero": baseline})
    assert list(both[SYSTEM].values) == ["dydiff", "zero"]
    assert both["crps"].dims == (SYSTEM, LEAD_TIME)
    assert bool(both["csi"].sel({SYSTEM: "zero"}).isnull().all())
    xr.testing.assert_allclose(both["crps"].sel({SYSTEM: "dydiff"}, drop=True), model["crps"])


# ---- fuzzing ----------------------------------------------------------------------------------------------


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[xr.DataArray, xr.DataArray]:
    """Forecast and truth of any small shape, dtype and NaN pattern (whole lead times masked included)."""
    m, n, lead, ny, nx = (draw(st.integers(lo, hi)) for lo, hi in ((1, 4), (1, 3), (1, 3), (2, 6), (2, 6)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    elements = st.floats(0, 40, allow_nan=False, width=32)
    forecast = draw(arrays(np.float64, (m, n, lead, ny, nx), elements=elements)).astype(dtype)
    truth = draw(arrays(np.float64, (n, lead, ny, nx), elements=elements)).astype(dtype)
    forecast[draw(arrays(bool, forecast.shape))] = np.nan
    truth[draw(arrays(bool, truth.shape))] = np.nan
    coords = {LEAD_TIME: np.arange(lead), INIT_TIME: np.arange(n)}
    return (
        xr.DataArray(forecast, dims=(MEMBER, *DIMS), coords=coords, attrs={"units": "mm"}),
        xr.DataArray(truth, dims=DIMS, coords=coords, attrs={"units": "mm"}),
    )


@settings(max_examples=40, deadline=None)
@given(_pairs())
def test_score_all_on_any_shape_and_nan_pattern(pair: tuple[xr.DataArray, xr.DataArray]) -> None:
    """Every score per lead time, verified exactly where truth and all members are finite: NaN where no
    point is, finite and within its bounds elsewhere."""
    forecast, truth = pair
    ds = metrics.score_all(
        forecast.to_dataset(name="r"),
        truth.to_dataset(name="r"),
        thresholds=(1.0,),
        pools=(1, 2),
        fss_windows=(2,),
    )
    valid = (truth.notnull() & forecast.notnull().all(MEMBER)).sum(("init_time", "y", "x"))
    np.testing.assert_array_equal(ds["n_points"].values, valid.values)
    assert ds["crps_fair"].dims == (LEAD_TIME,) and ds["crps_fair_by_init_time"].dims == (
        LEAD_TIME,
        INIT_TIME,
    )
    scored = valid.values > 0
    for name in ("crps", "rmse", "mae"):
        assert (ds[name].values[scored] >= 0).all() and np.isnan(ds[name].values[~scored]).all(), name
    assert np.isfinite(ds["crps_fair"].values[scored]).all()
    csi = ds["csi"].values
    assert ((csi >= 0) & (csi <= 1) | np.isnan(csi)).all()
    brier = ds["brier"].values[scored]
    assert ((brier >= 0) & (brier <= 1)).all()
