"""Solvers for Dynamical Diffusion (DDIM, DPM-Solver++(2M)): step spacing, an oracle denoiser, anchoring,
injected noise, brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from dydiff_earth.config import DiffusionConfig
from dydiff_earth.diffusion import (
    Denoiser,
    Schedule,
    make_schedule,
    temporal_mix,
    temporal_unmix,
    theta_bar_at,
)
from dydiff_earth.errors import InputError
from dydiff_earth.sampling import ddim_timesteps, logsnr_timesteps, sample_ddim, sample_dpmpp_2m

P, SHAPE = 3, (2, 5, 2, 4, 4)


def test_ddim_timesteps_reference_spacing() -> None:
    assert ddim_timesteps(1000, 50) == list(range(981, 0, -20))
    assert ddim_timesteps(1000, 1) == [1]
    assert ddim_timesteps(1000, 2) == [501, 1]
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    for steps in (3, 7, 10, 333, 999):
        ts = ddim_timesteps(1000, steps)
        assert len(ts) == steps and ts[-1] in (0, 1) and ts[0] < 1000
        assert ts == sorted(set(ts), reverse=True)
    assert ddim_timesteps(1000, 50, "trailing")[:2] == [999, 979]
    assert ddim_timesteps(1000, 1, "trailing") == [999]
    with pytest.raises(InputError):
        ddim_timesteps(1000, 0)


def test_logsnr_timesteps_are_the_nearest_steps_to_evenly_spaced_log_snr() -> None:
    schedule = make_schedule(DiffusionConfig())
    a = schedule.alpha_bar.numpy()
    lam = 0.5 * np.log(a / (1 - a))
    for steps in (2, 5, 10, 50):
        ts = logsnr_timesteps(schedule, 981, steps)
        assert ts[0] == 981 and ts[-1] == 1 and len(ts) == steps
        # Brute force: for each evenly spaced target, the step in 1..981 whose log-SNR is nearest.
        nearest = {
            min(range(1, 982), key=lambda u, x=x: abs(lam[u] - x))
            for x in np.linspace(lam[981], lam[1], steps)
        }
        assert ts == sorted(nearest, reverse=True)
    # The cosine schedule's log-SNR changes fastest near its ends, where the steps crowd.
    assert logsnr_timesteps(schedule, 981, 5) == [981, 860, 327, 39, 1]
    assert logsnr_timesteps(schedule, 981, 1) == [981]
    assert len(logsnr_timesteps(schedule, 981, 981)) < 981  # coinciding steps are kept once
    with pytest.raises(InputError):
        logsnr_timesteps(schedule, 981, 0)


def oracle(x0: Tensor, schedule: Schedule) -> Denoiser:
    """The exact noise predictor for a known clean window: ``D((D^-1(x) - sqrt(ab) x0) / sqrt(1 - ab))``."""

    def denoise(x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        ab = schedule.alpha_bar[t.cpu()].to(x.dtype)[:, None, None, None, None]
        theta = theta_bar_at(schedule, t)
        return temporal_mix((temporal_unmix(x, theta) - ab.sqrt() * x0) / (1 - ab).sqrt(), theta)

    return denoise


@pytest.mark.parametrize("gamma_ratio", [0.0, 0.5])
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_oracle_denoiser_recovers_the_clean_window(gamma_ratio: float, anchor: bool, steps: int) -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=gamma_ratio))
    g = torch.Generator().manual_seed(steps)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    seen: list[int] = []
    out = sample_ddim(
        oracle(x0, schedule),
        x_T,
        ddim_timesteps(1000, steps),
        context=x0[:, :P],
        schedule=schedule,
        anchor=anchor,
        callback=lambda i, t, x0_hat: seen.append(t),
    )
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)
    assert seen == ddim_timesteps(1000, steps)


def test_oracle_in_float32_over_trailing_steps() -> None:
    # Trailing spacing starts at t = 999 where sqrt(alpha_bar) ~ 2e-4 amplifies float32 rounding.
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    g = torch.Generator().manual_seed(0)
    x0, x_T = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    out = sample_ddim(
        oracle(x0, schedule), x_T, ddim_timesteps(1000, 20, "trailing"), context=x0[:, :P], schedule=schedule
    )
    torch.testing.assert_close(out, x0, rtol=1e-3, atol=1e-3)


def test_anchoring_returns_the_context_exactly() -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    g = torch.Generator().manual_seed(1)
    context, x_T = torch.randn(2, P, 2, 4, 4, generator=g), torch.randn(SHAPE, generator=g)

    def wrong(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return 0.7 * x

    kwargs = {"context": context, "schedule": schedule}
    anchored = sample_ddim(wrong, x_T, ddim_timesteps(1000, 10), **kwargs)
    assert torch.equal(anchored[:, :P], context)
    free = sample_ddim(wrong, x_T, ddim_timesteps(1000, 10), anchor=False, **kwargs)
    assert not torch.allclose(free[:, :P], context, atol=1e-2)


def test_sampler_never_calls_torch_randn(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    g = torch.Generator().manual_seed(2)
    x0, x_T = (
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
    )

    def forbidden(*args: object, **kwargs: object) -> Tensor:
        raise AssertionError("the sampler must not draw its own noise")

    monkeypatch.setattr(torch, "randn", forbidden)
    monkeypatch.setattr(torch, "randn_like", forbidden)
    timesteps = ddim_timesteps(1000, 10)
    sample_ddim(oracle(x0, schedule), x_T, timesteps, context=x0[:, :P], schedule=schedule)
    calls: list[tuple[int, ...]] = []

    def injected(x: Tensor) -> Tensor:
        calls.append(tuple(x.shape))
        return torch.empty_like(x).normal_(generator=g)

    out = sample_ddim(
        oracle(x0, schedule),
        x_T,
        timesteps,
        context=x0[:, :P],
        schedule=schedule,
        randn_like=injected,
        eta=1.0,
    )
    assert calls == [SHAPE] * (len(timesteps) - 1)
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)


def brute_force_ddim(
    denoise, x_T: Tensor, timesteps: list[int], context: Tensor, schedule: Schedule
) -> Tensor:
    """DDIM (eta = 0, no anchoring) written out as in the method note, with explicit mixing matrices."""

    def matrix(t: int | None) -> Tensor:
        w = 1.0 if t is None else float(schedule.theta_bar[t])
        m = torch.zeros(x_T.shape[1], x_T.shape[1], dtype=torch.float64)
        for s in range(x_T.shape[1]):
            for j in range(s + 1):
                m[s, j] = (1 - w) ** ((s - j) / 2) * (1.0 if j == 0 else math.sqrt(w))
        return m

    def mix(m: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("st,btchw->bschw", m, x)

    x = mix(matrix(timesteps[0]), x_T)
    for i, t in enumerate(timesteps):
        a = float(schedule.alpha_bar[t])
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        a_prev = 1.0 if t_prev is None else float(schedule.alpha_bar[t_prev])
        inv = torch.linalg.inv(matrix(t))
        e = denoise(x, torch.full((x.shape[0],), t), context)
        x0_hat, eps_hat = mix(inv, (x - math.sqrt(1 - a) * e) / math.sqrt(a)), mix(inv, e)
        x = math.sqrt(a_prev) * mix(matrix(t_prev), x0_hat) + math.sqrt(1 - a_prev) * mix(
            matrix(t_prev), eps_hat
        )
    return x


def _start_and_context(seed: int) -> tuple[Tensor, Tensor]:
    """Float64 start noise and context for the brute-force solver checks."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
        torch.randn(2, P, 2, 4, 4, generator=g, dtype=torch.float64),
    )


def _nonlinear(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
    """A nonlinear denoiser that also reads the step and the context."""
    return torch.tanh(x) + 1e-3 * t.double()[:, None, None, None, None] * c.mean()


@pytest.mark.parametrize("gamma_ratio", [0.0, 0.5])
def test_sampler_matches_brute_force_with_a_nonlinear_denoiser(gamma_ratio: float) -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=gamma_ratio))
    x_T, context = _start_and_context(3)

    timesteps = ddim_timesteps(1000, 5)
    got = sample_ddim(_nonlinear, x_T, timesteps, context=context, schedule=schedule, anchor=False)
    torch.testing.assert_close(
        got, brute_force_ddim(_nonlinear, x_T, timesteps, context, schedule), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("sampler", [sample_ddim, sample_dpmpp_2m], ids=["ddim", "dpmpp_2m"])
def test_invalid_arguments_raise(sampler) -> None:
    schedule = make_schedule(DiffusionConfig())
    x_T, context = torch.zeros(SHAPE), torch.zeros(2, P, 2, 4, 4)

    def zero(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return torch.zeros_like(x)

    for timesteps in ([1, 21], [1000, 1], []):
        with pytest.raises(InputError):
            sampler(zero, x_T, timesteps, context=context, schedule=schedule)
    with pytest.raises(InputError):
        sampler(zero, x_T, [21, 1], context=torch.zeros(2, P, 2, 4, 5), schedule=schedule)
    if sampler is sample_ddim:
        with pytest.raises(InputError):
            sampler(zero, x_T, [21, 1], context=context, schedule=schedule, eta=0.5)


# --- DPM-Solver++(2M) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma_ratio", [0.0, 0.5])
@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20])
def test_dpmpp_2m_oracle_recovers_the_clean_window(gamma_ratio: float, anchor: bool, steps: int) -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=gamma_ratio))
    g = torch.Generator().manual_seed(100 + steps)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    timesteps = ddim_timesteps(1000, steps, "trailing")
    seen: list[int] = []
    out = sample_dpmpp_2m(
        oracle(x0, schedule),
        x_T,
        timesteps,
        context=x0[:, :P],
        schedule=schedule,
        anchor=anchor,
        callback=lambda i, t, x0_hat: seen.append(t),
    )
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)
    assert seen == timesteps


def test_dpmpp_2m_first_step_is_ddim_and_later_steps_are_not() -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    g = torch.Generator().manual_seed(4)
    x_T, context = torch.randn(SHAPE, generator=g), torch.randn(2, P, 2, 4, 4, generator=g)

    def denoise(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return torch.tanh(1.5 * x) - 0.1 * x

    def estimates(solver, steps: int) -> list[Tensor]:
        seen: list[Tensor] = []
        solver(
            denoise,
            x_T,
            ddim_timesteps(1000, steps),
            context=context,
            schedule=schedule,
            callback=lambda i, t, x0_hat: seen.append(x0_hat),
        )
        return seen

    ddim, dpm = estimates(sample_ddim, 5), estimates(sample_dpmpp_2m, 5)
    # One step and two-step runs: the state after the first update is DDIM's bit for bit.
    assert torch.equal(ddim[0], dpm[0]) and torch.equal(ddim[1], dpm[1])
    for one, other in zip(estimates(sample_ddim, 2), estimates(sample_dpmpp_2m, 2), strict=True):
        assert torch.equal(one, other)
    # From the second update on the correction acts on the targets; anchored context frames never move.
    assert (ddim[2][:, P:] - dpm[2][:, P:]).abs().max() > 1e-3
    assert all(torch.equal(x[:, :P], context) for x in dpm)


def brute_force_dpmpp_2m(
    denoise, x_T: Tensor, timesteps: list[int], context: Tensor, schedule: Schedule
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in its textbook form, with explicit mixing matrices."""

    def matrix(t: int) -> Tensor:
        w = float(schedule.theta_bar[t])
        m = torch.zeros(x_T.shape[1], x_T.shape[1], dtype=torch.float64)
        for s in range(x_T.shape[1]):
            for j in range(s + 1):
                m[s, j] = (1 - w) ** ((s - j) / 2) * (1.0 if j == 0 else math.sqrt(w))
        return m

    def mix(m: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("st,btchw->bschw", m, x)

    def coefficients(t: int) -> tuple[float, float, float]:
        a = float(schedule.alpha_bar[t])
        return math.sqrt(a), math.sqrt(1 - a), math.log(math.sqrt(a) / math.sqrt(1 - a))

    x = mix(matrix(timesteps[0]), x_T)
    old: Tensor | None = None
    for i, t in enumerate(timesteps):
        alpha, sigma, lam = coefficients(t)
        inv = torch.linalg.inv(matrix(t))
        u = mix(inv, x)
        x0 = (u - sigma * mix(inv, denoise(x, torch.full((x.shape[0],), t), context))) / alpha
        if i + 1 == len(timesteps):
            return x0
        alpha_p, sigma_p, lam_p = coefficients(timesteps[i + 1])
        h = lam_p - lam
        if old is None:
            d = x0
        else:
            r = (lam - coefficients(timesteps[i - 1])[2]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * old
        u_prev = sigma_p / sigma * u - alpha_p * (math.exp(-h) - 1) * d
        x, old = mix(matrix(timesteps[i + 1]), u_prev), x0
    raise AssertionError("unreachable")


@pytest.mark.parametrize("gamma_ratio", [0.0, 0.5])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_dpmpp_2m_matches_brute_force_with_a_nonlinear_denoiser(gamma_ratio: float, spacing: str) -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=gamma_ratio))
    x_T, context = _start_and_context(5)

    timesteps = ddim_timesteps(1000, 6, spacing)  # type: ignore[arg-type]
    got = sample_dpmpp_2m(_nonlinear, x_T, timesteps, context=context, schedule=schedule, anchor=False)
    want = brute_force_dpmpp_2m(_nonlinear, x_T, timesteps, context, schedule)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)
    ddim = sample_ddim(_nonlinear, x_T, timesteps, context=context, schedule=schedule, anchor=False)
    assert (got - ddim).abs().max() > 1e-4  # the second-order correction is not a no-op


def test_dpmpp_2m_never_calls_torch_randn(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = make_schedule(DiffusionConfig(gamma_ratio=0.5))
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float64)

    def forbidden(*args: object, **kwargs: object) -> Tensor:
        raise AssertionError("the solver must not draw its own noise")

    for name in ("randn", "randn_like", "rand", "normal"):
        monkeypatch.setattr(torch, name, forbidden)
    out = sample_dpmpp_2m(
        oracle(x0, schedule), x_T, ddim_timesteps(1000, 10), context=x0[:, :P], schedule=schedule
    )
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)
