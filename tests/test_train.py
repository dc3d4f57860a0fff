from __future__ import annotations

import dataclasses
import itertools
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _processes import sigkill_when

from dydiff_earth import io, testing
from dydiff_earth.config import DiffusionConfig, TrainConfig, preset
from dydiff_earth.data import open_fields
from dydiff_earth.errors import InputError
from dydiff_earth.train import fit, learning_rate, split_starts

CFG = TrainConfig(
    context=2,
    horizon=2,
    patch=16,
    batch_size=2,
    steps=6,
    checkpoint_every=3,
    validate_every=3,
    validation_fraction=0.25,
    lr=1e-3,
)


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory):
    path = io.write_zarr(
        testing.tiny_field(frames=24, size=(16, 16)), tmp_path_factory.mktemp("t") / "f.zarr"
    )
    return open_fields(path)


def test_split_keeps_validation_frames_out_of_training(fields) -> None:
    train, val = split_starts(fields, 4, 0.25)
    assert train and val
    assert max(train) + 4 <= min(val)


def test_checkpoint_round_trip_and_metadata(fields, tmp_path: Path) -> None:
    result = fit(fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "m.safetensors")
    tensors, meta = io.load_checkpoint(result.checkpoint)
    assert meta["step"] == 6 and meta["context"] == 2 and meta["horizon"] == 2
    assert meta["variables"][0]["name"] == "precip" and meta["variables"][0]["transform"] == "log1p"
    assert meta["time_step_seconds"] == 300
    # 0.05 degree cells at 47 N: the resolution a forecast's input is checked against.
    assert meta["grid"]["cell_km"] == pytest.approx(4.58, abs=0.01)
    assert np.isfinite(meta["train_loss"]) and meta["validation_loss"] is not None
    assert all(torch.isfinite(v).all() for v in tensors.values())


def test_resume_continues_bit_identically(fields, tmp_path: Path) -> None:
    full = fit(fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "full.safetensors")
    half = TrainConfig(**{**CFG.__dict__, "steps": 3})
    fit(fields, preset("tiny"), DiffusionConfig(), half, tmp_path / "resumed.safetensors")
    resumed = fit(
        fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "resumed.safetensors", resume=True
    )
    assert resumed.steps == 6
    a, _ = io.load_checkpoint(full.checkpoint)
    b, _ = io.load_checkpoint(resumed.checkpoint)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.train_loss == full.train_loss


def test_resume_without_checkpoint_is_an_error(fields, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no checkpoint"):
        fit(fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "none.safetensors", resume=True)


def test_a_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InputError, match="pickles are never loaded"):
        io.load_checkpoint(path)
    truncated = tmp_path / "cut.safetensors"
    io.save_checkpoint(truncated, {"w": torch.ones(100)}, {"x": 1})
    truncated.write_bytes(truncated.read_bytes()[:-50])
    with pytest.raises(InputError, match="not a dydiff-earth checkpoint"):
        io.load_checkpoint(truncated)


def test_plain_diffusion_through_the_same_code(fields, tmp_path: Path) -> None:
    result = fit(fields, preset("tiny"), DiffusionConfig(gamma_ratio=0.0), CFG, tmp_path / "dpm.safetensors")
    _, meta = io.load_checkpoint(result.checkpoint)
    assert meta["diffusion"]["gamma_ratio"] == 0.0


def test_ema_forgets_the_initial_weights_early() -> None:
    """With warm-up, a short run's average is dominated by trained weights, not the initialisation."""
    from dydiff_earth.train import _EMA

    net = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(net.weight)
    ema = _EMA(net, decay=0.999)
    torch.nn.init.ones_(net.weight)
    for step in range(20):
        ema.update(net, step)
    assert float(ema.shadow["weight"].min()) > 0.99  # without warm-up: 1 - 0.999**20 = 0.02


@pytest.mark.slow
def test_torchrun_data_parallel_on_cpu(tmp_path: Path) -> None:
    """Two processes (gloo) train one model; rank 0 alone writes the checkpoint and reports."""
    import os
    import subprocess
    import sys

    store = io.write_zarr(testing.tiny_field(frames=24, size=(16, 16)), tmp_path / "f.zarr")
    out = tmp_path / "ddp.safetensors"
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [
        "--data",
        store,
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--context",
        "2",
        "--horizon",
        "2",
        "--patch",
        "16",
        "--output",
        out,
        "--quiet",
    ]
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "dydiff_earth", "train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote") + done.stderr.count("wrote") == 1
    _, meta = io.load_checkpoint(out)
    assert meta["step"] == 2


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_weights_of_an_uninterrupted_run(fields, tmp_path: Path) -> None:
    """The real console script, killed at once (SIGKILL) mid-run, then ``--resume``: bit-identical on CPU."""
    script = Path(sys.executable).with_name("dydiff-earth")
    args = [str(script), "train", "--data", str(fields.source), "--preset", "tiny", "--context", "2"]
    args += ["--horizon", "2", "--patch", "16", "--batch-size", "2", "--steps", "24", "--lr", "1e-3"]
    args += ["--checkpoint-every", "1", "--validation-fraction", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full.safetensors", tmp_path / "killed.safetensors"
    subprocess.run([*args, "-o", str(full)], env=env, check=True, capture_output=True)

    proc = subprocess.Popen([*args, "-o", str(killed)], env=env, stderr=subprocess.DEVNULL)
    sigkill_when(proc, lambda: killed.is_file() and io.load_checkpoint(killed)[1]["step"] >= 3)
    assert proc.returncode == -signal.SIGKILL, "training ended before it was killed; make it longer"
    assert io.load_checkpoint(killed)[1]["step"] < 24
    subprocess.run([*args, "-o", str(killed), "--resume"], env=env, check=True, capture_output=True)
    a, meta_a = io.load_checkpoint(full)
    b, meta_b = io.load_checkpoint(killed)
    assert meta_b["step"] == 24 and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert meta_a["train_loss"] == meta_b["train_loss"]


def test_vector_fields_are_not_rotated(fields, tmp_path: Path) -> None:
    """Rotations and flips turn the grid but not the components of (u, v): only one variable is augmented."""
    from dydiff_earth import synthetic
    from dydiff_earth.data import window_starts
    from dydiff_earth.train import training_streams

    store = io.write_zarr(synthetic.turbulence(sequences=1, frames=12, size=16), tmp_path / "uv.zarr")
    velocity = open_fields(store)
    cfg = TrainConfig(context=2, horizon=2, patch=16)
    for f, expected in ((fields, True), (velocity, False)):
        stream, _ = training_streams([f], cfg, "persistence", [window_starts(f, 4)], seed=0)
        assert stream.augment is expected, f.names


def test_the_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = TrainConfig(steps=105, lr=1e-3, lr_schedule="cosine")  # 5 warm-up steps, 100 of decay
    rates = [learning_rate(cfg, step) for step in range(cfg.steps)]
    assert rates[:6] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3])
    assert rates[55] == pytest.approx(5e-4)  # half way down
    assert all(a > b for a, b in itertools.pairwise(rates[5:]))
    assert rates[-1] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 99 / 100)))
    assert {learning_rate(TrainConfig(lr=1e-3), step) for step in (0, 500, 999)} == {1e-3}


def test_fine_tuning_starts_from_the_checkpoint(fields, tmp_path: Path) -> None:
    """With a learning rate of 0 a fine-tuning run writes the weights it started from, bit for bit."""
    base = fit(fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "base.safetensors").checkpoint
    still = TrainConfig(**{**CFG.__dict__, "steps": 1, "lr": 0.0, "init_from": str(base), "seed": 5})
    tuned = fit(fields, preset("tiny"), DiffusionConfig(), still, tmp_path / "tuned.safetensors").checkpoint
    (a, meta_a), (b, meta_b) = io.load_checkpoint(base), io.load_checkpoint(tuned)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta_b["init_from"] == {"path": str(base), "sha256": io.file_sha256(base)}
    assert (meta_b["frame"], meta_b.get("departure_scale")) == (
        meta_a["frame"],
        meta_a.get("departure_scale"),
    )
    moved = TrainConfig(**{**still.__dict__, "lr": 1e-3})
    c, _ = io.load_checkpoint(
        fit(fields, preset("tiny"), DiffusionConfig(), moved, tmp_path / "m.safetensors").checkpoint
    )
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fine_tuning_a_deeper_network_starts_from_the_checkpoint_s_forecast(fields, tmp_path: Path) -> None:
    """A preset with more residual blocks per level grows the checkpoint (``model.deepen``): at a learning
    rate of 0 the deeper network computes what the checkpoint did; a shallower one is refused."""
    from dydiff_earth.forecast import load_model

    base = fit(fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "base.safetensors").checkpoint
    deeper = dataclasses.replace(preset("tiny"), blocks_per_level=2)
    still = TrainConfig(**{**CFG.__dict__, "steps": 1, "lr": 0.0, "init_from": str(base)})
    grown = fit(fields, deeper, DiffusionConfig(), still, tmp_path / "grown.safetensors").checkpoint
    a, b = load_model(base).denoiser, load_model(grown).denoiser
    assert (a.net.cfg.blocks_per_level, b.net.cfg.blocks_per_level) == (1, 2)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 1, 16, 16, generator=g), torch.tensor([5, 900])
    with torch.no_grad():
        torch.testing.assert_close(b(x, t, x[:, :2], None, x[:, 0]), a(x, t, x[:, :2], None, x[:, 0]))
    shallower = TrainConfig(**{**still.__dict__, "init_from": str(grown)})
    with pytest.raises(InputError, match=r"network blocks_per_level \(--preset\) is 2, this run's 1"):
        fit(fields, preset("tiny"), DiffusionConfig(), shallower, tmp_path / "x.safetensors")


def test_fine_tuning_another_network_is_refused(fields, tmp_path: Path) -> None:
    base = fit(fields, preset("tiny"), DiffusionConfig(), CFG, tmp_path / "base.safetensors").checkpoint
    longer = TrainConfig(**{**CFG.__dict__, "horizon": 3, "init_from": str(base)})
    with pytest.raises(InputError, match="the checkpoint's horizon is 2, this run's 3"):
        fit(fields, preset("tiny"), DiffusionConfig(), longer, tmp_path / "x.safetensors")
    with pytest.raises(InputError, match=r"network channels \(--preset\) is \[16, 32\]"):
        fit(
            fields,
            preset("small"),
            DiffusionConfig(),
            TrainConfig(**{**CFG.__dict__, "init_from": str(base)}),
            tmp_path / "y.safetensors",
        )
    # Another noising process is another model; another loss weighting is a fine-tune.
    tune = TrainConfig(**{**CFG.__dict__, "init_from": str(base), "steps": 1})
    with pytest.raises(InputError, match=r"diffusion gamma_ratio \(--gamma-ratio\) is 0.5, this run's 0.0"):
        fit(fields, preset("tiny"), DiffusionConfig(gamma_ratio=0.0), tune, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
    fit(fields, preset("tiny"), DiffusionConfig(lead_weight_power=1.0), tune, tmp_path / "z.safetensors")
