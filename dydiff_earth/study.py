"""Studies: one network trained under several diffusion settings, scored together on held-out data.

The gamma study asks the paper's question (Guo et al. 2025, Sec. 5): does Dynamical Diffusion (gamma
ratio r > 0) forecast better than the same network trained as plain diffusion (r = 0)? Seed k of every
setting trains the same network from the same initial weights on the same windows, crops and noise, so
settings differ only in what is asked of them. The final models are scored in one `skill` run on a
held-out period, and the verdict is the ratio of fair CRPS with a bootstrap confidence interval over
cases and training seeds (:func:`bootstrap_ratio`).

A study directory holds everything and resumes after any stop (every file is published atomically):

- ``spec.json``: what was asked; a rerun must ask the same, or more steps (training continues), more
  seeds, or more settings after those asked before
- ``models/<setting>-seed<k>.safetensors``: the models, their training state and weight snapshots
- ``curve/step<N>/``: a small skill run of every model's snapshot at step N (the learning curve)
- ``skill/step<N>/``: the skill run of the final models (``scores.nc``, ``index.html``)
- ``report.md``, ``report.json``, ``crps-by-lead.png``, ``curve.png``: :mod:`dydiff_earth.study_report`
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from dydiff_earth import io, motion, schema
from dydiff_earth.config import DiffusionConfig, TrainConfig
from dydiff_earth.errors import InputError

#: Called with a phase description, the work done in it and its total.
StudyProgress = Callable[[str, int, int], None]

LOSSES = ("unmixed", "mixed")
#: Scores of one case and lead time, per variable, from `metrics.score_all`.
CASE_SCORE = "crps_fair_by_init_time"
MSE_CASE_SCORE = "mse_by_init_time"


@dataclass(frozen=True)
class Setting:
    """What a model of the study is trained with: gamma ratio, loss form and frame."""

    gamma_ratio: float
    loss: str = "unmixed"
    frame: str = "auto"

    @property
    def name(self) -> str:
        """``r0.5``, ``r0.5-mixed``, ``r0-eulerian``: the ratio, then what differs from the defaults."""
        extra = [p for p in (self.loss, self.frame) if p not in ("unmixed", "auto")]
        return "-".join([f"r{self.gamma_ratio:g}", *extra])


def parse_settings(text: str) -> tuple[Setting, ...]:
    """Settings from ``RATIO[:OPTION...]`` tokens, e.g. ``0,0.5,0.5:mixed,0.5:eulerian``.

    An option is a loss form (``unmixed``, ``mixed``) or a frame (``auto``, ``eulerian``,
    ``persistence``, ``diurnal``, ``lagrangian``). The first setting is the reference of the ratios.
    """
    settings = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        head, *options = token.split(":")
        try:
            ratio = float(head)
        except ValueError:
            raise InputError(f"--ratios: {token!r} does not start with a gamma ratio (e.g. 0.5)") from None
        if not 0.0 <= ratio <= 1.0:
            raise InputError(f"--ratios: gamma ratios lie in [0, 1], not {ratio:g}")
        kw: dict[str, str] = {}
        for option in options:
            key = "loss" if option in LOSSES else "frame" if option in ("auto", *motion.FRAMES) else None
            if key is None or key in kw:
                raise InputError(
                    f"--ratios: {token!r}: after the ratio give one loss ({', '.join(LOSSES)}) "
                    f"and/or one frame (auto, {', '.join(motion.FRAMES)})"
                )
            kw[key] = option
        settings.append(Setting(ratio, **kw))
    names = [s.name for s in settings]
    if len(settings) < 2 or len(set(names)) < len(names):
        raise InputError(f"--ratios: give at least two different settings, e.g. 0,0.5; got {text!r}")
    return tuple(settings)


@dataclass(frozen=True)
class GammaStudy:
    """Everything a gamma study is asked to do (``spec.json``)."""

    data: str
    #: held-out period ``START:END``; the models train on the frames before it
    time: str
    settings: tuple[Setting, ...]
    seeds: int
    preset: str
    #: the training of every model (``seed`` is replaced by each seed, ``frame`` by each setting's)
    train: TrainConfig
    #: training steps between the points of the learning curve
    curve_every: int
    inits: int = 16
    curve_inits: int = 4
    members: int = 8
    sampling_steps: int = 10
    solver: str = "ddim"
    bootstrap: int = 2000

    def spec(self) -> dict:
        """The JSON of what was asked, less the training steps (which may grow)."""
        out = dataclasses.asdict(self)
        out["train"].pop("steps")
        out["settings"] = [dataclasses.asdict(s) for s in self.settings]
        return json.loads(json.dumps(out))

    def check(self) -> None:
        if self.seeds < 1 or self.inits < 1 or self.curve_inits < 1 or self.members < 2:
            raise InputError("--seeds, --inits and --curve-inits must be at least 1, --members at least 2")
        if self.curve_every < 1 or self.train.steps % self.curve_every:
            raise InputError(
                f"--curve-every must divide --steps ({self.train.steps}), not {self.curve_every}"
            )
        if self.bootstrap < 100:
            raise InputError(f"--bootstrap must be at least 100 resamples, not {self.bootstrap}")


def model_name(setting: Setting, seed: int) -> str:
    return f"{setting.name}-seed{seed}"


def _write_json(path: Path, value: object) -> None:
    with io.publish(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n")


def _check_spec(study: GammaStudy, out: Path) -> None:
    """Write ``spec.json``; a rerun may ask for more steps, more seeds or settings appended to the
    list, anything else is another study and refused."""
    path = out / "spec.json"
    new = study.spec()
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in new if k not in ("seeds", "settings") and old.get(k) != new[k])
        if new["settings"][: len(old["settings"])] != old["settings"]:
            changed.append("settings")
        if new["seeds"] < old["seeds"]:
            changed.append("seeds")
        if changed:
            raise InputError(
                f"{out} holds a study asked with other options ({', '.join(changed)}); give the same "
                "options (more --steps, more --seeds or settings added at the end of --ratios) "
                "or another --output"
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, new)


def _trained_steps(path: Path) -> int:
    return int(io.load_checkpoint(path)[1].get("step", 0)) if path.is_file() else 0


def train_models(study: GammaStudy, out: Path, device: str, progress: StudyProgress | None) -> list[Path]:
    """Train (or continue) every model to ``study.train.steps``, seed by seed so that a study stopped
    early still compares every setting on the seeds done."""
    from dydiff_earth.config import preset
    from dydiff_earth.data import open_fields
    from dydiff_earth.train import fit
    from dydiff_earth.verify import training_record

    held = open_fields(study.data, time=study.time)
    fields = training_record(study.data, held, "the study trains on")
    paths = []
    for seed in range(study.seeds):
        for setting in study.settings:
            name = model_name(setting, seed)
            path = out / "models" / f"{name}.safetensors"
            paths.append(path)
            done = _trained_steps(path)
            if done > study.train.steps:
                raise InputError(f"{path} is trained to {done} steps already; ask --steps {done} or more")
            if done == study.train.steps:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            cfg = dataclasses.replace(
                study.train, seed=seed, frame=setting.frame, snapshot_every=study.curve_every
            )
            diff = DiffusionConfig(gamma_ratio=setting.gamma_ratio, loss=setting.loss)  # type: ignore[arg-type]

            def report(step: int, total: int, loss: float, rate: float, name: str = name) -> None:
                if progress is not None:
                    progress(f"train {name} | loss {loss:.4f} | {rate:.1f} samples/s", step, total)

            model = preset(study.preset)
            fit(fields, model, diff, cfg, path, resume=done > 0, device=device, progress=report)
    return paths


def _skill(
    study: GammaStudy,
    checkpoints: Sequence[Path],
    report_dir: Path,
    inits: int,
    members: int,
    device: str,
    progress: StudyProgress | None,
) -> dict:
    """The summary of a skill run of ``checkpoints`` on the held-out period (kept; rerun for others)."""
    from dydiff_earth import verify

    summary = report_dir / "summary.json"
    asked = [str(p) for p in checkpoints]
    if not summary.is_file() or json.loads(summary.read_text())["options"]["checkpoints"] != asked:
        report_dir.parent.mkdir(parents=True, exist_ok=True)
        label = f"score {report_dir.parent.name}/{report_dir.name}"
        verify.skill(
            study.data,
            asked,
            [],
            time=study.time,
            inits=inits,
            members=members,
            sampling_steps=study.sampling_steps,
            solver=study.solver,
            report_dir=report_dir,
            device=device,
            progress=None if progress is None else lambda _s, d, t: progress(label, d, t),
        )
    return json.loads(summary.read_text())


def snapshot(path: Path, step: int) -> Path:
    """Where `train.fit` keeps the weights of ``path`` at ``step`` (``--snapshot-every``)."""
    return path.with_name(f"{path.stem}.step{step}{path.suffix}")


def learning_curve(
    study: GammaStudy, models: Sequence[Path], out: Path, device: str, progress: StudyProgress | None
) -> dict[int, dict]:
    """Per curve step, the skill summary of every model's snapshot there (4 members, few inits)."""
    steps = range(study.curve_every, study.train.steps + 1, study.curve_every)
    return {
        step: _skill(
            study,
            [snapshot(p, step) for p in models],
            out / "curve" / f"step{step}",
            study.curve_inits,
            min(4, study.members),
            device,
            progress,
        )
        for step in steps
    }


def bootstrap_ratio(
    test: np.ndarray,
    reference: np.ndarray,
    *,
    samples: int,
    seed: int = 0,
    level: float = 0.95,
    root: bool = False,
) -> dict[str, np.ndarray | float]:
    """Ratio of a mean score (fair CRPS), ``test / reference``, with a percentile bootstrap interval.

    Parameters
    ----------
    test, reference : np.ndarray
        Per-case scores, dims ``(seeds, cases, lead_times)``: the same cases in the same order, and seed k
        of both trained from the same initial weights on the same windows, crops and noise.
    samples : int
        Bootstrap resamples. Each draws cases and training seeds with replacement, the same draw for both
        (the comparison is paired: both forecast the same weather, seed k of both saw the same data), so
        the interval spans the variation of cases and of training runs alike.
    level : float
        Coverage of the interval.
    root : bool
        The scores are squared errors and the ratio is of their root means (RMSE): the root is taken
        after averaging each resample, since RMSE is not a mean over cases.

    Returns
    -------
    dict
        ``ratio``, ``low``, ``high`` per lead time (arrays) and ``overall``, ``overall_low``,
        ``overall_high``: the ratio of the score averaged over lead times, each lead weighing the same.
    """
    if test.ndim != 3 or test.shape != reference.shape:
        raise ValueError(
            "need (seeds, cases, leads) arrays of the same seeds and cases; "
            f"got {test.shape}, {reference.shape}"
        )

    def score(x: np.ndarray) -> np.ndarray:  # per lead time
        mean = x.mean(axis=(0, 1))
        return np.sqrt(mean) if root else mean

    rng = np.random.default_rng(seed)
    seeds, cases, leads = test.shape
    per_lead = np.empty((samples, leads))
    overall = np.empty(samples)
    for b in range(samples):
        runs, pick = rng.integers(0, seeds, seeds), rng.integers(0, cases, cases)
        t, r = score(test[runs][:, pick]), score(reference[runs][:, pick])
        per_lead[b] = t / r
        overall[b] = t.mean() / r.mean()
    tail = 100 * (1 - level) / 2
    t_mean, r_mean = score(test), score(reference)
    return {
        "ratio": t_mean / r_mean,
        "low": np.percentile(per_lead, tail, axis=0),
        "high": np.percentile(per_lead, 100 - tail, axis=0),
        "overall": float(t_mean.mean() / r_mean.mean()),
        "overall_low": float(np.percentile(overall, tail)),
        "overall_high": float(np.percentile(overall, 100 - tail)),
    }


def _mean_over_variables(scores: xr.Dataset, score: str) -> xr.DataArray:
    """``score`` (or ``<var>_<score>``) averaged over the forecast variables."""
    names = [n for n in scores.data_vars if str(n) == score or str(n).endswith("_" + score)]
    return sum(scores[n] for n in names) / len(names)  # type: ignore[return-value]


def _crps(summary: dict, system: str) -> float:
    """A skill summary's fair CRPS of ``system``, averaged over the variables."""
    row = summary["systems"][system]
    return float(np.mean([v for k, v in row.items() if k.endswith("crps_fair")]))


def _listed(values: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in values.items()}


def aggregate(study: GammaStudy, scores: xr.Dataset, curve: dict[int, dict], trained_steps: int) -> dict:
    """The study's numbers from the final skill run's scores and the learning curve's summaries."""
    cases = _mean_over_variables(scores, CASE_SCORE)
    cases = cases.transpose(schema.SYSTEM, schema.INIT_TIME, schema.LEAD_TIME)
    # A case without a verified point at some lead (an outage in the truth) has no score to resample.
    keep = np.isfinite(cases.values).all(axis=(0, 2))
    cases = cases.isel({schema.INIT_TIME: keep})
    # Squared errors per case, for the RMSE's interval (absent from scores written before they were kept).
    squared = None
    if any(str(n).endswith(MSE_CASE_SCORE) for n in scores.data_vars):
        squared = (
            _mean_over_variables(scores, MSE_CASE_SCORE).transpose(*cases.dims).isel({schema.INIT_TIME: keep})
        )
    rmse = _mean_over_variables(scores, "rmse")
    ssr = _mean_over_variables(scores, "ssr")
    per_setting = {}
    for setting in study.settings:
        names = [model_name(setting, k) for k in range(study.seeds)]
        per_setting[setting.name] = {
            "cases": cases.sel({schema.SYSTEM: names}).values,
            "squared": None if squared is None else squared.sel({schema.SYSTEM: names}).values,
            "rmse": rmse.sel({schema.SYSTEM: names}).mean(schema.SYSTEM).values,
            "ssr": ssr.sel({schema.SYSTEM: names}).mean(schema.SYSTEM).values,
        }
    reference = study.settings[0].name
    ref_cases = per_setting[reference]["cases"]
    rows = []
    for setting in study.settings:
        one = per_setting[setting.name]
        crps_lead = one["cases"].mean(axis=(0, 1))
        row = {
            "setting": setting.name,
            **dataclasses.asdict(setting),
            "crps_fair": float(crps_lead.mean()),
            "crps_fair_by_lead": crps_lead.tolist(),
            "crps_fair_by_seed": one["cases"].mean(axis=(1, 2)).tolist(),
            "rmse": float(one["rmse"].mean()),
            "rmse_by_lead": one["rmse"].tolist(),
            "ssr": float(one["ssr"].mean()),
            "ssr_by_lead": one["ssr"].tolist(),
        }
        if setting.name != reference:
            boot = bootstrap_ratio(one["cases"], ref_cases, samples=study.bootstrap)
            row["ratio"] = _listed(boot)
            if squared is not None:
                ref_squared = per_setting[reference]["squared"]
                boot = bootstrap_ratio(one["squared"], ref_squared, samples=study.bootstrap, root=True)
                row["rmse_ratio"] = _listed(boot)
        rows.append(row)
    persistence = cases.sel({schema.SYSTEM: "persistence"}).values.mean(axis=0)
    curve_rows = {
        str(step): {
            s.name: float(
                np.mean([_crps(summary, f"{model_name(s, k)}.step{step}") for k in range(study.seeds)])
            )
            for s in study.settings
        }
        for step, summary in curve.items()
    }
    return {
        "spec": study.spec(),
        "steps": trained_steps,
        "reference": reference,
        "init_times": [str(t)[:19] for t in cases[schema.INIT_TIME].values],
        "lead_times_minutes": [float(x) for x in scores[schema.LEAD_TIME].values / np.timedelta64(1, "m")],
        "settings": rows,
        "persistence": {"crps_fair": float(persistence.mean()), "crps_fair_by_lead": persistence.tolist()},
        "curve": curve_rows,
        "curve_persistence": {str(step): _crps(s, "persistence") for step, s in curve.items()},
    }


def run_gamma_study(
    study: GammaStudy, out: str | Path, *, device: str = "auto", progress: StudyProgress | None = None
) -> tuple[Path, dict]:
    """Train, score and report a gamma study in ``out`` (continuing whatever an earlier run left).

    Returns the path of ``report.md`` and the numbers of ``report.json``.
    """
    from dydiff_earth import study_report

    study.check()
    out = Path(out)
    _check_spec(study, out)
    models = train_models(study, out, device, progress)
    curve = learning_curve(study, models, out, device, progress)
    steps = study.train.steps
    _skill(study, models, out / "skill" / f"step{steps}", study.inits, study.members, device, progress)
    scores = xr.open_dataset(out / "skill" / f"step{steps}" / "scores.nc").load()
    numbers = aggregate(study, scores, curve, steps)
    return study_report.write(numbers, out), numbers


__all__ = [
    "GammaStudy",
    "Setting",
    "aggregate",
    "bootstrap_ratio",
    "learning_curve",
    "parse_settings",
    "run_gamma_study",
    "train_models",
]
