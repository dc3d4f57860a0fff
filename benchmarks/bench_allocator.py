"""Keeping freed memory (``dydiff_earth/allocator.py``) against glibc's defaults, alternating, fresh
processes.

Three measurements per setting and round: one network call of ``radar-4km-v1`` on the padded radar grid
(bf16 autocast, one thread; one member, as forecasts call it on the CPU, and eight members in one call),
the radar forecast command (one thread, no maps) and 12 training steps of the radar preset at patch 64,
batch 8 (two threads). "glibc defaults" runs with ``GLIBC_TUNABLES`` set and empty, which glibc reads as
no change and the product reads as the user's choice, so it leaves the allocator alone.

    .venv/bin/python benchmarks/bench_allocator.py --store runs/mch4.zarr --train-store runs/mch4-train.zarr
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import run

NETWORK_CALL = """
import sys, time, torch
from dydiff_earth import allocator, forecast
from dydiff_earth.model import channels_last
allocator.keep_freed_memory()  # as the command line does; a no-op under GLIBC_TUNABLES
torch.set_num_threads(1)
model = forecast.load_model("radar-4km-v1")
net = channels_last(model.denoiser.eval())
torch.manual_seed(0)
b = int(sys.argv[1])
x = torch.randn(b, model.context + model.horizon, 1, 160, 192)
context, condition = torch.randn(b, model.context, 1, 160, 192), torch.randn(b, 1, 160, 192)
t, seconds = torch.full((b,), 500), []
with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
    for _ in range(4):
        start = time.perf_counter()
        net(x, t, context, condition=condition)
        seconds.append(time.perf_counter() - start)
print(min(seconds[1:]))
"""

SETTINGS = {"glibc defaults": {"GLIBC_TUNABLES": ""}, "freed memory kept": {}}


def measure(setting: str, store: Path, train_store: Path, work: Path) -> dict:
    """One round of ``setting``; its outputs go to ``work``, one folder per call."""
    work = Path(tempfile.mkdtemp(dir=work))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | SETTINGS[setting]
    one = env | {"OMP_NUM_THREADS": "1"}
    row = {}
    for batch in (1, 8):
        out = run([sys.executable, "-c", NETWORK_CALL, str(batch)], one)["output"]
        row[f"call x{batch}"] = float(out.strip().splitlines()[-1])
    cli = [sys.executable, "-m", "dydiff_earth.cli"]
    fc = run(
        [*cli, "forecast", "--input", str(store), "--checkpoint", "radar-4km-v1", "--init-time",
         "2017-01-31T12:00", "--precision", "auto", "--no-maps", "--quiet", "--output", str(work / "f.nc")],
        one,
    )  # fmt: skip
    row["forecast"], row["forecast peak"] = fc["wall"], fc["peak_mib"]
    tr = run(
        [*cli, "train", "--data", str(train_store), "--preset", "radar", "--context", "4", "--horizon", "12",
         "--patch", "64", "--batch-size", "8", "--steps", "12", "--rain-weighted", "--validation-fraction",
         "0", "--quiet", "--output", str(work / "t.safetensors")],
        env | {"OMP_NUM_THREADS": "2"},
    )  # fmt: skip
    row["train"], row["train peak"], row["train cpu"] = tr["wall"], tr["peak_mib"], tr["cpu"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="prepared MeteoSwiss store (2017-01-31)")
    parser.add_argument("--train-store", type=Path, required=True, help="a prepared radar store to train on")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting in SETTINGS:
                rows.append(
                    (setting, measure(setting, args.store.resolve(), args.train_store.resolve(), Path(tmp)))
                )
                print(r, *rows[-1], flush=True, file=sys.stderr)
    print(f"{dt.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print(
        "| setting | network call, 1 member (s) | 8 members in one call (s) "
        "| radar forecast command (s, peak MiB) | 12 training steps (s wall, s CPU, peak MiB) |"
    )
    print("|---|---|---|---|---|")
    for setting, m in rows:
        print(
            f"| {setting} | {m['call x1']:.2f} | {m['call x8']:.2f} "
            f"| {m['forecast']:.1f}, {m['forecast peak']:.0f} "
            f"| {m['train']:.1f}, {m['train cpu']:.1f}, {m['train peak']:.0f} |"
        )


if __name__ == "__main__":
    main()
