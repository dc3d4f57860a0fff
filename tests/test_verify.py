"""Tests of the verification workflows: evaluate (perfect and closed-form cases, missing truth) and skill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from dydiff_earth import data, io, schema, synthetic, verify
from dydiff_earth.cli import app
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import forecast_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Synthetic rain cells: 2 sequences of 20 five-minute frames on a 32 x 32 grid."""
    path = tmp_path_factory.mktemp("verify") / "precip.zarr"
    io.write_zarr(synthetic.precip(sequences=2, frames=20, size=32, seed=3), path)
    return str(path)


def _forecast_file(
    tmp_path, store: str, idx: int, leads: int, members: int, shift: float = 0.0, **provenance
) -> str:
    """A forecast file whose member ``k`` equals the observations plus ``shift[k]`` (or ``shift``) at each
    valid time."""
    fields = data.open_fields(store)
    truth = data.denormalize(data.load_frames(fields, slice(idx + 1, idx + 1 + leads)), fields.variables)
    shifts = np.broadcast_to(np.asarray(shift, np.float32), (members,))
    values = (truth[None] + shifts.reshape(-1, *(1,) * truth.ndim)).astype(np.float32)
    ds = forecast_dataset(fields, values, idx, {"model": "oracle", **provenance})
    return str(io.write_forecast(ds, tmp_path / "forecast.nc"))


def test_evaluate_perfect_forecast(tmp_path, store):
    path = _forecast_file(tmp_path, store, idx=5, leads=4, members=3)
    scores = verify.evaluate(path, store, thresholds=(0.5,), output=tmp_path / "scores.nc")
    # Tolerances: float32 storage and the log1p round trip of load_frames leave ~1e-6 mm h-1.
    np.testing.assert_allclose(scores["crps_fair"], 0.0, atol=1e-5)
    np.testing.assert_allclose(scores["rmse"], 0.0, atol=1e-5)
    csi = scores["csi"].sel(threshold=0.5, pool=1)
    np.testing.assert_allclose(csi, 1.0)
    np.testing.assert_allclose(scores["fss"].sel(threshold=0.5), 1.0)
    assert scores.sizes[schema.LEAD_TIME] == 4
    assert set(scores["pool"].values) == {1, 4, 16}  # all fit the 32-point grid
    reread = xr.open_dataset(tmp_path / "scores.nc")
    np.testing.assert_allclose(reread["crps_fair"], scores["crps_fair"])
    assert reread.attrs["system"] == "oracle"


def test_evaluate_constant_error_has_closed_forms(tmp_path, store):
    c = 0.75
    path = _forecast_file(tmp_path, store, idx=8, leads=3, members=2, shift=c)
    scores = verify.evaluate(path, store)
    # Identical members off by c: fair CRPS = mean |X - y| - 0 = c, and RMSE = MAE = bias = c; no spread.
    for name in ("crps_fair", "crps", "rmse", "mae", "bias"):
        np.testing.assert_allclose(scores[name], c, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(scores["spread"], 0.0, atol=1e-6)
    assert "fair_crps" not in scores.attrs  # independent members: nothing to say


def test_evaluate_scores_inflated_members_by_pairs_across_groups(tmp_path, store):
    # Groups of 2, members off by +c, +c, -c, -c. Across groups every pair differs by 2c: spread term c,
    # fair CRPS c - c = 0; over all 12 ordered pairs (8 of them across groups) it is 16c / 24, CRPS c / 3.
    c = 0.5
    path = _forecast_file(
        tmp_path, store, idx=8, leads=2, members=4, shift=[c, c, -c, -c], inflation_group_size=2
    )
    scores = verify.evaluate(path, store)
    np.testing.assert_allclose(scores["crps_fair"], 0.0, atol=1e-5)
    assert "pairs of members from different groups of 2 only" in scores.attrs["fair_crps"]
    path = _forecast_file(
        tmp_path, store, idx=8, leads=2, members=4, shift=[c, c, -c, -c], inflation_group_size=4
    )
    scores = verify.evaluate(path, store)
    np.testing.assert_allclose(scores["crps_fair"], c / 3, rtol=1e-5)
    assert "optimistic; --members 8 or more" in scores.attrs["fair_crps"]


def test_evaluate_names_missing_truth_frames(tmp_path, store):
    # Init at the last frame of the first sequence: its valid times fall in the gap between sequences.
    path = _forecast_file(tmp_path, store, idx=19, leads=2, members=1)
    with pytest.raises(InputError, match=r"no frames at valid times 2024-\S+, 2024-"):
        verify.evaluate(path, store)


def test_evaluate_writes_a_report(tmp_path, store):
    path = _forecast_file(tmp_path, store, idx=5, leads=3, members=2, shift=0.2)
    verify.evaluate(path, store, thresholds=(0.5,), report_dir=tmp_path / "report")
    html = (tmp_path / "report" / "index.html").read_text()
    assert 'id="headline"' in html and "oracle" in html


def test_choose_inits_protocol_and_even_spacing(store):
    fields = data.open_fields(store)
    every4 = verify.choose_inits(fields, context=4, lead_times=4, init_stride=4, inits=None)
    # Windows of 8 frames in two 20-frame segments: starts 0, 4, 8, 12 in each; init = start + 3.
    assert every4 == [3, 7, 11, 15, 23, 27, 31, 35]
    three = verify.choose_inits(fields, context=4, lead_times=4, init_stride=None, inits=3)
    assert len(three) == 3 and three[0] == 3 and three[-1] == 35
    with pytest.raises(InputError, match="not both"):
        verify.choose_inits(fields, 4, 4, 2, 3)


def test_skill_runs_every_system_on_the_same_inits(tmp_path, store, monkeypatch):
    from dydiff_earth import baselines

    calls: list[tuple[str, str]] = []
    real = baselines.make_baseline

    def recording(name: str, record=None):
        forecaster = real(name, record)

        def run(inputs, **kw):
            calls.append((name, kw["init_time"]))
            return forecaster(inputs, **kw)

        run.context = getattr(forecaster, "context", 1)  # type: ignore[attr-defined]
        return run

    monkeypatch.setattr(baselines, "make_baseline", recording)
    result = verify.skill(
        store,
        [],
        ["extrapolation"],
        inits=3,
        members=2,
        lead_times=4,
        thresholds=(0.5,),
        report_dir=tmp_path / "skill",
    )
    by_system: dict[str, list[str]] = {}
    for name, init in calls:
        by_system.setdefault(name, []).append(init)
    assert set(by_system) == {"persistence", "extrapolation"}
    assert by_system["persistence"] == by_system["extrapolation"]
    assert len(by_system["persistence"]) == 3

    scores = xr.open_dataset(tmp_path / "skill" / "scores.nc")
    assert scores["crps_fair"].dims == (schema.SYSTEM, schema.LEAD_TIME)
    assert list(scores[schema.SYSTEM].values) == ["persistence", "extrapolation"]
    summary = json.loads((tmp_path / "skill" / "summary.json").read_text())
    assert summary["init_times"] == [s[:19] for s in by_system["persistence"]]
    assert summary["systems"]["persistence"]["crps_skill"] == 0.0
    assert summary["systems"]["extrapolation"]["crps_skill"] > 0.0  # steady flow: motion helps
    assert summary["options"]["lead_times"] == 4 and summary["options"]["context"] == 4
    assert summary["systems"]["extrapolation"]["n_points"] == 3 * 4 * 32 * 32
    assert (tmp_path / "skill" / "index.html").is_file() and (tmp_path / "skill" / "summary.md").is_file()
    assert result.report == tmp_path / "skill" / "index.html"


def test_skill_cli_without_a_fitting_model_scores_baselines(tmp_path):
    # Turbulence (u, v): the shipped rain model does not fit, so only the baselines run.
    store = str(io.write_zarr(synthetic.turbulence(sequences=1, frames=12, size=32), tmp_path / "turb.zarr"))
    runner = CliRunner()
    out = tmp_path / "cli-skill"
    res = runner.invoke(
        app,
        [
            "skill",
            "--data",
            store,
            "--baselines",
            "persistence",
            "--inits",
            "2",
            "--lead-times",
            "3",
            "--report",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "note:" in res.output and "persistence" in res.output
    assert (out / "scores.nc").is_file()


def test_evaluate_cli_and_bad_option(tmp_path, store):
    path = _forecast_file(tmp_path, store, idx=5, leads=2, members=2)
    runner = CliRunner()
    res = runner.invoke(
        app, ["evaluate", "--forecast", path, "--truth", store, "--output", str(tmp_path / "s.nc")]
    )
    assert res.exit_code == 0, res.output
    assert "crps_fair" in res.output and (tmp_path / "s.nc").is_file()
    res = runner.invoke(app, ["evaluate", "--forecast", path, "--truth", store, "--thresholds", "a,b"])
    assert res.exit_code == 2 and "--thresholds" in res.output


@pytest.mark.slow
def test_skill_with_a_tiny_checkpoint(tmp_path, store):
    from dydiff_earth import config, train

    fields = data.open_fields(store)
    cfg = config.TrainConfig(context=4, horizon=2, patch=16, batch_size=2, steps=3, checkpoint_every=3)
    ckpt = tmp_path / "tiny.safetensors"
    train.fit(fields, config.preset("tiny"), config.DiffusionConfig(), cfg, ckpt, device="cpu")
    verify.skill(
        store, [str(ckpt)], [], inits=2, members=2, lead_times=2, sampling_steps=2, report_dir=tmp_path / "r"
    )
    scores = xr.open_dataset(tmp_path / "r" / "scores.nc")
    assert list(scores[schema.SYSTEM].values) == ["tiny", "persistence"]
    assert np.isfinite(scores["crps_fair"].sel(system="tiny")).all()
    # The spacing left open is the checkpoint's default; the report says what the model used.
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["options"]["samplers"] == "tiny: dpmpp2m, 2 steps, time spacing"
    # Inflated members of one group depend on one another: with two groups the fair CRPS takes only
    # pairs from different groups; with one it takes all pairs and the report says it is optimistic.
    for members, how in ((9, "different groups of 8"), (4, "optimistic")):
        verify.skill(
            store,
            [str(ckpt)],
            [],
            inits=2,
            members=members,
            lead_times=2,
            sampling_steps=2,
            inflation=2.0,
            report_dir=tmp_path / f"inflated{members}",
        )
        summary = json.loads((tmp_path / f"inflated{members}" / "summary.json").read_text())
        assert summary["options"]["fair_crps"].startswith("tiny: ") and how in summary["options"]["fair_crps"]
        scores = xr.open_dataset(tmp_path / f"inflated{members}" / "scores.nc")
        assert ("different groups" in scores["crps_fair"].attrs["long_name"]) == (members == 9)
        assert np.isfinite(scores["crps_fair"]).all()
