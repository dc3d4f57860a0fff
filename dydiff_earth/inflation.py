"""Spread inflation: each member's departure from the ensemble mean widened, at the scales of rain areas.

A diffusion model trained for a few CPU hours and sampled with a few deterministic solver steps draws
members that are too alike: the spread of ``radar-4km-v1`` is 0.71 of the ensemble mean's error on its
MeteoSwiss training events and 0.83 on the held-out one (docs/skill.md). Multiplicative inflation (Anderson &
Anderson 1999, the ensemble Kalman filter's remedy for the same fault) moves every member away from the
ensemble mean by a factor above 1, in the space the network samples (for rain, the normalised log1p of
the rate). Widened at every scale, the departures turn the members' rain into crumbs (lone wet points at
3.4 x the observed share on the radar model); widened only above a scale (a Gaussian low-pass of the
departure, ``scale`` cells), the members keep the structures the network drew and differ more in where
they put them. Factor and scale are properties of a trained model, measured on its training data and
recorded with its sampler (``dydiff-earth recommend --inflation --inflation-scale``).

The members are inflated in groups of :data:`GROUP_SIZE` (members 0-7, 8-15, ...), each about its own
mean, so that member ``k`` still depends only on (seed, init time, its group) and a factor measured with
one ensemble size holds for all: an ensemble that is not a whole number of groups draws the rest of its
last group and drops it. One mean for all members would not do: a member outside the members averaged
is independent of their mean's sampling error, and moved away from that mean by the factor, it carries
the error amplified and reversed (with 24 members about the mean of the first 8, the radar model's fair
CRPS was 3.5 % worse than with 8; docs/skill.md).

Inflated members of one group are not independent draws: moved away from their own mean, they differ
from one another more than independent draws from the same distribution would, so the fair CRPS of
them, which assumes independence, is optimistic (by 2.5 to 3 % on the radar model's held-out event);
members of different groups are independent, and a fair CRPS whose spread term takes only their pairs
is not (``metrics.CRPS(group_size=GROUP_SIZE)``, which ``skill`` and ``evaluate`` use for inflated
ensembles of more than one group; docs/skill.md, Independent members).

Pure numpy and scipy; nothing here knows about models or diffusion.
"""

from __future__ import annotations

import numpy as np

#: Members inflated together about their mean (the ensemble size the factors were measured with).
GROUP_SIZE = 8


def members_to_draw(n_members: int, factor: float) -> int:
    """How many members a forecast of ``n_members`` samples: whole groups when inflated."""
    return n_members if factor == 1 else -(-n_members // GROUP_SIZE) * GROUP_SIZE


def describe(factor: float, scale: float) -> str:
    """The setting in words, as forecasts, skill reports and ``info`` show it."""
    if factor == 1:
        return "1 (as sampled)"
    if not scale:
        return f"{factor:g} at all scales"
    return f"{factor:g} above {scale:g} grid cell" + ("" if scale == 1 else "s")


def inflate(
    members: np.ndarray, factor: float, scale: float = 0.0, valid: np.ndarray | None = None
) -> np.ndarray:
    """``member + (factor - 1) * G(member - mean)``, ``mean`` over the member's group of :data:`GROUP_SIZE`.

    Parameters
    ----------
    members : np.ndarray
        ``(M, ..., H, W)``, finite, ``M`` a multiple of :data:`GROUP_SIZE` unless ``factor`` is 1.
    factor : float
        Positive; 1 returns ``members`` unchanged, above 1 widens the ensemble, below narrows it.
    scale : float
        ``G``: a Gaussian low-pass over the last two axes with this standard deviation in grid cells
        (edges: the nearest cell repeated); 0 is the identity, ``mean + factor * (member - mean)``.
    valid : np.ndarray, optional
        Boolean, broadcastable to one member (``members.shape[1:]``): the points whose departures ``G``
        averages, ``G(d v) / G(v)`` (a normalised convolution). Where the data are invalid the network's
        members are unconstrained and depart from their mean far more than where they are valid; left
        in, they would widen the members next to them. Points with no valid point within reach of ``G``
        are not widened. Default: every point.

    Returns
    -------
    np.ndarray
        float32, the shape of ``members``.
    """
    from scipy.ndimage import gaussian_filter

    if not factor > 0 or not scale >= 0:
        raise ValueError(f"inflation factor must be positive and its scale >= 0, got {factor}, {scale}")
    members = np.asarray(members, np.float32)
    if factor == 1:
        return members
    if len(members) % GROUP_SIZE:
        raise ValueError(f"inflation needs whole groups of {GROUP_SIZE} members, got {len(members)}")
    # One float32 array beyond the members (a global grid's ensemble is 0.5 GiB): filtered in place
    # (scipy filters line by line through a buffer), then turned into the result.
    groups = members.reshape(-1, GROUP_SIZE, *members.shape[1:])
    mean = groups.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    departure = (groups - mean).reshape(members.shape)
    if scale > 0:
        sigma = (0,) * (members.ndim - 2) + (scale, scale)
        if valid is not None:
            weight = np.broadcast_to(np.asarray(valid, np.float32), members.shape[1:])
            departure *= weight
            reach = gaussian_filter(weight, sigma=sigma[1:], mode="nearest")
        gaussian_filter(departure, sigma=sigma, mode="nearest", output=departure)
        if valid is not None:
            np.divide(departure, reach, out=departure, where=reach > 1e-6)
            departure[:, reach <= 1e-6] = 0.0
    departure *= np.float32(factor - 1)
    departure += members
    return departure


__all__ = ["GROUP_SIZE", "describe", "inflate", "members_to_draw"]
