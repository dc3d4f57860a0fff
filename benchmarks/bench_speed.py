"""Forecast speed against skill: the shipped radar model per solver, steps and precision, next to STEPS.

On the prepared MeteoSwiss store (``prepare ../shared/data/radar_mch.nc --coarsen 4``), in one run:

- per configuration (solver, sampling steps, precision), one ``dydiff-earth forecast`` command (8 members,
  12 lead times, no maps) at the first verification init, in a fresh process: wall time of the whole
  command, seconds spent sampling (``DiffusionForecaster.sample``), CPU seconds and peak resident memory
  (``os.wait4`` of that process);
- per configuration, ``dydiff-earth skill --baselines steps`` over the same ``--inits`` of the validation
  event (2017-01-31): fair CRPS of the model and of STEPS, and each system's seconds per init.

Writes a markdown table and a speed-skill PNG (fair CRPS against seconds per init). On a shared machine
wall times swing with the load: ``--timing`` times whole commands back to back next to STEPS (cold and
warm) and records CPU seconds, and ``--replot`` draws the PNG from both runs' JSON with CPU seconds of one
thread (the wall time of an idle core) on the x axis; docs/benchmarks.md, Forecast speed, used:

    python benchmarks/bench_speed.py --store mch4.zarr --inits 1 --time 2017-01-31T11:45: --workers 3 \
        --members 2 --configs ddim:50:fp32,dpmpp2m:10:bf16+,... --json run.json
    python benchmarks/bench_speed.py --store mch4.zarr --timing dpmpp2m:5:bf16,dpmpp2m:10:bf16,ddim:10:fp32 \
        > timing.json
    python benchmarks/bench_speed.py --replot run.json timing.json

``--warm N`` times N forecasts of the radar command's configuration in one process (the model loaded
once), on ``--device``: the seconds per init of a service or a skill study, without imports and file.
``--network-call`` times one network call in float32 and in bfloat16 on this CPU (``--precisions``,
``--repeats``). ``--checkpoint`` (repeatable) names the models that ``--timing`` and ``--network-call``
measure, the shipped radar model by default. ``--global-grid`` runs the whole radar forecast command
(8 members, 12 lead times, maps) on synthetic rain on a 721 x 1440 global 0.25-degree grid and reports
its peak memory. It runs one sampling step (``--global-steps``) to keep the CPU time down;
DPM-Solver++(2M) keeps one more copy of the field from its second step on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "radar_mch.nc"
MODEL, MEMBERS, LEADS = "radar-4km-v1", 8, 12
#: STEPS alone through ``verify.skill`` (no checkpoint): argv = store, time, inits, members, report.
STEPS_ONLY = """
import sys
from pathlib import Path
from dydiff_earth import verify
store, period, inits, members, report = sys.argv[1:]
verify.skill(store, [], ["steps"], time=period, inits=int(inits), members=int(members),
             lead_times=12, report_dir=Path(report))
"""
#: solver:steps:precision; a trailing "+" also runs the whole forecast command (time, memory)
DEFAULT_CONFIGS = (
    "ddim:50:fp32,ddim:10:fp32+,dpmpp2m:10:fp32+,ddim:5:fp32,dpmpp2m:5:fp32,"
    "ddim:10:bf16,dpmpp2m:10:bf16+,dpmpp2m:5:bf16+"
)
#: STEPS at one init in a fresh process, cold (first call: imports and numba compilation) and warm (the
#: same forecast again); argv = store, init time; prints both times.
STEPS_TIMED = """
import sys, time
from dydiff_earth.baselines import make_baseline
from dydiff_earth.data import open_fields
fields = open_fields(sys.argv[1], ["precip"])
steps = make_baseline("steps")
times = []
for _ in range(2):
    start = time.perf_counter()
    steps(fields, init_time=sys.argv[2], lead_times=12, n_members=8, seed=0)
    times.append(time.perf_counter() - start)
print(*times)
"""
#: Runs the CLI in this process with ``DiffusionForecaster.sample`` timed; the time goes to argv[1].
TIMED_CLI = """
import sys, time
from dydiff_earth import cli, forecast
spent, sample = [0.0], forecast.DiffusionForecaster.sample
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return sample(self, *args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - start
forecast.DiffusionForecaster.sample = timed
out, sys.argv = sys.argv[1], ["dydiff-earth", *sys.argv[2:]]
try:
    cli.main()
finally:
    open(out, "w").write(repr(spent[0]))
"""


def run(args: list[str], env: dict | None = None) -> dict:
    """Run a command in a fresh process: wall seconds, CPU seconds, peak RSS (MiB) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{output[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "cpu": cpu, "peak_mib": usage.ru_maxrss / 1024, "output": output}


def prepare(store: Path) -> None:
    if not store.exists():
        run(
            [
                sys.executable,
                "-m",
                "dydiff_earth.cli",
                "prepare",
                str(DATA),
                "--coarsen",
                "4",
                "-o",
                str(store),
            ]
        )


def options(solver: str, steps: int, precision: str) -> list[str]:
    return ["--sampling-steps", str(steps), "--solver", solver, "--precision", precision, "--quiet"]


def measure(store: Path, config: str, inits: int, work: Path, event: str, members: int) -> dict:
    config, whole = config.removesuffix("+"), config.endswith("+")
    solver, steps, precision = config.split(":")
    opts = options(solver, int(steps), precision)
    work = work / f"{solver}-{steps}-{precision}"
    report = work / "skill"
    skill = run(
        [
            *[sys.executable, "-m", "dydiff_earth.cli", "skill", "--data", str(store), "--checkpoint", MODEL],
            *["--baselines", "steps", "--time", event, "--inits", str(inits), "--members", str(members)],
            *["--lead-times", str(LEADS), "--report", str(report), *opts],
        ]
    )
    summary = json.loads((report / "summary.json").read_text())
    systems, seconds = summary["systems"], summary["seconds"]
    row = {
        "config": config,
        "solver": solver,
        "steps": int(steps),
        "precision": precision,
        "members": members,
        "skill_s_per_init": seconds[MODEL] / inits,
        "crps": systems[MODEL]["crps_fair"],
        "steps_crps": systems["steps"]["crps_fair"],
        "steps_s_per_init": seconds["steps"] / inits,
        "inits": summary["init_times"],
        "skill_wall_s": skill["wall"],
    }
    if not whole:
        return row
    first = summary["init_times"][0][:16]
    timing = work / "sample-seconds"
    command = run(
        [
            *[sys.executable, "-c", TIMED_CLI, str(timing), "forecast", "--input", str(store)],
            *["--checkpoint", MODEL, "--init-time", first, "--members", str(MEMBERS)],
            *["--lead-times", str(LEADS), "--no-maps", "--output", str(work / "forecast.nc"), *opts],
        ]
    )
    return row | {
        "command_s": command["wall"],
        "command_cpu_s": command["cpu"],
        "sample_s": float(timing.read_text()),
        "peak_mib": command["peak_mib"],
    }


def per_init(r: dict) -> float:
    """The model's forecast seconds per init scaled to 8 members (one member per network call: linear,
    a little pessimistic since the motion field and context are computed once per init)."""
    return r["skill_s_per_init"] * MEMBERS / r["members"]


def timing(store: Path, configs: list[str], init: str, work: Path, models: list[str]) -> list[dict]:
    """Back-to-back whole commands (8 members) of each model and STEPS at one init, one after the other,
    so that they share the machine's load as closely as a busy machine allows."""
    out = []
    steps = run([sys.executable, "-c", STEPS_TIMED, str(store), init])
    cold, warm = (float(x) for x in steps["output"].split()[-2:])
    out.append({"config": "steps", "cold_s": cold, "warm_s": warm, "cpu_s": steps["cpu"]})
    for model, config in ((m, c) for m in models for c in configs):
        solver, steps_n, precision = config.split(":")
        file = work / "sample-seconds"
        command = run(
            [
                *[sys.executable, "-c", TIMED_CLI, str(file), "forecast", "--input", str(store)],
                *["--checkpoint", model, "--init-time", init, "--members", str(MEMBERS)],
                *["--lead-times", str(LEADS), "--no-maps", "--output", str(work / "timing.nc")],
                *options(solver, int(steps_n), precision),
            ]
        )
        out.append(
            {"model": model, "config": config, "command_s": command["wall"], "cpu_s": command["cpu"]}
            | {"sample_s": float(file.read_text()), "peak_mib": command["peak_mib"]}
        )
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def table(rows: list[dict], steps: dict) -> str:
    """Markdown rows; times are per init, ratios to STEPS's forecast time in the same run."""
    ref = next((r["crps"] for r in rows if r["config"] == "ddim:50:fp32"), None)

    def vs_ref(crps: float) -> str:
        return f"{crps / ref:.3f}" if ref else "-"

    def whole(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    lines = [
        "| system | forecast, s per init (8 members) | x STEPS | whole command, s (CPU s) | x STEPS | "
        "sampling, s | peak RSS, MiB | fair CRPS, mm h-1 | x DDIM 50 |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| STEPS (pysteps, 8 members) | {steps['s']:.1f} | 1 | - | - | - | - | {steps['crps']:.4f} | "
        f"{vs_ref(steps['crps'])} |",
    ]
    for r in rows:
        command = f"{r['command_s']:.0f} ({r['command_cpu_s']:.0f})" if "command_s" in r else "-"
        ratio = f"{r['command_s'] / steps['s']:.0f}" if "command_s" in r else "-"
        lines.append(
            f"| {r['solver']} {r['steps']} {r['precision']} | {per_init(r):.0f} | "
            f"{per_init(r) / steps['s']:.0f} | {command} | {ratio} | {whole(r, 'sample_s', '.0f')} | "
            f"{whole(r, 'peak_mib', '.0f')} | {r['crps']:.4f} | {vs_ref(r['crps'])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], steps: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for solver, colour in (("ddim", "tab:blue"), ("dpmpp2m", "tab:orange")):
        for precision, marker in (("fp32", "o"), ("bf16", "s")):
            mine = sorted(
                (r for r in rows if (r["solver"], r["precision"]) == (solver, precision)),
                key=lambda r: r["steps"],
            )
            if not mine:
                continue
            ax.plot(
                [per_init(r) for r in mine],
                [r["crps"] for r in mine],
                marker=marker,
                color=colour,
                linestyle="-" if precision == "fp32" else "--",
                label=f"{solver} {precision}",
            )
            for r in mine:
                ax.annotate(
                    str(r["steps"]),
                    (per_init(r), r["crps"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
    ax.plot([steps["s"]], [steps["crps"]], "k*", markersize=14, label="STEPS (pysteps)")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per init (8 members x 12 leads, forecast alone; shared 2-core CPU)")
    ax.set_ylabel("fair CRPS, mm h-1 (lower is better)")
    ax.set_title(f"{MODEL} on 2017-01-31 (labels: sampling steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def seconds_per_init(rows: list[dict], timed: list[dict]) -> dict[str, tuple[float, bool]]:
    """Whole-command CPU seconds per config (one thread: the wall time of an idle core), measured
    (``True``) or estimated (``False``) as a fixed part plus a cost per step of each precision.

    The solvers cost the same per step (one network call per member). The fixed part (imports, opening,
    motion, writing) and the bf16 cost per step come from the two bf16 rows with the most different steps;
    the fp32 cost per step from a timed fp32 row and the same fixed part.
    """
    by = {t["config"]: t for t in timed if t["config"] != "steps"}

    def steps_of(config: str) -> int:
        return int(config.split(":")[1])

    bf16 = sorted((c for c in by if c.endswith("bf16")), key=steps_of)
    fixed, slope = 0.0, {}
    if len(bf16) >= 2:
        lo, hi = by[bf16[0]], by[bf16[-1]]
        slope["bf16"] = (hi["cpu_s"] - lo["cpu_s"]) / (steps_of(bf16[-1]) - steps_of(bf16[0]))
        fixed = lo["cpu_s"] - slope["bf16"] * steps_of(bf16[0])
        fp32 = [c for c in by if c.endswith("fp32")]
        if fp32:
            slope["fp32"] = (by[fp32[0]]["cpu_s"] - fixed) / steps_of(fp32[0])
    out = {}
    for r in rows:
        if r["config"] in by:
            out[r["config"]] = (by[r["config"]]["cpu_s"], True)
        elif r["precision"] in slope:
            out[r["config"]] = (fixed + slope[r["precision"]] * r["steps"], False)
    return out


def plot_timed(rows: list[dict], steps_crps: float, timed: list[dict], path: Path) -> None:
    """Fair CRPS of the skill run against whole-command seconds of the back-to-back timing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = seconds_per_init(rows, timed)
    steps_s = next(t["warm_s"] for t in timed if t["config"] == "steps")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for solver, colour in (("ddim", "tab:blue"), ("dpmpp2m", "tab:orange")):
        for precision, marker in (("fp32", "o"), ("bf16", "s")):
            mine = sorted(
                (
                    r
                    for r in rows
                    if (r["solver"], r["precision"]) == (solver, precision) and r["config"] in seconds
                ),
                key=lambda r: r["steps"],
            )
            if not mine:
                continue
            xs = [seconds[r["config"]][0] for r in mine]
            ax.plot(
                xs,
                [r["crps"] for r in mine],
                color=colour,
                linestyle="-" if precision == "fp32" else "--",
                label=f"{solver} {precision}",
            )
            for x, r in zip(xs, mine, strict=True):
                measured = seconds[r["config"]][1]
                ax.plot(
                    [x],
                    [r["crps"]],
                    marker=marker,
                    color=colour,
                    markerfacecolor=colour if measured else "white",
                )
                ax.annotate(
                    str(r["steps"]), (x, r["crps"]), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
    ax.plot([steps_s], [steps_crps], "k*", markersize=14, label="STEPS (pysteps), warm forecast alone")
    ref = next((r["crps"] for r in rows if r["config"] == "ddim:50:fp32"), None)
    if ref:
        ax.axhline(1.03 * ref, color="grey", linestyle=":", label="1.03 x DDIM 50 steps")
    ax.axvline(10 * steps_s, color="grey", linestyle="-.", label="10 x STEPS")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds per init, whole command, one thread (filled: timed; hollow: estimated)")
    ax.set_ylabel("fair CRPS, mm h-1 (lower is better)")
    ax.set_title(f"{MODEL}, 2017-01-31 12:00, 8 members x 12 leads (labels: steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def network_call(precisions: list[str], repeats: int = 2, name: str = MODEL) -> dict:
    """CPU seconds of one network call of a model (the shipped one by default) on the whole padded radar
    domain, per precision.

    Whether bfloat16 pays depends on the CPU: with AVX512-BF16 or AMX it halves the call, without them
    oneDNN emulates it (``forecast.native_bf16`` says which this machine has).
    """
    import torch

    from dydiff_earth import forecast

    model = forecast.load_model(name)
    torch.manual_seed(0)
    shape = (1, model.context + model.horizon, 1, 160, 192)  # 160 x 177 padded to a multiple of 16
    x, context = torch.randn(shape), torch.randn(1, model.context, 1, 160, 192)
    condition, t = torch.randn(1, 1, 160, 192), torch.tensor([500])
    row = {
        "model": name,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": forecast.native_bf16(torch.device("cpu")),
    }
    for precision in precisions:
        seconds = []
        for _ in range(repeats):
            start = time.process_time()
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                model.denoiser(x, t, context, condition=condition)
            seconds.append(round(time.process_time() - start, 2))
        row[precision] = seconds
    return row


def warm(store: Path, period: str, inits: int, name: str, device: str, precision: str) -> dict:
    """Seconds of each of ``inits`` radar forecasts (8 members, 12 lead times, the checkpoint's sampler)
    made one after the other in one process with the model loaded once: motion field, sampling, advection
    back, rain mask and matching, not the file. The first is cold (allocation, kernel selection); the
    others are what a long-running service or a skill study spends per init.
    """
    import torch

    from dydiff_earth import forecast, verify
    from dydiff_earth.config import ForecastConfig
    from dydiff_earth.data import open_fields

    fields = open_fields(store, ["precip"], time=period)
    model = forecast.load_model(name, device)
    run = forecast.DiffusionForecaster(model, ForecastConfig(precision=precision), device=device)
    seconds = []
    # The skill protocol's init times (every 4th window start of the held-out period), the first N.
    for idx in verify.choose_inits(fields, model.context, LEADS, None, None)[:inits]:
        start = time.perf_counter()
        run(fields, init_time=str(fields.times[idx]), lead_times=LEADS, n_members=MEMBERS, seed=0)
        seconds.append(round(time.perf_counter() - start, 3))
    if run.device.type == "cuda":
        hardware = torch.cuda.get_device_name(run.device)
    else:
        capability, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
        hardware = f"{os.cpu_count()} CPUs, {capability}, {threads} threads"
    return {"model": name, "device": f"{device} ({hardware})", "precision": run.config.precision} | {
        "steps": run.config.sampling_steps,
        "seconds": seconds,
    }


def global_grid(work: Path, steps: int) -> dict:
    """The whole radar forecast command on synthetic rain on the 721 x 1440 global 0.25-degree grid."""
    import numpy as np

    from dydiff_earth import io, synthetic

    # Square synthetic rain cut to 721 rows; only the grid is global (the model does not know where it is).
    ds = synthetic.precip(sequences=1, frames=4, size=1440, seed=0, center=(0.0, 0.0), resolution=0.1)
    ds = ds.isel(latitude=slice(0, 721))
    ds = ds.assign_coords(latitude=np.linspace(-90.0, 90.0, 721), longitude=np.arange(1440) * 0.25)
    store = io.write_zarr(ds, work / "global.zarr")
    out = work / "global.nc"
    args = [sys.executable, "-m", "dydiff_earth.cli", "forecast", "--input", str(store)]
    args += ["--checkpoint", MODEL, "--members", str(MEMBERS), "--lead-times", str(LEADS)]
    args += ["--sampling-steps", str(steps), "--output", str(out), "--maps", str(work / "maps"), "--quiet"]
    row = run(args)
    return {
        "grid": [721, 1440],
        "members": MEMBERS,
        "lead_times": LEADS,
        "sampling_steps": steps,
        "wall_s": round(row["wall"], 1),
        "cpu_s": round(row["cpu"], 1),
        "peak_mib": round(row["peak_mib"]),
        "output_mib": round(out.stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="prepared MeteoSwiss store (made if missing)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="solver:steps:precision, comma-separated")
    parser.add_argument("--inits", type=int, default=2, help="verification inits of the event")
    parser.add_argument("--time", default="2017-01-31:", help="held-out period of the inits (skill --time)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "images" / "speed-skill.png")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--workers", type=int, default=1, help="configurations measured at once")
    parser.add_argument("--members", type=int, default=MEMBERS, help="members of the model in skill runs")
    parser.add_argument("--timing", help="only time these configurations' whole commands next to STEPS")
    parser.add_argument("--replot", nargs=2, type=Path, help="skill JSON and timing JSON: redraw the PNG")
    parser.add_argument(
        "--network-call", action="store_true", help="only time one network call per precision"
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="precisions of --network-call")
    parser.add_argument("--repeats", type=int, default=2, help="calls per precision of --network-call")
    parser.add_argument(
        "--checkpoint",
        action="append",
        help="model of --timing and --network-call (repeat for several; default the shipped radar model)",
    )
    parser.add_argument("--warm", type=int, help="only time N radar forecasts in one process")
    parser.add_argument("--device", default="cpu", help="device of --warm: cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", help="network arithmetic of --warm")
    parser.add_argument("--global-grid", action="store_true", help="only the 721 x 1440 memory run")
    parser.add_argument("--global-steps", type=int, default=1, help="sampling steps of the global run")
    args = parser.parse_args()
    if args.global_grid:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(global_grid(Path(tmp), args.global_steps)))
        return
    if args.warm:
        if args.store is None:
            parser.error("--warm needs --store (made there if missing)")
        prepare(args.store)
        for name in args.checkpoint or [MODEL]:
            row = warm(args.store, args.time, args.warm, name, args.device, args.precision)
            print(json.dumps(row))
        return
    if args.network_call:
        for name in args.checkpoint or [MODEL]:
            print(json.dumps(network_call(args.precisions.split(","), args.repeats, name)))
        return
    if args.replot:
        run_rows, timed = (json.loads(p.read_text()) for p in args.replot)
        plot_timed(run_rows["rows"], run_rows["steps"]["crps"], timed, args.png)
        return
    if args.timing:
        with tempfile.TemporaryDirectory() as tmp:
            models = args.checkpoint or [MODEL]
            rows = timing(args.store, args.timing.split(","), "2017-01-31T12:00", Path(tmp), models)
        print(json.dumps(rows, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "mch4.zarr"
        prepare(store)
        configs = args.configs.split(",")
        report = Path(tmp) / "steps"
        run(
            [
                sys.executable,
                "-c",
                STEPS_ONLY,
                str(store),
                args.time,
                str(args.inits),
                str(MEMBERS),
                str(report),
            ]
        )
        summary = json.loads((report / "summary.json").read_text())
        steps = {
            "s": summary["seconds"]["steps"] / args.inits,
            "crps": summary["systems"]["steps"]["crps_fair"],
            "inits": summary["init_times"],
        }
        print(json.dumps(steps), file=sys.stderr, flush=True)

        def one(config: str) -> dict:
            try:
                row = measure(store, config, args.inits, Path(tmp), args.time, args.members)
            except SystemExit as exc:  # one failed configuration leaves the others' rows
                print(f"{config}: {exc}", file=sys.stderr, flush=True)
                return {}
            print(json.dumps(row), file=sys.stderr, flush=True)
            return row

        # Parallel processes share the machine; each configuration's times come from its own process.
        with ThreadPoolExecutor(args.workers) as pool:
            rows = [row for row in pool.map(one, configs) if row]
    if args.json:
        args.json.write_text(json.dumps({"steps": steps, "rows": rows}, indent=1) + "\n")
    plot(rows, steps, args.png)
    import torch

    print(f"- date: {dt.date.today()}")
    print(
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"- command: `python benchmarks/bench_speed.py --inits {args.inits} --time {args.time} "
        f"--workers {args.workers} --members {args.members} --configs {args.configs}`"
    )
    print(f"- inits: {', '.join(rows[0]['inits'])}\n")
    print(table(rows, steps))


if __name__ == "__main__":
    main()
