"""The training loop: DyDiff loss on the conditioned video UNet, EMA, validation, checkpoints, resume, DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dydiff_earth import __version__, covariates, crps_tuning, diurnal, io, motion
from dydiff_earth.config import (
    OBJECTIVES,
    DiffusionConfig,
    ForecastConfig,
    ModelConfig,
    TrainConfig,
    check_choice,
)
from dydiff_earth.data import Fields, VariableSpec, window_starts
from dydiff_earth.diffusion import Schedule, diffusion_loss, make_schedule
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import (
    SOLVER_FUNCTIONS,
    LoadedModel,
    load_model,
    sampling_timesteps,
    with_recommended_sampler,
)
from dydiff_earth.model import ConditionedDenoiser, deepen
from dydiff_earth.patches import (
    DepartureWindowStream,
    IndexedStream,
    MixedStream,
    WindowStream,
    departure_scale,
    rain_channel,
)

#: Called after every step with (step, total_steps, train_loss, samples_per_second).
Progress = Callable[[int, int, float, float], None]
#: ``loss(net, batch, generator, device)``: the objective of one batch.
Loss = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Generator, torch.device], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """What a run reports: where the checkpoint is and the losses it ended with."""

    checkpoint: Path
    steps: int
    train_loss: float
    validation_loss: float | None
    samples_per_second: float


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present; an unavailable device is an ``InputError``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    return torch.device(device)


def split_starts(fields: Fields, length: int, fraction: float) -> tuple[list[int], list[int]]:
    """Window starts for training and validation, split in time so that no frame is in both.

    Validation takes the windows lying wholly in the last ``fraction`` of the record; training those
    lying wholly before it. With too short a record, everything trains and validation is skipped.
    """
    starts = window_starts(fields, length)
    n_time = fields.dataset.sizes[fields.time_dim]
    cut = round(n_time * (1.0 - fraction))
    train = [s for s in starts if s + length <= cut]
    val = [s for s in starts if s >= cut]
    if not train or not val or fraction <= 0:
        return starts, []
    return train, val


def _geographic(fields: Fields) -> bool:
    try:
        covariates.grid_lonlat(fields)
    except InputError:
        return False
    return True


def _daily(fields: Fields) -> bool:
    return diurnal.SECONDS_PER_DAY % max(int(fields.time_step / np.timedelta64(1, "s")), 1) == 0


def resolve_frame(frame: str, fields: Fields) -> str:
    """``auto``: the motion frame for precipitation-like data; for other data on a geographic grid
    (weather) departures from persistence plus the mean diurnal change (from persistence alone when the
    time step does not divide a day); the grid as observed otherwise (turbulence, abstract grids)."""
    if frame == "auto":
        if rain_channel(fields.variables) is not None:
            return "lagrangian"
        if not _geographic(fields):
            return "eulerian"
        return "diurnal" if _daily(fields) else "persistence"
    if frame not in motion.FRAMES:
        raise InputError(f"frame must be auto, {', '.join(motion.FRAMES)}, not {frame!r}")
    return frame


def resolve_covariates(names: Sequence[str] | None, frame: str, fields: Fields) -> tuple[str, ...]:
    """``None`` (auto): all covariates for departures on a geographic grid (not in the motion frame).

    Covariates reach the network through the condition, which only departure frames have.
    """
    if names is None:
        return covariates.NAMES if frame in ("persistence", "diurnal") and _geographic(fields) else ()
    if names and frame not in motion.DEPARTURE_FRAMES:
        raise InputError(
            "covariates are given with the init frame as condition: use --frame "
            f"{', '.join(motion.DEPARTURE_FRAMES)} or --covariates none"
        )
    return tuple(names)


def checkpoint_meta(
    fields: Fields, model_cfg: ModelConfig, diff_cfg: DiffusionConfig, cfg: TrainConfig, **extra: object
) -> dict:
    """Everything a forecast needs to use a checkpoint, as JSON-able metadata."""
    ds = fields.dataset
    times = fields.times
    return {
        "frame": "eulerian",
        "package_version": __version__,
        "model": dataclasses.asdict(model_cfg),
        "diffusion": dataclasses.asdict(diff_cfg),
        "train": dataclasses.asdict(cfg),
        "variables": [v.to_dict() for v in fields.variables],
        "context": cfg.context,
        "horizon": cfg.horizon,
        "patch": cfg.patch,
        "time_step_seconds": float(fields.time_step / np.timedelta64(1, "s")),
        "grid": {
            "dims": [fields.y_dim, fields.x_dim],
            "shape": [int(ds.sizes[fields.y_dim]), int(ds.sizes[fields.x_dim])],
            "grid_mapping": fields.grid_mapping,
            # the resolution it learnt: the size of rain cells and their texture are learnt in grid cells
            **({"cell_km": round(cell, 3)} if (cell := covariates.grid_cell_km(fields)) else {}),
        },
        "data": {
            "source": fields.source,
            "time_start": str(times[0]),
            "time_end": str(times[-1]),
            "frames": len(times),
            "segments": len(fields.segments),
        },
        **extra,
    }


class _EMA:
    """Exponential moving average of parameters (kept in float32 on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up (as in timm/diffusers): early on the average must forget the random initial weights fast,
        # or a short run would ship mostly its initialisation (0.999^1000 = 0.37 of it).
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1.0 - decay)
            else:
                self.shadow[k].copy_(v)


def _batches(stream: WindowStream, batch_size: int, workers: int) -> Iterator[dict[str, torch.Tensor]]:
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    yield from loader


def _with_mask(
    net: torch.nn.Module, valid: torch.Tensor, condition: torch.Tensor | None = None
) -> Callable[..., torch.Tensor]:
    """The network as a ``Denoiser`` that also sees the validity mask (gaps, no coverage) and condition."""
    if condition is None:
        return lambda x, t, context: net(x, t, context, valid)
    return lambda x, t, context: net(x, t, context, valid, condition)


def _batch_loss(
    net: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    schedule: Schedule,
    diff_cfg: DiffusionConfig,
    context: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """The DyDiff loss of one batch of windows, the first ``context`` frames given as condition."""
    frames = batch["frames"].to(device, non_blocking=True)
    valid = batch["valid"].to(device, non_blocking=True)
    condition = batch["condition"].to(device, non_blocking=True) if "condition" in batch else None
    return diffusion_loss(
        _with_mask(net, valid, condition),
        frames,
        context=frames[:, :context],
        schedule=schedule,
        cfg=diff_cfg,
        generator=generator,
        valid=valid,
    )


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return rank, world


def _state_path(output: Path) -> Path:
    return output.with_name(output.name + ".state")


def _save(
    output: Path,
    model: torch.nn.Module,
    ema: _EMA,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    step: int,
    meta: dict,
    constants: dict[str, torch.Tensor],
) -> None:
    """The state that ``--resume`` needs and, after it, the forecast checkpoint (EMA weights, the
    frame's ``constants``, metadata).

    The state holds everything a resumed run reads (the EMA too) and is written first, each file
    atomically: a run killed between the two resumes from the new state, and rewrites the checkpoint.
    """
    meta = {**meta, "step": step}
    state: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    for i, pstate in opt.state_dict()["state"].items():
        for name, value in pstate.items():
            state[f"opt.{i}.{name}"] = torch.as_tensor(value)
    state["rng.loss"] = gen.get_state()
    state["rng.torch"] = torch.get_rng_state()
    io.save_checkpoint(_state_path(output), state, {**meta, "kind": "training-state"})
    io.save_checkpoint(output, {**ema.shadow, **constants}, meta)


def _restore(
    output: Path,
    model: torch.nn.Module,
    ema: _EMA,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    variables: Sequence[VariableSpec],
) -> int:
    """Load what :func:`_save` wrote; returns the step to continue from (the state's)."""
    if not _state_path(output).is_file():
        raise InputError(
            f"--resume: no checkpoint at {output} to continue from (its training state "
            f"{_state_path(output).name} is missing)"
        )
    state, meta = io.load_checkpoint(_state_path(output))
    theirs = [VariableSpec.from_dict(v) for v in meta["variables"]]
    for before, now in zip(theirs, variables, strict=False):
        if (before.transform, before.scale) != (now.transform, now.scale):
            raise InputError(
                f"--resume: {output} learnt {before.name!r} as {before.transform} with scale "
                f"{before.scale:g}, this run as {now.transform} with scale {now.scale:g}; "
                "resume with the run's --rain-scale"
            )
    model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    # States written before they held the EMA: it is in the checkpoint, saved at the same step.
    averaged = {k[4:]: v for k, v in state.items() if k.startswith("ema.")} or io.load_checkpoint(output)[0]
    for k, v in averaged.items():
        if k in ema.shadow:  # the frame's constants are recomputed from the data
            ema.shadow[k].copy_(v)
    opt_state = opt.state_dict()
    for key, value in state.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(opt_state)
    gen.set_state(state["rng.loss"])
    torch.set_rng_state(state["rng.torch"])
    return int(meta["step"])


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) under ``cfg.lr_schedule``.

    A function of the step alone, so that a resumed run continues the same curve.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    warmup = max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def base_model(cfg: TrainConfig) -> LoadedModel | None:
    """The checkpoint a fine-tuning run starts from (``cfg.init_from``), or None."""
    return None if cfg.init_from is None else load_model(cfg.init_from)


def _check_base(
    base: LoadedModel,
    model_cfg: ModelConfig,
    diff_cfg: DiffusionConfig,
    cfg: TrainConfig,
    frame: str,
    names: Sequence[str],
    fields: Fields,
) -> None:
    """Refuse, in one line, to fine-tune a checkpoint whose network, process or data this run does not
    match. The loss's weights may change (that is what a fine-tune may be for); the noising may not."""
    ours = json.loads(json.dumps(dataclasses.asdict(model_cfg)))  # tuples as the checkpoint's JSON lists
    theirs = dict(base.meta["model"])
    if theirs.get("blocks_per_level", 1) < model_cfg.blocks_per_level:
        theirs["blocks_per_level"] = model_cfg.blocks_per_level  # a deeper network grows from it (deepen)
    pairs = {f"network {k} (--preset)": (v, ours.get(k)) for k, v in theirs.items()}
    process = DiffusionConfig(**base.meta["diffusion"])
    for key in ("timesteps", "cosine_s", "gamma_ratio"):
        option = " (--gamma-ratio)" if key == "gamma_ratio" else ""
        pairs[f"diffusion {key}{option}"] = (getattr(process, key), getattr(diff_cfg, key))
    pairs.update(
        {
            "context": (base.context, cfg.context),
            "horizon": (base.horizon, cfg.horizon),
            "frame": (base.frame, frame),
            "covariates": (list(base.covariates), list(names)),
            "variables": ([v.name for v in base.variables], [v.name for v in fields.variables]),
        }
    )
    for what, (theirs, this) in pairs.items():
        if theirs != this:
            raise InputError(
                f"--init-from {cfg.init_from}: the checkpoint's {what} is {theirs}, this run's {this}; "
                "train with the checkpoint's settings"
            )


def training_streams(
    fields: Sequence[Fields],
    cfg: TrainConfig,
    frame: str,
    starts: Sequence[list[int]],
    *,
    seed: int,
    covariate_names: Sequence[str] = (),
    diurnal_change: np.ndarray | None = None,
    length: int | None = None,
    start_index: int = 0,
    scale: np.ndarray | None = None,
    train: bool = True,
) -> tuple[IndexedStream, np.ndarray | None]:
    """The sample stream over one or several stores, and the departure scale (or None for ``eulerian``).

    Stores are mixed in proportion to their windows times their cells (the crops they offer). In a
    departure frame the departure scale is pooled over all stores unless ``scale`` is given.
    """
    streams: list[IndexedStream] = []
    departures = frame in motion.DEPARTURE_FRAMES
    for f, st in zip(fields, starts, strict=True):
        kw = {"seed": seed, "starts": st, "rain_weighted": cfg.rain_weighted and train}
        if departures:
            streams.append(
                DepartureWindowStream(
                    f,
                    cfg.context,
                    cfg.horizon,
                    cfg.patch,
                    # The components of a vector field (u, v) do not turn with the grid: one variable only.
                    augment=cfg.augment and train and not covariate_names and len(f.variables) == 1,
                    frame=frame,
                    covariates=covariates.Covariates(f, covariate_names) if covariate_names else None,
                    diurnal_change=diurnal_change,
                    **kw,
                )
            )
        else:
            streams.append(WindowStream(f, cfg.context, cfg.horizon, cfg.patch, **kw))
    if departures:
        scale = departure_scale([s.moments for s in streams]) if scale is None else scale  # type: ignore[attr-defined]
        for s in streams:
            s.scale = scale  # type: ignore[attr-defined]
    if len(streams) == 1:
        stream = streams[0]
        stream.length, stream.start_index = length, start_index
        return stream, scale
    weights = [len(s.starts) * f.shape[0] * f.shape[1] for s, f in zip(streams, fields, strict=True)]  # type: ignore[attr-defined]
    return MixedStream(streams, weights, seed=seed, length=length, start_index=start_index), scale


@torch.no_grad()
def validation_loss(
    denoiser: torch.nn.Module, stream: IndexedStream, loss: Loss, cfg: TrainConfig, device: torch.device
) -> float:
    """Mean of the run's ``loss`` on a fixed stream of held-out windows with fixed noise (and steps)."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 104729)
    losses = [float(loss(denoiser, batch, gen, device)) for batch in _batches(stream, cfg.batch_size, 0)]
    return float(np.mean(losses))


def objective(
    cfg: TrainConfig, diff_cfg: DiffusionConfig, base: LoadedModel | None, scale: np.ndarray | None
) -> Loss:
    """The loss a run minimises: the DyDiff loss, or (``cfg.objective == "crps"``) the fair CRPS of members
    drawn by the base checkpoint's recommended sampler (:mod:`dydiff_earth.crps_tuning`)."""
    schedule = make_schedule(diff_cfg)
    if cfg.objective == "denoise":
        return lambda net, batch, gen, dev: _batch_loss(net, batch, schedule, diff_cfg, cfg.context, gen, dev)
    assert base is not None  # check_objective
    sampler = with_recommended_sampler(ForecastConfig(), base)
    assert sampler.sampling_steps is not None
    return crps_tuning.SampledCRPS(
        solve=SOLVER_FUNCTIONS[sampler.solver],
        timesteps=tuple(sampling_timesteps(schedule, sampler.sampling_steps, sampler.spacing)),
        schedule=schedule,
        context=cfg.context,
        members=cfg.crps_members,
        variables=base.variables,
        scale=None if scale is None else torch.from_numpy(np.asarray(scale, np.float32)),
        clip=sampler.clip,
    )


def check_objective(cfg: TrainConfig, frame: str, variables: Sequence[VariableSpec]) -> None:
    """Refuse, in one line, an objective this run cannot minimise."""
    check_choice(cfg.objective, OBJECTIVES, "--objective")
    if cfg.objective == "denoise":
        return
    if cfg.init_from is None:
        raise InputError("--objective crps tunes a trained model's sampled members: give --init-from")
    if cfg.crps_members < 2:
        raise InputError(f"--crps-members must be 2 or more (the fair CRPS pairs them): {cfg.crps_members}")
    if frame == "diurnal" and any(v.transform != "none" for v in variables):
        raise InputError("--objective crps in the diurnal frame needs variables without a transform")


def fit(
    fields: Fields | Sequence[Fields],
    model_cfg: ModelConfig,
    diff_cfg: DiffusionConfig,
    cfg: TrainConfig,
    output: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: Progress | None = None,
    base: LoadedModel | None = None,
) -> TrainResult:
    """Train a Dynamical Diffusion model on windows of ``fields`` and write checkpoints to ``output``.

    ``fields`` may be several stores on one normalisation (open the others with the first one's ``stats``).
    Checkpoints are written every ``cfg.checkpoint_every`` steps and at the end; ``resume=True``
    continues a killed run exactly (weights, EMA, optimiser, RNG, data position), bit-identically on CPU.
    ``base`` is ``base_model(cfg)`` where the caller has loaded it already (to open ``fields`` with its
    normalisation).
    """
    output = Path(output)
    stores = [fields] if isinstance(fields, Fields) else list(fields)
    if not stores:
        raise InputError("no data to train on")
    base = base or base_model(cfg)
    if base is not None:
        # Fine-tuning: "auto" frame and covariates are the checkpoint's, and so is the diurnal cycle.
        cfg = dataclasses.replace(
            cfg,
            frame=base.frame if cfg.frame == "auto" else cfg.frame,
            covariates=base.covariates if cfg.covariates is None else cfg.covariates,
        )
    frame = resolve_frame(cfg.frame, stores[0])
    names = resolve_covariates(cfg.covariates, frame, stores[0])
    check_objective(cfg, frame, stores[0].variables)
    change = None
    if base is not None and base.diurnal_change is not None:
        change = base.diurnal_change.astype(np.float32)
    elif frame == "diurnal":
        if any(f.shape != stores[0].shape for f in stores):
            raise InputError("the diurnal frame learns the cycle of one grid: give stores of one grid")
        # The training stores' mean change by time of day (normalised units), shipped in the checkpoint.
        change = np.mean([diurnal.mean_change(f) for f in stores], axis=0).astype(np.float32)
    dev = resolve_device(device)
    io.check_writable(output)  # before any training is spent on it
    rank, world = _distributed()
    if world > 1 and cfg.objective == "crps":
        # DistributedDataParallel reduces gradients once per forward; the tune calls the network once a
        # solver step. Untested under torchrun, so refused rather than run wrong.
        raise InputError("--objective crps runs in one process, not under torchrun")
    if world > 1 and dev.type == "cuda" and dev.index is None:
        # torchrun starts one process per GPU of a node: each takes the GPU of its local rank.
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    length = cfg.context + cfg.horizon
    splits = [split_starts(f, length, cfg.validation_fraction) for f in stores]
    torch.manual_seed(cfg.seed)
    channels = len(stores[0].variables)
    condition = channels + len(names) if frame in motion.DEPARTURE_FRAMES else 0
    denoiser = ConditionedDenoiser(
        model_cfg, channels=channels, context=cfg.context, condition_channels=condition
    )
    if base is not None:
        _check_base(base, model_cfg, diff_cfg, cfg, frame, names, stores[0])
        net = base.denoiser.net
        if net.cfg.blocks_per_level < model_cfg.blocks_per_level:
            net = deepen(net, model_cfg.blocks_per_level)
        denoiser.net.load_state_dict(net.state_dict())  # the network holds all of a denoiser's weights
    denoiser = denoiser.to(dev)
    ema = _EMA(denoiser, cfg.ema_decay)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + rank)
    step = 0
    if resume:
        step = _restore(output, denoiser, ema, opt, gen, stores[0].variables)
    model: torch.nn.Module = denoiser
    if world > 1:
        ids = [dev.index] if dev.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(denoiser, device_ids=ids)
    stream, scale = training_streams(
        stores,
        cfg,
        frame,
        [tr for tr, _ in splits],
        seed=cfg.seed,
        covariate_names=names,
        diurnal_change=change,
        start_index=step * cfg.batch_size * world,
        # Fine-tuning keeps the units the network learned in.
        scale=None if base is None else base.departure_scale,
    )
    val_stores = [(f, va) for f, (_, va) in zip(stores, splits, strict=True) if va]
    val_stream = None
    if val_stores:
        val_stream, _ = training_streams(
            [f for f, _ in val_stores],
            cfg,
            frame,
            [va for _, va in val_stores],
            seed=cfg.seed + 7919,
            covariate_names=names,
            diurnal_change=change,
            length=4 * cfg.batch_size,
            scale=scale,
            train=False,
        )
    meta = checkpoint_meta(
        stores[0], model_cfg, diff_cfg, cfg, parameters=sum(p.numel() for p in denoiser.parameters())
    )
    meta["frame"] = frame
    if base is not None:
        meta["init_from"] = {"path": base.path, "sha256": base.sha256}
    if cfg.objective == "crps" and base is not None and "sampler" in base.meta:
        # Its forecasts take the sampler it was tuned through, and the base's inflation with it.
        evidence = f"the sampler of {Path(base.path).stem}, which this network was tuned through"
        meta["sampler"] = {**base.meta["sampler"], "evidence": evidence}
    loss_of = objective(cfg, diff_cfg, base, scale)
    if names:
        meta["covariates"] = list(names)
    if scale is not None:
        meta["departure_scale"] = [float(v) for v in scale]
    if len(stores) > 1:
        meta["data"] = {
            "source": " + ".join(str(f.source) for f in stores),
            "sources": [str(f.source) for f in stores],
            "time_start": str(min(f.times[0] for f in stores)),
            "time_end": str(max(f.times[-1] for f in stores)),
            "frames": sum(len(f.times) for f in stores),
            "segments": sum(len(f.segments) for f in stores),
        }
    constants = {} if change is None else {diurnal.TENSOR: torch.from_numpy(change)}
    autocast = dev.type == "cuda"
    loss_value, val_loss, t0, seen = math.nan, None, time.perf_counter(), 0
    batches = _batches(stream, cfg.batch_size, cfg.num_workers)
    while step < cfg.steps:
        batch = next(batches)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(model, batch, gen, dev)
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(denoiser.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(denoiser, step)
        step += 1
        seen += batch["frames"].shape[0] * world
        loss_value = float(loss.detach())
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        if val_stream is not None and (step % cfg.validate_every == 0 or step == cfg.steps):
            val_loss = validation_loss(denoiser, val_stream, loss_of, cfg, dev)
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save(
                output,
                denoiser,
                ema,
                opt,
                gen,
                step,
                {**meta, "train_loss": loss_value, "validation_loss": val_loss},
                constants,
            )
        if rank == 0 and cfg.snapshot_every and step % cfg.snapshot_every == 0:
            # Forecast weights kept along the way, to plot skill against training steps.
            snapshot = output.with_name(f"{output.stem}.step{step}{output.suffix}")
            io.save_checkpoint(
                snapshot, {**ema.shadow, **constants}, {**meta, "step": step, "train_loss": loss_value}
            )
        if progress is not None and rank == 0:
            progress(step, cfg.steps, loss_value, rate)
    return TrainResult(output, step, loss_value, val_loss, seen / max(time.perf_counter() - t0, 1e-9))
