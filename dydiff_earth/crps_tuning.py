"""Tuning a trained denoiser on what its sampler draws: the fair CRPS of sampled members.

A diffusion model learns to denoise, one random noise level at a time, but a forecast is what its
few-step sampler draws (the radar model: 4 DPM-Solver++ steps), judged by the CRPS of the members in
physical units. The denoising loss weighs neither the solver's discretisation nor the units a user
reads: small errors of the network in dry areas become the crumbs of light rain that cost the radar
model its CRPS against STEPS (docs/skill.md). This fine-tune closes that gap. For every training window,
``M`` members are drawn from independent noise with the forecast's own solver and steps, keeping the
autograd graph through every network call; they are mapped to physical units (each departure added to
the window's init frame, then the variable's inverse transform) and scored against the observed target
frames by the fair CRPS (Ferro 2014). It is a proper score, unbiased for the CRPS of the distribution
the members are drawn from, so the network gains nothing by narrowing or widening the spread: its
optimum is members drawn from the true conditional distribution, point by point.

The post-processing of a forecast (spread inflation, rain mask, probability matching) is not in the
loss: it comes after, as for the denoising-trained network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dydiff_earth.data import VariableSpec
from dydiff_earth.diffusion import Schedule
from dydiff_earth.errors import InputError

#: ``solve(denoise, x_T, timesteps, *, context, schedule, clip, grad)``: a solver of
#: :mod:`dydiff_earth.sampling`.
Solver = Callable[..., Tensor]


def fair_crps(members: Tensor, truth: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean over points of the fair CRPS, ``mean_i |X_i - y| - sum_{i<j} |X_i - X_j| / (M (M - 1))``.

    ``members`` ``(B, M, ...)``, ``truth`` and ``weight`` ``(B, ...)`` (weight 0 leaves a point out);
    ``M >= 2``. The estimator of :class:`dydiff_earth.pointwise_metrics.CRPS` (``fair=True``), in torch.
    """
    m = members.shape[1]
    if m < 2:
        raise InputError(f"the fair CRPS needs at least 2 members, got {m}")
    skill = (members - truth[:, None]).abs().mean(1)
    spread = sum((members[:, i] - members[:, j]).abs() for i in range(m) for j in range(i + 1, m))
    crps = skill - spread / (m * (m - 1))
    return (crps * weight).sum() / weight.sum().clamp(min=1.0)


def physical(values: Tensor, variables: Sequence[VariableSpec]) -> Tensor:
    """Normalised values ``(..., C, H, W)`` in the variables' units: the torch twin of
    :meth:`VariableSpec.physical` after undoing the z-score (``log1p`` channels clipped at 0)."""
    channels = []
    for c, spec in enumerate(variables):
        x = values[..., c, :, :] * spec.std + spec.mean
        channels.append(torch.relu(torch.expm1(x)) * spec.scale if spec.transform == "log1p" else x)
    return torch.stack(channels, dim=-3)


@dataclass(frozen=True)
class SampledCRPS:
    """The fair CRPS of ``members`` sampled members per training window, as a loss.

    ``scale`` is the ``(S,)`` departure scale of a departure frame (a sampled frame is then the init
    frame, the condition's first ``C`` channels, plus the departure times its scale), None in the
    observed frame (a sampled frame is the field itself). In the diurnal frame the mean diurnal change is
    left out of both members and truth, which is exact for variables without a transform only.
    """

    solve: Solver
    timesteps: tuple[int, ...]
    schedule: Schedule
    context: int
    members: int
    variables: tuple[VariableSpec, ...]
    scale: Tensor | None
    clip: float | None

    def __call__(
        self, net: torch.nn.Module, batch: dict[str, Tensor], generator: torch.Generator, device: torch.device
    ) -> Tensor:
        """The loss of one batch: ``frames`` ``(B, S, C, H, W)``, ``valid`` ``(B, S, 1, H, W)`` and, in a
        departure frame, ``condition`` ``(B, C + K, H, W)`` (:mod:`dydiff_earth.patches`)."""
        frames, valid = batch["frames"].to(device), batch["valid"].to(device)
        condition = batch["condition"].to(device) if "condition" in batch else None
        b, s, c = frames.shape[:3]
        m, p = self.members, self.context

        def repeat(x: Tensor) -> Tensor:
            return x.repeat_interleave(m, dim=0)  # the members of a window are consecutive

        valid_m = repeat(valid)
        condition_m = None if condition is None else repeat(condition)

        def denoise(x: Tensor, t: Tensor, context: Tensor) -> Tensor:
            return net(x, t, context, valid_m, condition_m)

        noise = torch.randn((b * m, *frames.shape[1:]), generator=generator).to(device)
        window = self.solve(
            denoise,
            noise,
            self.timesteps,
            context=repeat(frames[:, :p]),
            schedule=self.schedule,
            clip=self.clip,
            grad=torch.is_grad_enabled(),  # off for validation
        )
        sampled, observed = window[:, p:].reshape(b, m, s - p, *frames.shape[2:]), frames[:, p:]
        if self.scale is not None:
            if condition is None:
                raise InputError("a departure frame's batch holds the init frame as its condition")
            init, scale = condition[:, None, :c], self.scale.to(device).reshape(1, -1, 1, 1, 1)[:, p:]
            sampled, observed = init[:, None] + sampled * scale[:, None], init + observed * scale
        return fair_crps(
            physical(sampled, self.variables),
            physical(observed, self.variables),
            valid[:, p:].expand_as(observed),
        )


__all__ = ["SampledCRPS", "Solver", "fair_crps", "physical"]
