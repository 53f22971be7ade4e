"""The twin's answer for one patient: posterior, dose table and recommendation, next sample, plot.

`run_twin` is what `pkpd-jax twin` prints and writes (``twin.json``, ``forecast.png``), as a
library function.
"""

from __future__ import annotations

import json
from pathlib import Path


__all__ = ["run_twin"]


def run_twin(
    population,
    patient,
    *,
    regimen: str = "daily",
    threshold: float = 3.3,
    probability: float = 0.9,
    next_sample: bool = False,
    horizon: float = 168.0,
    n_samples: int = 400,
    seed: int = 0,
    out: Path | None = None,
    plot: bool = True,
) -> dict:
    """The twin's answer for a [`TwinPopulation`][pkpd_jax.twin.TwinPopulation] and a
    [`PatientRecord`][pkpd_jax.twin.PatientRecord] as a JSON-ready dict (see `twin_command`)."""
    import numpy as np

    from .active import next_sample_time
    from .forecast import (
        check_probability,
        forecast_profiles,
        plot_forecast,
        regimen_spec,
        suppression_table,
    )
    from .posterior import individual_posterior

    spec = regimen_spec(regimen)
    check_probability(probability, threshold)
    post = individual_posterior(population, patient)
    table = suppression_table(
        post, spec, threshold=threshold, probability=probability, n_samples=n_samples, seed=seed
    )
    dose = table.recommend(probability, threshold)
    current = patient.last_dose()
    answer = {
        "patient": patient.id,
        "covariates": patient.covariates,
        "n_observations": patient.n_obs,
        "population": {
            "source": population.source,
            "model": population.model.name,
            "draws": population.n_draws,
            "weights": post.weights.round(4).tolist(),
            "laplace_hessian": post.hessian_kind.tolist(),
            "map_converged": post.converged.tolist(),
        },
        "individual": post.summary(seed=seed),
        "regimen": {
            "name": spec.name,
            "tau_h": spec.tau,
            "dose_step_mg": spec.step,
            "infusion_h": table.duration,
        },
        "threshold": threshold,
        "probability": probability,
        "recommended_dose": dose,
        "recommended_dose_probability": (
            None
            if dose is None
            else float(table.probability(threshold)[np.flatnonzero(table.doses == dose)[0]])
        ),
        "dose_table": table.rows(threshold),
        "n_posterior_draws": n_samples,
    }
    if dose is None:
        answer["note"] = (
            f"no dose up to {table.doses.max():g} mg keeps the biomarker below {threshold:g} "
            f"with probability {probability:g}"
        )
    if next_sample:
        ns = next_sample_time(post, target="CL", horizon=horizon)
        answer["next_sample"] = {
            "time_h": ns["time"],
            "quantity": "individual CL (log scale)",
            "sd_before": ns["sd_before"],
            "sd_after_expected": ns["sd_after"],
            "window_h": [patient.last_time, patient.last_time + horizon],
        }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "twin.json").write_text(json.dumps(answer, indent=2) + "\n")
        if plot:
            doses = {"recommended": dose} if dose is not None else {}
            if current is not None and (dose is None or abs(current - dose) > 1e-9):
                doses = {"current": current, **doses}
            if doses:
                prof = forecast_profiles(post, doses, spec, n_samples=min(n_samples, 200), seed=seed)
                plot_forecast(post, prof, out / "forecast.png", threshold=threshold)
                answer["forecast_png"] = str(out / "forecast.png")
    return answer
