"""The motion (Lagrangian) frame: motion fields from context frames, and windows mapped into the frame of
their init time and back.

Rain mostly moves. Classic nowcasting (Germann and Zawadzki 2002, MWR 130:2859; STEPS, Bowler et al. 2006)
forecasts in a frame that moves with it, so that what is left to forecast is growth, decay and uncertainty.
Here a window's frame ``k`` steps after the init time is advected ``-k`` steps along the motion field of its
context (semi-Lagrangian, pysteps), so that pure advection becomes persistence; a forecast made in that
frame is advected ``+k`` steps back. In the motion frame the departure of each frame from the init frame
is what a model learns: zero departure is extrapolation exactly.

Pure numpy (pysteps for motion and trajectories); nothing here knows about models or diffusion.
Fields are ``(..., H, W)`` with NaN where there is no data; motion fields are ``(2, H, W)`` in grid cells
per time step (x then y component, pysteps' convention).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io as _stdio
import warnings
from types import SimpleNamespace
from typing import Literal

import numpy as np
from scipy.ndimage import map_coordinates

from dydiff_earth.errors import InputError

Frame = Literal["eulerian", "persistence", "diurnal", "lagrangian"]
#: What a model forecasts: the grid as observed ("eulerian"), or departures from the init frame on the
#: grid ("persistence": zero departure is persistence), from it plus the training record's mean diurnal
#: change ("diurnal", :mod:`dydiff_earth.diurnal`), or in the motion frame ("lagrangian": extrapolation).
FRAMES: tuple[str, ...] = ("eulerian", "persistence", "diurnal", "lagrangian")
DEPARTURE_FRAMES: tuple[str, ...] = ("persistence", "diurnal", "lagrangian")

#: Rain-rate threshold (mm h-1) and the dB value given to drier or missing pixels, as in the pysteps
#: examples (``dB_transform(R, threshold=0.1, zerovalue=-15.0)``; -10 dBR is 0.1 mm h-1).
RAIN_THRESHOLD = 0.1
DB_ZERO = -15.0


def pysteps_methods(purpose: str) -> SimpleNamespace:
    """The pysteps methods used here and by the baselines, or an ``InputError`` saying what to install."""
    try:
        # pysteps prints where it found its configuration file on import; keep stdout clean for pipelines.
        with contextlib.redirect_stdout(_stdio.StringIO()):
            from pysteps import extrapolation, motion, nowcasts
            from pysteps.nowcasts.utils import compute_dilated_mask
            from pysteps.postprocessing.probmatching import nonparam_match_empirical_cdf
            from pysteps.utils.transformation import dB_transform
    except ImportError:
        raise InputError(f"{purpose} needs pysteps: pip install pysteps") from None
    # pysteps' Lucas-Kanade calls OpenCV, an optional dependency of pysteps.
    if importlib.util.find_spec("cv2") is None:
        raise InputError(
            f"{purpose} needs OpenCV for Lucas-Kanade motion: pip install opencv-python-headless"
        )
    lucas_kanade = motion.get_method("LK")

    def quiet_motion(images: np.ndarray) -> np.ndarray:
        # On smooth fields pysteps' outlier test finds too few vectors for a covariance and numpy warns
        # ("degrees of freedom <= 0"); pysteps then keeps every vector, which is the right outcome.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # Same case, other symptom: the covariance is singular; pysteps again keeps every vector.
            warnings.filterwarnings("ignore", "Singular matrix during outlier detection", UserWarning)
            return lucas_kanade(images)

    return SimpleNamespace(
        motion=quiet_motion,
        extrapolate=extrapolation.get_method("semilagrangian"),
        steps=nowcasts.get_method("steps"),
        db_transform=dB_transform,
        match_cdf=nonparam_match_empirical_cdf,
        dilated_mask=compute_dilated_mask,
    )


def to_db(ps: SimpleNamespace, rain: np.ndarray) -> np.ndarray:
    """Rain rate (mm h-1) to dBR, with dry (< 0.1 mm h-1) and missing pixels at ``DB_ZERO``."""
    db = ps.db_transform(np.array(rain, dtype=np.float64), threshold=RAIN_THRESHOLD, zerovalue=DB_ZERO)[0]
    db[~np.isfinite(db)] = DB_ZERO
    return db


def motion_field(frames: np.ndarray, *, rain: bool) -> np.ndarray:
    """Lucas-Kanade motion (pysteps) of a sequence of frames, as STEPS estimates it.

    Parameters
    ----------
    frames : np.ndarray
        ``(P, H, W)``, ``P >= 2``, oldest first; NaN where there is no data.
    rain : bool
        True for rain rates in mm h-1: motion is estimated on dBR (dry and missing at ``DB_ZERO``).
        Otherwise on the values themselves, missing pixels filled with the minimum.

    Returns
    -------
    np.ndarray
        ``(2, H, W)`` float64, x and y displacement in grid cells per time step; zero when nothing moves.
    """
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise InputError(f"motion needs at least 2 frames (P, H, W); got shape {frames.shape}")
    ps = pysteps_methods("the motion frame")
    finite = np.isfinite(frames)
    if rain:
        images = to_db(ps, frames)
    else:
        fill = float(np.nanmin(frames)) if finite.any() else 0.0
        images = np.where(finite, frames, fill).astype(np.float64)
    if np.ptp(images) == 0:
        return np.zeros((2, *frames.shape[1:]))  # a featureless field has no trackable motion
    return np.asarray(ps.motion(images), dtype=np.float64)


def displacements(velocity: np.ndarray, steps: int) -> np.ndarray:
    """Semi-Lagrangian backward trajectories (pysteps) after ``1 .. |steps|`` time steps.

    ``out[k - 1]`` is the displacement ``d`` such that the value arriving at ``x`` after ``k`` steps along
    ``velocity`` started at ``x + d`` (about ``-k v``); a negative ``steps`` integrates along ``-velocity``
    (about ``+k v``), which follows the rain back in time.

    Returns
    -------
    np.ndarray
        ``(|steps|, 2, H, W)`` float64, x then y, in grid cells.
    """
    ps = pysteps_methods("the motion frame")
    v = velocity if steps >= 0 else -velocity
    out, previous = [], None
    for _ in range(abs(steps)):
        # One step at a time from the previous trajectory: all k in one pass, as pysteps integrates them.
        _, previous = ps.extrapolate(
            None, v, 1, return_displacement=True, displacement_prev=previous, allow_nonfinite_values=True
        )
        out.append(previous)
    return np.stack(out) if out else np.zeros((0, *velocity.shape))


def warp(field: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``field`` read at ``x + displacement(x)`` (bilinear); NaN outside the grid or next to NaN.

    Parameters
    ----------
    field : np.ndarray
        ``(..., H, W)``.
    displacement : np.ndarray
        ``(2, H, W)``, x then y, in grid cells.

    Returns
    -------
    np.ndarray
        float32, the shape of ``field``.
    """
    h, w = field.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = np.stack([yy + displacement[1], xx + displacement[0]])
    flat = field.reshape(-1, h, w)
    out = np.empty(flat.shape, np.float32)
    for i, f in enumerate(flat):
        # Order 1 without prefilter: a NaN anywhere in the 2 x 2 stencil makes the result NaN, so pixels
        # that draw on missing data or on the outside are marked invalid rather than invented.
        out[i] = map_coordinates(f, coords, order=1, mode="constant", cval=np.nan, prefilter=False)
    return out.reshape(field.shape)


def to_motion_frame(window: np.ndarray, velocity: np.ndarray, init: int) -> np.ndarray:
    """Map every frame of a window into the frame of its init time.

    Frame ``s`` lies ``k = s - init`` steps from the init frame and is advected ``-k`` steps: a later frame
    is read where its rain has moved to, an earlier one where its rain will move to. Under pure advection
    by ``velocity`` every frame of the result equals the init frame.

    Parameters
    ----------
    window : np.ndarray
        ``(S, C, H, W)``, frames evenly spaced by one time step; NaN where there is no data.
    velocity : np.ndarray
        ``(2, H, W)`` motion in grid cells per time step (:func:`motion_field`).
    init : int
        Index of the init frame in the window.

    Returns
    -------
    np.ndarray
        float32 ``(S, C, H, W)``; NaN where a trajectory leaves the grid or meets missing data.
    """
    s = window.shape[0]
    back, forward = displacements(velocity, -(s - 1 - init)), displacements(velocity, init)
    out = np.empty(window.shape, np.float32)
    out[init] = window[init]
    for i in range(s):
        k = i - init
        if k > 0:
            out[i] = warp(window[i], back[k - 1])
        elif k < 0:
            out[i] = warp(window[i], forward[-k - 1])
    return out


def from_motion_frame(leads: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_motion_frame` for lead times ``1 .. N``: lead ``k`` is advected ``+k`` steps.

    Parameters
    ----------
    leads : np.ndarray
        ``(..., N, C, H, W)`` frames at lead times 1 to N, in the motion frame.
    velocity : np.ndarray
        ``(2, H, W)``.

    Returns
    -------
    np.ndarray
        float32, same shape; where a trajectory starts outside the grid the unmoved value is kept (as the
        extrapolation baseline keeps persistence there), so every covered pixel has a value.
    """
    n = leads.shape[-4]
    moved = np.empty(leads.shape, np.float32)
    for k, d in enumerate(displacements(velocity, n)):
        moved[..., k, :, :, :] = warp(leads[..., k, :, :, :], d)
    return np.where(np.isfinite(moved), moved, leads)


__all__ = [
    "DB_ZERO",
    "DEPARTURE_FRAMES",
    "FRAMES",
    "RAIN_THRESHOLD",
    "Frame",
    "displacements",
    "from_motion_frame",
    "motion_field",
    "pysteps_methods",
    "to_db",
    "to_motion_frame",
    "warp",
]
