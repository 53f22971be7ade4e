"""`pkpd-jax trial`: one in-silico dose search on a population fit.

Cheap to import: JAX and the trial engine are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import AsJson, RegimenName, Threshold, choices, parse_bw_range as parse_bw_range


__all__ = ["parse_bw_range", "trial"]


def trial(
    fit: Annotated[
        Path, typer.Option("--fit", help="Fit directory written by `pkpd-jax fit` (with a PD model).")
    ],
    regimen: Annotated[
        str, typer.Option(metavar=choices(RegimenName),
                          help="'daily' (0.5 mg grid, 24 h) or 'weekly' (5 mg grid, 168 h).")
    ] = "daily",
    target: Annotated[
        float, typer.Option(help="Fraction of subjects that must stay below the threshold.")
    ] = 0.9,
    threshold: Threshold = 3.3,
    bw_range: Annotated[
        str | None, typer.Option("--bw-range", help="Body weight uniform on LO,HI kg instead of the study's.")
    ] = None,
    no_comed: Annotated[
        bool, typer.Option("--no-comed", help="Co-medication not allowed (COMED = 0).")
    ] = False,
    n_virtual: Annotated[
        int, typer.Option("--n-virtual", help="Virtual subjects per posterior draw.")
    ] = 1000,
    n_draws: Annotated[int, typer.Option("--n-draws", help="Posterior draws (parameter uncertainty).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the draws, covariates and random effects.")] = 0,
    data: Annotated[
        Path | None, typer.Option(help="Data set the fit must have been made on (checked when given).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the coverage-vs-dose plot (PNG) here.")] = None,
    as_json: AsJson = False,
):
    """In-silico trial: the smallest dose (on the regimen's grid) keeping the biomarker below the
    threshold over the whole steady-state interval in `target` of a virtual population, with a
    90% interval from the posterior draws."""
    import json

    from .._x64 import enable_x64

    enable_x64()
    from ..trials.dose_search import REGIMENS, check_trial_inputs, search_doses
    from ..trials.virtual import CovariateDistribution, Posterior, check_fit_matches_data

    if regimen not in REGIMENS:
        raise ValueError(f"--regimen must be one of {', '.join(REGIMENS)}; got {regimen!r}.")
    check_trial_inputs(threshold=threshold, targets=[target], n_virtual=n_virtual, n_draws=n_draws)
    bw = None
    labels = []
    if bw_range is not None:
        lo, hi = parse_bw_range(bw_range)
        bw = ("uniform", lo, hi)
        labels.append(f"body weight uniform {lo:g}-{hi:g} kg")
    if no_comed:
        labels.append("no co-medication")
    dist = CovariateDistribution(
        bw=bw, comed=0.0 if no_comed else None, label=", ".join(labels) or "covariates as studied"
    )
    if not Path(fit).is_dir():
        raise FileNotFoundError(f"--fit {fit}: no such directory; create one with `pkpd-jax fit`.")
    if data is not None:
        check_fit_matches_data(fit, data)
    posterior = Posterior.from_fit(fit, n_draws=n_draws, seed=seed)
    res = search_doses(
        posterior,
        regimen,
        covariates=dist,
        threshold=threshold,
        targets=[target],
        n_virtual=n_virtual,
        seed=seed,
        progress=not as_json,
    )
    ans = res.answer(target)
    out = {
        "dose": ans["dose"],
        "dose_interval": ans["dose_interval"],
        "coverage_at_dose": ans["coverage_at_dose"],
        "grid": res.grid.tolist(),
        "coverage": res.median_curve().tolist(),
    }
    if ans["note"]:
        out["note"] = ans["note"]
    if plot is not None:
        from ..trials.plots import coverage_plot

        coverage_plot([res], plot, targets=[target], answers={regimen: {target: ans}})
    if as_json:
        typer.echo(json.dumps(out))
        return
    lo, hi = ans["dose_interval"]
    fmt = lambda v: "above the grid" if v is None else f"{v:g} mg"  # noqa: E731
    if ans["dose"] is None:
        typer.echo(f"{regimen}: {ans['note']}")
    else:
        typer.echo(
            f"{regimen} dose for {target:.0%} of subjects below {threshold:g} ({dist.label}): "
            f"{ans['dose']:g} mg (90% interval {fmt(lo)} - {fmt(hi)}; posterior-median coverage "
            f"{ans['coverage_at_dose']:.1%})" + (f"; note: {ans['note']}" if ans["note"] else "")
        )
    if plot is not None:
        typer.echo(f"wrote {plot}")
