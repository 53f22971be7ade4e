"""Forecasts for one patient and the recommended dose.

**Probability of suppression.** For a regimen (interval ``tau``, dose grid ``step, 2·step, ...``
as in `pkpd_jax.trials.dose_search.REGIMENS`), draw ``S`` individual parameter vectors from the
patient's posterior ([`TwinPosterior.sample`][pkpd_jax.twin.posterior.TwinPosterior]) and
compute for each draw and dose the biomarker maximum over one steady-state dosing interval
(`pkpd_jax.trials.exposure.steady_state_extremes`, the same code the in-silico trials use). The
posterior probability that this patient's biomarker stays below the threshold over the whole
interval at dose ``d`` is

    P(d) = (1/S) Σ_s [ max_t R_s(t; d) < threshold ].

The same draws face every dose (common random numbers), so for an inhibitory response ``P`` is
non-decreasing in the dose and the table is smooth in the dose.

**Recommendation.** The recommended dose is the lowest grid dose with ``P(d) ≥ p`` (the stated
probability). By construction it is non-decreasing in ``p`` and non-increasing in the threshold
(``P`` grows with the threshold at every dose). A ``p`` not reached within the grid (up to
`max_steps` grid steps) is reported as ``None`` with a note, never as a number.

**Trajectories.** [`forecast_profiles`][] continues the patient's dosing history with a new dose
every ``tau`` from the next scheduled dose and gives the median and a central interval of
concentration and biomarker over time (the same posterior draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..dosing import Regimen
from ..solve import SolverConfig, simulate_population
from ..trials.dose_search import REGIMENS, RegimenSpec
from ..trials.exposure import steady_state_extremes
from .posterior import TwinError, TwinPosterior


__all__ = [
    "DoseTable",
    "suppression_table",
    "forecast_profiles",
    "plot_forecast",
    "regimen_spec",
    "check_probability",
]


def regimen_spec(regimen: str | RegimenSpec) -> RegimenSpec:
    """``"daily"`` / ``"weekly"`` (`pkpd_jax.trials.dose_search.REGIMENS`) or a `RegimenSpec`."""
    if isinstance(regimen, RegimenSpec):
        return regimen
    if regimen not in REGIMENS:
        raise TwinError(f"the regimen must be one of {', '.join(REGIMENS)}; got {regimen!r}.")
    return REGIMENS[regimen]


def check_probability(probability: float, threshold: float) -> None:
    if not (math.isfinite(float(probability)) and 0 < float(probability) < 1):
        raise TwinError(
            f"the stated probability must be strictly between 0 and 1 (e.g. 0.9); got {probability}."
        )
    if not (math.isfinite(float(threshold)) and float(threshold) > 0):
        raise TwinError(f"the biomarker threshold must be a finite value > 0; got {threshold}.")


@dataclass
class DoseTable:
    """Per-draw steady-state biomarker maxima ``max_resp (S, doses)`` on the dose grid."""

    regimen: RegimenSpec
    doses: np.ndarray
    max_resp: np.ndarray
    duration: float

    def probability(self, threshold: float) -> np.ndarray:
        """``P(d)`` for every grid dose: the fraction of draws with max biomarker < threshold."""
        return np.mean(self.max_resp < float(threshold), axis=0)

    def recommend(self, probability: float, threshold: float) -> float | None:
        """The lowest grid dose with ``P(d) ≥ probability`` (None if none in the grid)."""
        check_probability(probability, threshold)
        ok = np.flatnonzero(self.probability(threshold) >= float(probability) - 1e-12)
        return float(self.doses[ok[0]]) if ok.size else None

    def rows(self, threshold: float, upto: float | None = None) -> list[dict]:
        p = self.probability(threshold)
        q = np.quantile(self.max_resp, [0.05, 0.5, 0.95], axis=0)
        keep = self.doses <= (upto if upto is not None else np.inf)
        return [
            {
                "dose": float(d),
                "probability": float(pi),
                "max_biomarker_median": float(m),
                "max_biomarker_90": [float(lo), float(hi)],
            }
            for d, pi, lo, m, hi, k in zip(self.doses, p, q[0], q[1], q[2], keep)
            if k
        ]


def suppression_table(
    post: TwinPosterior,
    regimen: str | RegimenSpec = "daily",
    *,
    threshold: float = 3.3,
    probability: float = 0.9,
    n_samples: int = 400,
    seed: int = 0,
    chunk: int = 40,
    max_steps: int = 400,
    duration: float | None = None,
    theta=None,
) -> DoseTable:
    """The steady-state maxima of `n_samples` posterior draws on the regimen's dose grid.

    The grid ``step·(1..)`` is evaluated `chunk` doses at a time and extended until every draw is
    below `threshold` at the largest dose, or ``P ≥ probability`` and at least one more chunk
    for context, or `max_steps` grid steps. `theta`: draws ``(S, P)`` to use instead of sampling.
    """
    spec = regimen_spec(regimen)
    check_probability(probability, threshold)
    model = post.population.model
    if model.pd is None:
        raise TwinError(f"{model.name} has no PD model: a biomarker forecast needs a PK/PD fit.")
    th = post.sample(n_samples, seed) if theta is None else np.asarray(theta, float)
    dur = post.patient.dose_duration() if duration is None else float(duration)
    dur = dur if dur > 0 else post.population.dose_duration
    dur = dur if dur > 0 else None  # the model default
    blocks, doses = [], []
    reached_at = None
    for lo in range(0, max_steps, chunk):
        d = spec.step * np.arange(lo + 1, min(lo + chunk, max_steps) + 1)
        ext = steady_state_extremes(model, th, spec.tau, d, duration=dur, throw=False)
        mx = np.asarray(ext.max_resp)
        mx = np.where(
            np.asarray(ext.status) == 0, mx, np.inf
        )  # a failed draw never counts as suppressed
        blocks.append(mx)
        doses.append(d)
        p = np.mean(mx < threshold, axis=0)
        if reached_at is None and np.any(p >= probability):
            reached_at = lo
        if np.all(mx[:, -1] < threshold) or (reached_at is not None and lo > reached_at):
            break
    return DoseTable(
        spec,
        np.concatenate(doses),
        np.concatenate(blocks, axis=1),
        float(dur) if dur else float(getattr(model.pk, "default_duration", 0.0) or 0.0),
    )


def continued_regimen(
    post: TwinPosterior,
    dose: float,
    tau: float,
    n_doses: int,
    *,
    duration: float | None = None,
    start: float | None = None,
) -> Regimen:
    """The patient's past doses followed by `n_doses` doses of `dose` every `tau` h from `start`
    (default: the last dose + the patient's dosing interval, else + `tau`)."""
    reg = post.patient.regimen
    if start is None:
        t_past = np.asarray(reg.time)[np.asarray(reg.amount) > 0]
        step = post.patient.dose_interval() or tau
        start = float(t_past.max()) + step if t_past.size else 0.0
    dur = post.patient.dose_duration() if duration is None else float(duration)
    return reg.continued(n_doses, tau, amount=float(dose), start=start, duration=dur)


def forecast_profiles(
    post: TwinPosterior,
    doses: dict[str, float],
    regimen: str | RegimenSpec = "daily",
    *,
    n_intervals: int | None = None,
    n_samples: int = 200,
    seed: int = 0,
    level: float = 0.9,
    n_times: int = 400,
) -> dict:
    """Concentration and biomarker over time under alternative doses (`doses`: label -> mg),
    continuing the patient's history (see [`continued_regimen`][]): ``{"time": (T,), label:
    {"dose", "conc": (3, T), "resp": (3, T)}}`` with rows lower / median / upper of the central
    `level` interval over `n_samples` posterior draws."""
    spec = regimen_spec(regimen)
    model = post.population.model
    n_int = n_intervals or max(3, int(math.ceil(21 * 24 / spec.tau)))
    th = jnp.asarray(post.sample(n_samples, seed))
    first = post.patient.regimen
    t0 = float(np.min(np.asarray(first.time)[np.asarray(first.amount) > 0]))
    out: dict = {}
    lo, hi = (1 - level) / 2, (1 + level) / 2
    for label, dose in doses.items():
        reg = continued_regimen(post, dose, spec.tau, n_int)
        t_end = float(np.max(np.asarray(reg.time))) + spec.tau
        ts = np.linspace(t0, t_end, n_times)
        out["time"] = ts
        sol = simulate_population(model, th, reg, jnp.asarray(ts), config=SolverConfig(), throw=False)
        ok = np.asarray(sol.status) == 0
        conc, resp = np.asarray(sol.conc)[ok], np.asarray(sol.resp)[ok]
        out[label] = {
            "dose": float(dose),
            "conc": np.quantile(conc, [lo, 0.5, hi], axis=0),
            "resp": np.quantile(resp, [lo, 0.5, hi], axis=0),
        }
    return out


def plot_forecast(
    post: TwinPosterior,
    profiles: dict,
    path,
    *,
    threshold: float | None = None,
    title: str | None = None,
):
    """Two panels (concentration, biomarker): the patient's observations, and the median and
    interval band of each forecast in `profiles` (from [`forecast_profiles`][])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = post.patient.arrays
    m = np.asarray(a.mask)
    t, dv, dvid = np.asarray(a.time)[m], np.asarray(a.dv)[m], np.asarray(a.dvid)[m]
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ts = profiles["time"] / 24.0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, prof) in enumerate((k, v) for k, v in profiles.items() if k != "time"):
        c = colors[i % len(colors)]
        for ax, key in zip(axes, ("conc", "resp")):
            ax.fill_between(ts, prof[key][0], prof[key][2], color=c, alpha=0.2, lw=0)
            ax.plot(ts, prof[key][1], color=c, label=f"{label}: {prof['dose']:g} mg")
    axes[0].plot(t[dvid == 1] / 24, dv[dvid == 1], "ko", ms=4, label="observed")
    axes[1].plot(t[dvid == 2] / 24, dv[dvid == 2], "ko", ms=4, label="observed")
    if threshold is not None:
        axes[1].axhline(threshold, color="r", ls="--", lw=1, label=f"threshold {threshold:g}")
    axes[0].set_ylabel("concentration (mg/L)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("biomarker")
    axes[1].set_xlabel("time (days)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title or f"patient {post.patient.id}: forecast (median and 90% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
