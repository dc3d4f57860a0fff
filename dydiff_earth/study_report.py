"""The report of a study (:mod:`dydiff_earth.study`): Markdown tables, two figures and the numbers as JSON.

Reads only the numbers `study.aggregate` computed; every file is published atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from dydiff_earth import io


def _ci(ratio: Mapping, k: int | None = None) -> str:
    if k is None:
        return f"{ratio['overall']:.3f} [{ratio['overall_low']:.3f}, {ratio['overall_high']:.3f}]"
    return f"{ratio['ratio'][k]:.3f} [{ratio['low'][k]:.3f}, {ratio['high'][k]:.3f}]"


def verdict(row: Mapping, reference: str) -> str:
    """One sentence: is the setting better or worse than the reference, and does the interval say so?"""
    r = row["ratio"]
    if r["overall_high"] < 1:
        word = "better than"
    elif r["overall_low"] > 1:
        word = "worse than"
    else:
        word = "not distinguishable from"
    return (
        f"{row['setting']} / {reference}: fair CRPS ratio {_ci(r)} (95 % interval): "
        f"{row['setting']} is {word} {reference}."
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(numbers: Mapping) -> str:
    spec = numbers["spec"]
    train = spec["train"]
    reference = numbers["reference"]
    leads = [f"+{m:g} min" if m < 120 else f"+{m / 60:g} h" for m in numbers["lead_times_minutes"]]
    rows = numbers["settings"]
    others = [r for r in rows if "ratio" in r]
    names = [r["setting"] for r in rows]
    lines = [
        "# Gamma study: Dynamical Diffusion against plain diffusion",
        "",
        f"Data `{spec['data']}`, held-out period `{spec['time']}` ({len(numbers['init_times'])} init "
        f"times, {len(leads)} lead times); models trained on the frames before it. Preset "
        f"`{spec['preset']}`, patch {train['patch']}, {train['context']} context + {train['horizon']} "
        f"target frames, batch {train['batch_size']}, {numbers['steps']} steps, {spec['seeds']} seed(s) "
        "per setting (seed k of every setting: same initial weights, windows, crops and noise). Scored "
        f"with `skill`: {spec['members']} members, {spec['sampling_steps']} {spec['solver'].upper()} "
        "steps; fair CRPS averaged over lead times and variables. Intervals: 95 % percentile bootstrap "
        f"over cases and seeds ({spec['bootstrap']} resamples).",
        "",
        *[f"- {verdict(r, reference)}" for r in others],
        "",
    ]
    lines += _table(
        [
            "setting",
            "fair CRPS",
            f"ratio to {reference} [95 % CI]",
            "RMSE of mean",
            "RMSE ratio [95 % CI]",
            "spread/skill",
            "per seed",
        ],
        [
            [
                r["setting"],
                f"{r['crps_fair']:.4f}",
                _ci(r["ratio"]) if "ratio" in r else "1 (reference)",
                f"{r['rmse']:.4f}",
                _ci(r["rmse_ratio"]) if "rmse_ratio" in r else ("1 (reference)" if "ratio" not in r else ""),
                f"{r['ssr']:.2f}",
                ", ".join(f"{v:.4f}" for v in r["crps_fair_by_seed"]),
            ]
            for r in rows
        ]
        + [["persistence", f"{numbers['persistence']['crps_fair']:.4f}", "", "", "", "", ""]],
    )
    lines += ["", "Fair CRPS per lead time, and the ratio to the reference:", ""]
    lines += _table(
        ["lead", *names, *(f"{r['setting']} / {reference}" for r in others)],
        [
            [lead, *(f"{r['crps_fair_by_lead'][k]:.4f}" for r in rows), *(_ci(r["ratio"], k) for r in others)]
            for k, lead in enumerate(leads)
        ],
    )
    rmse_others = [r for r in others if "rmse_ratio" in r]
    lines += ["", "RMSE of the ensemble mean per lead time, and the ratio to the reference:", ""]
    lines += _table(
        ["lead", *names, *(f"{r['setting']} / {reference}" for r in rmse_others)],
        [
            [
                lead,
                *(f"{r['rmse_by_lead'][k]:.4f}" for r in rows),
                *(_ci(r["rmse_ratio"], k) for r in rmse_others),
            ]
            for k, lead in enumerate(leads)
        ],
    )
    lines += ["", "Spread/skill ratio per lead time (1 is calibrated):", ""]
    lines += _table(
        ["lead", *names],
        [[lead, *(f"{r['ssr_by_lead'][k]:.2f}" for r in rows)] for k, lead in enumerate(leads)],
    )
    lines += [
        "",
        "Learning curve: fair CRPS of the weight snapshots, mean over seeds "
        f"({spec['curve_inits']} init times, {min(4, spec['members'])} members):",
        "",
    ]
    lines += _table(
        ["step", *names, "persistence"],
        [
            [step, *(f"{row[n]:.4f}" for n in names), f"{numbers['curve_persistence'][step]:.4f}"]
            for step, row in numbers["curve"].items()
        ],
    )
    lines += ["", "![fair CRPS by lead time](crps-by-lead.png)", "", "![learning curve](curve.png)", ""]
    return "\n".join(lines)


def crps_figure(numbers: Mapping) -> Figure:
    minutes = numbers["lead_times_minutes"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for k, r in enumerate(numbers["settings"]):
        ax.plot(minutes, r["crps_fair_by_lead"], "o-", color=f"C{k}", label=r["setting"])
    ax.plot(minutes, numbers["persistence"]["crps_fair_by_lead"], "--", color="grey", label="persistence")
    ax.set_xlabel("lead time (min)")
    ax.set_ylabel("fair CRPS, lower is better")
    ax.set_title(f"held-out {numbers['spec']['time']}, {numbers['steps']} training steps", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def curve_figure(numbers: Mapping) -> Figure:
    steps = [int(s) for s in numbers["curve"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for k, r in enumerate(numbers["settings"]):
        values = [numbers["curve"][str(s)][r["setting"]] for s in steps]
        ax.plot(steps, values, "o-", color=f"C{k}", label=r["setting"])
    persistence = [numbers["curve_persistence"][str(s)] for s in steps]
    ax.plot(steps, persistence, "--", color="grey", label="persistence")
    ax.set_xlabel("training steps")
    ax.set_ylabel("fair CRPS (mean over seeds)")
    ax.set_title("learning curve on the held-out period", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write(numbers: Mapping, out: Path) -> Path:
    """``report.md``, ``report.json``, ``crps-by-lead.png`` and ``curve.png`` in ``out``."""
    for name, make in (("crps-by-lead.png", crps_figure), ("curve.png", curve_figure)):
        fig = make(numbers)
        with io.publish(out / name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
    with io.publish(out / "report.json") as tmp:
        tmp.write_text(json.dumps(numbers, indent=2, allow_nan=False) + "\n")
    with io.publish(out / "report.md") as tmp:
        tmp.write_text(markdown(numbers))
    return out / "report.md"
