"""The shipped radar model's skill on the held-out MeteoSwiss event, against extrapolation and STEPS in the
same run.

A guard, not the measurement: two init times, 16 members and the sampler the checkpoint recommends (4 steps
of DPM-Solver++(2M), evenly spaced in log signal-to-noise ratio, spread inflation 1.75 above 1 cell) keep it
to two minutes on two cores. 16 members are two groups of 8 inflated apart, so the fair CRPS takes pairs of
members from different groups only, which are independent as STEPS's are (`metrics.CRPS(group_size=8)`);
the fair CRPS of one inflated group would flatter the model. The full protocol (`radar-4km-v1`: 7 init
times) is in `docs/skill.md`.
Each bound sits between what `radar-4km-v1` scored in this setting and what the earlier radar model
(observed frame, `tiny`, 500 steps) or extrapolation scored, so a regression to speckle, to a washed-out
field or to an over-dispersed ensemble fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dydiff_earth import data, schema, verify

MODEL = "radar-4km-v1"

#: score: (lowest, highest) allowed in this setting, where radar-4km-v1 scores 0.49 / 0.86 / 1.02 with the
#: defaults (4 steps, spread inflation, rain mask and probability matching; the weights before the CRPS
#: tune 0.46 / 0.83 / 1.05, and 8 members without inflation 0.44 / 0.82 / 0.86). Full protocol
#: (docs/skill.md): 0.49 / 0.86 / 0.96; the earlier radar model 0.10 / 0.35 / 1.90; the motion-frame model
#: after 500 steps (speckled) SSR 1.47.
BOUNDS = {"csi@1": (0.30, 1.0), "fss@1": (0.70, 1.0), "ssr": (0.4, 1.3)}

#: The fair CRPS must be below this fraction of extrapolation's (here 0.57; full protocol: 0.60) ...
CRPS_RATIO = 0.85
#: ... and below this multiple of STEPS's (here 0.934, 0.12859 against 0.13763; full protocol 0.972; the
#: weights before the CRPS tune 0.9995 here and 1.030 on the full protocol).
STEPS_RATIO = 0.99

#: Members' power over observed power at wavelengths of 4 to 64 cells (16 to 256 km) must lie in this range.
#: Full protocol: 0.55 to 1.81 (before the CRPS tune 0.60 to 1.58; inflated 3 above 2 cells, the default to
#: 2026-12-05: 0.46 to 2.00; as sampled 0.33 to 1.31, slightly smooth at 16 km); here 0.58 to 2.46 (before
#: the tune 0.63 to 2.18).
#: Speckled members (500 steps) reach 22, the earlier model more; a blurred ensemble mean would fall far
#: below 0.2.
POWER_RANGE = (0.2, 3.0)

#: The members' share of lone points (>= 1 mm h-1 with at most 2 of 8 neighbours as wet) over the observed
#: share must stay below this at every lead time: speckle that the spectra above miss. Here radar-4km-v1
#: reaches 1.46 (before the CRPS tune 1.85; without inflation 2.2; widened by 1.75 at every scale, 3.4 on
#: the full protocol); the from-scratch GPU run of docs/skill.md, whose members are speckle from +35 min, 4.5;
#: persistence 1.1, extrapolation 0.7.
ISOLATED_RATIO = 3.0

#: CSI >= 4 mm h-1 in 4 x 4 windows of the matched mean at that scale (`pooled_matched_csi`) over
#: extrapolation's, averaged over lead times, must reach this: the protocol's heavy-rain target. Here 1.058
#: (0.439 against 0.415; the pixel matched mean pooled afterwards 0.398, 0.96 x); full protocol 1.05
#: (0.416 against 0.395), the weights before the CRPS tune 1.015 there.
HEAVY_RAIN_RATIO = 1.0


@pytest.fixture(scope="module")
def validation_event(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("radar") / "mch4.zarr"
    return data.prepare(str(shared_data / "radar_mch.nc"), out, coarsen=4, time="2017-01-31:")


@pytest.mark.slow
def test_shipped_radar_model_beats_extrapolation(validation_event: Path, tmp_path: Path) -> None:
    result = verify.skill(
        str(validation_event),
        [MODEL],
        ["extrapolation", "steps"],
        inits=2,
        members=16,
        thresholds=(1.0, 4.0),
        report_dir=tmp_path / "report",
    )
    systems = result.summary["systems"]
    model, extrapolation, steps = systems[MODEL], systems["extrapolation"], systems["steps"]
    assert model["crps_fair"] < CRPS_RATIO * extrapolation["crps_fair"], (model, extrapolation)
    assert model["crps_fair"] < STEPS_RATIO * steps["crps_fair"], (model, steps)
    for score, (low, high) in BOUNDS.items():
        assert low <= model[score] <= high, (score, model[score], (low, high))
    scores = result.scores.sel({schema.SYSTEM: MODEL})
    ratio = (scores["power_forecast"] / scores["power_truth"]).where(
        (scores["wavelength"] >= 4) & (scores["wavelength"] <= 64)
    )
    assert POWER_RANGE[0] < float(ratio.min()) and float(ratio.max()) < POWER_RANGE[1], ratio.values
    lone = (scores["isolated_forecast"] / scores["isolated_truth"]).sel(threshold=1.0)
    assert float(lone.max()) < ISOLATED_RATIO, lone.values
    heavy = result.scores["pooled_matched_csi"].sel(threshold=4.0, pool=4).mean(schema.LEAD_TIME)
    heavy_ratio = float(heavy.sel({schema.SYSTEM: MODEL}) / heavy.sel({schema.SYSTEM: "extrapolation"}))
    assert heavy_ratio >= HEAVY_RAIN_RATIO, heavy.values
