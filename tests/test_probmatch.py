"""Probability matching against brute force: the observed values, put where the member's ranks say; the rain
mask against distances counted cell by cell."""

from __future__ import annotations

import numpy as np
import pytest

from dydiff_earth.probmatch import MASK_RIM, match_cdf, matched_mean, rain_mask


def _brute_force(field: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each value replaced by the target value of the same rank (counting the values below it)."""
    ranked = np.sort(target)
    return np.array([ranked[(field < v).sum()] for v in field])


def test_each_member_gets_the_observed_values_in_its_own_ranks() -> None:
    rng = np.random.default_rng(0)
    observed = rng.gamma(0.6, 2.0, (2, 12, 10)).astype(np.float32) + np.float32(0.1)  # wet everywhere
    observed[0, :3, :4] = np.nan  # no data
    members = rng.gamma(1.0, 1.0, (3, 2, 2, 12, 10)).astype(np.float32) + np.float32(0.01)
    out = match_cdf(members, observed, [0])
    np.testing.assert_array_equal(out[:, :, 1], members[:, :, 1])  # channel not listed
    np.testing.assert_array_equal(out[..., 0, :3, :4], members[..., 0, :3, :4])  # no observation there
    seen = np.isfinite(observed[0])
    for m in range(3):
        for k in range(2):
            expected = _brute_force(members[m, k, 0][seen], observed[0][seen])
            np.testing.assert_array_equal(out[m, k, 0][seen], expected)


def test_dry_stays_dry_and_a_wetter_observation_loses_its_lightest_rain() -> None:
    observed = np.arange(1, 101, dtype=np.float32).reshape(1, 10, 10)  # wet everywhere, 1 to 100
    member = np.zeros((1, 1, 1, 10, 10), np.float32)
    member[..., 5:, :] = np.arange(50, dtype=np.float32).reshape(5, 10) + 1  # half dry, 1 to 50
    out = match_cdf(member, observed, [0])[0, 0, 0]
    # The member keeps its dry half; its wet half gets the heaviest half of the observed values, in order.
    assert (out[:5] == 1).all()  # the observation's driest value stands for dry
    np.testing.assert_array_equal(out[5:].ravel(), np.arange(51, 101, dtype=np.float32))


def test_a_dry_observation_makes_a_dry_forecast() -> None:
    members = np.random.default_rng(1).gamma(1.0, 1.0, (2, 3, 1, 8, 8)).astype(np.float32)
    assert (match_cdf(members, np.zeros((1, 8, 8), np.float32), [0]) == 0).all()


def _mask_brute_force(wet: np.ndarray, k: int) -> np.ndarray:
    """1 within ``k`` steps between edge neighbours of a wet cell, then down by 1 / (rim + 1) per step."""
    cells = np.argwhere(wet)
    rows, cols = np.indices(wet.shape)
    steps = np.min([np.abs(rows - r) + np.abs(cols - c) for r, c in cells], axis=0)
    return np.clip((k + MASK_RIM + 1 - steps) / (MASK_RIM + 1), 0.0, 1.0)


def test_rain_mask_grows_one_cell_per_lead_time_then_fades_over_the_rim() -> None:
    observed = np.zeros((40, 44), np.float32)
    observed[10, 12] = 3.0
    observed[25:28, 30:33] = 0.5
    observed[5, 40] = 0.05  # drier than 0.1 mm h-1: not rain
    observed[30:, :4] = np.nan  # no data: not rain
    masks = rain_mask(observed, 4)
    assert masks.shape == (4, 40, 44) and masks.dtype == np.float32
    for k in range(4):
        np.testing.assert_allclose(masks[k], _mask_brute_force(observed >= 0.1, k + 1), atol=1e-6)


def test_rain_mask_moves_with_the_rain() -> None:
    observed = np.zeros((40, 60), np.float32)
    observed[18:22, 10:14] = 2.0
    velocity = np.zeros((2, 40, 60), np.float32)
    velocity[0] = 2.0  # 2 cells east per time step
    moved, still = rain_mask(observed, 3, velocity), rain_mask(observed, 3)
    for k in range(3):
        shift = 2 * (k + 1)
        np.testing.assert_allclose(moved[k][:, shift:], still[k][:, :-shift], atol=1e-6)


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_rain_mask_of_a_dry_or_missing_observation_is_zero(fill: float) -> None:
    assert not rain_mask(np.full((8, 9), fill, np.float32), 2).any()


def test_the_matched_mean_puts_the_pooled_members_values_in_the_ranks_of_the_mean() -> None:
    rng = np.random.default_rng(4)
    members = rng.gamma(0.5, 2.0, (4, 2, 6, 5)).astype(np.float32)
    members[2, 1, 0, :2] = np.nan  # a member without data at two points of the second field
    out = matched_mean(members)
    for k in range(2):
        field = members[:, k].reshape(4, -1)
        points = [p for p in range(30) if np.isfinite(field[:, p]).all()]
        pooled = sorted(field[:, points].ravel())
        middles = [pooled[4 * r + 2] for r in range(len(points))]  # the middle of each group of 4
        means = {p: field[:, p].mean() for p in points}
        for r, p in enumerate(sorted(points, key=lambda q: means[q])):  # r-th lightest mean
            assert out[k].ravel()[p] == pytest.approx(middles[r])
        assert np.isnan(out[k].ravel()[[p for p in range(30) if p not in points]]).all()
    # The members' heavy values survive where the plain mean would average them away.
    assert np.nanmax(out) > np.nanmax(np.nanmean(members, axis=0))
    np.testing.assert_array_equal(matched_mean(members[:1]), members[0])
