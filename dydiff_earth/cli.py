"""The ``dydiff-earth`` command line: parses options, calls one library function per command, prints.

Heavy modules (torch, cartopy) are imported inside the commands so that ``--help`` stays fast.
Exit status: 0 success, 1 unexpected failure, 2 bad input or options, 3 stale input (``run``).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from dydiff_earth import allocator
from dydiff_earth.errors import InputError, StaleInputError

app = typer.Typer(
    name="dydiff-earth",
    help="Probabilistic forecasts of gridded fields (radar, ERA5, turbulence) with Dynamical Diffusion.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _say(text: str) -> None:
    """One line to the user as it is: paths and names are not rich markup, and long lines are not cut."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _warning_line(message: Warning | str, *_: Any, **__: Any) -> None:
    """A warning reaches the user as one line, like an error, not as Python's file-and-line report."""
    _say(f"warning: {message}")


def user_errors(func: F) -> F:
    """Turn an ``InputError`` into one line on stderr and exit status 2 (3 for stale input)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _warning_line
        try:
            return func(*args, **kwargs)
        except StaleInputError as exc:
            console.print(f"[bold red]stale input:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(3) from None
        except InputError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _split(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _check_units(units: str | None) -> None:
    from dydiff_earth.schema import DISPLAY_UNITS

    if units is not None and units not in DISPLAY_UNITS:
        raise InputError(f"--units must be {' or '.join(DISPLAY_UNITS)}, not {units!r}")


#: ``--workers`` / ``--scheduler`` of the commands that spread init times over dask.distributed workers.
Workers = Annotated[
    int | None, typer.Option(help="spread init times over a local dask cluster of N worker processes")
]
Scheduler = Annotated[
    str | None, typer.Option(help="spread init times over the dask cluster at ADDRESS (tcp://host:8786)")
]


#: Training options that ``train`` and ``study`` share.
Preset = Annotated[str, typer.Option(help="model: tiny, radar, radar-fast, radar-deep, small or paper")]
Context = Annotated[int, typer.Option(help="context frames P")]
Horizon = Annotated[int, typer.Option(help="target frames L")]
Patch = Annotated[int, typer.Option(help="square crop size in grid points")]
BatchSize = Annotated[int, typer.Option(help="windows per step")]
LearningRate = Annotated[float, typer.Option(help="AdamW learning rate")]
Eta = Annotated[float, typer.Option(help="DDIM stochasticity: 0 deterministic to 1 (fresh noise every step)")]
ProbMatching = Annotated[
    str,
    typer.Option(help="cdf: members' rain given the last observation's values, ranks kept (STEPS); or none"),
]
Spacing = Annotated[
    str | None,
    typer.Option(
        help="solver steps evenly spaced in time (the paper's) or logsnr (log signal-to-noise); "
        "default: the checkpoint's recommendation, else time"
    ),
]
RainMask = Annotated[
    bool,
    typer.Option(
        "--rain-mask/--no-rain-mask",
        help="rain at lead k only within k cells of the observed rain (STEPS's mask)",
    ),
]
SamplingSteps = Annotated[
    int | None,
    typer.Option(help="solver steps, fewer is faster; default: the checkpoint's recommendation, else 10"),
]
Inflation = Annotated[
    float | None,
    typer.Option(
        help="members' spread about their mean widened by this factor (1: as sampled); "
        "default: the checkpoint's recommendation, else 1"
    ),
]
InflationScale = Annotated[
    float | None,
    typer.Option(
        help="widen the spread only above this scale, in grid cells (0: all scales); "
        "default: the checkpoint's recommendation, else 0"
    ),
]


def _floats(text: str | None, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in _split(text) or [])
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, e.g. 1,4; got {text!r}") from None


@app.command()
@user_errors
def synth(
    kind: Annotated[str, typer.Argument(help="turbulence (2-D Navier-Stokes u, v) or precip (rain cells)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="zarr store to write")],
    sequences: Annotated[int, typer.Option(help="independent sequences, separated by time gaps")] = 4,
    frames: Annotated[int, typer.Option(help="frames per sequence")] = 40,
    size: Annotated[int, typer.Option(help="grid points per side")] = 64,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same fields)")] = 0,
) -> None:
    """Write deterministic synthetic fields as a CF zarr store."""
    from dydiff_earth import synthetic

    if kind not in ("turbulence", "precip"):
        raise InputError(f"unknown kind {kind!r}; choose turbulence or precip")
    for name, value in (("--sequences", sequences), ("--frames", frames), ("--size", size)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    path = synthetic.write(kind, output, sequences=sequences, frames=frames, size=size, seed=seed)  # type: ignore[arg-type]
    console.print(f"wrote {kind} fields to {path}")


@app.command()
@user_errors
def prepare(
    sources: Annotated[list[str], typer.Argument(help="NetCDF files, globs, zarr stores or radar files")],
    output: Annotated[Path, typer.Option("--output", "-o", help="analysis-ready zarr store to write")],
    variables: Annotated[str | None, typer.Option(help="comma-separated variables (default: all)")] = None,
    coarsen: Annotated[int, typer.Option(help="block-average N x N cells (NaN if any cell is NaN)")] = 1,
    time: Annotated[str | None, typer.Option(help="time range START:END (either side may be empty)")] = None,
    radar_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="radar files: odim, mch_gif, fmi_pgm, knmi_hdf5, ... (default: detected)"
        ),
    ] = None,
    time_pattern: Annotated[
        str | None, typer.Option(help="radar files: valid time in the name, e.g. %Y%m%d%H%M (? any char)")
    ] = None,
    zr: Annotated[
        str | None,
        typer.Option(help="radar reflectivity: Z = a R^b as a,b (default: the network's, else 200,1.6)"),
    ] = None,
    min_rate: Annotated[
        float | None,
        typer.Option(help="radar files: rates below this (mm h-1) become 0 (default 0.05 from dBZ)"),
    ] = None,
) -> None:
    """Turn NetCDF/zarr sources, or native radar files, into an analysis-ready zarr (format 3) store.

    Radar files (ODIM HDF5, MeteoSwiss GIF, FMI PGM, ...) are read with pysteps' importers; a rerun
    appends only the frames the store lacks, and bad files are skipped with a warning.
    """
    from dydiff_earth import data, native

    if coarsen < 1:
        raise InputError(f"--coarsen must be at least 1, got {coarsen}")
    src = sources[0] if len(sources) == 1 else sources
    if native.is_native(src, radar_format):
        if variables is not None:
            raise InputError("--variables does not apply to radar files (they hold one field, precip)")
        coefficients = _floats(zr, "--zr")
        if zr is not None and len(coefficients) != 2:
            raise InputError(f"--zr takes two numbers a,b (Z = a R^b), e.g. 200,1.6; got {zr!r}")
        result = native.ingest(
            src,
            output,
            format=radar_format,
            time_pattern=time_pattern,
            zr=(coefficients[0], coefficients[1]) if coefficients else None,
            min_rate=min_rate,
            coarsen=coarsen,
            time=time,
        )
        for path, reason in result.skipped:
            _say(f"warning: skipped {path}: {reason}")
        newest = "none" if result.newest is None else result.newest.isoformat()
        _say(
            f"added {result.added} frame(s) of {result.format} to {output}: "
            f"{result.total} in all, newest {newest}"
        )
        return
    if radar_format or time_pattern or zr or min_rate is not None:
        raise InputError("--format, --time-pattern, --zr and --min-rate apply to radar files only")
    path = data.prepare(src, output, variables=_split(variables), coarsen=coarsen, time=time)
    console.print(f"wrote {path}")


@app.command()
@user_errors
def train(
    data_paths: Annotated[
        list[str],
        typer.Option(
            "--data", help="zarr store (path or URL) or NetCDF file(s) to train on; repeat for several"
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="checkpoint to write")] = Path(
        "model.safetensors"
    ),
    variables: Annotated[str | None, typer.Option(help="comma-separated variables (default: all)")] = None,
    preset: Preset = "small",
    frame: Annotated[
        str,
        typer.Option(
            help="auto, eulerian, persistence (departures on the grid) or lagrangian (motion frame); "
            "auto: lagrangian for precipitation, persistence on geographic grids, else eulerian"
        ),
    ] = "auto",
    covariates: Annotated[
        str,
        typer.Option(
            help="auto, none or comma-separated fields given to the network: latitude, sin_longitude, "
            "cos_longitude, land, sin_solar_hour, cos_solar_hour, sin_day_of_year, cos_day_of_year"
        ),
    ] = "auto",
    context: Context = 4,
    horizon: Horizon = 6,
    patch: Patch = 32,
    batch_size: BatchSize = 8,
    steps: Annotated[int, typer.Option(help="optimiser steps")] = 1000,
    lr: LearningRate = 2e-4,
    gamma_ratio: Annotated[float, typer.Option(help="DyDiff gamma ratio r; 0 is plain diffusion")] = 0.5,
    loss: Annotated[str, typer.Option(help="unmixed (default) or mixed (the reference's)")] = "unmixed",
    target_weight: Annotated[float, typer.Option(help="loss weight of target vs context frames")] = 1.0,
    lead_weight_power: Annotated[
        float, typer.Option(help="target k steps ahead weighs k**P in the loss (0: every lead alike)")
    ] = 0.0,
    ema: Annotated[float, typer.Option(help="EMA decay of weights (0 disables)")] = 0.999,
    rain_weighted: Annotated[bool, typer.Option(help="favour crops with precipitation")] = False,
    rain_scale: Annotated[
        float | None,
        typer.Option(
            help="learn precipitation as log1p(rate / R), R in its units: default 1; 0.1 parts dry from "
            "light rain more (a fine-tune keeps its checkpoint's)"
        ),
    ] = None,
    time: Annotated[str | None, typer.Option(help="training time range START:END")] = None,
    validation_fraction: Annotated[float, typer.Option(help="tail of the record held out")] = 0.1,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 200,
    snapshot_every: Annotated[int, typer.Option(help="keep weights every N steps (0: never)")] = 0,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    resume: Annotated[bool, typer.Option(help="continue the run that wrote --output")] = False,
    lr_schedule: Annotated[
        str, typer.Option(help="constant, or cosine (5 % warm-up, then down to 0 at --steps)")
    ] = "constant",
    init_from: Annotated[
        str | None,
        typer.Option(
            help="fine-tune: start from this checkpoint (path or shipped model, e.g. radar-4km-v1) "
            "and its normalisation; give its --preset, --context, --horizon and --frame, or a preset "
            "with more blocks per level (radar-deep for radar): the checkpoint is grown, its forecast kept"
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="denoise (the DyDiff loss), or crps: tune the --init-from model on the fair CRPS of "
            "members drawn by its own sampler"
        ),
    ] = "denoise",
    crps_members: Annotated[int, typer.Option(help="members drawn per window with --objective crps")] = 2,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train a Dynamical Diffusion model and write a checkpoint (torchrun for several GPUs)."""
    from dydiff_earth import config, data
    from dydiff_earth import train as training

    if loss not in ("unmixed", "mixed"):
        raise InputError(f"--loss must be unmixed or mixed, got {loss!r}")
    if not 0.0 <= gamma_ratio <= 1.0:
        raise InputError(f"--gamma-ratio must lie in [0, 1], got {gamma_ratio}")
    if lead_weight_power < 0:
        raise InputError(f"--lead-weight-power must be 0 or more, got {lead_weight_power}")
    config.check_choice(lr_schedule, config.LR_SCHEDULES, "--lr-schedule")
    model_cfg = config.preset(preset)
    diff_cfg = config.DiffusionConfig(
        gamma_ratio=gamma_ratio,
        loss=loss,  # type: ignore[arg-type]
        target_weight=target_weight,
        lead_weight_power=lead_weight_power,
    )
    cfg = config.TrainConfig(
        context=context,
        horizon=horizon,
        patch=patch,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        ema_decay=ema,
        seed=seed,
        rain_weighted=rain_weighted,
        checkpoint_every=checkpoint_every,
        validation_fraction=validation_fraction,
        num_workers=workers,
        frame=frame,
        covariates={"auto": None, "none": ()}.get(covariates, tuple(_split(covariates) or ())),
        snapshot_every=snapshot_every,
        lr_schedule=lr_schedule,
        init_from=init_from,
        objective=objective,
        crps_members=crps_members,
    )
    # Every store is normalised like the first (or like the model fine-tuned), so one model sees one scale.
    base = training.base_model(cfg)
    stats = None if base is None else base.variables
    first = data.open_fields(data_paths[0], _split(variables), time=time, stats=stats, rain_scale=rain_scale)
    fields = [first] + [
        data.open_fields(p, _split(variables), time=time, stats=first.variables) for p in data_paths[1:]
    ]
    with _Progress(quiet) as bar:

        def report(step: int, total: int, value: float, rate: float) -> None:
            bar.update(step, total, f"loss {value:.4f} | {rate:.1f} samples/s")

        result = training.fit(
            fields, model_cfg, diff_cfg, cfg, output, resume=resume, device=device, progress=report, base=base
        )
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 writes the checkpoint, so only it reports
    val = f", validation loss {result.validation_loss:.4f}" if result.validation_loss is not None else ""
    console.print(
        f"wrote {result.checkpoint} after {result.steps} steps: train loss {result.train_loss:.4f}{val}, "
        f"{result.samples_per_second:.1f} samples/s"
    )


@app.command()
@user_errors
def forecast(
    input_path: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", help="zarr store (path or URL) or NetCDF file(s); default: embedded demo"
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="checkpoint path or shipped model name; default: the shipped model that fits the input"
        ),
    ] = None,
    variables: Annotated[
        str | None, typer.Option(help="comma-separated variables (default: the model's)")
    ] = None,
    init_time: Annotated[str, typer.Option(help="ISO time of the last context frame, or latest")] = "latest",
    lead_times: Annotated[
        int | None, typer.Option(help="lead times to forecast (default: trained horizon)")
    ] = None,
    members: Annotated[int, typer.Option(help="ensemble members")] = 8,
    sampling_steps: SamplingSteps = None,
    solver: Annotated[
        str, typer.Option(help="dpmpp2m (DPM-Solver++(2M), second order), or ddim")
    ] = "dpmpp2m",
    eta: Eta = 0.0,
    precision: Annotated[
        str,
        typer.Option(help="network arithmetic: fp32, bf16, or auto (bf16 where the hardware has it)"),
    ] = "fp32",
    prob_matching: ProbMatching = "cdf",
    rain_mask: RainMask = True,
    spacing: Spacing = None,
    inflation: Inflation = None,
    inflation_scale: InflationScale = None,
    seed: Annotated[int, typer.Option(help="random seed; member k depends only on (seed, init time, k)")] = 0,
    batch_size: Annotated[int, typer.Option(help="members sampled together (memory; never the numbers)")] = 8,
    thresholds: Annotated[
        str | None, typer.Option(help="exceedance thresholds, e.g. 1,4 (input units)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="OUT.nc or OUT.zarr")] = Path(
        "dydiff-output/forecast.nc"
    ),
    maps: Annotated[
        Path | None,
        typer.Option(help="directory for PNG maps and an animation; replaces an earlier forecast's maps"),
    ] = Path("dydiff-output/maps"),
    no_maps: Annotated[bool, typer.Option("--no-maps", help="skip the maps")] = False,
    units: Annotated[
        str | None,
        typer.Option(help="show temperatures on the maps in K or degC (the file keeps the input's)"),
    ] = None,
    no_anchor: Annotated[
        bool, typer.Option("--no-anchor", help="let the sampler denoise the context too")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    devices: Annotated[
        str | None,
        typer.Option(help="split the members over devices, e.g. cuda:0,cuda:1 or all (same numbers)"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar (for scheduled jobs)")] = False,
) -> None:
    """Ensemble forecast written as CF NetCDF/zarr on the input's grid, with maps."""
    from dydiff_earth import config, pipeline, probmatch

    if devices is not None and device != "auto":
        raise InputError("give --device (one device) or --devices (members split over several), not both")

    if output.suffix not in (".nc", ".zarr"):
        # Checked before sampling, which may take minutes, rather than when writing.
        raise InputError(f"--output {output} must end in .nc (NetCDF) or .zarr")
    _check_units(units)
    for name, value in (
        ("--members", members),
        ("--sampling-steps", 1 if sampling_steps is None else sampling_steps),
        ("--batch-size", batch_size),
    ):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    config.check_choice(solver, config.SOLVERS, "--solver")
    config.check_choice(precision, config.PRECISIONS, "--precision")
    config.check_choice(prob_matching, probmatch.MATCHINGS, "--prob-matching")
    if spacing is not None:
        config.check_choice(spacing, config.SPACINGS, "--spacing")
    config.check_inflation(1.0 if inflation is None else inflation, inflation_scale or 0.0)
    request = pipeline.ForecastRequest(
        input=input_path,
        checkpoint=checkpoint,
        variables=tuple(_split(variables) or ()) or None,
        init_time=None if init_time == "latest" else init_time,
        lead_times=lead_times,
        forecast=config.ForecastConfig(
            members=members,
            sampling_steps=sampling_steps,
            seed=seed,
            batch_size=batch_size,
            anchor_context=not no_anchor,
            solver=solver,
            eta=eta,
            precision=precision,
            prob_matching=prob_matching,
            rain_mask=rain_mask,
            spacing=spacing,
            inflation=inflation,
            inflation_scale=inflation_scale,
        ),
        thresholds=_floats(thresholds, "--thresholds"),
        output=output,
        maps=None if no_maps else maps,
        map_units=units,
        device=device,
        command_line=" ".join(["dydiff-earth", *sys.argv[1:]]),
        devices=devices,
    )
    with _Progress(quiet) as bar:

        def report(done: int, total: int) -> None:
            bar.update(done, total, "sampling members x steps")

        result = pipeline.run_forecast(request, progress=report)
    if checkpoint is None and input_path is not None:
        console.print(f"no --checkpoint: the shipped model {Path(result.model).stem!r} fits this input")
    console.print(
        f"wrote {result.output}: {result.members} members x {result.lead_times} lead times from "
        f"{str(result.init_time)[:16]} in {result.seconds:.0f} s"
        + (f"; {len(result.maps)} maps in {request.maps}" if result.maps else "")
    )


@app.command()
@user_errors
def plot(
    forecast_path: Annotated[Path, typer.Argument(help="forecast file (.nc or .zarr)")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="directory for the maps; replaces an earlier forecast's maps"),
    ] = Path("dydiff-output/maps"),
    truth: Annotated[str | None, typer.Option(help="observations to draw next to the members")] = None,
    units: Annotated[str | None, typer.Option(help="show temperatures in K or degC")] = None,
) -> None:
    """Draw maps (and an animation) of a forecast file."""
    from dydiff_earth import io, plotting

    _check_units(units)
    ds = io.open_forecast(forecast_path)
    obs = None
    if truth is not None:
        from dydiff_earth import data, pipeline, schema

        obs = pipeline.observed(data.open_fields(truth, schema.forecast_variables(ds)), ds)
    paths = plotting.plot_forecast(ds, output, truth=obs, units=units)
    console.print(f"wrote {len(paths)} maps to {output}")


@app.command()
@user_errors
def run(
    job_file: Annotated[Path, typer.Argument(help="job file, e.g. pipelines/nowcast-radar.yaml")],
    now: Annotated[
        str | None, typer.Option(help="pretend the clock reads this ISO time (tests, replays)")
    ] = None,
    backfill: Annotated[str | None, typer.Option(help="produce every missing init time in START:END")] = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
) -> None:
    """One tick of a scheduled forecast job (exit 0 done or no-op, 2 bad input, 3 stale, 1 failure)."""
    from dydiff_earth import jobs

    job, _ = jobs.load_job(job_file)
    result = jobs.run_job(job, now=now, backfill=backfill, workers=workers, scheduler=scheduler)
    _say(result.message)
    raise typer.Exit(result.code)


@app.command()
@user_errors
def feed(
    source: Annotated[str, typer.Argument(help="store to take frames from (e.g. a synth precip store)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="zarr store that grows by appending")],
    frames: Annotated[int, typer.Option(help="frames to append per call")] = 1,
) -> None:
    """Simulate a live feed: append the next frames of SOURCE to a zarr store along time."""
    from dydiff_earth import jobs

    state = jobs.append_frames(source, output, frames)
    _say(f"appended {state.added} frame(s) to {output}: {state.total} in all, newest {state.newest}")


@app.command()
@user_errors
def evaluate(
    forecast_path: Annotated[Path, typer.Option("--forecast", "-f", help="forecast file (.nc or .zarr)")],
    truth: Annotated[str, typer.Option(help="observations on the forecast's grid (store, file or glob)")],
    thresholds: Annotated[
        str | None, typer.Option(help="event thresholds, e.g. 1,4 (variable units)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="scores file (NetCDF)")] = Path(
        "dydiff-output/scores.nc"
    ),
    report: Annotated[Path | None, typer.Option(help="directory for an HTML/Markdown report")] = None,
) -> None:
    """Score a forecast file against observations at its valid times."""
    from dydiff_earth import verify

    scores = verify.evaluate(
        forecast_path, truth, thresholds=_floats(thresholds, "--thresholds"), output=output, report_dir=report
    )
    crps = [str(n) for n in scores.data_vars if str(n).endswith("crps_fair")]
    summary = ", ".join(f"{n} {float(scores[n].mean()):.4g} {scores[n].attrs.get('units', '')}" for n in crps)
    if "fair_crps" in scores.attrs:
        _say(f"fair CRPS of {scores.attrs['fair_crps']}")
    console.print(
        f"wrote {output}: mean {summary} over {scores.sizes['lead_time']} lead times"
        + (f"; report in {report}" if report else "")
    )


@app.command()
@user_errors
def skill(
    data_path: Annotated[
        str, typer.Option("--data", help="observations: inputs and truth (store, URL or files)")
    ],
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(help="checkpoint path or shipped name (repeatable); default: 'demo' if it fits"),
    ] = None,
    baselines: Annotated[
        str,
        typer.Option(
            help="comma-separated: persistence, extrapolation, steps, diurnal (learns from before --time)"
        ),
    ] = "persistence,extrapolation",
    time: Annotated[str | None, typer.Option(help="held-out period START:END")] = None,
    init_stride: Annotated[
        int | None, typer.Option(help="init at every N-th window start (default 4, radar-4km-v1)")
    ] = None,
    inits: Annotated[int | None, typer.Option(help="N evenly spaced init times instead")] = None,
    members: Annotated[int, typer.Option(help="ensemble members")] = 8,
    lead_times: Annotated[
        int | None, typer.Option(help="lead times (default: model horizon, else 12)")
    ] = None,
    sampling_steps: SamplingSteps = None,
    solver: Annotated[str, typer.Option(help="dpmpp2m or ddim, for the model systems")] = "dpmpp2m",
    eta: Eta = 0.0,
    precision: Annotated[
        str, typer.Option(help="network arithmetic of the model systems: fp32, bf16 or auto")
    ] = "fp32",
    prob_matching: ProbMatching = "cdf",
    rain_mask: RainMask = True,
    spacing: Spacing = None,
    inflation: Inflation = None,
    inflation_scale: InflationScale = None,
    thresholds: Annotated[
        str | None, typer.Option(help="event thresholds, e.g. 1,4 (variable units)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    report: Annotated[Path, typer.Option(help="directory for scores.nc, summary.json and the report")] = Path(
        "dydiff-output/skill"
    ),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    workers: Workers = None,
    scheduler: Scheduler = None,
) -> None:
    """Compare checkpoints and baselines on the same init times of a held-out period, with a report."""
    from dydiff_earth import cluster, verify

    cluster.check_options(workers, scheduler)
    checkpoints = checkpoint or []
    if not checkpoint:
        checkpoints, note = verify.default_checkpoints(data_path, time=time)
        if note:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
    with _Progress(quiet) as bar:

        def tick(system: str, done: int, total: int) -> None:
            bar.update(done, total, system)

        result = verify.skill(
            data_path,
            checkpoints,
            _split(baselines) or [],
            time=time,
            init_stride=init_stride,
            inits=inits,
            members=members,
            lead_times=lead_times,
            sampling_steps=sampling_steps,
            solver=solver,
            eta=eta,
            precision=precision,
            prob_matching=prob_matching,
            rain_mask=rain_mask,
            spacing=spacing,
            inflation=inflation,
            inflation_scale=inflation_scale,
            thresholds=_floats(thresholds, "--thresholds"),
            seed=seed,
            report_dir=report,
            device=device,
            progress=tick,
            workers=workers,
            scheduler=scheduler,
        )
    for failure in result.failed:
        _say(
            f"warning: init {failure.init_time} failed ({failure.system}), left out of the scores: "
            f"{failure.error}"
        )
    rows = result.summary["systems"].items()
    # One number per system and variable ("crps_fair", or "<var>_crps_fair" for several variables).
    crps = ", ".join(
        f"{name} {key.removesuffix('crps_fair')}{value:.4g}"
        for name, row in rows
        for key, value in row.items()
        if key.endswith("crps_fair") and value is not None
    )
    if result.summary["options"]["fair_crps"]:
        _say(f"fair CRPS of {result.summary['options']['fair_crps']}")
    console.print(
        f"wrote {result.report}: {len(result.init_times)} init times, fair CRPS {crps} "
        f"in {sum(result.seconds.values()):.0f} s",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@user_errors
def study(
    kind: Annotated[str, typer.Argument(help="gamma: Dynamical Diffusion against plain diffusion")],
    data_path: Annotated[str, typer.Option("--data", help="store to train on and score on (store or URL)")],
    time: Annotated[
        str, typer.Option(help="held-out period START:END; the models train on the frames before it")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="study directory (rerun to continue)")
    ] = Path("dydiff-output/study"),
    ratios: Annotated[
        str,
        typer.Option(
            help="settings RATIO[:LOSS][:FRAME], comma-separated; the first is the reference, "
            "e.g. 0,0.5,0.5:mixed"
        ),
    ] = "0,0.5",
    seeds: Annotated[int, typer.Option(help="training runs per setting")] = 3,
    steps: Annotated[int, typer.Option(help="optimiser steps per model")] = 1000,
    curve_every: Annotated[int, typer.Option(help="steps between learning-curve points")] = 250,
    preset: Preset = "radar",
    context: Context = 4,
    horizon: Horizon = 6,
    patch: Patch = 64,
    batch_size: BatchSize = 8,
    lr: LearningRate = 2e-4,
    inits: Annotated[int, typer.Option(help="held-out init times of the final scores")] = 16,
    curve_inits: Annotated[int, typer.Option(help="init times of each learning-curve point")] = 4,
    members: Annotated[int, typer.Option(help="ensemble members")] = 8,
    sampling_steps: Annotated[int, typer.Option(help="solver steps")] = 10,
    solver: Annotated[str, typer.Option(help="ddim or dpmpp2m")] = "ddim",
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples of the confidence intervals")] = 2000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train one network under several diffusion settings and compare them on held-out data, with a report.

    Seed k of every setting sees the same initial weights, windows, crops and noise. Rerun the same
    command to continue a stopped study (or with a larger --steps to train further).
    """
    from dydiff_earth import config
    from dydiff_earth import study as studies

    if kind != "gamma":
        raise InputError(f"unknown study {kind!r}; the study there is: gamma")
    config.check_choice(solver, config.SOLVERS, "--solver")
    config.preset(preset)
    plan = studies.GammaStudy(
        data=data_path,
        time=time,
        settings=studies.parse_settings(ratios),
        seeds=seeds,
        preset=preset,
        train=config.TrainConfig(
            context=context, horizon=horizon, patch=patch, batch_size=batch_size, steps=steps, lr=lr
        ),
        curve_every=curve_every,
        inits=inits,
        curve_inits=curve_inits,
        members=members,
        sampling_steps=sampling_steps,
        solver=solver,
        bootstrap=bootstrap,
    )
    with _Progress(quiet) as bar:
        report, numbers = studies.run_gamma_study(
            plan, output, device=device, progress=lambda what, done, total: bar.update(done, total, what)
        )
    from dydiff_earth.study_report import verdict

    for row in numbers["settings"]:
        if "ratio" in row:
            console.print(verdict(row, numbers["reference"]), highlight=False, soft_wrap=True)
    console.print(f"wrote {report}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def recommend(
    checkpoint: Annotated[
        Path, typer.Argument(help="checkpoint file (rewritten in place, weights unchanged)")
    ],
    sampling_steps: Annotated[int, typer.Option(help="solver steps its forecasts take when not told")],
    spacing: Annotated[str, typer.Option(help="time or logsnr: where those steps lie")],
    evidence: Annotated[
        str | None, typer.Option(help="how the choice was measured, kept with it (shown by info)")
    ] = None,
    inflation: Annotated[
        float, typer.Option(help="the members' spread inflation factor (1: as sampled)")
    ] = 1.0,
    inflation_scale: Annotated[
        float, typer.Option(help="widen the spread only above this scale, in grid cells (0: all scales)")
    ] = 0.0,
) -> None:
    """Record the sampler a checkpoint's forecasts and skill runs use unless given one."""
    from dydiff_earth.forecast import recommend_sampler
    from dydiff_earth.inflation import describe

    recommend_sampler(checkpoint, sampling_steps, spacing, evidence, inflation, inflation_scale)
    console.print(
        f"{checkpoint}: forecasts take {sampling_steps} steps, {spacing} spacing, spread inflation "
        f"{describe(inflation, inflation_scale)}, unless told",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@user_errors
def info(
    path: Annotated[str, typer.Argument(help="zarr store, NetCDF file, checkpoint or shipped model name")],
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout instead of text")] = False,
) -> None:
    """Describe a data source or a checkpoint from its metadata and a small sample (no full read)."""
    from dydiff_earth import info as inspect

    described = inspect.describe(path)
    if json_output:
        typer.echo(inspect.to_json(described))
    else:
        Console(soft_wrap=True).print(inspect.render(described), highlight=False)


class _Progress:
    """A rich progress bar on stderr that appears with the first update (never when quiet).

    Started lazily so that bad input found before any work (paths, checkpoint, options) prints its one
    error line alone, without an empty bar above it.
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, completed: int, total: int, description: str) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.bar.start()
            self.task = self.bar.add_task(description, total=total)
        self.bar.update(self.task, completed=completed, total=total, description=description)


def main() -> None:
    """Console-script entry point."""
    # pysteps checks its configuration with jsonschema, whose import compiles the grammar of the optional
    # rfc3987_syntax (the notebooks extra brings it) for IRI formats that nothing here checks: 1.1 s of
    # every command that estimates motion (2026-12-04). This process is the command's own, so skip it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    # Freed tensors reused instead of handed back to the kernel: forecasts and training 8-12 % faster on
    # the CPU (dydiff_earth/allocator.py).
    allocator.keep_freed_memory()
    app()


if __name__ == "__main__":
    sys.exit(main())
