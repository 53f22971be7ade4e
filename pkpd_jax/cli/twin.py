"""`pkpd-jax twin`: one patient's digital twin under a population fit.

Cheap to import: JAX and the model are loaded inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._options import AsJson, RegimenName, Threshold, choices


__all__ = ["run_twin", "twin_command"]


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

    from ..twin.active import next_sample_time
    from ..twin.forecast import (
        check_probability,
        forecast_profiles,
        plot_forecast,
        regimen_spec,
        suppression_table,
    )
    from ..twin.posterior import individual_posterior

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


def twin_command(
    fit: Annotated[
        Path, typer.Option("--fit", help="Fit directory written by `pkpd-jax fit` (with a PD model).")
    ],
    patient: Annotated[
        Path,
        typer.Option(
            "--patient", help="One patient's NONMEM-style CSV (doses, observations, covariates)."
        ),
    ],
    regimen: Annotated[
        str, typer.Option(metavar=choices(RegimenName),
                          help="'daily' (0.5 mg grid, 24 h) or 'weekly' (5 mg grid, 168 h).")
    ] = "daily",
    threshold: Threshold = 3.3,
    probability: Annotated[
        float, typer.Option(help="Stated probability of staying below the threshold.")
    ] = 0.9,
    out: Annotated[Path | None, typer.Option(help="Write twin.json and forecast.png here.")] = None,
    as_json: AsJson = False,
    next_sample: Annotated[
        bool,
        typer.Option(
            "--next-sample",
            help="Also suggest the next sampling time (most information about the individual CL).",
        ),
    ] = False,
    horizon: Annotated[
        float, typer.Option(help="Window (h after the last record) for the next sample.")
    ] = 168.0,
    n_draws: Annotated[
        int, typer.Option("--n-draws", help="Population draws mixed over (parameter uncertainty).")
    ] = 8,
    n_samples: Annotated[
        int, typer.Option("--n-samples", help="Individual posterior draws per forecast.")
    ] = 400,
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
):
    """Digital twin: the patient's individual posterior under the population fit (MAP + Laplace,
    mixed over population draws), the probability of keeping the biomarker below the threshold at
    each grid dose at steady state, the recommended dose and, optionally, the next sampling time."""
    from .._x64 import enable_x64

    enable_x64()
    from ..twin.forecast import check_probability, regimen_spec
    from ..twin.posterior import PatientRecord, TwinError, TwinPopulation

    regimen_spec(regimen)
    check_probability(probability, threshold)
    if n_draws < 1 or n_samples < 10:
        raise TwinError(f"--n-draws must be >= 1 and --n-samples >= 10; got {n_draws}, {n_samples}.")
    if not patient.exists():
        raise FileNotFoundError(f"no patient file {patient}")
    pop = TwinPopulation.from_fit(fit, n_draws=n_draws, seed=seed)
    rec = PatientRecord.from_csv(patient)
    pop.check_patient(rec)
    answer = run_twin(
        pop,
        rec,
        regimen=regimen,
        threshold=threshold,
        probability=probability,
        next_sample=next_sample,
        horizon=horizon,
        n_samples=n_samples,
        seed=seed,
        out=out,
    )
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    _print(answer)
    if out is not None:
        typer.echo(
            f"wrote {out / 'twin.json'}"
            + (f" and {answer['forecast_png']}" if "forecast_png" in answer else "")
        )


def _print(answer: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(
        title=f"patient {answer['patient']}: individual parameters (posterior median, 90% interval)"
    )
    for col in ("param", "MAP", "median", "90% interval", "SD (log or logit)"):
        t.add_column(col, justify="left" if col == "param" else "right")
    for name, v in answer["individual"].items():
        t.add_row(
            name,
            f"{v['map']:.4g}",
            f"{v['median']:.4g}",
            f"[{v['interval'][0]:.4g}, {v['interval'][1]:.4g}]",
            f"{v['cv']:.3f}",
        )
    con.print(t)
    d = Table(
        title=f"P(biomarker < {answer['threshold']:g} over the steady-state interval), "
        f"{answer['regimen']['name']}"
    )
    d.add_column("dose (mg)", justify="right")
    d.add_column("probability", justify="right")
    rec = answer["recommended_dose"]
    shown = [
        r
        for r in answer["dose_table"]
        if rec is None or r["dose"] <= rec + 4 * answer["regimen"]["dose_step_mg"]
    ]
    for r in shown:
        mark = " <- recommended" if rec is not None and abs(r["dose"] - rec) < 1e-9 else ""
        d.add_row(f"{r['dose']:g}", f"{r['probability']:.3f}{mark}")
    con.print(d)
    if rec is None:
        con.print(answer.get("note", "no recommendation"))
    else:
        con.print(
            f"recommended dose: {rec:g} mg {answer['regimen']['name']} (P = "
            f"{answer['recommended_dose_probability']:.3f} >= {answer['probability']:g})"
        )
    if "next_sample" in answer:
        ns = answer["next_sample"]
        con.print(
            f"next sample at t = {ns['time_h']:.1f} h: expected SD of log CL {ns['sd_before']:.3f} -> "
            f"{ns['sd_after_expected']:.3f}"
        )
