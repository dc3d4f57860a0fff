"""The sampled-CRPS fine-tune: its score against the skill scores' CRPS and brute force, the units it
scores in, the solvers' autograd switch, and a fine-tune end to end."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from scores.probability import crps_for_ensemble

from dydiff_earth import info, io, testing, train
from dydiff_earth.config import DiffusionConfig, TrainConfig, preset
from dydiff_earth.crps_tuning import SampledCRPS, fair_crps, physical
from dydiff_earth.data import VariableSpec, open_fields
from dydiff_earth.diffusion import make_schedule
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import load_model, recommend_sampler
from dydiff_earth.sampling import logsnr_timesteps, sample_ddim, sample_dpmpp_2m
from dydiff_earth.train import fit

RAIN = VariableSpec("precip", "mm h-1", "log1p", mean=0.3, std=0.7, scale=0.5)


def _brute_force(members: np.ndarray, truth: np.ndarray, weight: np.ndarray) -> float:
    """Ferro's fair CRPS point by point over all ordered pairs i != j, then the weighted mean."""
    m = members.shape[1]
    skill = np.abs(members - truth[:, None]).mean(1)
    pairs = sum(np.abs(members[:, i] - members[:, j]) for i, j in itertools.permutations(range(m), 2))
    crps = skill - pairs / (2 * m * (m - 1))
    return float((crps * weight).sum() / weight.sum())


def test_fair_crps_is_ferro_s_and_the_skill_scores_one() -> None:
    g = np.random.default_rng(3)
    members, truth = g.gamma(0.5, 2.0, (3, 5, 2, 6, 6)), g.gamma(0.5, 2.0, (3, 2, 6, 6))
    weight = (g.random(truth.shape) > 0.3).astype(float)
    ours = float(fair_crps(torch.from_numpy(members), torch.from_numpy(truth), torch.from_numpy(weight)))
    assert ours == pytest.approx(_brute_force(members, truth, weight), rel=1e-12)
    # scores' fair CRPS over the valid points only (an independent implementation).
    dims = ("case", "member", "lead", "y", "x")
    fc = xr.DataArray(members, dims=dims).where(xr.DataArray(weight, dims=dims[:1] + dims[2:]) > 0)
    y = xr.DataArray(truth, dims=dims[:1] + dims[2:]).where(weight > 0)
    theirs = crps_for_ensemble(fc, y, "member", method="fair", preserve_dims=["case", "lead", "y", "x"])
    assert ours == pytest.approx(float(theirs.mean()), rel=1e-9)
    with pytest.raises(InputError, match="at least 2 members"):
        fair_crps(torch.from_numpy(members[:, :1]), torch.from_numpy(truth), torch.from_numpy(weight))


def test_physical_undoes_the_normalisation() -> None:
    values = torch.linspace(-3, 4, 2 * 3 * 2 * 4).reshape(2, 3, 2, 2, 2).double()
    plain = VariableSpec("t2m", "K", "none", mean=280.0, std=5.0)
    out = physical(values, (RAIN, plain)).numpy()
    x = values.numpy()
    np.testing.assert_allclose(out[:, :, 0], RAIN.physical(x[:, :, 0] * 0.7 + 0.3), rtol=1e-12)
    np.testing.assert_allclose(out[:, :, 1], x[:, :, 1] * 5.0 + 280.0, rtol=1e-12)
    assert out[:, :, 0].min() == 0.0  # no negative rain


@pytest.mark.parametrize("solve", [sample_ddim, sample_dpmpp_2m])
def test_solvers_keep_the_graph_only_when_asked(solve) -> None:
    schedule = make_schedule(DiffusionConfig(timesteps=100))
    w = torch.tensor(0.3, requires_grad=True)
    x_T = torch.randn(2, 4, 1, 5, 5, generator=torch.Generator().manual_seed(0))

    def denoise(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return w * x

    args = (denoise, x_T, logsnr_timesteps(schedule, 99, 4))
    plain = solve(*args, context=x_T[:, :2], schedule=schedule)
    tracked = solve(*args, context=x_T[:, :2], schedule=schedule, grad=True)
    assert not plain.requires_grad and tracked.requires_grad
    torch.testing.assert_close(plain, tracked.detach(), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(tracked[:, 2:].square().sum(), w)
    assert torch.isfinite(grad) and grad != 0
    with torch.no_grad():  # asking wins over the caller's mode, and not asking is always off
        assert solve(*args, context=x_T[:, :2], schedule=schedule, grad=True).requires_grad
    with torch.enable_grad():
        assert not solve(*args, context=x_T[:, :2], schedule=schedule).requires_grad


class _Net(torch.nn.Module):
    """A denoiser-shaped toy that uses every input, so a mix-up of members, masks or conditions shows."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t, context, valid, condition):
        return self.w * x * valid + 0.01 * condition[:, None, :1] + 1e-4 * t[:, None, None, None, None]


def test_sampled_crps_scores_the_members_the_solver_draws() -> None:
    """Brute force: draw each window's members with the solver from the same noise, add the departures
    to the init frame in physical units, and score them point by point."""
    schedule, steps, p, m = make_schedule(DiffusionConfig(timesteps=100)), (99, 40, 5, 1), 2, 3
    g = torch.Generator().manual_seed(1)
    batch = {
        "frames": torch.randn(2, 5, 1, 6, 6, generator=g),
        "valid": (torch.rand(2, 5, 1, 6, 6, generator=g) > 0.2).float(),
        "condition": torch.randn(2, 2, 6, 6, generator=g),
    }
    batch["frames"][:, p - 1] = 0
    scale = torch.tensor([1.0, 0.5, 0.0, 0.8, 1.2])
    loss = SampledCRPS(sample_dpmpp_2m, steps, schedule, p, m, (RAIN,), scale, clip=3.0)
    net = _Net()
    value = loss(net, batch, torch.Generator().manual_seed(7), torch.device("cpu"))
    (grad,) = torch.autograd.grad(value, net.w)
    assert grad != 0

    noise = torch.randn(2 * m, 5, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    members, truth = [], []
    for b in range(2):
        window = sample_dpmpp_2m(
            lambda x, t, ctx, b=b: net(x, t, ctx, batch["valid"][b : b + 1], batch["condition"][b : b + 1]),
            noise[b * m : (b + 1) * m],
            steps,
            context=batch["frames"][b : b + 1, :p].expand(m, -1, -1, -1, -1),
            schedule=schedule,
            clip=3.0,
        ).numpy()
        init, s = batch["condition"][b, 0].numpy(), scale.numpy()[p:, None, None]
        members.append([RAIN.physical((init + w[p:, 0] * s) * 0.7 + 0.3) for w in window])
        truth.append(RAIN.physical((init + batch["frames"][b, p:, 0].numpy() * s) * 0.7 + 0.3))
    weight = batch["valid"][:, p:, 0].numpy()
    expected = _brute_force(np.array(members), np.array(truth), weight)
    assert np.isfinite(expected) and float(value.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory):
    path = io.write_zarr(
        testing.tiny_field(frames=24, size=(16, 16)), tmp_path_factory.mktemp("c") / "f.zarr"
    )
    return open_fields(path)


def test_a_crps_fine_tune_moves_the_weights_and_keeps_the_sampler(
    fields, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(
        context=2, horizon=2, patch=16, batch_size=2, steps=2, validation_fraction=0.25, lr=1e-3
    )
    base = fit(fields, preset("tiny"), DiffusionConfig(), cfg, tmp_path / "base.safetensors").checkpoint
    recommend_sampler(base, 2, "logsnr", "measured", 1.5, 1.0)
    tune = TrainConfig(**{**cfg.__dict__, "init_from": str(base), "objective": "crps", "crps_members": 3})
    tuned = fit(fields, preset("tiny"), DiffusionConfig(), tune, tmp_path / "tuned.safetensors")
    (a, _), (b, meta) = io.load_checkpoint(base), io.load_checkpoint(tuned.checkpoint)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert meta["train"]["objective"] == "crps" and meta["train"]["crps_members"] == 3
    assert np.isfinite(tuned.validation_loss) and tuned.validation_loss > 0 and np.isfinite(tuned.train_loss)
    sampler = load_model(tuned.checkpoint).meta["sampler"]
    assert (sampler["sampling_steps"], sampler["spacing"], sampler["inflation"]) == (2, "logsnr", 1.5)
    assert "base" in sampler["evidence"] and "tuned through" in sampler["evidence"]
    rows = dict(info._checkpoint_rows(info.describe(tuned.checkpoint)))
    assert rows["training steps"].endswith(": fair CRPS of sampled members)")
    for bad, message in (({"init_from": None}, "--init-from"), ({"crps_members": 1}, "2 or more")):
        with pytest.raises(InputError, match=message):
            fit(
                fields,
                preset("tiny"),
                DiffusionConfig(),
                TrainConfig(**{**tune.__dict__, **bad}),
                tmp_path / "x",
            )
    monkeypatch.setattr(train, "_distributed", lambda: (0, 2))  # as under torchrun with two processes
    with pytest.raises(InputError, match="not under torchrun"):
        fit(fields, preset("tiny"), DiffusionConfig(), tune, tmp_path / "x")
    assert not (tmp_path / "x").exists()
