"""Spread inflation against its definition, member by member: each member moved away from the mean of its
group of eight by the factor, so that the spread about that mean grows by exactly the factor; above a
scale, against a Gaussian low-pass summed point by point."""

from __future__ import annotations

import numpy as np
import pytest

from dydiff_earth.inflation import GROUP_SIZE, describe, inflate, members_to_draw


def test_each_member_moves_away_from_its_group_mean_by_the_factor() -> None:
    rng = np.random.default_rng(0)
    members = rng.normal(size=(3 * GROUP_SIZE, 3, 2, 5, 4)).astype(np.float32)
    out = inflate(members, 1.75)
    for g in range(3):
        group = members[g * GROUP_SIZE : (g + 1) * GROUP_SIZE].astype(np.float64)
        mean = sum(group) / GROUP_SIZE  # summed member by member
        for k in range(g * GROUP_SIZE, (g + 1) * GROUP_SIZE):
            np.testing.assert_allclose(out[k], mean + 1.75 * (members[k] - mean), rtol=1e-5, atol=1e-5)
        # Each group keeps its mean and its spread about it grows by the factor.
        inflated = out[g * GROUP_SIZE : (g + 1) * GROUP_SIZE]
        np.testing.assert_allclose(inflated.mean(0), mean, atol=1e-5)
        np.testing.assert_allclose(inflated.std(0), 1.75 * group.std(0), rtol=1e-4)
    assert out.dtype == np.float32


def _low_pass_at(field: np.ndarray, i: int, j: int, sigma: float) -> float:
    """The Gaussian-weighted mean of ``field`` around ``(i, j)``, summed cell by cell (interior points)."""
    radius = int(4 * sigma + 0.5)  # scipy's truncation at 4 standard deviations
    total = weight = 0.0
    for di in range(-radius, radius + 1):
        for dj in range(-radius, radius + 1):
            w = np.exp(-(di**2) / (2 * sigma**2)) * np.exp(-(dj**2) / (2 * sigma**2))
            total += w * field[i + di, j + dj]
            weight += w
    return total / weight


def test_above_a_scale_only_the_low_pass_of_the_departure_is_widened() -> None:
    rng = np.random.default_rng(3)
    members = rng.normal(size=(8, 2, 1, 24, 26)).astype(np.float32)
    out = inflate(members, 3.0, scale=2.0)
    mean = members.astype(np.float64).mean(0)
    for k, t, i, j in [(0, 0, 12, 13), (5, 1, 9, 17), (7, 0, 15, 10)]:
        departure = members[k, t, 0] - mean[t, 0]
        expected = members[k, t, 0, i, j] + 2.0 * _low_pass_at(departure, i, j, 2.0)
        np.testing.assert_allclose(out[k, t, 0, i, j], expected, rtol=1e-4, atol=1e-4)
    # A departure uniform in space is widened by the factor; a checkerboard (the grid scale) is kept.
    uniform = (
        np.zeros((8, 1, 1, 24, 26), np.float32) + np.arange(8, dtype=np.float32)[:, None, None, None, None]
    )
    np.testing.assert_allclose(inflate(uniform, 3.0, scale=2.0), 3.5 + 3.0 * (uniform - 3.5), rtol=1e-5)
    board = 2.0 * (np.indices((24, 26)).sum(0) % 2) - 1.0
    grainy = np.stack([board * (k - 3.5) for k in range(8)])[:, None, None].astype(np.float32)
    inside = (..., slice(8, -8), slice(8, -8))  # away from the edges, where the cell repeated breaks it
    np.testing.assert_allclose(inflate(grainy, 3.0, scale=2.0)[inside], grainy[inside], atol=1e-3)


def test_departures_at_invalid_points_widen_no_valid_point() -> None:
    """With a validity mask the low-pass averages valid departures only: ``G(d v) / G(v)``."""
    rng = np.random.default_rng(4)
    members = rng.normal(size=(8, 2, 1, 24, 26)).astype(np.float32)
    valid = np.ones((2, 1, 24, 26), bool)
    valid[:, :, :, :9] = False  # a third of the grid, as outside a radar's coverage
    out = inflate(members, 3.0, scale=2.0, valid=valid)
    wild = members.copy()
    wild[..., ~valid] *= 50.0  # whatever the members hold where the data are invalid
    np.testing.assert_allclose(
        inflate(wild, 3.0, scale=2.0, valid=valid)[..., valid], out[..., valid], rtol=1e-5
    )
    assert not np.allclose(inflate(wild, 3.0, scale=2.0)[..., valid], out[..., valid], rtol=1e-3)
    mean = members.astype(np.float64).mean(0)
    mask = valid[0, 0].astype(float)
    for k, t, i, j in [(0, 0, 12, 11), (4, 1, 10, 9), (7, 1, 14, 17)]:  # next to the invalid band and away
        departure = (members[k, t, 0] - mean[t, 0]) * mask
        low = _low_pass_at(departure, i, j, 2.0) / _low_pass_at(mask, i, j, 2.0)
        np.testing.assert_allclose(
            out[k, t, 0, i, j], members[k, t, 0, i, j] + 2.0 * low, rtol=1e-4, atol=1e-4
        )
    # Far from any valid point nothing is widened; with every point valid the mask changes nothing.
    np.testing.assert_array_equal(out[..., :, :1], members[..., :, :1])
    np.testing.assert_allclose(
        inflate(members, 3.0, 2.0, np.ones_like(valid)), inflate(members, 3.0, 2.0), atol=1e-6
    )


def test_a_factor_of_one_is_the_members_as_sampled_at_any_size() -> None:
    members = np.random.default_rng(1).normal(size=(3, 2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(inflate(members, 1.0), members)
    assert members_to_draw(3, 1.0) == 3
    assert describe(1.0, 2.0) == "1 (as sampled)" and describe(3.0, 2.0) == "3 above 2 grid cells"
    assert describe(1.75, 0.0) == "1.75 at all scales"
    assert describe(2.5, 1.0) == "2.5 above 1 grid cell"
    assert members_to_draw(3, 2.0) == 8 and members_to_draw(12, 2.0) == 16 and members_to_draw(24, 2.0) == 24


def test_a_member_depends_on_its_own_group_only() -> None:
    members = np.random.default_rng(2).normal(size=(16, 1, 1, 3, 3)).astype(np.float32)
    both = inflate(members, 1.5)
    np.testing.assert_array_equal(inflate(members[:8], 1.5), both[:8])
    np.testing.assert_array_equal(inflate(members[8:], 1.5), both[8:])


@pytest.mark.parametrize(
    ("size", "factor", "scale"),
    [(4, 1.5, 0.0), (12, 1.5, 0.0), (8, 0.0, 0.0), (8, -1.0, 0.0), (8, float("nan"), 0.0), (8, 2.0, -1.0)],
)
def test_a_partial_group_or_a_factor_that_is_not_positive_is_refused(
    size: int, factor: float, scale: float
) -> None:
    with pytest.raises(ValueError, match=r"whole groups|positive"):
        inflate(np.zeros((size, 1, 1, 2, 2), np.float32), factor, scale)
