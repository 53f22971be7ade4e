"""`pkpd-jax twin`: one patient's digital twin under a population fit.

Cheap to import: JAX and the model are loaded inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._options import AsJson, RegimenName, Threshold, choices


__all__ = ["twin_command"]


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
    from ..twin.answer import run_twin
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
