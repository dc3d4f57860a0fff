"""Training throughput and peak memory per model preset and patch size; prints a docs/benchmarks.md section.

Model cost: `ConditionedDenoiser` + `diffusion_loss` + AdamW (with the loop's gradient clipping) on random
tensors, batch 4, context 4 + horizon 6 frames, one channel. End to end: `dydiff_earth.train.fit` on a
synthetic rain store with the same shapes (tiny preset, patch 32), so the data pipeline, EMA and loop are
included; their ratio shows whether data loading limits training. Each configuration runs in a fresh
process, so the peak resident memory (``getrusage`` max RSS) of one does not mix with another's.

    .venv/bin/python benchmarks/bench_train.py                        # default, ~5 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_train.py --steps 2 --paper-steps 0   # quick look, no paper preset
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, CONTEXT, HORIZON, CHANNELS = 4, 4, 6, 1
E2E_PRESET, E2E_PATCH = "tiny", 32


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_model(preset: str, patch: int, steps: int) -> dict[str, float]:
    """Samples/s of loss + backward + clip + AdamW on random tensors, after one warm-up step."""
    import torch

    from dydiff_earth.config import DiffusionConfig
    from dydiff_earth.config import preset as model_preset
    from dydiff_earth.diffusion import diffusion_loss, make_schedule
    from dydiff_earth.model import ConditionedDenoiser

    baseline = _rss_mib()
    torch.manual_seed(0)
    net = ConditionedDenoiser(model_preset(preset), channels=CHANNELS, context=CONTEXT)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    cfg = DiffusionConfig()
    schedule = make_schedule(cfg)
    frames = torch.randn(BATCH, CONTEXT + HORIZON, CHANNELS, patch, patch)
    valid = torch.ones(BATCH, CONTEXT + HORIZON, 1, patch, patch)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = diffusion_loss(
            lambda x, t, c: net(x, t, c, valid),
            frames,
            context=frames[:, :CONTEXT],
            schedule=schedule,
            cfg=cfg,
            generator=gen,
            valid=valid,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    step()  # warm-up: first-call allocations and kernel selection
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - begin
    return {
        "rate": steps * BATCH / seconds,
        "step_s": seconds / steps,
        "baseline": baseline,
        "peak": _peak_mib(),
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def child_fit(steps: int, workdir: Path) -> dict[str, float]:
    """Samples/s of `train.fit` between its first and last step, and of the data stream alone."""
    import torch  # noqa: F401  (counted in the baseline, as in child_model)
    from torch.utils.data import DataLoader

    from dydiff_earth import synthetic, train
    from dydiff_earth.config import DiffusionConfig, TrainConfig, preset
    from dydiff_earth.data import open_fields
    from dydiff_earth.patches import WindowStream

    baseline = _rss_mib()
    store = synthetic.write("precip", workdir / "rain.zarr", sequences=4, frames=40, size=64, seed=0)
    fields = open_fields(store)

    # The data stream alone, as training reads it (0 DataLoader workers, the CLI default).
    stream = WindowStream(fields, CONTEXT, HORIZON, E2E_PATCH, seed=1, length=BATCH * 20)
    begin = time.perf_counter()
    n = sum(b["frames"].shape[0] for b in DataLoader(stream, batch_size=BATCH))
    data_rate = n / (time.perf_counter() - begin)

    stamps: list[float] = []
    cfg = TrainConfig(
        context=CONTEXT,
        horizon=HORIZON,
        patch=E2E_PATCH,
        batch_size=BATCH,
        steps=steps + 1,
        checkpoint_every=10**9,  # only the final checkpoint, outside the timed interval
        validation_fraction=0.0,
    )
    train.fit(
        fields,
        preset(E2E_PRESET),
        DiffusionConfig(),
        cfg,
        workdir / "model.safetensors",
        device="cpu",
        progress=lambda *_: stamps.append(time.perf_counter()),
    )
    # From the end of the warm-up step 1 to the end of the last step; the final step also writes the
    # checkpoint, so the rate is slightly pessimistic.
    return {
        "rate": steps * BATCH / (stamps[-1] - stamps[0]),
        "data_rate": data_rate,
        "baseline": baseline,
        "peak": _peak_mib(),
    }


def run_child(*args: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset and patch")
    parser.add_argument("--presets", default="tiny,radar,small", help="presets at patch 32 and 64")
    parser.add_argument("--paper-steps", type=int, default=1, help="timed steps of paper, patch 32 (0: skip)")
    parser.add_argument("--fit-steps", type=int, default=6, help="timed steps of the end-to-end fit")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        if kind == "model":
            result = child_model(rest[0], int(rest[1]), int(rest[2]))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
                result = child_fit(int(rest[0]), Path(work))
        print(json.dumps(result))
        return

    import torch

    configs = [(p, s, args.steps) for p in args.presets.split(",") for s in (32, 64)]
    if args.paper_steps > 0:
        configs.append(("paper", 32, args.paper_steps))
    rows = []
    model_rate: dict[tuple[str, int], float] = {}
    for preset, patch, steps in configs:
        r = run_child("model", preset, str(patch), str(steps))
        model_rate[preset, patch] = r["rate"]
        rows.append(
            (
                f"model only: {preset} ({r['parameters'] / 1e6:.2f} M parameters), patch {patch}",
                f"{r['rate']:.2f} samples/s ({r['step_s']:.1f} s/step, {steps} steps)",
                f"{r['peak']:.0f} MiB ({r['peak'] - r['baseline']:+.0f})",
            )
        )
    fit = run_child("fit", str(args.fit_steps))
    ratio = fit["rate"] / model_rate[E2E_PRESET, E2E_PATCH]
    rows += [
        (
            f"data stream alone: WindowStream, patch {E2E_PATCH}, 0 workers",
            f"{fit['data_rate']:.0f} samples/s",
            "",
        ),
        (
            f"end to end: train.fit, {E2E_PRESET}, patch {E2E_PATCH}, 64 x 64 synthetic rain",
            f"{fit['rate']:.2f} samples/s ({args.fit_steps} steps); {ratio:.2f} x model only",
            f"{fit['peak']:.0f} MiB ({fit['peak'] - fit['baseline']:+.0f})",
        ),
    ]

    command = shlex.join([Path(sys.executable).name, "benchmarks/bench_train.py", *sys.argv[1:]])
    print("## Training throughput (`benchmarks/bench_train.py`)\n")
    print(
        f"Batch {BATCH}, {CONTEXT} context + {HORIZON} target frames, {CHANNELS} channel, AdamW with "
        "gradient clipping, after one warm-up step; each row is a fresh process. Memory is the peak "
        "resident set (in parentheses: above the process after imports).\n"
    )
    print(f"- date: {dt.date.today().isoformat()}")
    print(
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    print(f"- command: `{command}`\n")
    print("| configuration | throughput | peak RSS, MiB |")
    print("|---|---|---|")
    for name, rate, memory in rows:
        print(f"| {name} | {rate} | {memory} |")


if __name__ == "__main__":
    main()
