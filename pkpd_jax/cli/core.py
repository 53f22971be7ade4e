"""The core commands: `models`, `simulate`, `example`, `validate`, `run` (the whole pipeline) and
`fit`. Cheap to import: JAX and the library are imported inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..pipeline import RUN_SETTINGS
from ._options import AsJson, Family, Seed, Threshold, choices, parse_floats, parse_kv


__all__ = ["example", "fit", "models", "print_fit_table", "run", "simulate", "validate"]

_FULL, _FAST = RUN_SETTINGS["full"], RUN_SETTINGS["fast"]


def models(
    as_json: AsJson = False,
    family: Annotated[str | None, typer.Option(metavar=choices(Family), help="Only one family.")] = None,
):
    """List the model library (10 PK and 10 PD classes) with parameters and units."""
    from ..models import model_catalogue

    if family is not None and family not in ("pk", "pd"):
        raise ValueError(f"--family must be 'pk' or 'pd'; got {family!r}.")
    cat = [m for m in model_catalogue() if family is None or m["family"] == family]
    if as_json:
        typer.echo(json.dumps(cat, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pkpd_jax model library")
    for col in ("name", "family", "parameters (units)", "description"):
        table.add_column(col)
    for m in cat:
        params = ", ".join(f"{p} [{m['units'][p]}]" for p in m["params"])
        table.add_row(m["name"], m["family"], params, m["description"])
    Console().print(table)


def simulate(
    pk: Annotated[str, typer.Option(help="PK model name (see `pkpd-jax models`).")],
    params: Annotated[str, typer.Option(help="Parameters, e.g. 'CL=5,V=50'.")],
    doses: Annotated[str, typer.Option(help="Doses 'AMT@TIME[:DUR],...', e.g. '100@0,100@24:2'.")],
    times: Annotated[str, typer.Option(help="Observation times in h, e.g. '0,0.5,1,2'.")],
    out: Annotated[Path, typer.Option(help="Output CSV (columns TIME,CONC[,RESP]).")],
    pd: Annotated[str | None, typer.Option(help="Optional PD model name.")] = None,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the ODE solver.")] = 1e-8,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the ODE solver.")] = 1e-10,
):
    """Simulate one subject and write concentrations (mg/L) and responses to a CSV."""
    from .._x64 import enable_x64

    enable_x64()
    import numpy as np
    import polars as pl

    from ..dosing import Regimen
    from ..models import get_model
    from ..solve import SimulationError, SolverConfig, simulate as run_sim

    model = get_model(pk, pd)
    theta = model.pack(parse_kv(params, "--params"))
    ts = np.asarray(parse_floats(times, "--times"))
    if np.any(ts < 0) or not np.all(np.isfinite(ts)):
        raise ValueError(f"--times must be finite and >= 0; got {ts.tolist()}.")
    regimen = Regimen.parse(doses)
    sol = run_sim(model, theta, regimen, ts, config=SolverConfig(rtol=rtol, atol=atol))
    status = int(sol.status)
    if status != 0:
        raise SimulationError(np.array([0]), np.array([status]))
    cols = {"TIME": ts, "CONC": np.asarray(sol.conc)}
    if pd is not None:
        cols["RESP"] = np.asarray(sol.resp)
    out.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(cols).write_csv(out)
    typer.echo(f"wrote {len(ts)} time points of {model.name} to {out}")


def example(
    out: Annotated[Path, typer.Option(help="Directory for study.csv and truth.json.")],
    public: Annotated[
        str | None,
        typer.Option(metavar="[theoph|phenobarb]",
                     help="Instead, a classic public data set converted to NONMEM format: "
                     "'theoph' (oral theophylline) or 'phenobarb' (neonatal phenobarbital)."),
    ] = None,
):
    """Write the bundled example study (NONMEM format) and its known truth, or a public data set."""
    import shutil

    from ..data.example import example_paths

    if public is not None:
        from ..data import write_nonmem
        from ..data.public import PUBLIC_DATASETS, load_public

        data = load_public(public)
        out.mkdir(parents=True, exist_ok=True)
        write_nonmem(data.frame, out / f"{data.name}.csv")
        for note in data.notes:
            typer.echo(f"note: {note}")
        typer.echo(f"wrote {out / (data.name + '.csv')} (suggested model: --pk "
                   f"{PUBLIC_DATASETS[data.name]['pk']})")
        return
    out.mkdir(parents=True, exist_ok=True)
    csv, js = example_paths()
    shutil.copyfile(csv, out / "study.csv")
    shutil.copyfile(js, out / "truth.json")
    typer.echo(f"wrote {out / 'study.csv'} and {out / 'truth.json'}")


def validate(
    file: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
):
    """Check a data set; print a one-line summary, or the first problem (row and column)."""
    from ..data import validate as run_validate

    typer.echo(str(run_validate(file)))


def run(
    data: Annotated[
        Path | None, typer.Option(help="NONMEM-style CSV (default: the bundled example study).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("pkpd_out"),
    fast: Annotated[
        bool, typer.Option(help="Fewer chains, draws and virtual subjects (a quick look).")
    ] = False,
    pk: Annotated[str | None, typer.Option(help="PK model (default: the study's selected model).")] = None,
    pd: Annotated[str | None, typer.Option(help="PD model (default: the study's selected model).")] = None,
    threshold: Threshold = 3.3,
    seed: Seed = 0,
    reuse_fit: Annotated[
        bool, typer.Option(help="Reuse OUT/fit when it holds a finished fit of the same data and model.")
    ] = True,
    qkernel: Annotated[
        bool,
        typer.Option(help="Virtual subjects' parameters from a quantum-kernel regressor of the "
                     "covariates (trained on the fit's posterior) instead of the fitted covariate "
                     "equations."),
    ] = False,
    chains: Annotated[
        int | None, typer.Option(help=f"Chains (default: {_FULL['chains']}; {_FAST['chains']} with --fast).")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help=f"Warm-up iterations per chain (default: {_FULL['warmup']}; "
                                 f"{_FAST['warmup']} with --fast).")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help=f"Kept draws per chain (default: {_FULL['samples']}; "
                                 f"{_FAST['samples']} with --fast).")
    ] = None,
):
    """The whole pipeline: validate, select the model, fit, in-silico trials, report.

    Writes OUT/answers.json (the twelve dose answers with intervals), OUT/report.html and the
    stage outputs (OUT/fit/, coverage plots, trial_curves.json).
    """
    from ..pipeline import RunSettings, run_pipeline

    settings = RunSettings.preset(
        fast, chains=chains, warmup=warmup, samples=samples, out=out, pk=pk, pd=pd,
        threshold=threshold, seed=seed, reuse_fit=reuse_fit, qkernel=qkernel,
    )
    res = run_pipeline(data, settings, log=typer.echo, on_fit=_print_fit)
    _print_answers(res.answers)
    typer.echo(f"wrote {out / 'answers.json'} and {res.report} ({res.timings['total_s']:.0f} s)")


def _print_fit(fr) -> None:
    from rich.console import Console

    from ..inference.diagnostics import warning_table

    print_fit_table(fr)
    Console().print(warning_table(fr.warnings))


def _print_answers(answers: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Dose answers (posterior-median coverage; 90% interval of the per-draw dose)")
    for col in ("question", "dose (mg)", "interval (mg)"):
        table.add_column(col, justify="left" if col == "question" else "right")
    for key, val in answers.items():
        lo, hi = (val.get("dose_interval") or [None, None])[:2]
        fmt = lambda v: "not reached" if v is None else f"{v:g}"  # noqa: E731
        table.add_row(key, fmt(val.get("dose")), f"[{fmt(lo)}, {fmt(hi)}]")
    Console().print(table)


def fit(
    data: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
    pk: Annotated[str, typer.Option(help="PK model name (see `pkpd-jax models`).")],
    pd: Annotated[
        str | None, typer.Option(help="PD model name; omit for a PK-only fit of the concentrations.")
    ] = None,
    covariates: Annotated[
        str, typer.Option(help="'auto' (BW and COMED when present), 'none', or e.g. 'BW:CL,V;COMED:CL'.")
    ] = "auto",
    sampler: Annotated[str, typer.Option(metavar="[qhmc|nuts]", help="The sampler.")] = "qhmc",
    metric: Annotated[
        str, typer.Option(metavar="[low_rank|diag]",
                          help="QHMC mass centre: 'low_rank' (diagonal + rank-64 correction) or 'diag'.")
    ] = "low_rank",
    chains: Annotated[int, typer.Option(help="Chains run in parallel.")] = 4,
    warmup: Annotated[int, typer.Option(help="Warm-up (adaptation) iterations per chain.")] = 1000,
    samples: Annotated[int, typer.Option(help="Kept draws per chain (after thinning).")] = 1000,
    thin: Annotated[int, typer.Option(help="Keep every `thin`-th iteration.")] = 1,
    seed: Seed = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("pkpd_fit"),
    plots: Annotated[bool, typer.Option(help="Write trace, pair, VPC and individual-fit plots.")] = True,
    parametrization: Annotated[
        str,
        typer.Option(help="Random effects: 'auto' (per random effect: centred when the data inform "
                     "it well, non-centred otherwise), 'centered', 'noncentered', or the ones to "
                     "centre, e.g. 'CL,V1'."),
    ] = "auto",
):
    """Fit a population (NLME-style) model with QHMC or NUTS; write summary.json, draws.parquet, plots."""
    from ..inference.fit import fit as run_fit
    from ..report.fit_plots import fit_plots

    fr = run_fit(
        data,
        pk=pk,
        pd=pd,
        covariates=covariates,
        sampler=sampler,
        metric=metric,
        chains=chains,
        warmup=warmup,
        samples=samples,
        thin=thin,
        seed=seed,
        out=out,
        plots=fit_plots if plots else None,
        parametrization=(parametrization if parametrization in ("auto", "centered", "noncentered")
                         else [p.strip() for p in parametrization.split(",") if p.strip()]),
        log=typer.echo,
    )
    _print_fit(fr)
    typer.echo(f"wrote {out / 'summary.json'}, {out / 'draws.parquet'} and plots to {out}")


def print_fit_table(fr) -> None:
    """Print a fit's population parameters (mean, sd, 95% interval, R-hat, bulk ESS) as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{fr.population.model.name}: population parameters ({fr.result.sampler})")
    for col in ("param", "mean", "sd", "2.5%", "97.5%", "R-hat", "ESS bulk"):
        table.add_column(col, justify="right" if col != "param" else "left", no_wrap=col == "param")
    for row in fr.summary.iter_rows(named=True):
        table.add_row(
            row["name"],
            f"{row['mean']:.4g}",
            f"{row['sd']:.3g}",
            f"{row['q2.5']:.4g}",
            f"{row['q97.5']:.4g}",
            f"{row['rhat']:.3f}",
            f"{row['ess_bulk']:.0f}",
        )
    Console().print(table)
