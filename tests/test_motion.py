"""The motion (Lagrangian) frame: motion estimates, trajectories, the transform and its inverse."""

from __future__ import annotations

import numpy as np
import pytest

from dydiff_earth import motion
from dydiff_earth.errors import InputError


def blobs(frames: int, shift: tuple[float, float], size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """``(frames, H, W)`` rain (mm h-1) of three Gaussian cells moving ``shift = (dx, dy)`` cells per step."""
    ny, nx = size
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    out = np.zeros((frames, ny, nx), np.float32)
    for t in range(frames):
        for cy, cx, amp in ((14, 16, 12.0), (30, 38, 6.0), (22, 50, 9.0)):
            out[t] += amp * np.exp(-((yy - cy - shift[1] * t) ** 2 + (xx - cx - shift[0] * t) ** 2) / 18.0)
    return out


def test_lucas_kanade_finds_the_shift() -> None:
    v = motion.motion_field(blobs(4, (1.0, -0.5)), rain=True)
    rainy = blobs(1, (0, 0))[0] > 1.0
    assert v.shape == (2, 48, 64)
    assert np.median(v[0][rainy]) == pytest.approx(1.0, abs=0.15)
    assert np.median(v[1][rainy]) == pytest.approx(-0.5, abs=0.15)


def test_featureless_field_has_no_motion_and_one_frame_is_an_error() -> None:
    assert not motion.motion_field(np.zeros((3, 8, 8)), rain=True).any()
    with pytest.raises(InputError, match="at least 2 frames"):
        motion.motion_field(np.zeros((1, 8, 8)), rain=True)


def test_displacements_of_a_uniform_flow_are_k_steps() -> None:
    v = np.zeros((2, 20, 30))
    v[0], v[1] = 0.75, -0.25
    forward, backward = motion.displacements(v, 3), motion.displacements(v, -3)
    for k in range(3):
        # Backward trajectories: what arrives at x after k+1 steps came from x - (k+1) v, and reversed.
        np.testing.assert_allclose(forward[k, :, 8:12, 8:12], -(k + 1) * v[:, 8:12, 8:12], atol=1e-9)
        np.testing.assert_allclose(backward[k, :, 8:12, 8:12], (k + 1) * v[:, 8:12, 8:12], atol=1e-9)


def test_warp_marks_outside_and_missing_as_nan() -> None:
    field = np.arange(36, dtype=np.float64).reshape(6, 6)
    field[3, 3] = np.nan
    d = np.zeros((2, 6, 6))
    d[0] = 0.5  # read half a cell to the east
    out = motion.warp(field, d)
    np.testing.assert_allclose(out[0, :5], field[0, :5] + 0.5)  # bilinear
    assert np.isnan(out[:, 5]).all()  # beyond the east edge
    assert np.isnan(out[3, 2]) and np.isnan(out[3, 3]) and np.isfinite(out[3, 4])  # next to the NaN


def test_pure_advection_becomes_persistence_in_the_motion_frame() -> None:
    shift = (1.0, 0.5)
    window = blobs(8, shift)[:, None]  # (S, C, H, W)
    v = np.zeros((2, *window.shape[-2:]))
    v[0], v[1] = shift
    moved = motion.to_motion_frame(window, v, init=3)
    np.testing.assert_array_equal(moved[3], window[3])
    inner = (slice(None), 0, slice(8, 40), slice(10, 54))
    # Every frame, earlier or later, is the init frame up to interpolation error of a moving Gaussian.
    err = np.nanmax(np.abs(moved[inner] - window[3, 0, 8:40, 10:54]))
    assert err < 0.05 * window.max()
    # The raw frames differ by far more than that: the transform removed the motion.
    assert np.abs(window[7, 0] - window[3, 0]).max() > 0.5 * window.max()


def test_from_motion_frame_inverts_to_motion_frame() -> None:
    window = blobs(7, (0.6, 0.3))[:, None]
    v = motion.motion_field(window[:3, 0], rain=True)
    moved = motion.to_motion_frame(window, v, init=2)
    back = motion.from_motion_frame(moved[3:], v)
    inner = (slice(None), 0, slice(10, 38), slice(10, 54))
    # Two bilinear interpolations of a smooth field: close to the original where trajectories stay inside.
    assert np.nanmax(np.abs(back[inner] - window[3:][inner])) < 0.05 * window.max()


def test_from_motion_frame_keeps_unmoved_values_where_trajectories_start_outside() -> None:
    leads = np.ones((2, 1, 10, 10), np.float32)
    v = np.zeros((2, 10, 10))
    v[0] = 2.0  # everything moves 2 cells east per step: the western columns come from outside
    out = motion.from_motion_frame(leads, v)
    assert np.isfinite(out).all() and (out == 1).all()
