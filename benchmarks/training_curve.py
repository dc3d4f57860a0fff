"""Validation skill against training steps: fair CRPS of weight snapshots and baselines, as a PNG and table.

Snapshots are the files ``train --snapshot-every N`` keeps (``<output>.step<N>.safetensors``). All of
them and the baselines are scored in one `dydiff-earth skill` run, on the same init times and points, under
a reduced protocol this CPU affords (few init times and members, the fast sampler): the curve shows where
training stops paying, not the final scores (those come from the full protocol, `docs/skill.md`). The
network is scored as sampled (no probability matching, no rain mask), since the curve is about training.
Each ``--snapshots`` glob is one curve, named after its files (two runs side by side: one plot, one run).

    .venv/bin/python benchmarks/training_curve.py --data runs/mch4.zarr --time 2017-01-31: \\
        --snapshots 'runs/radar.step*.safetensors' --out docs/images/radar-training-curve.png
"""

from __future__ import annotations

import argparse
import glob
import re
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dydiff_earth import verify


def step_of(path: str) -> int:
    match = re.search(r"\.step(\d+)\.safetensors$", path)
    if match is None:
        raise SystemExit(f"{path}: not a snapshot (<name>.step<N>.safetensors)")
    return int(match.group(1))


def _run_name(path: str) -> str:
    """The run a snapshot belongs to: its file name without ``.step<N>.safetensors``."""
    return re.sub(r"\.step\d+\.safetensors$", "", Path(path).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="observations: inputs and truth")
    parser.add_argument("--time", default=None, help="held-out period START:END")
    parser.add_argument(
        "--snapshots",
        required=True,
        action="append",
        help="glob of <name>.step<N>.safetensors files; repeat for several runs, one curve each",
    )
    parser.add_argument("--baselines", default="persistence,extrapolation,steps")
    parser.add_argument("--inits", type=int, default=2)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--solver", default="dpmpp2m", help="dpmpp2m or ddim")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    runs = []
    for pattern in args.snapshots:
        files = sorted(glob.glob(pattern), key=step_of)
        if not files:
            raise SystemExit(f"no snapshot matches {pattern!r}")
        runs.append(files)
    snapshots = [f for files in runs for f in files]
    with tempfile.TemporaryDirectory(prefix="curve_") as work:
        result = verify.skill(
            args.data,
            snapshots,
            [b for b in args.baselines.split(",") if b],
            time=args.time,
            inits=args.inits,
            members=args.members,
            sampling_steps=args.sampling_steps,
            solver=args.solver,
            prob_matching="none",
            rain_mask=False,
            thresholds=(1.0,),
            report_dir=Path(work) / "report",
        )
    systems = result.summary["systems"]
    names = list(systems)
    scores = iter(systems[n]["crps_fair"] for n in names[: len(snapshots)])
    curves = {_run_name(files[0]): [(step_of(f), next(scores)) for f in files] for files in runs}
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for label, points in curves.items():
        ax.plot(*zip(*points, strict=True), "o-", label=label if len(curves) > 1 else "model snapshots")
    # Baselines take the colours after the curves', so no line shares a colour with another.
    for i, name in enumerate(names[len(snapshots) :], start=len(curves)):
        ax.axhline(systems[name]["crps_fair"], ls="--", lw=1, color=f"C{i}", label=name)
    ax.set_xlabel("training steps (batch 8)")
    ax.set_ylabel("fair CRPS (mm h-1), lower is better")
    times = ", ".join(t[11:16] for t in result.summary["init_times"])
    ax.set_title(
        f"validation skill, {args.members} members, {args.sampling_steps} {args.solver} steps, inits {times}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    for label, points in curves.items():
        print(f"{label}:")
        print(f"| step | {' | '.join(str(step) for step, _ in points)} |")
        print(f"|---|{'---|' * len(points)}")
        print(f"| fair CRPS | {' | '.join(f'{c:.4f}' for _, c in points)} |")
    for name in names[len(snapshots) :]:
        print(f"{name}: fair CRPS {systems[name]['crps_fair']:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
