"""Schedules, temporal mixing and the loss of Dynamical Diffusion, against closed forms and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dydiff_earth.config import DiffusionConfig
from dydiff_earth.diffusion import (
    MAX_BETA,
    alpha_bar_at,
    cosine_betas,
    diffusion_loss,
    frame_weights,
    make_schedule,
    q_sample,
    temporal_mix,
    temporal_unmix,
    theta_bar_at,
)
from dydiff_earth.errors import InputError


def mixing_matrix(frames: int, w: float) -> Tensor:
    """``D_w`` as an explicit ``(S, S)`` lower-triangular matrix, from unrolling the recursion by hand.

    ``D(z)^s = (1 - w)^(s/2) z^0 + sum_{j=1..s} sqrt(w) (1 - w)^((s-j)/2) z^j`` (0-based frames).
    """
    m = torch.zeros(frames, frames, dtype=torch.float64)
    for s in range(frames):
        m[s, 0] = (1 - w) ** (s / 2)
        for j in range(1, s + 1):
            m[s, j] = math.sqrt(w) * (1 - w) ** ((s - j) / 2)
    return m


def apply_matrix(m: Tensor, x: Tensor) -> Tensor:
    """Apply per-sample ``(B, S, S)`` matrices along the frame axis of ``(B, S, C, H, W)``."""
    return torch.einsum("bst,btchw->bschw", m.to(x.dtype), x)


def test_cosine_schedule_matches_closed_form_and_clips_betas() -> None:
    cfg = DiffusionConfig()
    schedule = make_schedule(cfg)
    betas = cosine_betas(cfg.timesteps, cfg.cosine_s)
    f = [
        math.cos((t / cfg.timesteps + cfg.cosine_s) / (1 + cfg.cosine_s) * math.pi / 2) ** 2
        for t in range(1001)
    ]
    first_clipped = int(torch.nonzero(betas >= MAX_BETA)[0])
    assert first_clipped > 990 and betas.max() == MAX_BETA and betas.min() > 0
    closed = torch.tensor([f[t + 1] / f[0] for t in range(first_clipped)], dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha_bar[:first_clipped], closed, rtol=1e-10, atol=1e-15)
    assert schedule.alpha_bar.dtype == torch.float64 and schedule.timesteps == 1000
    assert bool((schedule.alpha_bar.diff() < 0).all()) and 0 < schedule.alpha_bar[-1] < 1e-6
    # Clipped betas: alpha_bar keeps a 0.001 fraction per step instead of reaching 0.
    torch.testing.assert_close(
        schedule.alpha_bar[-1], schedule.alpha_bar[-2] * (1 - MAX_BETA), rtol=1e-12, atol=0
    )


def test_theta_bar_follows_gamma_ratio() -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(theta_bar_at(schedule, t), 0.5 * alpha_bar_at(schedule, t) + 0.5)
    assert bool((make_schedule(DiffusionConfig(gamma_ratio=0.0)).theta_bar == 1.0).all())
    with pytest.raises(InputError):
        make_schedule(DiffusionConfig(gamma_ratio=1.5))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_unmix_inverts_mix(dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 7, 2, 5, 3, generator=g, dtype=dtype)
    theta = torch.tensor([0.5, 0.7, 0.95, 1.0], dtype=torch.float64)
    torch.testing.assert_close(temporal_unmix(temporal_mix(z, theta), theta), z, rtol=tol, atol=tol)
    torch.testing.assert_close(temporal_mix(temporal_unmix(z, theta), theta), z, rtol=tol, atol=tol)


def test_mix_and_unmix_match_explicit_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 6, 2, 4, 4, generator=g, dtype=torch.float64)
    theta = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    m = torch.stack([mixing_matrix(6, float(w)) for w in theta])
    assert bool((m.triu(1) == 0).all())
    torch.testing.assert_close(temporal_mix(z, theta), apply_matrix(m, z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        temporal_unmix(z, theta), apply_matrix(torch.linalg.inv(m), z), rtol=1e-10, atol=1e-10
    )


def test_mixed_noise_has_unit_variance_and_geometric_correlation() -> None:
    # 40,000 samples per frame: the standard error of a variance is sqrt(2/n) ~ 0.007 and of a correlation
    # at most 1/sqrt(n) = 0.005, so 0.03 is a > 4-sigma tolerance.
    frames, w = 6, 0.3
    g = torch.Generator().manual_seed(2)
    y = temporal_mix(torch.randn(1, frames, 1, 200, 200, generator=g, dtype=torch.float64), w)
    y = y.reshape(frames, -1)
    torch.testing.assert_close(y.var(dim=1), torch.ones(frames, dtype=torch.float64), rtol=0, atol=0.03)
    corr = torch.corrcoef(y)
    for k in range(1, frames):
        expected = torch.full((frames - k,), (1 - w) ** (k / 2), dtype=torch.float64)
        torch.testing.assert_close(torch.diagonal(corr, offset=k), expected, rtol=0, atol=0.03)


def test_gamma_zero_makes_mixing_the_identity_bit_for_bit() -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.0))
    x = torch.randn(3, 5, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    theta = theta_bar_at(schedule, torch.tensor([0, 400, 999]))
    assert torch.equal(temporal_mix(x, theta), x) and torch.equal(temporal_unmix(x, theta), x)


def toy_denoiser(x: Tensor, t: Tensor, context: Tensor) -> Tensor:
    """A fixed nonlinear function of the inputs, standing in for a network."""
    return 0.5 * torch.sin(x) + 1e-3 * t.to(x.dtype)[:, None, None, None, None] + 0.1 * context.mean()


@pytest.mark.parametrize("loss", ["unmixed", "mixed"])
def test_loss_at_gamma_zero_is_the_ddpm_loss_bit_for_bit(loss: str) -> None:
    cfg = DiffusionConfig(gamma_ratio=0.0, loss=loss)  # type: ignore[arg-type]
    schedule = make_schedule(cfg)
    x0 = torch.randn(6, 5, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    context = x0[:, :3]
    got = diffusion_loss(
        toy_denoiser,
        x0,
        context=context,
        schedule=schedule,
        cfg=cfg,
        generator=torch.Generator().manual_seed(5),
    )
    # Plain DDPM, written out: t, then eps, from the same generator; x_t = sqrt(ab) x0 + sqrt(1 - ab) eps.
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ab = schedule.alpha_bar[t]
    x_t = (
        torch.sqrt(ab).float()[:, None, None, None, None] * x0
        + torch.sqrt(1 - ab).float()[:, None, None, None, None] * eps
    )
    expected = ((toy_denoiser(x_t, t, context) - eps) ** 2).mean()
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("loss", "lead_power"), [("unmixed", 0.0), ("mixed", 0.0), ("unmixed", 1.5)])
def test_weighted_masked_loss_matches_brute_force(loss: str, lead_power: float) -> None:
    cfg = DiffusionConfig(gamma_ratio=0.5, loss=loss, target_weight=3.0, lead_weight_power=lead_power)  # type: ignore[arg-type]
    schedule = make_schedule(cfg)
    b, s, p = 4, 5, 2
    x0 = torch.randn(b, s, 2, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    valid = (torch.rand(b, s, 1, 4, 4, generator=torch.Generator().manual_seed(7)) > 0.3).double()
    got = diffusion_loss(
        toy_denoiser,
        x0,
        context=x0[:, :p],
        schedule=schedule,
        cfg=cfg,
        generator=torch.Generator().manual_seed(8),
        valid=valid,
    )
    g = torch.Generator().manual_seed(8)
    t = torch.randint(0, 1000, (b,), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ab = schedule.alpha_bar[t][:, None, None, None, None]
    m = torch.stack([mixing_matrix(s, float(w)) for w in 0.5 * schedule.alpha_bar[t] + 0.5])
    pred = toy_denoiser(apply_matrix(m, ab.sqrt() * x0 + (1 - ab).sqrt() * eps), t, x0[:, :p])
    if loss == "unmixed":
        err = (apply_matrix(torch.linalg.inv(m), pred) - eps) ** 2
    else:
        err = (pred - apply_matrix(m, eps)) ** 2
    leads = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) ** lead_power
    w = torch.cat([torch.ones(p, dtype=torch.float64), 3.0 * leads])[None, :, None, None, None] * valid
    expected = (w * err).sum() / (w.sum() * 2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def test_lead_weights_apply_without_a_mask() -> None:
    """The plain-mean shortcut for an unmasked batch is taken only when every frame weighs the same."""
    x0 = torch.randn(3, 5, 1, 4, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    def loss(power: float, valid: torch.Tensor | None) -> torch.Tensor:
        cfg = DiffusionConfig(gamma_ratio=0.5, lead_weight_power=power)
        generator = torch.Generator().manual_seed(11)
        return diffusion_loss(
            toy_denoiser,
            x0,
            context=x0[:, :2],
            schedule=make_schedule(cfg),
            cfg=cfg,
            generator=generator,
            valid=valid,
        )

    everywhere = torch.ones(3, 5, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(loss(1.0, None), loss(1.0, everywhere), rtol=1e-12, atol=0)
    assert not torch.isclose(loss(1.0, None), loss(0.0, None))


def test_q_sample_is_mixed_ddpm_state() -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    g = torch.Generator().manual_seed(9)
    x0, eps = (
        torch.randn(2, 4, 1, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(2, 4, 1, 3, 3, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([10, 900])
    ab = schedule.alpha_bar[t][:, None, None, None, None]
    m = torch.stack([mixing_matrix(4, float(w)) for w in theta_bar_at(schedule, t)])
    expected = apply_matrix(m, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    torch.testing.assert_close(q_sample(schedule, x0, t, eps), expected, rtol=1e-12, atol=1e-12)


def test_frame_weights_and_empty_mask() -> None:
    w = frame_weights(6, 4, 2.0)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert w[4] == 2 * w[0]
    ramp = frame_weights(7, 4, 1.0, lead_power=1.0)  # leads 1, 2, 3 weigh 1, 2, 3 as much as a context frame
    torch.testing.assert_close(ramp / ramp[0], torch.tensor([1.0, 1, 1, 1, 1, 2, 3], dtype=torch.float64))
    torch.testing.assert_close(frame_weights(6, 4, 2.0, lead_power=0.0), w)
    with pytest.raises(InputError, match="lead_weight_power"):
        frame_weights(6, 4, 1.0, lead_power=-1.0)
    cfg = DiffusionConfig(gamma_ratio=0.5)
    x0 = torch.randn(2, 3, 1, 4, 4)
    loss = diffusion_loss(
        toy_denoiser,
        x0,
        context=x0[:, :1],
        schedule=make_schedule(cfg),
        cfg=cfg,
        valid=torch.zeros(2, 3, 1, 4, 4),
    )
    assert loss.item() == 0.0
    with pytest.raises(InputError):
        diffusion_loss(
            toy_denoiser,
            x0,
            context=x0[:, :1],
            schedule=make_schedule(cfg),
            cfg=cfg,
            valid=torch.ones(2, 3, 4, 4),
        )
