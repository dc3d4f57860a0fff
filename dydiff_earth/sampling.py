"""Reverse-process solvers for Dynamical Diffusion, as plain functions over a denoiser callable.

The solver owns its loop and calls ``denoise(x_noisy, t, context) -> eps_hat`` (the
:data:`~dydiff_earth.diffusion.Denoiser` contract); masks, tiling and guidance are wrappers around that
callable. Randomness comes only from ``x_T`` and the ``randn_like`` argument, never from ``torch.randn``
here, so the caller decides how members are seeded.

In Dynamical Diffusion the noisy window is ``x_t = D_t(u_t)`` with ``D_t = D_{theta_bar_t}`` and
``u_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` an ordinary DDPM state, so every solver runs in ``u`` space between
two mixings: unmix with ``D_t^-1``, take the solver's step, remix with ``D_{t_prev}``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from dydiff_earth.diffusion import Denoiser, Schedule, temporal_mix, temporal_unmix
from dydiff_earth.errors import InputError

#: ``callback(i, t, x0_hat)`` after step ``i`` (0-based) at diffusion step ``t``.
Callback = Callable[[int, int, Tensor], None]


def _no_grad_unless_asked(solver: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A solver runs without autograd unless called with ``grad=True``, which keeps the graph through every
    network call (tuning the network on what the sampler draws: :mod:`dydiff_earth.crps_tuning`)."""

    @functools.wraps(solver)
    def run(*args: object, grad: bool = False, **kwargs: object) -> Tensor:
        with torch.set_grad_enabled(grad):
            return solver(*args, **kwargs)

    return run


def ddim_timesteps(
    timesteps: int, steps: int, spacing: Literal["leading", "trailing"] = "leading"
) -> list[int]:
    """A descending subset of ``steps`` diffusion steps out of ``timesteps``.

    ``"leading"`` is the reference spacing ``k * (T // steps) + 1`` for ``k = steps-1, ..., 0``
    (``T = 1000``, 50 steps: 981, 961, ..., 1). It starts well below ``T`` when ``steps`` is small (one step
    gives ``[1]``, a sampler that never leaves the noise). ``"trailing"`` (Lin et al. 2024) always
    starts at ``T - 1``: ``round(T - k T / steps) - 1`` for ``k = 0, ..., steps-1``.

    Raises
    ------
    InputError
        If ``steps`` is not in ``[1, timesteps]`` or ``spacing`` is unknown.
    """
    if not 1 <= steps <= timesteps:
        raise InputError(f"sampling steps must lie in [1, {timesteps}], not {steps}")
    if spacing == "leading":
        stride = timesteps // steps
        # The +1 offset of the reference keeps the last step off t = 0; it must not push the first past T-1.
        offset = 1 if (steps - 1) * stride + 1 < timesteps else 0
        return [k * stride + offset for k in range(steps - 1, -1, -1)]
    if spacing == "trailing":
        return [round(timesteps - k * timesteps / steps) - 1 for k in range(steps)]
    raise InputError(f"spacing must be 'leading' or 'trailing', not {spacing!r}")


def _check(x_T: Tensor, timesteps: Sequence[int], context: Tensor, schedule: Schedule) -> list[int]:
    """Validate the solver's inputs; return the steps as Python ints."""
    steps = [int(t) for t in timesteps]
    if not steps:
        raise InputError("timesteps must hold at least one step")
    if any(b >= a for a, b in itertools.pairwise(steps)) or steps[-1] < 0 or steps[0] >= schedule.timesteps:
        raise InputError(f"timesteps must be strictly descending in [0, {schedule.timesteps}), got {steps}")
    if x_T.dim() != 5 or context.dim() != 5 or context.shape[1] > x_T.shape[1]:
        raise InputError(
            f"expected x_T (B,S,C,H,W) and context (B,P<=S,C,H,W); got {x_T.shape}, {context.shape}"
        )
    if context.shape[0] != x_T.shape[0] or context.shape[2:] != x_T.shape[2:]:
        raise InputError(f"context {tuple(context.shape)} does not match x_T {tuple(x_T.shape)}")
    return steps


def _predict(
    denoise: Denoiser,
    x: Tensor,
    t: int,
    context: Tensor,
    schedule: Schedule,
    anchor: bool,
    clip: float | None,
) -> tuple[Tensor, Tensor]:
    """Clean-window and noise estimates ``(x0_hat, eps_hat)`` in unmixed (``u``) space at step ``t``.

    With ``D = D_{theta_bar_t}`` and ``u = D^-1(x)``: ``eps_hat = D^-1(eps_theta)`` and
    ``x0_hat = (u - sqrt(1 - a_t) eps_hat) / sqrt(a_t)``, equal to ``D^-1((x - sqrt(1 - a_t) e) / sqrt(a_t))``
    because ``D`` is linear. Anchoring replaces the context frames by the known clean context and the noise
    that, with it, reproduces their ``u`` exactly, so the context never drifts.
    """
    a = float(schedule.alpha_bar[t])
    theta = float(schedule.theta_bar[t])
    e = denoise(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), context).to(x.dtype)
    u, eps_hat = temporal_unmix(x, theta), temporal_unmix(e, theta)
    x0_hat = (u - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
    if clip is not None:
        # A safety bound on the clean estimate (in normalised units), with the noise made consistent with
        # it as in DDPM's clipped sampling; it never binds for a well-trained model.
        x0_hat = x0_hat.clamp(-clip, clip)
        eps_hat = (u - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)
    if anchor:
        p = context.shape[1]
        ctx = context.to(x.dtype)
        eps_ctx = (u[:, :p] - math.sqrt(a) * ctx) / math.sqrt(1 - a)
        x0_hat = torch.cat([ctx, x0_hat[:, p:]], dim=1)
        eps_hat = torch.cat([eps_ctx, eps_hat[:, p:]], dim=1)
    return x0_hat, eps_hat


@_no_grad_unless_asked
def sample_ddim(
    denoise: Denoiser,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    context: Tensor,
    schedule: Schedule,
    randn_like: Callable[[Tensor], Tensor] | None = None,
    eta: float = 0.0,
    anchor: bool = True,
    clip: float | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM for Dynamical Diffusion: a window of ``S`` frames from noise, given ``P`` clean context frames.

    Starts from ``x = D_{theta_first}(x_T)`` and at each step ``t -> t_prev`` forms ``(x0_hat, eps_hat)`` in
    unmixed space (see ``_predict``), then
    ``x = D_{theta_prev}(sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z)``, with
    ``a_prev = theta_prev = 1`` after the last step, which returns ``x0_hat``. ``sigma`` is DDIM's
    ``eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)`` (Song et al. 2021, Eq. 16); ``eta = 0``
    is deterministic and never draws ``z``.

    Parameters
    ----------
    denoise : Denoiser
        ``(x_noisy (B,S,C,H,W), t (B,) long, context (B,P,C,H,W)) -> eps_hat (B,S,C,H,W)``.
    x_T : Tensor
        ``(B, S, C, H, W)`` iid ``N(0, I)`` starting noise ``xi`` for all frames (mixed here).
    timesteps : sequence of int
        Strictly descending diffusion steps, e.g. :func:`ddim_timesteps`.
    context : Tensor
        ``(B, P, C, H, W)`` clean (normalised) context frames, the first ``P`` of the window.
    schedule : Schedule
    randn_like : callable, optional
        ``randn_like(x) -> N(0, I)`` noise shaped like ``x``; required when ``eta > 0``.
    eta : float
        DDIM stochasticity, ``0`` (default, deterministic) to ``1`` (DDPM-like).
    anchor : bool
        Replace the context frames' estimates by the known context at every step (default).
    clip : float, optional
        Bound ``|x0_hat| <= clip`` at every step (off by default).
    callback : callable, optional
        ``callback(i, t, x0_hat)`` after each step.
    grad : bool
        Keep autograd's graph through the whole solve (default off: sampling only).

    Returns
    -------
    Tensor
        ``(B, S, C, H, W)`` sampled window; with ``anchor`` its first ``P`` frames equal ``context``.
    """
    steps = _check(x_T, timesteps, context, schedule)
    if eta < 0 or (eta > 0 and randn_like is None):
        raise InputError(f"eta must be >= 0, and eta > 0 needs a randn_like noise source (eta = {eta})")
    x = temporal_mix(x_T, float(schedule.theta_bar[steps[0]]))
    for i, t in enumerate(steps):
        t_prev = steps[i + 1] if i + 1 < len(steps) else None
        x0_hat, eps_hat = _predict(denoise, x, t, context, schedule, anchor, clip)
        if callback is not None:
            callback(i, t, x0_hat)
        if t_prev is None:
            break
        a, a_prev = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t_prev])
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        u_prev = math.sqrt(a_prev) * x0_hat + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps_hat
        if sigma > 0 and randn_like is not None:
            u_prev = u_prev + sigma * randn_like(u_prev)
        x = temporal_mix(u_prev, float(schedule.theta_bar[t_prev]))
    return x0_hat


def _log_snr(schedule: Schedule, t: int) -> float:
    """Log signal-to-noise ``lambda_t = log(sqrt(a_t) / sqrt(1 - a_t))``, in float64."""
    a = float(schedule.alpha_bar[t])
    return 0.5 * math.log(a / (1 - a))


def logsnr_timesteps(schedule: Schedule, first: int, steps: int) -> list[int]:
    """``steps`` diffusion steps from ``first`` down to 1, evenly spaced in ``lambda_t`` (:func:`_log_snr`).

    The spacing the DPM-Solver papers recommend for few steps (Lu et al. 2022): a solver step covers
    the same change of log signal-to-noise ratio everywhere, so with the cosine schedule the steps crowd
    near both ends, where ``lambda_t`` changes fastest, instead of spreading evenly in ``t``. Each target
    ``lambda`` goes to the step whose ``lambda_t`` is nearest; steps that coincide are kept once, so
    many steps may give fewer than asked.
    """
    if not 1 <= steps <= first:
        raise InputError(f"sampling steps must lie in [1, {first}], not {steps}")
    lam = np.array([_log_snr(schedule, t) for t in range(first + 1)])  # decreasing in t
    targets = np.linspace(lam[first], lam[1], steps) if steps > 1 else lam[[first]]
    nearest = np.abs(lam[None, 1:] - targets[:, None]).argmin(axis=1) + 1
    return sorted({int(t) for t in nearest}, reverse=True)


@_no_grad_unless_asked
def sample_dpmpp_2m(
    denoise: Denoiser,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    context: Tensor,
    schedule: Schedule,
    anchor: bool = True,
    clip: float | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) for Dynamical Diffusion: the second-order multistep data-prediction solver.

    Lu et al. 2022 (arXiv 2211.01095, Algorithm 2) in unmixed space, with ``alpha = sqrt(a_t)``,
    ``sigma = sqrt(1 - a_t)``, ``lambda = log(alpha / sigma)``, ``h = lambda_prev - lambda_t`` and
    ``r = h_last / h`` (``h_last`` the step before):
    ``u_prev = (sigma_prev / sigma) u - alpha_prev expm1(-h) D``, with
    ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}`` and ``D = x0_i`` on the first step.

    Since ``u = alpha x0_i + sigma eps_i`` (``_predict`` keeps the pair consistent under clipping and
    anchoring), this is the DDIM step plus a correction,
    ``u_prev = alpha_prev x0_i + sigma_prev eps_i - alpha_prev expm1(-h) (x0_i - x0_{i-1}) / (2r)``,
    which is how it is computed: the first step is DDIM's bit for bit, and anchored context frames (equal
    clean estimates at every step) get no correction, so the context stays exactly as under DDIM. After
    the last step the clean estimate is returned, as by :func:`sample_ddim`. Deterministic: all
    randomness is in ``x_T``.

    Parameters (``grad`` too) and returns as :func:`sample_ddim` (without ``eta``).
    """
    steps = _check(x_T, timesteps, context, schedule)
    x = temporal_mix(x_T, float(schedule.theta_bar[steps[0]]))
    x0_last: Tensor | None = None
    h_last = 0.0
    for i, t in enumerate(steps):
        x0_hat, eps_hat = _predict(denoise, x, t, context, schedule, anchor, clip)
        if callback is not None:
            callback(i, t, x0_hat)
        if i + 1 == len(steps):
            break
        t_prev = steps[i + 1]
        a_prev = float(schedule.alpha_bar[t_prev])
        u_prev = math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps_hat
        h = _log_snr(schedule, t_prev) - _log_snr(schedule, t)
        if x0_last is not None:
            # (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} = x0_i + (x0_i - x0_{i-1}) / (2r), r = h_last / h.
            weight = -math.sqrt(a_prev) * math.expm1(-h) * h / (2 * h_last)
            u_prev = u_prev + weight * (x0_hat - x0_last)
        x0_last, h_last = x0_hat, h
        x = temporal_mix(u_prev, float(schedule.theta_bar[t_prev]))
    return x0_hat


__all__ = ["Callback", "ddim_timesteps", "logsnr_timesteps", "sample_ddim", "sample_dpmpp_2m"]
