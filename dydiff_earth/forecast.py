"""Forecasters: the Dynamical Diffusion ensemble and the baselines that share its contract.

This module is the one place where sampled tensors become an ``xr.Dataset`` again (DESIGN.md): labelled
like the input (same grid, names, units, attributes) with ``member`` and ``lead_time`` dims.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import xarray as xr

from dydiff_earth import __version__, covariates, diurnal, inflation, io, motion, probmatch, schema
from dydiff_earth.config import (
    DEFAULT_SAMPLER,
    PRECISIONS,
    SOLVERS,
    SPACINGS,
    DiffusionConfig,
    ForecastConfig,
    ModelConfig,
    check_choice,
    check_inflation,
)
from dydiff_earth.data import Fields, VariableSpec, canonical_units, denormalize, describe_step, load_frames
from dydiff_earth.diffusion import Denoiser, Schedule, make_schedule
from dydiff_earth.errors import InputError
from dydiff_earth.model import ConditionedDenoiser, channels_last
from dydiff_earth.patches import blend_weight, tiles, window_motion
from dydiff_earth.sampling import ddim_timesteps, logsnr_timesteps, sample_ddim, sample_dpmpp_2m

#: Models shipped inside the package, resolvable by name (``--checkpoint demo``).
MODELS_DIR = Path(__file__).parent / "models"
#: How each member's noise is drawn (recorded in provenance).
RNG_SCHEME = (
    "torch.Generator(cpu) per member, seeded by numpy SeedSequence([seed, init_time_seconds, member])"
)
#: Network calls always hold exactly this many tiles (padded), so that neither the member batch size nor
#: the member count changes a number: CPU convolutions may round differently at other batch sizes.
TILE_BATCH = 8
#: Models without spatial attention run on the whole (padded) domain in one call per member batch up to
#: this many grid cells (about 1 GB of activations for the ``radar`` preset); larger domains are tiled.
FULL_DOMAIN_CELLS = 512 * 512

#: The solver function of each ``ForecastConfig.solver`` and how provenance names it.
SOLVER_FUNCTIONS = {"ddim": sample_ddim, "dpmpp2m": sample_dpmpp_2m}
SOLVER_NOTES = {"ddim": "ddim", "dpmpp2m": "dpm-solver++(2m) (Lu et al. 2022), data prediction"}
SPACING_NOTES = {
    "time": "steps evenly spaced in time from 981 to 1",
    "logsnr": "steps evenly spaced in log signal-to-noise ratio from 981 to 1",
}
PRECISION_NOTES = {
    "fp32": "float32",
    "bf16": "bfloat16 autocast on the network call; solver, mixing and un-mixing in float32",
}

#: ``progress(done, total)`` over members x sampling steps.
ProgressFn = Callable[[int, int], None]


class Forecaster(Protocol):
    """``(inputs, *, init_time, lead_times, n_members, seed) -> xr.Dataset`` with a leading ``member`` dim."""

    def __call__(
        self, inputs: Fields, *, init_time: str | None, lead_times: int, n_members: int, seed: int
    ) -> xr.Dataset: ...


# --- init time -------------------------------------------------------------------------------------------


def init_index(fields: Fields, init_time: str | None, context: int) -> int:
    """Index of the init time (the last context frame) in ``fields``; ``None``/``"latest"`` is the last frame.

    The ``context`` frames ending there must lie in one contiguous segment.
    """
    times = fields.times
    if init_time in (None, "latest"):
        idx = len(times) - 1
    else:
        try:
            when = np.datetime64(pd.Timestamp(init_time).tz_localize(None), "ns")
        except (ValueError, TypeError):
            raise InputError(
                f"--init-time {init_time!r} is not an ISO time such as 2019-03-25T12:00"
            ) from None
        hits = np.flatnonzero(times == when)
        if not len(hits):
            raise InputError(
                f"init time {init_time} is not a time of the input ({_minutes(times[0])} .. "
                f"{_minutes(times[-1])}, every {describe_step(fields.time_step)})"
            )
        idx = int(hits[0])
    seg = next(s for s in fields.segments if s.start <= idx < s.stop)
    if idx - seg.start + 1 < context:
        where = "the input starts" if seg.start == 0 else f"a gap before {_minutes(times[seg.start])}"
        raise InputError(
            f"init time {_minutes(times[idx])} needs {context} contiguous context frames, but {where} leaves "
            f"{idx - seg.start + 1}; choose a later --init-time"
        )
    return idx


def _minutes(t: np.datetime64) -> str:
    return str(np.datetime_as_string(t, unit="m"))


def latest_complete_init(fields: Fields, context: int) -> int | None:
    """The latest index whose ``context`` frames are all present and contiguous, or ``None``."""
    for seg in reversed(fields.segments):
        if seg.length >= context:
            return seg.stop - 1
    return None


# --- member-keyed randomness ------------------------------------------------------------------------------


def member_generator(seed: int, init_time: np.datetime64, member: int) -> torch.Generator:
    """A generator depending only on ``(seed, init_time, member)`` (GenCast-style fold-in of the member)."""
    seconds = int(np.datetime64(init_time, "s").astype(np.int64))
    entropy = np.random.SeedSequence([seed, seconds & 0xFFFFFFFF, seconds >> 32 & 0xFFFFFFFF, member])
    return torch.Generator(device="cpu").manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))


def sampling_timesteps(schedule: Schedule, steps: int, spacing: str = "time") -> list[int]:
    """Descending solver steps from the reference's first step (981 of 1000) down to 1.

    ``"time"``: evenly spaced in the diffusion step; at 50 steps exactly the reference's schedule (981,
    961, ..., 1). Unlike its "leading" rule it still starts near pure noise with few steps; unlike
    "trailing" it avoids t = T - 1, where the clipped cosine schedule leaves alpha_bar ~ 1e-9 and an
    epsilon model's x0 estimate is amplified without bound. ``"logsnr"``: the same ends, evenly spaced in
    log signal-to-noise ratio (:func:`~dydiff_earth.sampling.logsnr_timesteps`).
    """
    first = ddim_timesteps(schedule.timesteps, min(50, schedule.timesteps))[0]
    if spacing == "logsnr":
        return logsnr_timesteps(schedule, first, steps)
    return sorted({round(float(t)) for t in np.linspace(first, 1, steps)}, reverse=True)


# --- the loaded model ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A checkpoint ready to sample from."""

    denoiser: ConditionedDenoiser
    schedule: Schedule
    variables: tuple[VariableSpec, ...]
    context: int
    horizon: int
    patch: int
    time_step: np.timedelta64
    meta: dict
    path: str
    sha256: str
    #: "eulerian", "persistence" or "lagrangian" (:data:`dydiff_earth.motion.FRAMES`)
    frame: str = "eulerian"
    #: ``(P + L,)`` departure scale per window position (departure frames only)
    departure_scale: np.ndarray | None = None
    #: covariates appended to the condition (:mod:`dydiff_earth.covariates`)
    covariates: tuple[str, ...] = ()
    #: ``(slots, C, H, W)`` mean diurnal change of the training grid, normalised (diurnal frame only)
    diurnal_change: np.ndarray | None = None


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A checkpoint path, or the shipped model of that name (``demo``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = MODELS_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    names = sorted(q.stem for q in MODELS_DIR.glob("*.safetensors"))
    raise InputError(
        f"checkpoint {name_or_path!r} not found: not a file, nor a shipped model "
        f"({', '.join(names) or 'none installed'})"
    )


def load_model(name_or_path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint (path or shipped name) onto ``device`` in eval mode."""
    path = resolve_checkpoint(name_or_path)
    weights, meta = io.load_checkpoint(path)
    try:
        model_cfg = ModelConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}
        )
        diff_cfg = DiffusionConfig(**meta["diffusion"])
        specs = tuple(VariableSpec.from_dict(v) for v in meta["variables"])
        frame = meta.get("frame", "eulerian")
        scale = meta.get("departure_scale")
        departures = frame in motion.DEPARTURE_FRAMES
        if frame not in motion.FRAMES or departures != (scale is not None):
            raise KeyError(f"frame {frame!r} with departure scale {'set' if scale else 'missing'}")
        change = weights.pop(diurnal.TENSOR, None)
        if (frame == "diurnal") != (change is not None):
            raise KeyError(
                f"frame {frame!r} with {diurnal.TENSOR} {'set' if change is not None else 'missing'}"
            )
        check_sampler(meta.get("sampler", {}))
        names = tuple(meta.get("covariates", ()))
        if (names and not departures) or any(n not in covariates.NAMES for n in names):
            raise KeyError(f"covariates {', '.join(names)} in frame {frame!r}")
        denoiser = ConditionedDenoiser(
            model_cfg,
            channels=len(specs),
            context=int(meta["context"]),
            condition_channels=len(specs) + len(names) if departures else 0,
        )
        denoiser.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{path}: checkpoint does not match this version's model ({_first_line(exc)})"
        ) from None
    denoiser.to(device).eval()
    if torch.device(device).type == "cpu":
        # Measured on the radar model, whole 160 x 192 domain, one thread (2026-12-02): a network call
        # takes 1.1-1.2 x less time in float32 and 1.3-1.5 x less in bfloat16 with the 2-D convolutions'
        # weights channels-last (oneDNN's preferred layout); outputs differ by 5e-6 in float32.
        channels_last(denoiser)
    return LoadedModel(
        denoiser=denoiser,
        schedule=make_schedule(diff_cfg),
        variables=specs,
        context=int(meta["context"]),
        horizon=int(meta["horizon"]),
        patch=int(meta["patch"]),
        time_step=np.timedelta64(int(meta["time_step_seconds"]), "s"),
        meta=meta,
        path=str(path),
        sha256=io.file_sha256(path),
        frame=frame,
        departure_scale=None if scale is None else np.asarray(scale, np.float32),
        covariates=names,
        diurnal_change=None if change is None else change.double().numpy(),
    )


def check_sampler(sampler: dict) -> None:
    """A checkpoint's recommended solver steps and spacing (and the evidence for them) must be well formed:
    else a ``ValueError`` naming them."""
    keys = {*DEFAULT_SAMPLER, "evidence"}
    steps, spacing = sampler.get("sampling_steps", 1), sampler.get("spacing", "time")
    factor, scale = sampler.get("inflation", 1.0), sampler.get("inflation_scale", 0.0)
    if (
        set(sampler) - keys
        or not isinstance(steps, int)
        or steps < 1
        or spacing not in SPACINGS
        or not all(isinstance(v, int | float) for v in (factor, scale))
        or not (factor > 0 and scale >= 0)
    ):
        raise ValueError(f"recommended sampler {sampler}: expected {', '.join(sorted(keys))}")


def with_recommended_sampler(config: ForecastConfig, model: LoadedModel) -> ForecastConfig:
    """``config`` with the sampler choices it leaves open (None) filled in: the checkpoint's recommendation
    (``dydiff-earth recommend``, measured by whoever trained it), else :data:`DEFAULT_SAMPLER`."""
    chosen = {**DEFAULT_SAMPLER, **model.meta.get("sampler", {})}
    return dataclasses.replace(
        config, **{k: chosen[k] for k in DEFAULT_SAMPLER if getattr(config, k) is None}
    )


def recommend_sampler(
    path: str | Path,
    sampling_steps: int,
    spacing: str,
    evidence: str | None,
    factor: float = 1.0,
    scale: float = 0.0,
) -> Path:
    """Record in the checkpoint at ``path`` the solver steps, spacing and spread inflation its forecasts
    use when not told; the file is rewritten atomically, its weights unchanged."""
    check_choice(spacing, SPACINGS, "--spacing")
    if sampling_steps < 1:
        raise InputError(f"--sampling-steps must be at least 1, got {sampling_steps}")
    check_inflation(factor, scale)
    p = Path(path)
    file = p / "model.safetensors" if p.is_dir() else p
    tensors, meta = io.load_checkpoint(p)
    sampler = {
        "sampling_steps": sampling_steps,
        "spacing": spacing,
        "inflation": float(factor),
        "inflation_scale": float(scale),
    }
    return io.save_checkpoint(
        file, tensors, {**meta, "sampler": {**sampler, **({"evidence": evidence} if evidence else {})}}
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


#: How far (as a ratio either way) the input's cells may be from the size of those a checkpoint learnt
#: (``grid.cell_km``, :func:`covariates.grid_cell_km`). A network learns the size of rain cells, their
#: growth and decay per step and their texture in grid cells: the 4 km radar model run on a 1 km grid
#: draws its 4 km texture at 1 km (speckle on the maps). Loose enough for one model over other
#: latitudes (a 0.25 degree grid's cells are 21 km at 54 N and 24 km at 30 N) and projections, tight
#: enough for a whole factor of coarsening (2 or more).
CELL_SIZE_TOLERANCE = 1.5


def cell_size_mismatch(model: LoadedModel, fields: Fields) -> str | None:
    """Where the input's grid cells are not about the size of those the checkpoint learnt, one line that
    says so and what to do; None where they are, or where either is unknown (a checkpoint trained on a
    grid without geography, or from before it was recorded)."""
    trained = model.meta.get("grid", {}).get("cell_km")
    given = covariates.grid_cell_km(fields) if trained else None
    if not trained or not given or 1 / CELL_SIZE_TOLERANCE <= given / trained <= CELL_SIZE_TOLERANCE:
        return None
    name = model.meta.get("name") or Path(model.path).name
    if given < trained:
        factor = max(round(trained / given), 2)
        fix = (
            f"block-average it {factor} x {factor} first (dydiff-earth prepare INPUT --coarsen {factor} "
            "--output STORE)"
        )
    else:
        fix = "forecast on a grid as fine as the model's, or train on yours"
    return f"checkpoint {name} learnt grid cells of {trained:.3g} km; the input's are {given:.3g} km: {fix}"


def check_compatible(model: LoadedModel, fields: Fields, *, cells: bool = True) -> None:
    """The input must carry the model's variables, units and time step, and (``cells``) grid cells of about
    the size it learnt (:func:`cell_size_mismatch`); one line naming both sides if not."""
    have = {v.name: v for v in fields.variables}
    for spec in model.variables:
        if spec.name not in have:
            raise InputError(
                f"checkpoint needs variable {spec.name!r} but the input has {', '.join(have) or 'none'}"
            )
        if canonical_units(have[spec.name].units) != canonical_units(spec.units):
            raise InputError(
                f"variable {spec.name!r}: checkpoint expects units {spec.units!r}, input has "
                f"{have[spec.name].units!r}"
            )
    if np.timedelta64(fields.time_step, "s") != model.time_step:
        raise InputError(
            f"checkpoint was trained on a time step of {describe_step(model.time_step)}, input has "
            f"{describe_step(fields.time_step)}"
        )
    if cells and (mismatch := cell_size_mismatch(model, fields)):
        raise InputError(mismatch)
    if model.diurnal_change is not None and model.diurnal_change.shape[-2:] != fields.shape:
        raise InputError(
            f"checkpoint learnt the diurnal cycle of a {model.diurnal_change.shape[-2:]} grid; the input is "
            f"{fields.shape}: forecast on the training grid, or train on yours"
        )


# --- denoising a whole domain -------------------------------------------------------------------------------


class TiledDenoiser:
    """Run a crop-trained denoiser over a larger domain: overlapping tiles blended at every call.

    Because the blend happens on the noise estimate at every sampling step (not on finished tiles), the
    sampled state stays one smooth field and members have no seams. Memory is bounded by ``TILE_BATCH``
    tiles, not by the domain. ``valid`` is ``(S, 1, H, W)``; ``condition`` ``(B, K, H, W)`` or None.
    """

    def __init__(
        self,
        net: ConditionedDenoiser,
        valid: torch.Tensor,
        tile: int,
        overlap: int,
        condition: torch.Tensor | None = None,
    ) -> None:
        self.net, self.valid, self.tile, self.condition = net, valid, tile, condition
        self.windows = tiles(tuple(valid.shape[-2:]), tile, overlap)  # type: ignore[arg-type]
        self.weight = torch.from_numpy(blend_weight(tile, tile, overlap)).to(valid.device)
        total = torch.zeros(valid.shape[-2:], device=valid.device)
        for ys, xs in self.windows:
            total[ys, xs] += self.weight
        self.total = total

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        jobs = [(b, ys, xs) for b in range(x.shape[0]) for ys, xs in self.windows]
        for i in range(0, len(jobs), TILE_BATCH):
            chunk = jobs[i : i + TILE_BATCH]
            xt = torch.stack([x[b, :, :, ys, xs] for b, ys, xs in chunk])
            ct = torch.stack([context[b, :, :, ys, xs] for b, ys, xs in chunk])
            vt = torch.stack([self.valid[..., ys, xs] for _, ys, xs in chunk])
            kt = (
                None
                if self.condition is None
                else torch.stack([self.condition[b, :, ys, xs] for b, ys, xs in chunk])
            )
            tt = torch.stack([t[b] for b, _, _ in chunk])
            eps = _fixed_batch(self.net, TILE_BATCH, xt, tt, ct, vt, kt)
            for k, (b, ys, xs) in enumerate(chunk):
                out[b, :, :, ys, xs] += eps[k] * self.weight
        return out / self.total


class FullDomainDenoiser:
    """Run a convolutional denoiser (no spatial attention) on the whole padded domain at once.

    A network without spatial attention sees a neighbourhood of each pixel (and, through group norm, the
    statistics of the whole field), so trained on crops it runs on any domain of its size multiple: one
    field, no tiles, hence no seams, and one call per member and sampling step. One member per call, so
    that numbers do not depend on how members are batched (CPU kernels may round differently at other
    batch sizes), at no cost in speed: a whole domain is batch enough. Measured with ``radar-4km-v1`` on
    the 160 x 192 radar grid (one thread, 2026-12-02): two members in one call differ from two calls by
    up to 1.4e-6 and cost as much (2.34 against 2.27 CPU seconds).

    On a GPU the balance turns: a call of ``radar-4km-v1`` is some 300 small operations (73 convolutions,
    83 SiLU, 55 group norms, 57 linear layers; CPU profile, 2026-12-04) that one member does not fill it
    with, and one member per call ran 2.2 to 2.7 s per init on an H200, in bf16 as in fp32. So there
    ``per_call`` members share each call (:class:`DiffusionForecaster` passes all members of a batch on
    CUDA), and rounding may differ from one-member calls at the 1e-6 level, as it does between devices.
    """

    def __init__(
        self,
        net: ConditionedDenoiser,
        valid: torch.Tensor,
        condition: torch.Tensor | None = None,
        per_call: int = 1,
    ) -> None:
        self.net, self.valid, self.condition, self.per_call = net, valid, condition, per_call

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, out = self.condition, []
        for b in range(0, x.shape[0], self.per_call):
            part = slice(b, b + self.per_call)
            valid = self.valid.expand(len(x[part]), *self.valid.shape)
            out.append(self.net(x[part], t[part], context[part], valid, None if k is None else k[part]))
        return torch.cat(out)


def _fixed_batch(
    net: ConditionedDenoiser,
    size: int,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    valid: torch.Tensor,
    condition: torch.Tensor | None,
) -> torch.Tensor:
    """``net`` on a batch zero-padded to exactly ``size`` (CPU kernels may round differently per size)."""
    n = x.shape[0]
    if n < size:
        pad = size - n
        x, context, valid = (torch.cat([a, a.new_zeros((pad, *a.shape[1:]))]) for a in (x, context, valid))
        t = torch.cat([t, t[:1].expand(pad)])
        if condition is not None:
            condition = torch.cat([condition, condition.new_zeros((pad, *condition.shape[1:]))])
    extra = () if condition is None else (condition,)
    return net(x, t, context, valid, *extra)[:n]


# --- the diffusion forecaster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Space:
    """What the network sees of a window: the observed frame, or departures from its init frame.

    In a departure frame a window of absolute (normalised) values ``y`` is given to the network as
    ``(y - y_init) / scale`` with ``y_init`` the last context frame, which is also the condition
    (followed by the covariates, if any); zero departure is persistence (extrapolation in the motion
    frame) exactly.
    """

    scale: torch.Tensor | None  # (P + L, 1, 1, 1) or None for the observed frame
    #: (P + L, C, H, W) mean diurnal change from the init frame to each frame (diurnal frame), or None
    path: torch.Tensor | None = None

    def encode(
        self, state: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Context ``(B, P, C, H, W)`` and covariates ``(K, H, W)`` to the network's context and condition."""
        if self.scale is None:
            return state, None
        init = state[:, -1]
        condition = init if extra is None else torch.cat([init, extra.expand(len(init), -1, -1, -1)], 1)
        p = state.shape[1]
        departure = state - init[:, None] - (0 if self.path is None else self.path[:p])
        return departure / self.scale[:p], condition

    def decode(self, leads: torch.Tensor, condition: torch.Tensor | None, context: int) -> torch.Tensor:
        """Sampled target frames ``(B, L, C, H, W)`` back to absolute values."""
        if self.scale is None or condition is None:
            return leads
        path = 0 if self.path is None else self.path[context:]
        return condition[:, None, : leads.shape[2]] + leads * self.scale[context:] + path


class _MirrorPad:
    """Pad the last two dims from ``(height, width)`` to ``(ph, pw)`` by mirroring the field at its
    south and east edges (numpy's ``symmetric``, which repeats for pads wider than the field).

    Zero padding marked invalid made the network roughen the cells beside it: with the demo model on
    a 90 x 90 domain padded to 96, the 4 cells next to the padding came out 2.8, 2.4 and 1.4 x as rough
    as the observed field (seeds 5, 7, 9); mirrored, 1.7, 2.6 and 1.3 x (the 2.6 on an edge where the
    observed field is dry, so that any drizzle dominates it). A mirrored border continues the field with
    its own scales, like the crops the network was trained on.
    """

    def __init__(self, height: int, width: int, ph: int, pw: int) -> None:
        self.rows = torch.from_numpy(np.pad(np.arange(height), (0, ph - height), mode="symmetric"))
        self.cols = torch.from_numpy(np.pad(np.arange(width), (0, pw - width), mode="symmetric"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.rows.to(x.device), :][..., self.cols.to(x.device)]


class DiffusionForecaster:
    """Ensemble forecasts from a Dynamical Diffusion checkpoint (the :class:`Forecaster` contract).

    A motion-frame (``lagrangian``) model is given its context advected into the frame of the init time
    along the context's own motion field (:mod:`dydiff_earth.motion`); its members, departures from
    extrapolation, are advected back out, lead time ``k`` by ``k`` steps.
    """

    #: The ensemble index of the first member sampled: one device's block of a larger ensemble draws
    #: the noise of its own members (:mod:`dydiff_earth.devices`).
    first_member = 0

    def __init__(
        self,
        model: LoadedModel,
        config: ForecastConfig = ForecastConfig(),  # noqa: B008 (frozen, hence safe as a default)
        *,
        device: torch.device | str = "cpu",
        progress: ProgressFn | None = None,
    ) -> None:
        config = with_recommended_sampler(config, model)
        check_choice(config.solver, SOLVERS, "solver")
        check_choice(config.precision, PRECISIONS, "precision")
        check_choice(config.prob_matching, probmatch.MATCHINGS, "prob_matching")
        check_choice(config.spacing, SPACINGS, "spacing")
        check_eta(config)
        check_inflation(config.inflation, config.inflation_scale)
        device = torch.device(device)
        config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
        self.model, self.config, self.device, self.progress = model, config, device, progress

    @property
    def timesteps(self) -> list[int]:
        return sampling_timesteps(self.model.schedule, self.config.sampling_steps, self.config.spacing)

    def __call__(
        self, inputs: Fields, *, init_time: str | None, lead_times: int, n_members: int, seed: int
    ) -> xr.Dataset:
        if lead_times < 1 or n_members < 1:
            raise InputError(f"need at least one lead time and one member (got {lead_times}, {n_members})")
        check_compatible(self.model, inputs)
        m = self.model
        fields = dataclasses.replace(inputs, variables=m.variables)
        idx = init_index(fields, init_time, m.context)
        ctx = load_frames(fields, slice(idx - m.context + 1, idx + 1))  # (P, C, H, W)
        coverage = np.isfinite(ctx).all(axis=(0, 1))
        if not coverage.any():
            raise InputError(
                f"no grid point has valid data in all {m.context} context frames up to "
                f"{str(fields.times[idx])[:16]}: nothing to forecast from (an outage of the input?)"
            )
        init = fields.times[idx]
        span = m.context + math.ceil(lead_times / m.horizon) * m.horizon
        extra = None
        if m.frame == "lagrangian":
            velocity = window_motion(ctx, m.variables, m.context)
            start = motion.to_motion_frame(ctx, velocity, m.context - 1)
            # Where each frame of the rollout has data in the motion frame: trajectories that leave the
            # grid or the radar coverage are invalid, as in training (the motion is held over the rollout).
            cover = np.where(coverage, np.float32(1), np.nan)[None, None]
            valid = np.isfinite(motion.to_motion_frame(np.repeat(cover, span, 0), velocity, m.context - 1))
        else:
            velocity, start = None, ctx
            valid = np.broadcast_to(coverage, (span, 1, *coverage.shape))
            if m.covariates:
                grid = covariates.Covariates(fields, m.covariates)
                extra = [grid.at(init + r * m.horizon * fields.time_step) for r in range(span // m.horizon)]
        # The spread is inflated in the space sampled (the motion frame, normalised), in groups of members
        # (an ensemble not a whole number of groups draws the rest of its last), from valid departures only.
        factor = self.config.inflation
        drawn = inflation.members_to_draw(n_members, factor)
        values = self.sample(np.nan_to_num(start), valid, init, lead_times, drawn, seed, extra)
        leads = valid[m.context : m.context + lead_times]
        values = inflation.inflate(values, factor, self.config.inflation_scale, leads)[:n_members]
        if velocity is not None:
            values = motion.from_motion_frame(values, velocity)
        values = denormalize(values, m.variables)
        rain = probmatch.precipitation_channels(m.variables)
        observed = denormalize(ctx[-1], m.variables)
        observed[:, ~coverage] = np.nan  # masked and matched over the points forecast
        if self.config.rain_mask and rain:
            # Moved with the rain in every frame: a mask fixed on the grid would cut off fast rain.
            velocity = window_motion(ctx, m.variables, m.context) if velocity is None else velocity
            for c in rain:
                values[:, :, c] *= probmatch.rain_mask(observed[c], lead_times, velocity)
        if self.config.prob_matching == "cdf" and rain:
            values = probmatch.match_cdf(values, observed, rain)
        values[..., ~coverage] = np.nan
        return forecast_dataset(
            fields, values, idx, _provenance(m, self.config, fields, idx, seed, self.timesteps)
        )

    def sample(
        self,
        ctx: np.ndarray,
        valid: np.ndarray,
        init: np.datetime64,
        lead_times: int,
        n_members: int,
        seed: int,
        extra: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Normalised members ``(M, N, C, H, W)`` from a normalised, NaN-free context ``(P, C, H, W)``.

        ``valid`` ``(P + rounds x L, 1, H, W)`` marks valid data in each frame of the rollout, context first.
        For a motion-frame model, context, mask and members are all in the motion frame. ``extra`` holds
        the covariates ``(K, H, W)`` of each rollout round's init time, for a model that takes them.
        """
        m, cfg = self.model, self.config
        p, c, s = m.context, ctx.shape[1], m.context + m.horizon
        height, width = ctx.shape[-2:]
        mult = m.denoiser.net.size_multiple
        full = not m.denoiser.net.cfg.spatial_attention and height * width <= FULL_DOMAIN_CELLS
        # A whole domain not a multiple of the network's size is padded by mirroring (_MirrorPad). Only
        # motion-frame models, which learn borders where trajectories leave the grid, run padded; models
        # trained on crops of a wholly valid grid (weather) were measured on tiles of their training size
        # and keep them (whether mirrored padding serves them as well is not measured).
        padded = height % mult or width % mult
        full = full and (not padded or m.frame == "lagrangian" or min(height, width) < m.patch)
        if full:
            ph, pw = -(-height // mult) * mult, -(-width // mult) * mult
        else:
            ph, pw = max(height, m.patch), max(width, m.patch)
        pad = _MirrorPad(height, width, ph, pw)
        context = pad(torch.from_numpy(ctx))
        rounds = math.ceil(lead_times / m.horizon)
        masks = torch.stack(
            [
                pad(torch.from_numpy(np.asarray(valid[r * m.horizon : r * m.horizon + s], np.float32)))
                for r in range(rounds)
            ]
        )
        k = len(m.covariates)
        extras = torch.zeros((rounds, k, ph, pw))
        for r in range(rounds if k else 0):
            extras[r] = pad(torch.from_numpy(extra[r]))  # type: ignore[index]
        scale = None
        if m.departure_scale is not None:
            scale = torch.from_numpy(m.departure_scale).reshape(-1, 1, 1, 1).to(self.device)
        spaces = []
        for r in range(rounds):
            path = None
            if m.diurnal_change is not None:
                # The window of round r has its init frame r x L steps after the forecast's init time.
                times = init + (np.arange(s) - (p - 1) + r * m.horizon) * m.time_step
                path = pad(torch.from_numpy(diurnal.path(m.diurnal_change, times, p - 1))).to(self.device)
            spaces.append(_Space(scale, path))
        steps, solve = self.timesteps, SOLVER_FUNCTIONS[cfg.solver]
        out = np.empty((n_members, lead_times, c, height, width), np.float32)
        done, total = 0, n_members * rounds * len(steps)
        for first in range(0, n_members, cfg.batch_size):
            members = range(first, min(first + cfg.batch_size, n_members))
            gens = [member_generator(seed, init, self.first_member + k) for k in members]
            state = context.expand(len(members), -1, -1, -1, -1).clone().to(self.device)
            leads: list[torch.Tensor] = []
            for r in range(rounds):
                noise = torch.stack([torch.randn((s, c, ph, pw), generator=g) for g in gens])
                space = spaces[r]
                given, condition = space.encode(state, extras[r].to(self.device) if k else None)
                valid_r = masks[r].to(self.device)
                if full:
                    per_call = 1 if self.device.type == "cpu" else len(members)
                    denoise = FullDomainDenoiser(m.denoiser, valid_r, condition, per_call)
                else:
                    overlap = round(cfg.tile_overlap * m.patch)
                    denoise = TiledDenoiser(m.denoiser, valid_r, min(m.patch, ph, pw), overlap, condition)

                def tick(i: int, t: int, x0: torch.Tensor, _n: int = len(members)) -> None:
                    nonlocal done
                    done += _n
                    if self.progress is not None:
                        self.progress(done, total)

                def randn_like(x: torch.Tensor, _gens: list = gens) -> torch.Tensor:
                    # DDIM's fresh noise (eta > 0), drawn from each member's own generator.
                    return torch.stack([torch.randn(x.shape[1:], generator=g) for g in _gens]).to(x.device)

                stochastic = {"eta": cfg.eta, "randn_like": randn_like} if cfg.eta > 0 else {}
                window = solve(
                    in_precision(denoise, cfg.precision, self.device),
                    noise.to(self.device),
                    steps,
                    context=given,
                    schedule=m.schedule,
                    anchor=cfg.anchor_context,
                    clip=cfg.clip,
                    callback=tick,
                    **stochastic,
                )
                # The padding of the next round's context is mirrored again from the new frames.
                new = pad(space.decode(window[:, p:], condition, p)[..., :height, :width])
                leads.append(new.cpu())
                # Each member continues from its own last P frames (autoregressive rollout).
                state = torch.cat([state, new], 1)[:, -p:]
            sampled = torch.cat(leads, 1)[:, :lead_times, :, :height, :width]
            out[first : first + len(members)] = sampled.numpy()
        return out


def check_eta(config: ForecastConfig) -> None:
    """DDIM's eta lies in [0, 1]; the other solvers are deterministic."""
    if not 0.0 <= config.eta <= 1.0 or (config.eta > 0 and config.solver != "ddim"):
        raise InputError(
            f"--eta must lie in [0, 1] and needs --solver ddim, got {config.eta} with {config.solver}"
        )


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 in hardware, not by emulation in float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Without AVX512-BF16 or AMX, oneDNN emulates bfloat16: a network call of radar-4km-v1 took 16 x the
    # CPU time of float32 on an AVX2 CPU (28 against 1.7 s); with them, half of it. torch.cpu's probes are
    # private API: torch is pinned (pyproject.toml), so a rename shows up in this module's tests.
    cpu = torch.cpu
    return device.type == "cpu" and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` is bf16 where ``device`` has it in hardware, else fp32; the others stay as they are
    (bf16 without the hardware runs as asked, with a warning)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(
            f"this {device.type} has no bfloat16 in hardware: precision bf16 is emulated, many times slower "
            "than fp32; precision auto picks the faster one",
            UserWarning,
            stacklevel=3,
        )
    return precision


def in_precision(denoise: Denoiser, precision: str, device: torch.device) -> Denoiser:
    """``denoise`` with its network call in ``precision``; its answer comes back in float32.

    Only the network runs under bfloat16 autocast: the solver un-mixes with ``D^-1``, which divides by
    ``sqrt(theta_bar)`` frame after frame, and steps with coefficients down to ``sqrt(a_t) ~ 0.03``, too
    fine for bfloat16's 8-bit mantissa.
    """
    if precision == "fp32":
        return denoise

    def bf16(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return denoise(x, t, context).float()

    return bf16


# --- baselines ----------------------------------------------------------------------------------------------


class PersistenceForecaster:
    """The last context frame repeated at every lead time, one member (a baseline with the same contract)."""

    context = 1

    def __call__(
        self, inputs: Fields, *, init_time: str | None, lead_times: int, n_members: int = 1, seed: int = 0
    ) -> xr.Dataset:
        idx = init_index(inputs, init_time, 1)
        last = load_frames(inputs, slice(idx, idx + 1))
        values = np.repeat(denormalize(last, inputs.variables)[None], lead_times, axis=1)
        prov = {"model": "persistence", "package_version": __version__, "input": str(inputs.source)}
        return forecast_dataset(inputs, values.astype(np.float32), idx, prov)


# --- samples -> labelled dataset ----------------------------------------------------------------------------


_FRAME_NOTES = {
    "eulerian": "",
    "persistence": " (departures from persistence)",
    "diurnal": " (departures from persistence plus the training record's mean diurnal change)",
    "lagrangian": " (departures from extrapolation; motion: pysteps Lucas-Kanade on the context, "
    "semi-Lagrangian)",
}


def _eta_note(cfg: ForecastConfig) -> str:
    return f" (eta = {cfg.eta:g})" if cfg.solver == "ddim" else ""


def _matching_note(model: LoadedModel, cfg: ForecastConfig) -> str:
    if not probmatch.precipitation_channels(model.variables):
        return "none (no precipitation-like channel)"
    if cfg.prob_matching == "none":
        return "none"
    return "cdf (each member's precipitation at each lead given the last observation's values, ranks kept)"


def _mask_note(model: LoadedModel, cfg: ForecastConfig) -> str:
    if not (cfg.rain_mask and probmatch.precipitation_channels(model.variables)):
        return "none"
    return (
        "rain at lead time k only within k cells of the rain observed at the init time, moved with the "
        f"rain's motion, fading to 0 over {probmatch.MASK_RIM} cells beyond (STEPS's precipitation mask)"
    )


def _inflation_note(cfg: ForecastConfig) -> str:
    text = inflation.describe(cfg.inflation, cfg.inflation_scale)
    if cfg.inflation == 1:
        return text
    return (
        f"{text} (each member's departure from the mean of its group of {inflation.GROUP_SIZE}, members "
        f"0-{inflation.GROUP_SIZE - 1}, {inflation.GROUP_SIZE}-{2 * inflation.GROUP_SIZE - 1} and so on, "
        "widened by the factor, above the scale by a Gaussian low-pass, in the sampled space)"
    )


def _provenance(
    model: LoadedModel, cfg: ForecastConfig, fields: Fields, idx: int, seed: int, steps: Sequence[int]
) -> dict:
    times = fields.times
    return {
        "model": "dynamical diffusion" if model.schedule.gamma_ratio > 0 else "conditional diffusion (r = 0)",
        "checkpoint": model.path,
        "checkpoint_sha256": model.sha256,
        "gamma_ratio": model.schedule.gamma_ratio,
        "frame": model.frame + _FRAME_NOTES[model.frame],
        **({"covariates": ", ".join(model.covariates)} if model.covariates else {}),
        "package_version": __version__,
        "seed": seed,
        "rng_scheme": RNG_SCHEME,
        "sampler": f"{SOLVER_NOTES[cfg.solver]}{_eta_note(cfg)}, {SPACING_NOTES[cfg.spacing]}",
        "sampling_steps": len(steps),
        "spread_inflation": _inflation_note(cfg),
        # Machine-readable for `evaluate`: the fair CRPS of dependent members takes pairs across groups.
        **({"inflation_group_size": inflation.GROUP_SIZE} if cfg.inflation != 1 else {}),
        "precision": f"{cfg.precision} ({PRECISION_NOTES[cfg.precision]})",
        "prob_matching": _matching_note(model, cfg),
        "rain_mask": _mask_note(model, cfg),
        "context_anchoring": int(cfg.anchor_context),
        "tile_overlap": cfg.tile_overlap,
        "clip_normalised": cfg.clip,
        "tile_batch": TILE_BATCH,
        "input": str(fields.source),
        "input_time_range": f"{times[0]} .. {times[-1]}",
        "context_frames": model.context,
        "init_time": str(times[idx]),
    }


def forecast_dataset(
    fields: Fields, values: np.ndarray, idx: int, provenance: dict, thresholds: Sequence[float] = ()
) -> xr.Dataset:
    """Label ``values (M, N, C, H, W)`` in input units as a CF forecast dataset (DESIGN.md output format)."""
    ds_in = fields.dataset
    n_members, n_leads = values.shape[:2]
    step = pd.Timedelta(fields.time_step).to_timedelta64()
    lead = np.arange(1, n_leads + 1) * step
    init = fields.times[idx]
    spatial = (fields.y_dim, fields.x_dim)
    coords: dict[str, object] = {
        schema.MEMBER: (
            schema.MEMBER,
            np.arange(n_members),
            {"standard_name": "realization", "long_name": "ensemble member"},
        ),
        schema.LEAD_TIME: (
            schema.LEAD_TIME,
            lead,
            {"standard_name": "forecast_period", "long_name": "lead time"},
        ),
        schema.INIT_TIME: (
            (),
            init,
            {"standard_name": "forecast_reference_time", "long_name": "initialisation time"},
        ),
        schema.VALID_TIME: (
            schema.LEAD_TIME,
            init + lead,
            {"standard_name": "time", "long_name": "valid time"},
        ),
    }
    for name, coord in ds_in.coords.items():
        # The grid (1-D or 2-D spatial coords) and its grid mapping; scalar leftovers of the input's own
        # time axis (GRIB's ``step``, ``number``...) would mislabel a forecast.
        on_grid = bool(coord.dims) and set(coord.dims) <= set(spatial)
        if on_grid or name == fields.grid_mapping:
            coords[str(name)] = coord.variable
    out = xr.Dataset(coords=coords)
    for c, spec in enumerate(fields.variables):
        attrs = dict(ds_in[spec.name].attrs)
        out[spec.name] = ((schema.MEMBER, schema.LEAD_TIME, *spatial), values[:, :, c], attrs)
    rain = [fields.variables[c].name for c in probmatch.precipitation_channels(fields.variables)]
    out = add_derived(out, thresholds, matched=rain)
    out.attrs = {
        "Conventions": schema.CONVENTIONS,
        "title": f"dydiff-earth ensemble forecast from {init}",
        "source": f"dydiff-earth {__version__}",
        "history": f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} created by dydiff-earth",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: _attr(v) for k, v in provenance.items()},
    }
    return out


def add_derived(ds: xr.Dataset, thresholds: Sequence[float] = (), matched: Sequence[str] = ()) -> xr.Dataset:
    """``<var>_mean``, ``<var>_spread`` and, for thresholds, ``<var>_probability`` next to the members.

    The variables named in ``matched`` (precipitation-like ones) also get ``<var>_matched_mean``, the
    probability-matched mean (:func:`dydiff_earth.probmatch.matched_mean`): one map of where it rains
    and how hard, which the plain mean blurs into wide drizzle and washed-out cores.
    """
    ds = ds.copy()
    for name in schema.forecast_variables(ds):
        da = ds[name]
        units = da.attrs.get("units", "1")
        label = da.attrs.get("long_name", name)
        ds[f"{name}_mean"] = da.mean(schema.MEMBER).assign_attrs(
            long_name=f"ensemble mean of {label}", units=units, cell_methods="realization: mean"
        )
        if name in matched:
            ds[f"{name}_matched_mean"] = (
                da.isel(member=0, drop=True)
                .copy(data=probmatch.matched_mean(da.values))
                .assign_attrs(
                    long_name=f"probability-matched ensemble mean of {label}",
                    units=units,
                    cell_methods="realization: mean (ranks of the mean, values of the members: Ebert 2001)",
                )
            )
        spread = (
            da.std(schema.MEMBER, ddof=1) if da.sizes[schema.MEMBER] > 1 else xr.zeros_like(da.isel(member=0))
        )
        ds[f"{name}_spread"] = spread.where(da.isel(member=0).notnull()).assign_attrs(
            long_name=f"ensemble standard deviation of {label}",
            units=units,
            cell_methods="realization: standard_deviation",
        )
        if thresholds:
            thr = xr.DataArray(
                np.asarray(thresholds, float),
                dims=schema.THRESHOLD,
                attrs={
                    "units": units,
                    "standard_name": da.attrs.get("standard_name", name),
                    "long_name": f"threshold of {label}",
                },
            )
            prob = (da >= thr).mean(schema.MEMBER).where(da.isel(member=0).notnull())
            ds = ds.assign_coords({schema.THRESHOLD: thr})
            ds[f"{name}_probability"] = prob.transpose(schema.THRESHOLD, ...).assign_attrs(
                long_name=f"probability of {label} at or above threshold", units="1"
            )
    return ds


def _attr(value: object) -> str | int | float:
    return value if isinstance(value, (str, int, float)) else str(value)


__all__ = [
    "DiffusionForecaster",
    "Forecaster",
    "LoadedModel",
    "PersistenceForecaster",
    "add_derived",
    "check_compatible",
    "forecast_dataset",
    "in_precision",
    "init_index",
    "latest_complete_init",
    "load_model",
    "member_generator",
    "resolve_checkpoint",
]
