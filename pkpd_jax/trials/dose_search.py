"""Coverage of a dose, the dose search with its uncertainty, scenarios and the twelve dose answers.

**Coverage.** For one posterior draw, the coverage of a dose is the fraction of that draw's
virtual subjects whose biomarker stays below the threshold over the *whole* steady-state dosing
interval (its maximum on the interval grid < threshold). The same subjects face every dose of the
grid, so a coverage curve is one population's response to increasing doses.

**Search.** The grid is ``step, 2·step, ...`` (0.5 mg once daily, 5 mg once weekly). It is
evaluated in wide calls (32 doses at a time), all draws × virtual subjects × doses of a
call vectorised ([`steady_state_extremes`][pkpd_jax.trials.exposure.steady_state_extremes]; a
call's cost is mostly the subjects' PK steady state, which its doses share), and extended until
at least `stop_fraction` of the draws (and the posterior-median curve) reach the largest target,
or `max_dose`; the grid ends at the first multiple of `dose_chunk` (8) doses where that holds.
Then, for each target:

- the **dose** is the smallest grid dose whose posterior-median coverage (median over draws,
  dose by dose) is ≥ the target;
- the **90% interval** is the 5th and 95th percentile of the per-draw optimal doses (smallest grid
  dose whose coverage in that draw is ≥ the target), taken on the grid (lower / higher order
  statistics, so both ends are grid doses);
- a target never reached within the grid is reported as such (``dose: null`` with a note, or an
  interval end ``null``), never as a NaN.

**Scenarios and questions.** [`answer_questions`][] answers the twelve questions of a Phase 1
data set: once-daily and once-weekly doses for 90% and 75% of subjects, for a population like the
studied one, with body weight uniform on 70-140 kg, and without co-medication. [`true_doses`][]
computes the same answers from a known truth (a large virtual population, no parameter
uncertainty), which is how the example study's answers are validated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from ..progress import progress_bar
from .exposure import steady_state_extremes
from .virtual import CovariateDistribution, Posterior, virtual_parameters


__all__ = [
    "RegimenSpec",
    "Scenario",
    "REGIMENS",
    "SCENARIOS",
    "DoseSearchResult",
    "coverage_from_extremes",
    "optimal_dose_per_draw",
    "search_doses",
    "answer_questions",
    "true_doses",
    "answer_key",
    "check_trial_inputs",
]


@dataclass(frozen=True)
class RegimenSpec:
    """A dosing regimen for the search: interval `tau` (h) and dose grid `step` (mg)."""

    name: str
    tau: float
    step: float

    @property
    def label(self) -> str:
        return {"daily": "once daily", "weekly": "once weekly"}.get(self.name, f"every {self.tau:g} h")


@dataclass(frozen=True)
class Scenario:
    """A named virtual population (`key` is the suffix of the answer keys, '' for the study)."""

    name: str
    covariates: CovariateDistribution
    key: str = ""


REGIMENS = {"daily": RegimenSpec("daily", 24.0, 0.5), "weekly": RegimenSpec("weekly", 168.0, 5.0)}
SCENARIOS = {
    "study": Scenario("study", CovariateDistribution(label="covariates as studied"), ""),
    "bw70_140": Scenario(
        "bw70_140",
        CovariateDistribution(bw=("uniform", 70.0, 140.0), label="body weight uniform 70-140 kg"),
        "_bw70_140",
    ),
    "nocomed": Scenario("nocomed", CovariateDistribution(comed=0.0, label="no co-medication"), "_nocomed"),
}
TARGETS = (0.9, 0.75)


def answer_key(regimen: str, target: float, scenario: str) -> str:
    """``daily_90``, ``weekly_75_bw70_140``, ... (the keys of ``answers.json``)."""
    return (
        f"{regimen}_{round(100 * target):d}{SCENARIOS[scenario].key if scenario in SCENARIOS else scenario}"
    )


def check_trial_inputs(
    *, threshold: float, targets: Sequence[float], n_virtual: int | None = None, n_draws: int | None = None
) -> None:
    """Raise `ValueError` for a threshold <= 0, a target outside (0, 1) or empty populations."""
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"the threshold must be a number > 0; got {threshold!r}.") from None
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"the threshold must be a finite biomarker value > 0; got {threshold}.")
    for t in targets:
        if not (math.isfinite(float(t)) and 0 < float(t) < 1):
            raise ValueError(
                f"the target coverage must be a fraction strictly between 0 and 1 (e.g. 0.9); got {t}."
            )
    if n_virtual is not None and n_virtual < 1:
        raise ValueError(f"the number of virtual subjects must be >= 1; got {n_virtual}.")
    if n_draws is not None and n_draws < 1:
        raise ValueError(f"the number of posterior draws must be >= 1; got {n_draws}.")


# ---------------------------------------------------------------------------- coverage
def coverage_from_extremes(max_resp: np.ndarray, threshold: float) -> np.ndarray:
    """Coverage ``(draws, doses)`` from interval maxima ``(draws, subjects, doses)``: the fraction
    of subjects whose maximum is below `threshold`."""
    max_resp = np.asarray(max_resp)
    if not np.all(np.isfinite(max_resp)):
        raise ValueError(
            "interval maxima contain non-finite values; failed simulations must be handled first."
        )
    return np.mean(max_resp < threshold, axis=1)


def optimal_dose_per_draw(coverage: np.ndarray, grid: np.ndarray, target: float) -> np.ndarray:
    """Smallest grid dose with coverage ≥ `target`, per draw ``(draws,)``; ``inf`` = not reached."""
    coverage = np.atleast_2d(coverage)
    hit = coverage >= target
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), np.asarray(grid)[first], np.inf)


@dataclass
class DoseSearchResult:
    """Coverage curves of one regimen and scenario, and the answers they give."""

    regimen: RegimenSpec
    scenario: str
    scenario_label: str
    threshold: float
    grid: np.ndarray  # (doses,) mg
    coverage: np.ndarray  # (draws, doses)
    n_virtual: int
    max_dose: float
    wall_s: float = 0.0
    generic_fraction: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def n_draws(self) -> int:
        return int(self.coverage.shape[0])

    def median_curve(self) -> np.ndarray:
        return np.median(self.coverage, axis=0)

    def band(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central `level` band of the coverage across draws, dose by dose."""
        lo = np.quantile(self.coverage, (1 - level) / 2, axis=0)
        hi = np.quantile(self.coverage, 1 - (1 - level) / 2, axis=0)
        return lo, hi

    def answer(self, target: float) -> dict:
        """``{"dose", "dose_interval", "coverage_at_dose", "reached", "note", ...}`` for `target`."""
        med = self.median_curve()
        hit = np.flatnonzero(med >= target)
        per_draw = optimal_dose_per_draw(self.coverage, self.grid, target)
        lo = float(np.quantile(per_draw, 0.05, method="lower"))
        hi = float(np.quantile(per_draw, 0.95, method="higher"))
        top = float(self.grid[-1])
        notes = []
        if hit.size:
            k = int(hit[0])
            dose, cov = float(self.grid[k]), float(med[k])
            if k == 0:
                notes.append(
                    f"the target is met at the smallest grid dose ({dose:g} mg); the answer may be lower"
                )
        else:
            dose, cov = None, None
            notes.append(f"{target:.0%} coverage not reached within the grid (up to {top:g} mg)")
        if not math.isfinite(hi):
            notes.append(f"the upper end of the interval is above the grid (> {top:g} mg)")
        n_miss = int(np.sum(~np.isfinite(per_draw)))
        return {
            "dose": dose,
            "dose_interval": [lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None],
            "coverage_at_dose": cov,
            "reached": dose is not None,
            "draws_not_reached": n_miss,
            "note": "; ".join(notes),
        }

    def to_json(self) -> dict:
        lo50, hi50 = self.band(0.5)
        lo90, hi90 = self.band(0.9)
        return {
            "regimen": self.regimen.name,
            "tau_h": self.regimen.tau,
            "step_mg": self.regimen.step,
            "scenario": self.scenario,
            "scenario_label": self.scenario_label,
            "threshold": self.threshold,
            "n_draws": self.n_draws,
            "n_virtual": self.n_virtual,
            "grid": self.grid.tolist(),
            "coverage_median": self.median_curve().tolist(),
            "coverage_band50": [lo50.tolist(), hi50.tolist()],
            "coverage_band90": [lo90.tolist(), hi90.tolist()],
            "wall_s": self.wall_s,
            "generic_fraction": self.generic_fraction,
            "notes": self.notes,
        }


def search_doses(
    posterior: Posterior,
    regimen: str | RegimenSpec,
    *,
    covariates: CovariateDistribution = CovariateDistribution(),
    scenario: str = "study",
    threshold: float = 3.3,
    targets: Sequence[float] = TARGETS,
    n_virtual: int = 1000,
    seed: int = 0,
    theta: np.ndarray | None = None,
    max_dose: float | None = None,
    dose_chunk: int = 8,
    doses_per_call: int = 32,
    stop_fraction: float = 0.99,
    n_steps: int = 96,
    chunk_size: int = 2048,
    individual_model: Callable | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> DoseSearchResult:
    """Coverage curves on the dose grid of `regimen` for every posterior draw (see module doc).

    **Arguments:**

    - `posterior`: population values per draw ([`Posterior`][pkpd_jax.trials.virtual.Posterior]).
    - `regimen`: ``"daily"``, ``"weekly"`` or a [`RegimenSpec`][].
    - `covariates`: the virtual population's covariate distribution.
    - `threshold`, `targets`: suppression threshold (biomarker unit) and coverage targets.
    - `n_virtual`, `seed`: virtual subjects per draw, and the seed of covariates and η (the same
      seed gives the same subjects, e.g. for both regimens of a scenario).
    - `theta`: individual parameters ``(draws, n_virtual, P)`` to use instead of sampling them.
    - `max_dose`: the grid's largest dose (default 400 steps); `dose_chunk`: the grid ends at a
      multiple of this many doses (where the stop rule first holds).
    - `doses_per_call`: grid doses evaluated per vectorised call. A call's cost is mostly the
      subjects' PK steady state, which its doses share (4096 subjects: 32 doses cost ~1.3x 8
      doses), so a few wide calls beat many narrow ones; the curves do not depend on it.
    - `stop_fraction`: extend the grid until this fraction of draws reach the largest target.
    - `n_steps`, `chunk_size`: interval grid and subjects per compiled call (see
      `steady_state_extremes`).
    """
    import time

    check_trial_inputs(threshold=threshold, targets=targets, n_virtual=n_virtual)
    spec = REGIMENS[regimen] if isinstance(regimen, str) else regimen
    if isinstance(regimen, str) and regimen not in REGIMENS:
        raise ValueError(f"the regimen must be one of {list(REGIMENS)}; got {regimen!r}.")
    max_dose = spec.step * 400 if max_dose is None else float(max_dose)
    if not max_dose >= spec.step:
        raise ValueError(f"`max_dose` must be at least one grid step ({spec.step:g} mg); got {max_dose:g}.")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
               for v in (doses_per_call, dose_chunk)):
        raise ValueError(
            f"`doses_per_call` and `dose_chunk` must be whole numbers >= 1; got {doses_per_call!r} "
            f"and {dose_chunk!r}."
        )
    t0 = time.perf_counter()
    if theta is None:
        theta, _ = virtual_parameters(
            posterior, covariates, n_virtual, jax.random.key(seed), individual_model=individual_model
        )
    theta = np.asarray(theta, float)
    n_draws, n_virtual = theta.shape[:2]
    flat = theta.reshape(n_draws * n_virtual, -1)
    model = posterior.model
    n_max = int(math.floor(max_dose / spec.step + 1e-9))
    top_target = max(targets)

    grid: list[float] = []
    cov_parts: list[np.ndarray] = []
    n_generic = 0
    label = f"{spec.name}, {covariates.label}: {n_draws}×{n_virtual} subjects"
    # over the grid's largest possible dose: the search usually stops well before it
    with progress_bar(label, n_max, enabled=progress, unit="doses") as update:
        k = 0
        width = int(doses_per_call)
        while k < n_max:
            ks = np.arange(k + 1, min(k + width, n_max) + 1)
            # keep the compiled shape: a short last call is padded with its last dose
            doses = spec.step * np.concatenate([ks, np.repeat(ks[-1:], width - ks.size)])
            ext = steady_state_extremes(
                model,
                flat,
                spec.tau,
                doses,
                duration=posterior.dose_duration or None,
                n_steps=n_steps,
                chunk_size=chunk_size,
                throw=True,
            )
            mx = np.asarray(ext.max_resp)[:, : ks.size].reshape(n_draws, n_virtual, ks.size)
            cov_new = coverage_from_extremes(mx, threshold)
            # the stop rule is checked every `dose_chunk` grid doses (and at the last): the grid
            # ends at the first such dose where it holds, wherever the call's doses end
            stop = None
            ends = [e for e in range(1, ks.size + 1) if (k + e) % dose_chunk == 0 or k + e == n_max]
            for end in ends:
                cov = np.concatenate([*cov_parts, cov_new[:, :end]], axis=1)
                ok = np.mean(np.any(cov >= top_target, axis=1)) >= stop_fraction
                if ok and np.any(np.median(cov, axis=0) >= top_target):
                    stop = end
                    break
            used = ks.size if stop is None else stop
            n_generic += int(np.sum(np.asarray(ext.path)[:, :used]))
            cov_parts.append(cov_new[:, :used])
            grid.extend((spec.step * ks[:used]).tolist())
            k = int(ks[used - 1])
            update(k)
            if stop is not None:
                break
    cov = np.concatenate(cov_parts, axis=1)
    res = DoseSearchResult(
        spec,
        scenario,
        covariates.label,
        float(threshold),
        np.asarray(grid),
        cov,
        n_virtual,
        max_dose,
        time.perf_counter() - t0,
        n_generic / max(1, cov.size * n_virtual),
    )
    if k >= n_max and not np.any(np.median(cov, axis=0) >= top_target):
        res.notes.append(f"{top_target:.0%} coverage is not reached up to max_dose = {max_dose:g} mg")
    return res


# ---------------------------------------------------------------------------- the questions
def _run_scenarios(
    posterior: Posterior,
    *,
    threshold,
    targets,
    n_virtual,
    seed,
    progress,
    n_steps,
    chunk_size,
    scenarios,
    regimens,
    individual_model=None,
) -> dict[tuple[str, str], DoseSearchResult]:
    out = {}
    for sc in scenarios:
        scen = SCENARIOS[sc]
        # one virtual population per scenario, shared by both regimens; the same seed in every
        # scenario gives the same draws, resampled study rows and η (common random numbers), so
        # that scenarios differ by their covariates only
        theta, _ = virtual_parameters(
            posterior, scen.covariates, n_virtual, jax.random.key(seed), individual_model=individual_model
        )
        for reg in regimens:
            out[(reg, sc)] = search_doses(
                posterior,
                reg,
                covariates=scen.covariates,
                scenario=sc,
                threshold=threshold,
                targets=targets,
                theta=theta,
                n_steps=n_steps,
                chunk_size=chunk_size,
                progress=progress,
            )
    return out


def answer_questions(
    fit_dir,
    *,
    n_virtual: int = 1000,
    n_draws: int = 100,
    seed: int = 0,
    threshold: float = 3.3,
    progress: bool = True,
    targets: Sequence[float] = TARGETS,
    out_dir=None,
    data=None,
    n_steps: int = 96,
    chunk_size: int = 2048,
    individual_model: Callable | None = None,
) -> dict:
    """The twelve dose answers from a fit directory (`pkpd-jax fit`).

    Returns ``{"daily_90": {"dose", "dose_interval"}, "weekly_90": ..., "daily_90_bw70_140": ...,
    "daily_90_nocomed": ..., and the same six with 75}`` (doses in mg, ``null`` where not reached
    within the grid). With `out_dir`, also writes ``trial_curves.json`` (every coverage curve,
    its bands and the full answers with notes) and ``coverage_<scenario>.png`` there.
    `data`: the data set the fit should come from (raises `ValueError` if it does not).
    """
    from .._x64 import enable_x64

    enable_x64()
    check_trial_inputs(threshold=threshold, targets=targets, n_virtual=n_virtual, n_draws=n_draws)
    if data is not None:
        from .virtual import check_fit_matches_data

        check_fit_matches_data(fit_dir, data)
    posterior = Posterior.from_fit(fit_dir, n_draws=n_draws, seed=seed)
    results = _run_scenarios(
        posterior,
        threshold=threshold,
        targets=targets,
        n_virtual=n_virtual,
        seed=seed,
        progress=progress,
        n_steps=n_steps,
        chunk_size=chunk_size,
        scenarios=list(SCENARIOS),
        regimens=list(REGIMENS),
        individual_model=individual_model,
    )
    full = {answer_key(reg, t, sc): res.answer(t) for (reg, sc), res in results.items() for t in targets}
    answers = {k: {"dose": v["dose"], "dose_interval": v["dose_interval"]} for k, v in full.items()}
    if out_dir is not None:
        write_trial_outputs(
            out_dir, results, full, posterior, threshold=threshold, targets=targets, seed=seed
        )
    return answers


def write_trial_outputs(
    out_dir, results: dict, full: dict, posterior: Posterior, *, threshold, targets, seed
) -> None:
    """``trial_curves.json`` and one coverage plot per scenario (used by the HTML report)."""
    from .plots import coverage_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "threshold": threshold,
        "targets": list(targets),
        "seed": seed,
        "source": posterior.source,
        "model": posterior.model.name,
        "n_draws": posterior.n_draws,
        "dose_duration_h": posterior.dose_duration,
        "scenarios": {k: SCENARIOS[k].covariates.label for k in SCENARIOS},
        "answers": full,
        "curves": [res.to_json() for res in results.values()],
    }
    (out / "trial_curves.json").write_text(json.dumps(payload, indent=2) + "\n")
    for sc in {sc for _, sc in results}:
        panel = [results[(reg, s)] for (reg, s) in results if s == sc]
        coverage_plot(
            panel,
            out / f"coverage_{sc}.png",
            targets=targets,
            answers={
                reg: {t: full[answer_key(reg, t, sc)] for t in targets} for reg, s in results if s == sc
            },
        )


def true_doses(
    truth=None,
    *,
    n_virtual: int = 20_000,
    seed: int = 0,
    threshold: float = 3.3,
    targets: Sequence[float] = TARGETS,
    covariates: str = "study",
    n_steps: int = 96,
    progress: bool = False,
    return_results: bool = False,
):
    """The twelve answers from a known truth (default: the bundled example study's
    ``truth.json``): parameters at the truth, no parameter uncertainty, a large virtual population.

    Returns ``{key: {"dose", "coverage_at_dose"}}`` (and the search results when
    `return_results`). `covariates`: ``"study"`` (default: the study subjects' covariates,
    resampled, exactly as [`answer_questions`][] builds a population "like the studied one", so
    that a comparison with a fit's intervals isolates parameter uncertainty) or ``"generating"``
    (the truth's covariate distribution, i.e. the population the 48 subjects were drawn from;
    on the example study it differs by one grid step for weekly_90 and the BW scenario's 90%
    answers, as the study's COMED fraction, 0.29, is below the generating 0.35).
    """
    from .._x64 import enable_x64

    enable_x64()
    check_trial_inputs(threshold=threshold, targets=targets, n_virtual=n_virtual)
    if truth is None:
        from ..data.example import example_paths

        truth = example_paths()[1]
    posterior = Posterior.from_truth(truth, covariates=covariates, seed=seed)
    results = _run_scenarios(
        posterior,
        threshold=threshold,
        targets=targets,
        n_virtual=n_virtual,
        seed=seed,
        progress=progress,
        n_steps=n_steps,
        chunk_size=4096,
        scenarios=list(SCENARIOS),
        regimens=list(REGIMENS),
    )
    out = {}
    for (reg, sc), res in results.items():
        for t in targets:
            a = res.answer(t)
            out[answer_key(reg, t, sc)] = {"dose": a["dose"], "coverage_at_dose": a["coverage_at_dose"]}
    return (out, results) if return_results else out
