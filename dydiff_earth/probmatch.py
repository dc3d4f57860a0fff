"""Probability matching: each member's rain field given the values of the last observation, ranks kept.

A diffusion model trained for a few CPU hours places rain well but gets its amounts wrong in a systematic
way: too little at the first lead times, cores washed out, drizzle where it is dry. STEPS (Bowler et al.
2006; pysteps' ``probmatching_method="cdf"``) corrects the same weakness of its own noise cascade by
giving every forecast field the distribution of the observed field at the init time: the forecast keeps
its ranks (where rain is heavier or lighter, where it is dry), the observation supplies the amounts.
Drizzle in dry areas is thinned (the driest ranks take the observation's dry values), not removed.

The cost is the growth and decay of the whole domain's rain distribution, which matching holds at its
init-time value; what the model forecasts of where rain grows and decays stays. Each member is matched
on its own, so that member ``k`` never depends on the ensemble size.

The same drizzle is what STEPS's precipitation mask is for (pysteps' ``mask_method="incremental"``): rain
at lead time ``k`` only within ``k`` cells of the rain observed at the init time, fading over a rim beyond
(:func:`rain_mask`). Applied before matching, it sends the observed amounts to the rain areas instead of
to scattered pixels in dry ones.

The same idea summarises an ensemble in one map (:func:`matched_mean`, Ebert 2001): the ensemble mean's
pattern given the pooled members' amounts, which keeps the heavy rain that the plain mean averages away.

Pure numpy (pysteps' empirical CDF matching and dilated mask); nothing here knows about models or
diffusion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dydiff_earth.data import VariableSpec
from dydiff_earth.motion import RAIN_THRESHOLD, from_motion_frame, pysteps_methods

#: What a forecast does to its members' precipitation-like channels: ``cdf`` matches their distribution
#: to the last observation's, ``none`` leaves them as sampled.
MATCHINGS = ("cdf", "none")


def precipitation_channels(variables: Sequence[VariableSpec]) -> list[int]:
    """The channels matched: precipitation-like ones (``log1p``: non-negative, dry at exactly zero)."""
    return [c for c, spec in enumerate(variables) if spec.transform == "log1p"]


def match_cdf(members: np.ndarray, observed: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """Give each member, lead time and listed channel the values of ``observed``, keeping its ranks.

    Parameters
    ----------
    members : np.ndarray
        ``(M, N, C, H, W)`` in physical units (rain rates >= 0, exact zeros where dry).
    observed : np.ndarray
        ``(C, H, W)``, the last observed frame; NaN where there is no data.
    channels : Sequence[int]
        The channels to match (precipitation-like ones); the others are returned unchanged.

    Returns
    -------
    np.ndarray
        float32, the shape of ``members``. Only points finite in both are matched, against the observed
        values at those same points; a member's dry points stay dry, and where the observation is wetter
        than the member, its lightest observed values are taken as dry (pysteps' convention).
    """
    match = pysteps_methods("probability matching").match_cdf
    out = np.array(members, dtype=np.float32)
    for c in channels:
        seen = np.isfinite(observed[c])
        for member in out:
            for field in member[:, c]:  # views: matched in place
                points = seen & np.isfinite(field)
                if points.any():
                    field[points] = match(field[points], observed[c][points])
    return out


def matched_mean(members: np.ndarray) -> np.ndarray:
    """The probability-matched ensemble mean (Ebert 2001): the mean's pattern with the members' amounts.

    The ensemble mean puts rain where the members agree but averages their cores away; a map of heavy
    rain drawn from it misses most of them. This keeps the mean's ranks (where rain is heavier or
    lighter) and gives them the amounts of the pooled members: of the ``M x P`` member values at a
    field's ``P`` points, sorted, every ``M``-th (the middle of each group of ``M``), heaviest to the
    point where the mean is heaviest. One member is returned as it is.

    Parameters
    ----------
    members : np.ndarray
        ``(M, ..., H, W)``; each field (every index of the middle axes) is matched on its own, over the
        points finite in every member.

    Returns
    -------
    np.ndarray
        float32 ``(..., H, W)``; NaN where a member is NaN.
    """
    m = np.asarray(members, np.float32)
    n = len(m)
    flat = m.reshape(n, -1, m.shape[-2] * m.shape[-1])
    out = np.full(flat.shape[1:], np.nan, np.float32)
    for i in range(flat.shape[1]):
        field = flat[:, i]
        points = np.flatnonzero(np.isfinite(field).all(axis=0))
        if points.size:
            values = field[:, points]
            order = np.argsort(values.mean(axis=0, dtype=np.float64), kind="stable")
            out[i, points[order]] = np.sort(values, axis=None)[n // 2 :: n]
    return out.reshape(m.shape[1:])


#: Width in cells of the rim over which the rain mask falls from 1 to 0 (pysteps' default ``mask_rim``).
MASK_RIM = 10


def rain_mask(observed: np.ndarray, lead_times: int, velocity: np.ndarray | None = None) -> np.ndarray:
    """Where each lead time may rain: weights in [0, 1] that a member's rain rates are multiplied by.

    Lead time ``k`` (1 to ``lead_times``) keeps its rain within ``k`` cells of the rain observed at the init
    time (at least 0.1 mm h-1): rain may spread by one cell per time step, STEPS's growth of its mask
    (pysteps: 1 km per minute, one 4 km cell per 5-minute step). Beyond, the weight falls to 0 over
    :data:`MASK_RIM` cells (pysteps' ``compute_dilated_mask``). With a motion field the mask is grown in
    the motion frame and moved with the rain (:func:`dydiff_earth.motion.from_motion_frame`), so that fast
    rain does not run out of it; pysteps instead regrows the mask from each step's forecast.

    Parameters
    ----------
    observed : np.ndarray
        ``(H, W)`` rain rate at the init time; NaN where there is no data (dry for the mask).
    lead_times : int
        ``N``.
    velocity : np.ndarray, optional
        ``(2, H, W)`` motion in cells per time step.

    Returns
    -------
    np.ndarray
        float32 ``(N, H, W)``; all 0 where nothing rains at the init time.
    """
    from scipy.ndimage import binary_dilation, generate_binary_structure

    dilated_mask = pysteps_methods("the rain mask").dilated_mask
    cross = generate_binary_structure(2, 1)
    wet = np.nan_to_num(observed) >= RAIN_THRESHOLD
    out = np.zeros((lead_times, *observed.shape), np.float32)
    if wet.any():
        for k in range(lead_times):
            out[k] = dilated_mask(wet, cross, MASK_RIM)  # wet grown k + 1 cells, then the rim
            wet = binary_dilation(wet, cross)
    if velocity is not None:
        out = from_motion_frame(out[:, None], velocity)[:, 0]
    return out


__all__ = ["MASK_RIM", "MATCHINGS", "match_cdf", "matched_mean", "precipitation_channels", "rain_mask"]
