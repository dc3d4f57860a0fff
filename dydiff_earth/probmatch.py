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

Pure numpy (pysteps' empirical CDF matching); nothing here knows about models or diffusion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dydiff_earth.data import VariableSpec
from dydiff_earth.motion import pysteps_methods

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


__all__ = ["MATCHINGS", "match_cdf", "precipitation_channels"]
