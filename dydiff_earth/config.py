"""Frozen configuration dataclasses, named presets and YAML loading (no logic beyond parsing)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from dydiff_earth.errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """The video UNet's shape. ``in_channels``/``out_channels`` are per frame and set from the data."""

    channels: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1
    #: levels (0 = finest) that get temporal self-attention; temporal convolution is used at every level
    temporal_attention_levels: tuple[int, ...] = (1, 2)
    #: spatial self-attention at the coarsest level
    spatial_attention: bool = True
    heads: int = 4
    groups: int = 8
    time_embed_dim: int = 128
    dropout: float = 0.0
    #: space-to-depth factor of the stem: ``pixel_unshuffle`` by this factor before the first convolution
    #: and ``pixel_shuffle`` after the last, so the UNet runs at 1/factor of the resolution
    space_to_depth: int = 1


@dataclass(frozen=True)
class DiffusionConfig:
    """Dynamical Diffusion settings; ``gamma_ratio = 0`` is plain conditional diffusion."""

    timesteps: int = 1000
    #: cosine schedule offset s (Nichol and Dhariwal 2021)
    cosine_s: float = 0.008
    gamma_ratio: float = 0.5
    #: "unmixed": || D^-1(eps_theta) - eps ||^2 (default); "mixed": || eps_theta - D(eps) ||^2 (reference)
    loss: Literal["unmixed", "mixed"] = "unmixed"
    #: weight of target frames relative to context frames in the loss
    target_weight: float = 1.0
    #: target frame k (k = 1 the first lead) weighs ``target_weight * k ** lead_weight_power``; 0 weighs
    #: every lead alike. In the motion frame each lead's departure is scaled to unit spread, and the spread
    #: grows about as sqrt(k), so 1 weighs the leads about as an error in the transformed variable would
    lead_weight_power: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    context: int = 4
    horizon: int = 6
    patch: int = 32
    batch_size: int = 8
    steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    rain_weighted: bool = False
    checkpoint_every: int = 200
    validate_every: int = 200
    #: fraction of each time segment's tail held out for validation loss
    validation_fraction: float = 0.1
    num_workers: int = 0
    #: "eulerian" (the grid as observed), "persistence" (departures from the init frame on the grid),
    #: "lagrangian" (the motion frame, departures from extrapolation) or "auto": lagrangian for
    #: precipitation-like data, persistence for other data on a geographic grid, eulerian otherwise
    frame: str = "auto"
    #: fields of the grid and init time given to the network (:mod:`dydiff_earth.covariates`); None: all
    #: of them for the persistence frame on a geographic grid, none otherwise
    covariates: tuple[str, ...] | None = None
    #: train on the 8 rotations and flips of each window (departure frames of one variable without
    #: covariates only: the components of a vector field, such as u and v, do not turn with the grid)
    augment: bool = True
    #: keep a copy of the forecast weights every this many steps (0: never), for learning curves
    snapshot_every: int = 0
    #: :data:`LR_SCHEDULES`: "constant", or "cosine" (linear warm-up over the first 5 % of the steps,
    #: then half a cosine from ``lr`` down to 0 at ``steps``)
    lr_schedule: str = "constant"
    #: a checkpoint (path or shipped name) whose weights, normalisation and departure scale the run
    #: starts from (fine-tuning); None: random weights
    init_from: str | None = None
    #: :data:`OBJECTIVES`: "denoise" (the DyDiff loss), or "crps": fine-tune ``init_from`` on the fair
    #: CRPS of ``crps_members`` members per window drawn by its recommended sampler
    #: (:mod:`dydiff_earth.crps_tuning`)
    objective: str = "denoise"
    crps_members: int = 2


@dataclass(frozen=True)
class ForecastConfig:
    """Options that change a forecast's numbers; all recorded in its provenance."""

    members: int = 8
    #: solver steps; None: the checkpoint's recommendation, else 10 (:data:`DEFAULT_SAMPLER`)
    sampling_steps: int | None = None
    seed: int = 0
    anchor_context: bool = True
    batch_size: int = 8
    #: tile overlap as a fraction of the tile size, for domains larger than the training patch
    tile_overlap: float = 0.25
    #: bound on the clean estimate at every sampling step, in normalised units (standard deviations)
    clip: float = 10.0
    #: reverse-process solver (:data:`SOLVERS`): "ddim" or "dpmpp2m" (DPM-Solver++(2M))
    solver: str = "dpmpp2m"
    #: DDIM's stochasticity: 0 (deterministic) to 1 (fresh noise at every step, DDPM-like); ddim only
    eta: float = 0.0
    #: the network's arithmetic (:data:`PRECISIONS`): "fp32", "bf16" (autocast on the network call
    #: only; the solver's steps, mixing and un-mixing stay in float32 with float64 coefficients), or
    #: "auto": bf16 where the device computes in bfloat16 in hardware, else fp32
    precision: str = "fp32"
    #: what happens to precipitation-like (log1p) channels after sampling (:data:`probmatch.MATCHINGS`):
    #: "cdf" gives each member the values of the last observation, its ranks kept (STEPS' probability
    #: matching; docs/skill.md), "none" keeps them as sampled
    prob_matching: str = "cdf"
    #: precipitation-like channels rain at lead time k only within k cells of the rain observed at the
    #: init time, fading over 10 cells beyond (STEPS's precipitation mask, :func:`probmatch.rain_mask`)
    rain_mask: bool = True
    #: where the solver's steps lie between 981 and 1 (:data:`SPACINGS`): "time", evenly in the
    #: diffusion step (the paper's), or "logsnr", evenly in log signal-to-noise ratio (DPM-Solver's);
    #: None: the checkpoint's recommendation, else "time"
    spacing: str | None = None
    #: members' departures from the mean of their group of 8 widened by this factor in the sampled space
    #: (:mod:`dydiff_earth.inflation`); None: the checkpoint's recommendation, else 1 (as sampled)
    inflation: float | None = None
    #: the scale in grid cells above which departures are widened (a Gaussian low-pass; 0: all scales);
    #: None: the checkpoint's recommendation, else 0
    inflation_scale: float | None = None


#: The solver steps and spacing of a forecast that leaves them open (None) from a checkpoint that recommends
#: none (``dydiff-earth recommend``). 10 steps of DPM-Solver++(2M) score as 50 DDIM steps on the shipped
#: models (docs/benchmarks.md, Forecast speed); where the steps lie is worth as much, but differs by model
#: (docs/benchmarks.md, Step spacing), hence a recommendation per checkpoint; so is the spread
#: inflation, which corrects a given model's under-dispersion (docs/skill.md, Spread inflation).
DEFAULT_SAMPLER = {"sampling_steps": 10, "spacing": "time", "inflation": 1.0, "inflation_scale": 0.0}


#: What a training run minimises (:attr:`TrainConfig.objective`).
OBJECTIVES = ("denoise", "crps")
#: Spacings of the solver's steps (:func:`dydiff_earth.forecast.sampling_timesteps`).
SPACINGS = ("time", "logsnr")
#: Reverse-process solvers a forecast may use (:mod:`dydiff_earth.sampling`).
SOLVERS = ("ddim", "dpmpp2m")
LR_SCHEDULES = ("constant", "cosine")
#: Arithmetic of the network call in a forecast.
PRECISIONS = ("fp32", "bf16", "auto")


def check_inflation(factor: float, scale: float = 0.0) -> None:
    """A positive, finite spread inflation factor (1: as sampled) and a finite scale >= 0 (cells), else an
    ``InputError`` naming the option."""
    if not 0 < factor < float("inf"):
        raise InputError(f"--inflation must be a positive factor (1: as sampled), got {factor}")
    if not 0 <= scale < float("inf"):
        raise InputError(f"--inflation-scale must be 0 (all scales) or more grid cells, got {scale}")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``choices``, else an ``InputError`` naming ``what`` and the choices."""
    if value not in choices:
        listed = " or ".join(choices) if len(choices) < 3 else f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise InputError(f"{what} must be {listed}, not {value!r}")
    return value


# Radar at patch 64: the UNet runs at half resolution (space-to-depth stem), attends across frames at its
# two coarsest levels and never across pixels, so it is convolutional in space: trained on crops, it runs
# on a whole domain (padded to a multiple of 16) without tiles or seams.
_RADAR = ModelConfig(
    channels=(32, 48, 64, 96),
    blocks_per_level=1,
    temporal_attention_levels=(2, 3),
    spatial_attention=False,
    heads=4,
    groups=8,
    time_embed_dim=128,
    space_to_depth=2,
)

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        channels=(16, 32),
        blocks_per_level=1,
        temporal_attention_levels=(1,),
        heads=2,
        groups=4,
        time_embed_dim=64,
    ),
    "radar": _RADAR,
    # ``radar`` at half the width of its finest level, where most of the work is: 0.45 x its CPU time per
    # network call on a whole radar domain, but at equal training far less skilful (``docs/benchmarks.md``,
    # ``docs/skill.md``, Training on a GPU).
    "radar-fast": dataclasses.replace(_RADAR, channels=(16, 32, 48, 64)),
    # ``radar`` with two residual stages per level: 4.4 M parameters, about 1.4 x its CPU time per training
    # sample at patch 64 (``docs/benchmarks.md``); ``train --init-from`` grows a ``radar`` checkpoint into it
    # (``model.deepen``). Grown from radar-4km-v1 and fine-tuned on the CPU it scored no better
    # (``docs/skill.md``, Today's numbers).
    "radar-deep": dataclasses.replace(_RADAR, blocks_per_level=2),
    "small": ModelConfig(channels=(32, 64, 128), blocks_per_level=1, temporal_attention_levels=(1, 2)),
    "paper": ModelConfig(
        channels=(64, 128, 256, 256),
        blocks_per_level=2,
        temporal_attention_levels=(1, 2, 3),
        heads=8,
        groups=32,
        time_embed_dim=256,
    ),
}


def preset(name: str) -> ModelConfig:
    """The named model preset (``tiny``, ``radar``, ``radar-fast``, ``radar-deep``, ``small``, ``paper``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are an ``InputError``."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(cls(), key) if _has_defaults(cls) else None
        kwargs[key] = _coerce(value, default, f"{where}{key}")
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check ``value`` against the type of ``default``; lists become tuples (configs are frozen)."""
    if default is None:
        return tuple(value) if isinstance(value, list) else value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"key {key!r} must be true or false, not {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    kind = {int: "an integer", float: "a number", str: "text", tuple: "a list"}.get(type(default), "a value")
    raise InputError(f"key {key!r} must be {kind}, not {value!r}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a one-line error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{p}: not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of keys to values at the top level")
    return data


__all__ = [
    "LR_SCHEDULES",
    "PRECISIONS",
    "PRESETS",
    "SOLVERS",
    "SPACINGS",
    "DiffusionConfig",
    "ForecastConfig",
    "ModelConfig",
    "TrainConfig",
    "check_choice",
    "from_dict",
    "load_yaml",
    "preset",
]
