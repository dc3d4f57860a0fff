"""Scaling here: `skill` throughput against dask workers, training samples/s against torchrun ranks.

Skill: the shipped `demo` model and persistence on synthetic rain (32 x 32 cells), every run the same init
times, members and DDIM steps, through the command line as users run it (a fresh process each, so imports,
the cluster's start and the report are included): serially, then with `--workers 1` and `--workers 2`.
Training: `torchrun --standalone --nproc-per-node N -m dydiff_earth train` (tiny preset, gloo on CPU) for
N = 1, 2 with one torch thread per rank, the same per-rank batch; `train` reports samples/s over all ranks.
Prints a docs/benchmarks.md section.

    .venv/bin/python benchmarks/bench_scaling.py               # ~5 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_scaling.py --inits 4 --steps 4   # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    begin = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def skill_rows(work: Path, inits: int, members: int, sampling_steps: int) -> list[dict]:
    """Wall time and forecasts per second of one skill study, serially and on 1 and 2 dask workers."""
    from dydiff_earth import io, synthetic

    store = io.write_zarr(synthetic.precip(sequences=2, frames=40, size=32, seed=11), work / "rain.zarr")
    base = [sys.executable, "-m", "dydiff_earth", "skill", "--data", str(store), "--checkpoint", "demo"]
    base += ["--baselines", "persistence", "--inits", str(inits), "--members", str(members)]
    base += ["--sampling-steps", str(sampling_steps), "--lead-times", "6", "--quiet"]
    rows = []
    summaries = []
    for label, extra, env in (
        ("serial, 1 torch thread", [], {"OMP_NUM_THREADS": "1"}),
        ("serial, 2 torch threads", [], {"OMP_NUM_THREADS": "2"}),
        ("--workers 1", ["--workers", "1"], {}),
        ("--workers 2", ["--workers", "2"], {}),
    ):
        report = work / f"skill-{len(rows)}"
        seconds, _ = _run([*base, "--report", str(report), *extra], env)
        summary = json.loads((report / "summary.json").read_text())
        summaries.append(summary["systems"])
        forecasts = 2 * len(summary["init_times"])  # demo and persistence at every init
        rows.append({"label": label, "seconds": seconds, "rate": forecasts / seconds, "forecasts": forecasts})
    same = all(s == summaries[0] for s in summaries[2:])
    rows.append({"label": "scores of the dask runs equal the 1-thread serial run's", "same": same})
    return rows


def train_rows(work: Path, steps: int, batch: int) -> list[dict]:
    """Samples/s (all ranks) of `train` under torchrun with 1 and 2 ranks, one thread each."""
    from dydiff_earth import io, synthetic

    store = io.write_zarr(synthetic.precip(sequences=2, frames=40, size=64, seed=12), work / "train.zarr")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    rows = []
    for ranks in (1, 2):
        args = [torchrun, "--standalone", "--nproc-per-node", str(ranks), "-m", "dydiff_earth", "train"]
        args += ["--data", str(store), "--preset", "tiny", "--steps", str(steps), "--batch-size", str(batch)]
        args += ["--context", "4", "--horizon", "6", "--patch", "32", "--checkpoint-every", str(steps)]
        args += ["--validation-fraction", "0", "--output", str(work / f"ddp{ranks}.safetensors"), "--quiet"]
        seconds, out = _run(args, {"OMP_NUM_THREADS": "1"})
        rate = float(re.findall(r"([\d.]+) samples/s", out)[-1])
        rows.append({"ranks": ranks, "seconds": seconds, "rate": rate, "samples": steps * batch * ranks})
    return rows


def render(skill: list[dict], train: list[dict], args: argparse.Namespace, command: str) -> str:
    import torch

    lines = [
        "## Scaling: dask workers and torchrun ranks (`benchmarks/bench_scaling.py`)",
        "",
        f"Skill: shipped `demo` model + persistence on synthetic rain 32 x 32, {args.inits} init times, "
        f"{args.members} members, {args.sampling_steps} DDIM steps, 6 lead times, through the command line "
        "(fresh process: imports, cluster start and report included). Training: `torchrun --standalone "
        f"-m dydiff_earth train`, tiny preset, patch 32, 4 + 6 frames, batch {args.batch} per rank, "
        f"{args.steps} steps, gloo, one torch thread per rank.",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        f"- command: `{command}`",
        "",
        "| configuration | wall time | throughput | ratio |",
        "|---|---|---|---|",
    ]
    one = next(r for r in skill if r.get("label") == "--workers 1")
    for r in skill:
        if "same" in r:
            continue
        lines.append(
            f"| skill, {r['label']} | {r['seconds']:.1f} s | {r['rate']:.2f} forecasts/s "
            f"({r['forecasts']} forecasts) | {r['rate'] / one['rate']:.2f} x `--workers 1` |"
        )
    first = train[0]
    for r in train:
        lines.append(
            f"| train, torchrun {r['ranks']} rank(s) | {r['seconds']:.1f} s | {r['rate']:.2f} samples/s "
            f"({r['samples']} samples) | {r['rate'] / first['rate']:.2f} x 1 rank |"
        )
    same = next(r["same"] for r in skill if "same" in r)
    lines += [
        "",
        f"Scores of `--workers 1` and `--workers 2` equal those of the serial run on 1 thread: {same}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inits", type=int, default=8)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--sampling-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="training steps")
    parser.add_argument("--batch", type=int, default=4, help="training windows per rank and step")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/bench_scaling.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        skill = skill_rows(work, args.inits, args.members, args.sampling_steps)
        train = train_rows(work, args.steps, args.batch)
    print(render(skill, train, args, command))


if __name__ == "__main__":
    main()
