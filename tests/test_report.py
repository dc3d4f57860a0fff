"""Tests of the skill report: self-contained HTML, images that decode, the table, and a real browser."""

from __future__ import annotations

import base64
import io as _bytes
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from dydiff_earth import schema
from dydiff_earth.metrics import combine_systems, score_all
from dydiff_earth.report import curves_figure, example_figure, table_rows, write_report
from dydiff_earth.verify import headline

INIT = np.datetime64("2017-01-31T12:00", "ns")
LEADS = pd.to_timedelta([5, 10, 15], "min").values


def _rain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    wet = rng.random(shape) < 0.4
    return np.where(wet, rng.lognormal(0.3, 1.0, shape), 0.0).astype(np.float32)


def _forecast(values: np.ndarray) -> xr.Dataset:
    coords = {
        schema.MEMBER: np.arange(values.shape[0]),
        schema.LEAD_TIME: LEADS,
        schema.INIT_TIME: INIT,
        "y": np.arange(values.shape[-2]) * 4000.0,
        "x": np.arange(values.shape[-1]) * 4000.0,
    }
    attrs = {"units": "mm h-1", "long_name": "rain rate"}
    return xr.Dataset({"precip": ((schema.MEMBER, schema.LEAD_TIME, "y", "x"), values, attrs)}, coords=coords)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of three systems (1, 1 and 4 members) on a 24 x 24 grid with thresholds 1 and 4."""
    rng = np.random.default_rng(0)
    truth_values = _rain(rng, (3, 24, 24))
    truth = _forecast(truth_values[None]).isel({schema.MEMBER: 0}, drop=True)
    systems = {
        "persistence": _forecast(np.repeat(truth_values[:1], 3, axis=0)[None]),
        "extrapolation": _forecast((truth_values + rng.normal(0, 0.5, truth_values.shape))[None].clip(0)),
        "model": _forecast(truth_values[None] * rng.uniform(0.5, 1.5, (4, 3, 24, 24)).astype(np.float32)),
    }
    scores = combine_systems(
        {name: score_all(ds, truth, thresholds=(1.0, 4.0), pools=(1, 4)) for name, ds in systems.items()}
    )
    summary = {"options": {"data": "synthetic", "members": 4}, "init_times": [str(INIT)[:19]]}
    summary["systems"] = headline(scores)
    out = tmp_path_factory.mktemp("report") / "report"
    path = write_report(scores, out, summary=summary, examples=systems, truth=truth)
    return path, summary


def _image_sources(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]+)"', html)


def test_report_files_and_embedded_images(report):
    path, _ = report
    assert path.name == "index.html" and path.is_file()
    html = path.read_text()
    sources = _image_sources(html)
    # curves, ssr, rank histograms, reliability, spectra, lone points, and one example per system.
    assert len(sources) == 6 + 3
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(_bytes.BytesIO(png)) as im:
            assert im.width > 200 and im.height > 150
            # Not blank: a drawn figure has many distinct colours.
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert "curves.png" in pngs and "isolated.png" in pngs and "example_2.png" in pngs
    markdown = (path.parent / "summary.md").read_text()
    assert "| system |" in markdown and "![Scores against lead time](curves.png)" in markdown
    assert not list(path.parent.parent.glob(".*.tmp"))  # published: no temporary left behind


def test_table_marks_the_best_value_of_each_column(report):
    path, summary = report
    header, rows = table_rows(summary, "mm h-1")
    assert header[:3] == ["system", "fair CRPS (mm h-1)", "CRPS skill vs persistence"]
    crps = [summary["systems"][row[0][0]]["crps_fair"] for row in rows]
    best = [row[1][1] for row in rows]
    assert best == [c == min(crps) for c in crps]
    html = path.read_text()
    assert '<table id="headline">' in html and html.count("<tr>") == 1 + len(rows)
    assert "<b>" in html and "CSI ≥ 1 mm h-1" in html


def test_single_system_scores_without_system_dim(tmp_path):
    rng = np.random.default_rng(1)
    truth_values = _rain(rng, (3, 16, 16))
    truth = _forecast(truth_values[None]).isel({schema.MEMBER: 0}, drop=True)
    scores = score_all(_forecast(truth_values[None] + 0.1), truth, pools=(1,))
    scores.attrs["system"] = "oracle"
    combined = combine_systems({"oracle": scores})
    path = write_report(scores, tmp_path / "r", summary={"systems": headline(combined)})
    html = path.read_text()
    assert "oracle" in html and len(_image_sources(html)) == 4  # no thresholds: no reliability


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)"
)
def test_report_renders_in_a_real_browser(report, tmp_path):
    path, _ = report
    # A probe script that records, after load, how many images decoded (naturalWidth > 0).
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "document.body.dataset.images = imgs.length;"
        "document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
        "document.body.dataset.rows = document.querySelectorAll('#headline tbody tr').length;"
        "});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(path.read_text().replace("</body>", probe + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    result = subprocess.run(
        ["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    dom = result.stdout
    assert 'data-images="9"' in dom, result.stderr[-2000:]
    assert 'data-broken="0"' in dom
    assert 'data-rows="3"' in dom


def test_curves_show_the_pooled_matched_mean_only_where_a_coarser_pool_is_scored() -> None:
    rng = np.random.default_rng(2)
    truth_values = _rain(rng, (3, 24, 24))
    truth = _forecast(truth_values[None]).isel({schema.MEMBER: 0}, drop=True)
    forecast = _forecast(truth_values[None] * rng.uniform(0.5, 1.5, (4, 3, 24, 24)).astype(np.float32))

    def titles(pools: tuple[int, ...]) -> list[str]:
        scores = combine_systems({"model": score_all(forecast, truth, thresholds=(1.0, 4.0), pools=pools)})
        return [ax.get_title() for ax in curves_figure(scores).axes if "maxima" in ax.get_title()]

    assert titles((1, 4)) == [
        "CSI, matched mean of the 4×4 maxima, ≥ 1 mm h-1",
        "CSI, matched mean of the 4×4 maxima, ≥ 4 mm h-1",
    ]
    assert titles((1,)) == []  # pixelwise it is the matched mean, already drawn


def test_example_figure_shows_the_matched_mean_where_the_forecast_has_one() -> None:
    rng = np.random.default_rng(1)
    truth_values = _rain(rng, (3, 24, 24))
    truth = _forecast(truth_values[None]).isel({schema.MEMBER: 0}, drop=True)
    forecast = _forecast(truth_values[None] * rng.uniform(0.5, 1.5, (4, 3, 24, 24)).astype(np.float32))

    def rows(ds: xr.Dataset) -> list[str]:
        fig = example_figure("model", ds, truth)
        return [ax.get_title().split(",")[0] for ax in fig.axes if ax.get_title()][::3]

    assert rows(forecast) == ["truth", "ensemble mean", "member 0", "member 1"]
    forecast["precip_matched_mean"] = forecast["precip_mean"] = forecast["precip"].mean(schema.MEMBER)
    assert rows(forecast) == ["truth", "ensemble mean", "matched mean", "member 0", "member 1"]
    assert rows(forecast.isel({schema.MEMBER: [0]})) == ["truth", "forecast"]
