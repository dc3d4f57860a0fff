"""Dynamical Diffusion: schedules, temporal mixing ``D`` and its inverse, the forward process and the loss.

Dynamical Diffusion (Guo et al., ICLR 2025, arXiv 2503.00951) diffuses a window of frames so that each
noisy frame also carries the previous noisy frame: the iid forward process ``u_t`` of DDPM is passed through
a causal, linear temporal mixing ``D_w`` whose weight ``w = theta_bar_t`` follows the noise level. Every
function here is pure; the reverse process (sampling loop) lives in :mod:`dydiff_earth.sampling`.

Shapes: windows are ``(B, S, C, H, W)`` (batch, frames, channels, height, width), with ``S = P + L`` frames,
the ``P`` context frames first. Diffusion steps ``t`` are integers in ``[0, T)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dydiff_earth.config import DiffusionConfig
from dydiff_earth.errors import InputError

#: ``denoise(x_noisy (B,S,C,H,W), t (B,) long, context (B,P,C,H,W)) -> eps_hat (B,S,C,H,W)``
Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]

#: beta_t is clipped here so that the last steps stay invertible (Nichol and Dhariwal 2021, Sec. 3.2).
MAX_BETA = 0.999


@dataclass(frozen=True, eq=False)
class Schedule:
    """A frozen diffusion schedule.

    Attributes
    ----------
    alpha_bar : Tensor
        ``(T,)`` float64 on the CPU: cumulative signal fraction ``alpha_bar_t``, decreasing in ``t``.
    gamma_ratio : float
        ``r`` in ``theta_bar_t = r * alpha_bar_t + (1 - r)``; ``0`` gives plain diffusion.
    """

    alpha_bar: Tensor
    gamma_ratio: float

    @property
    def timesteps(self) -> int:
        """Number of diffusion steps ``T``."""
        return int(self.alpha_bar.shape[0])

    @property
    def theta_bar(self) -> Tensor:
        """``(T,)`` float64 temporal schedule ``theta_bar_t``."""
        return self.gamma_ratio * self.alpha_bar + (1.0 - self.gamma_ratio)


def cosine_betas(timesteps: int, s: float = 0.008) -> Tensor:
    """Betas of the cosine schedule, ``(T,)`` float64.

    ``beta_t = min(1 - f(t + 1) / f(t), 0.999)`` with ``f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2``
    (Nichol and Dhariwal 2021, Eq. 17), so that ``alpha_bar_t = f(t + 1) / f(0)`` wherever no beta is clipped.
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


def make_schedule(cfg: DiffusionConfig) -> Schedule:
    """The cosine schedule and temporal schedule of ``cfg``.

    Raises
    ------
    InputError
        If ``timesteps < 1`` or ``gamma_ratio`` is outside ``[0, 1]``.
    """
    if cfg.timesteps < 1:
        raise InputError(f"timesteps must be at least 1, not {cfg.timesteps}")
    if not 0.0 <= cfg.gamma_ratio <= 1.0:
        raise InputError(f"gamma_ratio must lie in [0, 1], not {cfg.gamma_ratio}")
    alpha_bar = torch.cumprod(1 - cosine_betas(cfg.timesteps, cfg.cosine_s), dim=0)
    return Schedule(alpha_bar=alpha_bar, gamma_ratio=float(cfg.gamma_ratio))


def alpha_bar_at(schedule: Schedule, t: Tensor) -> Tensor:
    """``alpha_bar_t`` for steps ``t`` (LongTensor ``(B,)``), as ``(B,)`` float64 on the CPU."""
    return schedule.alpha_bar[t.long().cpu()]


def theta_bar_at(schedule: Schedule, t: Tensor) -> Tensor:
    """``theta_bar_t = r alpha_bar_t + (1 - r)`` for steps ``t`` (``(B,)``), as ``(B,)`` float64 on the CPU.

    With ``r = 0`` this is exactly ``1.0``, which makes :func:`temporal_mix` the identity bit for bit.
    """
    return schedule.gamma_ratio * alpha_bar_at(schedule, t) + (1.0 - schedule.gamma_ratio)


def _coef(values: Tensor | float, like: Tensor) -> Tensor:
    """Per-sample coefficients ``(B,)`` (or a scalar) shaped ``(B, 1, ...)`` to broadcast against ``like``.

    The arithmetic that made ``values`` stays in float64; only the result is rounded to the data's dtype.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    return v.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def temporal_mix(x: Tensor, theta_bar: Tensor | float) -> Tensor:
    """Causal temporal mixing ``D_w`` along frames, ``w = theta_bar``.

    ``D(z)^1 = z^1`` and ``D(z)^s = sqrt(1 - w) D(z)^(s-1) + sqrt(w) z^s``: for iid unit-variance ``z`` every
    frame keeps unit variance and frames ``k`` apart correlate as ``(1 - w)^(k/2)``.

    Parameters
    ----------
    x : Tensor
        ``(B, S, C, H, W)``.
    theta_bar : Tensor or float
        ``(B,)`` weights ``w`` in ``(0, 1]``, one per sample; ``w = 1`` is the identity.

    Returns
    -------
    Tensor
        ``(B, S, C, H, W)``.
    """
    w = torch.as_tensor(theta_bar, dtype=torch.float64)
    carry, fresh = _coef(torch.sqrt(1 - w), x[:, 0]), _coef(torch.sqrt(w), x[:, 0])
    frames = [x[:, 0]]
    for s in range(1, x.shape[1]):
        frames.append(carry * frames[-1] + fresh * x[:, s])
    return torch.stack(frames, dim=1)


def temporal_unmix(x: Tensor, theta_bar: Tensor | float) -> Tensor:
    """The inverse ``D_w^-1`` of :func:`temporal_mix`.

    ``z^1 = y^1`` and ``z^s = (y^s - sqrt(1 - w) y^(s-1)) / sqrt(w)``; ``x`` is ``(B, S, C, H, W)`` and
    ``theta_bar`` is ``(B,)`` (or a float). Returns ``(B, S, C, H, W)``.
    """
    w = torch.as_tensor(theta_bar, dtype=torch.float64)
    carry, fresh = _coef(torch.sqrt(1 - w), x), _coef(torch.sqrt(w), x)
    return torch.cat([x[:, :1], (x[:, 1:] - carry * x[:, :-1]) / fresh], dim=1)


def q_sample(schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Forward process ``x_t = D_{theta_bar_t}(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps)``.

    Parameters
    ----------
    schedule : Schedule
    x0, eps : Tensor
        ``(B, S, C, H, W)`` clean window and iid unit noise.
    t : Tensor
        ``(B,)`` LongTensor, one step per sample shared by all its frames.

    Returns
    -------
    Tensor
        ``(B, S, C, H, W)`` noisy window.
    """
    ab = alpha_bar_at(schedule, t)
    u = _coef(torch.sqrt(ab), x0) * x0 + _coef(torch.sqrt(1 - ab), x0) * eps
    return temporal_mix(u, theta_bar_at(schedule, t))


def frame_weights(frames: int, context: int, target_weight: float, lead_power: float = 0.0) -> Tensor:
    """``(S,)`` float64 loss weights, mean ``1``: ``1`` on context frames, ``target_weight * k**lead_power``
    on the target ``k`` steps after the last context frame."""
    if target_weight < 0 or (target_weight == 0 and context == 0):
        raise InputError(f"target_weight must be positive, not {target_weight}")
    if lead_power < 0:
        raise InputError(f"lead_weight_power must be 0 or more, not {lead_power}")
    w = torch.ones(frames, dtype=torch.float64)
    w[context:] = target_weight * torch.arange(1, frames - context + 1, dtype=torch.float64) ** lead_power
    return w / w.mean()


def _weighted_mean(err: Tensor, context: int, cfg: DiffusionConfig, valid: Tensor | None) -> Tensor:
    """Mean of ``err`` ``(B, S, C, H, W)`` over frames weighted by ``frame_weights`` and valid pixels."""
    if cfg.target_weight == 1.0 and cfg.lead_weight_power == 0.0 and valid is None:
        # The unweighted path is a plain mean so that r = 0 reproduces the DDPM loss bit for bit.
        return err.mean()
    weights = frame_weights(err.shape[1], context, cfg.target_weight, cfg.lead_weight_power)
    w = _coef(weights, err[0]).reshape(1, -1, 1, 1, 1)
    mask = torch.ones_like(err[:, :, :1]) if valid is None else valid.to(err.dtype)
    weight = (w * mask).expand_as(err)
    # A batch without a single valid pixel gives 0, not NaN, so that it cannot poison the optimiser.
    return (weight * err).sum() / weight.sum().clamp_min(torch.finfo(err.dtype).tiny)


def diffusion_loss(
    denoise: Denoiser,
    x0: Tensor,
    *,
    context: Tensor,
    schedule: Schedule,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """The Dynamical Diffusion training loss of one batch.

    Draws ``t ~ U{0, ..., T-1}`` per sample, then ``eps ~ N(0, I)`` (in that order, from ``generator``),
    forms ``x_t`` with :func:`q_sample` and compares the prediction ``eps_theta(x_t, t, context)`` with the
    noise: ``cfg.loss = "unmixed"`` gives ``|| D^-1(eps_theta) - eps ||^2``, ``"mixed"`` gives the reference
    ``|| eps_theta - D(eps) ||^2`` of the Dynamical Diffusion paper, both with ``D = D_{theta_bar_t}``.
    With ``gamma_ratio = 0`` both equal the DDPM loss ``|| eps_theta - eps ||^2`` exactly.

    Parameters
    ----------
    denoise : Denoiser
        ``(x_noisy (B,S,C,H,W), t (B,), context (B,P,C,H,W)) -> (B,S,C,H,W)``. ``valid`` is not passed
        on: to show the network the mask, wrap it, e.g. ``lambda x, t, c: net(x, t, c, valid)``.
    x0 : Tensor
        ``(B, S, C, H, W)`` clean window, finite everywhere (fill invalid pixels, e.g. with 0).
    context : Tensor
        ``(B, P, C, H, W)`` clean context given to ``denoise``, normally ``x0[:, :P]``.
    schedule : Schedule
    cfg : DiffusionConfig
        ``loss``, ``target_weight`` and ``lead_weight_power`` are read here; the schedule comes from
        ``schedule``.
    generator : torch.Generator, optional
        Source of ``t`` and ``eps``.
    valid : Tensor, optional
        ``(B, S, 1, H, W)``, nonzero where ``x0`` is valid; other pixels are left out of the mean.

    Returns
    -------
    Tensor
        Scalar loss, a mean over valid pixels with frames weighted by :func:`frame_weights`.
    """
    if x0.dim() != 5 or context.dim() != 5 or context.shape[1] > x0.shape[1]:
        raise InputError(
            f"expected x0 (B,S,C,H,W) and context (B,P<=S,C,H,W); got {x0.shape}, {context.shape}"
        )
    if valid is not None and valid.shape != (*x0.shape[:2], 1, *x0.shape[3:]):
        raise InputError(f"valid must have shape (B,S,1,H,W) = {(*x0.shape[:2], 1, *x0.shape[3:])}")
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=generator, device=device)
    eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    t, eps = t.to(x0.device), eps.to(x0.device)
    # In the data's dtype: under autocast the network may answer in bfloat16, too coarse for D^-1.
    pred = denoise(q_sample(schedule, x0, t, eps), t, context).to(x0.dtype)
    theta = theta_bar_at(schedule, t)
    if cfg.loss == "unmixed":
        err = (temporal_unmix(pred, theta) - eps) ** 2
    elif cfg.loss == "mixed":
        err = (pred - temporal_mix(eps, theta)) ** 2
    else:
        raise InputError(f"loss must be 'unmixed' or 'mixed', not {cfg.loss!r}")
    return _weighted_mean(err, context.shape[1], cfg, valid)


__all__ = [
    "Denoiser",
    "Schedule",
    "alpha_bar_at",
    "cosine_betas",
    "diffusion_loss",
    "frame_weights",
    "make_schedule",
    "q_sample",
    "temporal_mix",
    "temporal_unmix",
    "theta_bar_at",
]
