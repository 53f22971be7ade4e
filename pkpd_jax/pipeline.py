"""The whole pipeline as one library function: [`run_pipeline`][] (what `pkpd-jax run` does).

Stages: validate and summarise the study, choose the model (given, else the shipped model
selectors, else [`DEFAULT_PIPELINE_MODEL`][]), fit it (or reuse a finished fit of the same data,
model, seed and sampler settings), answer the twelve dose questions with in-silico trials
(optionally with a quantum-kernel covariate model), write the HTML report.

The study is read once ([`Study.read`][]: one clean polars frame and one
[`Dataset`][pkpd_jax.data.Dataset]) and handed to every stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


__all__ = [
    "DEFAULT_PIPELINE_MODEL",
    "FIT_SETTING_KEYS",
    "RUN_SETTINGS",
    "PipelineResult",
    "RunSettings",
    "Study",
    "finished_fit",
    "run_pipeline",
    "select_model",
    "unfittable_pk",
]

#: Sampler and trial sizes of the full and the `--fast` pipeline. The full run keeps 4 x 600
#: draws after 600 warm-up iterations: the dose answers use 100 of them, and on the example study
#: (seed 0) the 600-iteration warm-up ends with the low-rank metric of a 1000-iteration one (11.5
#: leapfrog steps per draw, R-hat <= 1.003, no divergence, smallest bulk / tail ESS 673 / 605 per
#: 4000 draws); `pkpd-jax fit` keeps 1000 + 1000 by default.
RUN_SETTINGS: dict[str, dict[str, Any]] = {
    "full": dict(chains=4, warmup=600, samples=600, metric="low_rank", n_virtual=1000, n_draws=100,
                 qkernel_n=2000),
    "fast": dict(chains=2, warmup=200, samples=150, metric="low_rank", n_virtual=300, n_draws=40,
                 qkernel_n=500),
}
#: The settings a reused fit (OUT/fit/run_settings.json) must have been run with (and the seed).
FIT_SETTING_KEYS = ("chains", "warmup", "samples", "metric")
#: The population model fitted when no selector decides (see model_selection.json).
DEFAULT_PIPELINE_MODEL = ("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
#: The dose-question targets checked before any work (fraction of subjects below the threshold).
_TARGETS = (0.9, 0.75)


@dataclass(frozen=True)
class RunSettings:
    """Everything [`run_pipeline`][] needs besides the data.

    **Fields:** `out` (output directory), `pk` / `pd` (the model; `None`: the selectors' choice),
    `threshold` (biomarker threshold to stay below), `seed` (every random step), `reuse_fit`
    (reuse a finished fit in OUT/fit), `qkernel` (quantum-kernel covariate model for the virtual
    subjects), `fast` (which preset the sizes came from), the sampler settings `chains`, `warmup`,
    `samples`, `metric`, and the trial sizes `n_virtual` (virtual subjects), `n_draws` (posterior
    draws), `qkernel_n` (synthetic subjects training the quantum-kernel regressor).

    Use [`RunSettings.preset`][] for the full or `--fast` sizes.
    """

    out: Path = Path("pkpd_out")
    pk: str | None = None
    pd: str | None = None
    threshold: float = 3.3
    seed: int = 0
    reuse_fit: bool = True
    qkernel: bool = False
    fast: bool = False
    chains: int = RUN_SETTINGS["full"]["chains"]
    warmup: int = RUN_SETTINGS["full"]["warmup"]
    samples: int = RUN_SETTINGS["full"]["samples"]
    metric: str = RUN_SETTINGS["full"]["metric"]
    n_virtual: int = RUN_SETTINGS["full"]["n_virtual"]
    n_draws: int = RUN_SETTINGS["full"]["n_draws"]
    qkernel_n: int = RUN_SETTINGS["full"]["qkernel_n"]

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        for name in ("chains", "warmup", "samples", "n_virtual", "n_draws", "qkernel_n"):
            value, least = getattr(self, name), 0 if name == "warmup" else 1
            if value < least:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {least}; got {value}.")

    @classmethod
    def preset(cls, fast: bool = False, *, chains: int | None = None, warmup: int | None = None,
               samples: int | None = None, **others: Any) -> RunSettings:
        """The full (or `fast`) sizes of `RUN_SETTINGS` with the user's `chains`, `warmup` and
        `samples` (`None` keeps the preset's) and any other field in `others`; raises
        `ValueError` naming a bad option (e.g. ``--chains must be >= 1; got 0.``)."""
        sizes = dict(RUN_SETTINGS["fast" if fast else "full"])
        sizes.update({k: v for k, v in dict(chains=chains, warmup=warmup, samples=samples).items()
                      if v is not None})
        unknown = set(others) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"RunSettings has no field(s) {sorted(unknown)}.")
        return cls(fast=fast, **{**sizes, **others})

    def fit_record(self) -> dict[str, Any]:
        """The sampler settings a reusable fit must match (`FIT_SETTING_KEYS` and the seed)."""
        return {"seed": self.seed, **{k: getattr(self, k) for k in FIT_SETTING_KEYS}}


@dataclass(frozen=True)
class Study:
    """A study read once: the clean frame of [`read_nonmem`][pkpd_jax.data.read_nonmem], its
    [`Dataset`][pkpd_jax.data.Dataset], and the CSV path it came from (`None` for a frame)."""

    frame: Any
    dataset: Any
    path: Path | None = None

    @classmethod
    def read(cls, data) -> Study:
        """`data`: a `Study` (returned as is), a CSV path or a polars frame (read and validated)."""
        if isinstance(data, Study):
            return data
        from .data import Dataset, read_nonmem

        if isinstance(data, Dataset):
            raise TypeError("run_pipeline needs the study as a CSV path or a polars frame (the fit "
                            "keeps the original rows); got a Dataset.")
        path = Path(data) if isinstance(data, (str, Path)) else None
        if path is not None and not path.exists():
            raise FileNotFoundError(f"no data file {path}")
        frame = read_nonmem(data)
        return cls(frame, Dataset.from_frame(frame), path)

    @property
    def key(self) -> str:
        """What a reusable fit records as its data: the resolved CSV path, or a digest of the frame."""
        if self.path is not None:
            return str(self.path.resolve())
        return "frame sha256:" + hashlib.sha256(self.frame.write_csv().encode()).hexdigest()


@dataclass(frozen=True)
class PipelineResult:
    """What [`run_pipeline`][] wrote and found.

    **Fields:** `out` (output directory), `summary` (the study overview record), `selection` (the
    model record written to model_selection.json), `fit_dir`, `fit` (the
    [`FitResult`][pkpd_jax.inference.fit.FitResult], `None` when a finished fit was reused),
    `answers` (the twelve dose answers), `qkernel` (the quantum-kernel record or `None`),
    `report` (path of report.html), `timings` (seconds per stage).
    """

    out: Path
    summary: dict
    selection: dict
    fit_dir: Path
    fit: Any
    answers: dict
    qkernel: dict | None
    report: Path
    timings: dict = field(default_factory=dict)


def select_model(data, pk: str | None = None, pd: str | None = None) -> dict:
    """The model to fit: the user's choice, else the shipped model selectors' choice (`pkpd-jax
    selector classify`), else [`DEFAULT_PIPELINE_MODEL`][].

    `data`: a [`Study`][] or what [`Study.read`][] takes. `pk`/`pd` (and `how`) of the result are
    what is fitted; with the selectors, `selected` is their choice, `probabilities` their
    study-level class probabilities, and `fitted_reason` says why the fitted model differs from
    the selected one (a class the population fit cannot use for these data). A user-given `pd` is
    kept while the selector chooses the PK class.
    """
    if pk is not None:
        return {"pk": pk, "pd": pd, "how": "given on the command line"}
    default_pd = DEFAULT_PIPELINE_MODEL[1] if pd is None else pd
    try:
        from .amortized.classify import classify_study

        study = Study.read(data)
        result = classify_study(study.dataset)
    except Exception as e:  # the selector advises; a study it cannot read must not stop the run
        return {"pk": DEFAULT_PIPELINE_MODEL[0], "pd": default_pd,
                "how": f"default population model (the model selector could not classify the study: {e})"}
    selected = {"pk": result["pk"]["selected"], "pd": (result["pd"] or {}).get("selected")}
    out = {
        "pk": selected["pk"],
        "pd": pd if pd is not None else selected["pd"],
        "how": "amortized model selection (shipped selectors; `pkpd-jax classify`)",
        "selected": selected,
        "probabilities": {f: dict(list(result[f]["probabilities"].items())[:5])
                          for f in ("pk", "pd") if result[f] is not None},
        "n_subjects": {f: result[f]["n_subjects"] for f in ("pk", "pd") if result[f] is not None},
    }
    reasons = []
    if pd is not None:
        reasons.append(f"PD model {pd} given on the command line")
    elif selected["pd"] is None:
        out["pd"] = default_pd
        reasons.append(f"PD not classified ({result['pd_note']}); default {default_pd}")
    why = unfittable_pk(selected["pk"], study)
    if why:
        out["pk"] = DEFAULT_PIPELINE_MODEL[0]
        reasons.append(f"selected PK class {selected['pk']} not fitted: {why}; default "
                       f"{DEFAULT_PIPELINE_MODEL[0]} fitted instead")
    if reasons:
        out["fitted_reason"] = "; ".join(reasons)
    return out


def unfittable_pk(name: str, data) -> str | None:
    """Why the population fit cannot use PK class `name` for the study's doses (`None`: it can).

    `data`: a [`Study`][] or what [`Study.read`][] takes. The fit takes any registry class; what
    it cannot do is meaningful: an infusion into an absorption depot, or a dose compartment
    (`CMT`) the class does not have."""
    import numpy as np

    from .models import get_pk

    cls = get_pk(name)
    df = Study.read(data).frame
    doses = df.filter(df["EVID"] == 1)
    depot = cls.dose_cmt != cls.central
    if depot and "DUR" in doses.columns and bool(np.any(np.nan_to_num(doses["DUR"].to_numpy()) > 0)):
        return "the study's doses are IV infusions and the class absorbs from a depot"
    cmt = np.nan_to_num(doses["CMT"].to_numpy()) if "CMT" in doses.columns else np.zeros(0)
    if cmt.size and cmt.max() > len(cls.states):
        return f"the data dose into CMT {int(cmt.max())} and the class has {len(cls.states)} compartments"
    return None


def _fit_record(data, selection: Mapping, settings: RunSettings) -> dict:
    key = data.key if isinstance(data, Study) else str(Path(data).resolve())
    return {"data": key, "pk": selection["pk"], "pd": selection["pd"], **settings.fit_record()}


def finished_fit(fit_dir, data, selection: Mapping, settings: RunSettings) -> bool:
    """Whether `fit_dir` holds a finished fit of the same data (a [`Study`][] or a CSV path),
    model (`selection`'s ``pk`` and ``pd``), seed and sampler settings (`FIT_SETTING_KEYS`)."""
    fit_dir = Path(fit_dir)
    path = fit_dir / "run_settings.json"
    if not (path.exists() and (fit_dir / "summary.json").exists() and (fit_dir / "positions.npy").exists()):
        return False
    return json.loads(path.read_text()) == _fit_record(data, selection, settings)


def _qkernel_stage(fit_dir: Path, settings: RunSettings, log) -> tuple[Any, dict, tuple, str]:
    """Train the quantum-kernel covariate model on the fit's posterior; write qkernel.json."""
    from .quantum.pipeline import covariate_model_from_fit

    individual_model, qk = covariate_model_from_fit(fit_dir, n=settings.qkernel_n, seed=settings.seed)
    (settings.out / "qkernel.json").write_text(json.dumps(qk, indent=2, default=float) + "\n")
    # R² is undefined (None) for a parameter without covariate effects (a constant target)
    r2 = ", ".join(f"{k} {v:.3f}" for k, v in qk["r2_noise_free"].items() if v is not None)
    log(f"      quantum-kernel covariate model ({qk['kernel']} {qk['method']}, "
        f"{qk['n_train']} synthetic subjects, {qk['fit_s']:.1f} s): R² vs the covariate "
        f"equations {r2}")
    section = (
        "Quantum-kernel covariate model",
        f"Virtual subjects' typical parameters come from a {qk['kernel']}-kernel {qk['method']} "
        f"regressor of {', '.join(qk['features'])} trained on {qk['n_train']} synthetic subjects "
        f"drawn from the posterior; held-out R² against the fitted covariate equations: {r2}.",
    )
    assumption = (
        "Quantum-kernel covariate model: the typical parameters given the covariates are the "
        "regressor's prediction for every posterior draw (the between-subject variability still "
        "varies by draw), so the dose intervals understate the uncertainty in the typical values."
    )
    return individual_model, qk, section, assumption


def run_pipeline(
    data=None,
    settings: RunSettings | None = None,
    *,
    log: Callable[[str], None] = print,
    on_fit: Callable[[Any], None] | None = None,
) -> PipelineResult:
    """Validate, select the model, fit, run the in-silico trials and write the report.

    **Arguments:**

    - `data`: the study: a CSV path, a polars frame or a [`Study`][] (`None`: the bundled example
      study, whose known truth the report shows).
    - `settings`: a [`RunSettings`][] (default: the full preset).
    - `log`: called with each progress line.
    - `on_fit`: called with the [`FitResult`][pkpd_jax.inference.fit.FitResult] right after a
      new fit (e.g. to print its parameter table); not called when a fit is reused.

    **Returns:** a [`PipelineResult`][]. Writes into ``settings.out``: summary.json,
    data_overview.png, model_selection.json, fit/ (with run_settings.json), answers.json,
    trial_curves.json and coverage plots, qkernel.json (with ``qkernel``), report.html and
    timings.json.

    **Raises:** `ValueError` (a bad threshold or setting, before any work),
    `FileNotFoundError` (no such data file), [`DataValidationError`][pkpd_jax.data.DataValidationError].
    """
    from ._x64 import enable_x64

    settings = RunSettings() if settings is None else settings
    enable_x64()
    from .data.example import example_paths
    from .inference.fit import fit as run_fit
    from .report.fit_plots import fit_plots
    from .report.html import write_report
    from .report.overview import study_overview
    from .trials.dose_search import answer_questions, check_trial_inputs

    check_trial_inputs(threshold=settings.threshold, targets=_TARGETS)  # before hours of work, not after
    if data is not None and isinstance(data, (str, Path)) and not Path(data).exists():
        raise FileNotFoundError(f"no data file {data}")
    truth = example_paths()[1] if data is None else None
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    where = ("bundled example study" if data is None
             else str(data) if isinstance(data, (str, Path)) else "the given data")
    log(f"[1/5] validating {where}")
    t = time.perf_counter()
    study = Study.read(example_paths()[0] if data is None else data)
    summary = study_overview(study.frame, out)
    log(summary["text"])
    timings["validate_s"] = time.perf_counter() - t

    log("[2/5] model selection")
    t = time.perf_counter()
    selection = select_model(study, settings.pk, settings.pd)
    timings["select_s"] = time.perf_counter() - t
    (out / "model_selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    log(f"      {selection['pk']} + {selection['pd']} ({selection['how']})")

    log(f"[3/5] population fit ({settings.chains} chains, {settings.warmup} warm-up + "
        f"{settings.samples} draws)")
    t = time.perf_counter()
    fit_dir = out / "fit"
    fr = None
    if settings.reuse_fit and finished_fit(fit_dir, study, selection, settings):
        log(f"      reusing the finished fit in {fit_dir}")
    else:
        fr = run_fit(
            study.frame,
            pk=selection["pk"],
            pd=selection["pd"],
            chains=settings.chains,
            warmup=settings.warmup,
            samples=settings.samples,
            metric=settings.metric,
            seed=settings.seed,
            out=fit_dir,
            plots=fit_plots,
            log=lambda m: log(f"      {m}"),
        )
        if on_fit is not None:
            on_fit(fr)
        (fit_dir / "run_settings.json").write_text(
            json.dumps(_fit_record(study, selection, settings), indent=2) + "\n")
    timings["fit_s"] = time.perf_counter() - t

    log(f"[4/5] in-silico trials ({settings.n_virtual} virtual subjects x "
        f"{settings.n_draws} posterior draws, daily and weekly, 3 scenarios)")
    t = time.perf_counter()
    individual_model, qk, extra_sections, assumptions = None, None, [], []
    if settings.qkernel:
        individual_model, qk, section, assumption = _qkernel_stage(fit_dir, settings, log)
        extra_sections.append(section)
        assumptions.append(assumption)
        timings["qkernel_s"] = time.perf_counter() - t
    answers = answer_questions(
        fit_dir, n_virtual=settings.n_virtual, n_draws=settings.n_draws, seed=settings.seed,
        threshold=settings.threshold, out_dir=out, data=study.dataset, individual_model=individual_model,
    )
    (out / "answers.json").write_text(json.dumps(answers, indent=2) + "\n")
    timings["trials_s"] = time.perf_counter() - t

    log("[5/5] report")
    t = time.perf_counter()
    report = write_report(out, fit_dir=fit_dir, answers=answers, truth=truth, model_selection=selection,
                          extra_sections=extra_sections, assumptions=assumptions, data=study.frame)
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return PipelineResult(out=out, summary=summary, selection=selection, fit_dir=fit_dir, fit=fr,
                          answers=answers, qkernel=qk, report=report, timings=timings)

