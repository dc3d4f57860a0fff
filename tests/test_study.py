"""The gamma study: settings, the bootstrap of a CRPS ratio, and the command end to end at toy size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dydiff_earth import io, synthetic
from dydiff_earth.cli import app
from dydiff_earth.errors import InputError
from dydiff_earth.study import Setting, bootstrap_ratio, parse_settings

runner = CliRunner()


def test_settings_parse_ratio_loss_and_frame() -> None:
    got = parse_settings("0, 0.5,0.5:mixed,0.25:eulerian:mixed")
    assert got == (
        Setting(0.0),
        Setting(0.5),
        Setting(0.5, loss="mixed"),
        Setting(0.25, loss="mixed", frame="eulerian"),
    )
    assert [s.name for s in got] == ["r0", "r0.5", "r0.5-mixed", "r0.25-mixed-eulerian"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5", "at least two different settings"),
        ("0,0", "at least two different settings"),
        ("0,1.5", "lie in [0, 1]"),
        ("0,half", "does not start with a gamma ratio"),
        ("0,0.5:fast", "one loss"),
        ("0,0.5:mixed:unmixed", "one loss"),
    ],
)
def test_bad_settings_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_settings(text)


def test_bootstrap_of_a_constant_ratio_is_that_ratio_exactly() -> None:
    rng = np.random.default_rng(0)
    reference = rng.gamma(2.0, 1.0, (3, 20, 4))
    same = bootstrap_ratio(reference, reference, samples=200)
    assert same["overall"] == same["overall_low"] == same["overall_high"] == pytest.approx(1.0)
    scaled = bootstrap_ratio(0.9 * reference, reference, samples=200)
    np.testing.assert_allclose([scaled["overall_low"], scaled["overall_high"]], 0.9, rtol=1e-12)
    np.testing.assert_allclose(scaled["ratio"], 0.9, rtol=1e-12)


def test_bootstrap_of_squared_errors_is_a_ratio_of_roots() -> None:
    rng = np.random.default_rng(2)
    reference = rng.gamma(2.0, 1.0, (2, 15, 3))
    test = reference * rng.lognormal(0.0, 0.3, reference.shape)
    boot = bootstrap_ratio(test, reference, samples=200, root=True)
    per_lead = np.sqrt(test.mean(axis=(0, 1))) / np.sqrt(reference.mean(axis=(0, 1)))
    np.testing.assert_allclose(boot["ratio"], per_lead, rtol=1e-12)
    whole = np.sqrt(test.mean(axis=(0, 1))).mean() / np.sqrt(reference.mean(axis=(0, 1))).mean()
    assert boot["overall"] == pytest.approx(whole, rel=1e-12)
    assert boot["overall_low"] <= boot["overall"] <= boot["overall_high"]
    scaled = bootstrap_ratio(0.81 * reference, reference, samples=100, root=True)
    np.testing.assert_allclose([scaled["overall_low"], scaled["overall_high"]], 0.9, rtol=1e-12)


def test_bootstrap_interval_covers_the_true_ratio_about_as_often_as_it_says() -> None:
    """Cases share their difficulty and seeds their luck (paired); the test system is 5 % better."""
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for _ in range(trials):
        shared = rng.gamma(2.0, 1.0, (1, 30, 3)) * rng.lognormal(0.0, 0.1, (3, 1, 1))
        reference = shared * rng.lognormal(0.0, 0.1, (3, 30, 3))
        test = 0.95 * shared * rng.lognormal(0.0, 0.1, (3, 30, 3))
        boot = bootstrap_ratio(test, reference, samples=300, seed=int(rng.integers(1 << 30)))
        covered += boot["overall_low"] <= 0.95 <= boot["overall_high"]
        assert boot["overall_low"] <= boot["overall"] <= boot["overall_high"]
    assert 0.85 <= covered / trials <= 1.0


def test_bootstrap_refuses_different_cases() -> None:
    with pytest.raises(ValueError, match="same seeds and cases"):
        bootstrap_ratio(np.ones((2, 5, 3)), np.ones((2, 6, 3)), samples=100)


def _study(root: Path, *extra: str) -> object:
    store = root / "turb.zarr"
    if not store.exists():
        io.write_zarr(synthetic.turbulence(sequences=3, frames=12, size=16, seed=5), store)
    # The third sequence is held out: it starts after the second gap.
    held_out = str(synthetic.segmented_times(synthetic.TURBULENCE_START, np.timedelta64(12, "m"), 3, 12)[24])
    args = ["study", "gamma", "--data", str(store), "--time", f"{held_out[:16]}:", "-o", str(root / "study")]
    args += ["--preset", "tiny", "--patch", "16", "--context", "2", "--horizon", "2", "--batch-size", "2"]
    args += ["--seeds", "2", "--inits", "3", "--curve-inits", "2", "--members", "2", "--sampling-steps", "1"]
    args += ["--bootstrap", "100", "--quiet", *extra]
    return runner.invoke(app, args)


@pytest.mark.slow
def test_study_end_to_end_resumes_and_grows(tmp_path: Path) -> None:
    done = _study(tmp_path, "--steps", "2", "--curve-every", "1")
    assert done.exit_code == 0, done.output
    assert "r0.5 / r0: fair CRPS ratio" in done.output
    study = tmp_path / "study"
    numbers = json.loads((study / "report.json").read_text())
    assert [r["setting"] for r in numbers["settings"]] == ["r0", "r0.5"]
    assert len(numbers["init_times"]) == 3 and list(numbers["curve"]) == ["1", "2"]
    r05 = numbers["settings"][1]
    assert len(r05["crps_fair_by_seed"]) == 2 and r05["ratio"]["overall_low"] <= r05["ratio"]["overall_high"]
    assert np.isclose(r05["crps_fair"] / numbers["settings"][0]["crps_fair"], r05["ratio"]["overall"])
    rmse = r05["rmse_ratio"]
    assert len(rmse["ratio"]) == 2 and rmse["overall_low"] <= rmse["overall"] <= rmse["overall_high"]
    report = (study / "report.md").read_text()
    assert "| r0.5 |" in report and "crps-by-lead.png" in report
    assert f"| {rmse['overall']:.3f} [{rmse['overall_low']:.3f}, {rmse['overall_high']:.3f}] |" in report
    assert (study / "skill" / "step2" / "index.html").is_file() and (study / "curve.png").stat().st_size > 0
    model = study / "models" / "r0.5-seed1.safetensors"
    assert io.load_checkpoint(model)[1]["diffusion"]["gamma_ratio"] == 0.5
    stamp = model.stat().st_mtime_ns

    again = _study(tmp_path, "--steps", "2", "--curve-every", "1")  # all done: nothing retrained
    assert again.exit_code == 0, again.output
    assert model.stat().st_mtime_ns == stamp

    other = _study(tmp_path, "--steps", "2", "--curve-every", "1", "--ratios", "0.5,0")
    assert other.exit_code == 2 and "other options (settings)" in other.output
    fewer = _study(tmp_path, "--steps", "2", "--curve-every", "1", "--members", "3", "--seeds", "1")
    assert fewer.exit_code == 2 and "other options (members, seeds)" in fewer.output

    # More steps continue training from step 2; a setting added at the end trains from scratch.
    grown = _study(tmp_path, "--steps", "3", "--curve-every", "1", "--ratios", "0,0.5,0.5:mixed")
    assert grown.exit_code == 0, grown.output
    assert io.load_checkpoint(model)[1]["step"] == 3
    numbers = json.loads((study / "report.json").read_text())
    assert list(numbers["curve"]) == ["1", "2", "3"]
    assert [r["setting"] for r in numbers["settings"]] == ["r0", "r0.5", "r0.5-mixed"]
