"""The ``pkpd-jax`` command line.

Every command prints a specific one-line error (naming the row/column/argument) and exits with
status 1 on bad input, never a traceback. Commands that simulate enable float64 first.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer

from . import __version__


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pkpd-jax: differentiable PK/PD models, population inference and virtual trials in JAX.",
)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataValidationError
    from .dosing import DosingError
    from .models import ParameterError, UnknownModelError
    from .simulate import SimulationError

    return (
        DataValidationError,
        DosingError,
        ParameterError,
        UnknownModelError,
        SimulationError,
        FileNotFoundError,
        ValueError,
    )


def _friendly(fn: Callable) -> Callable:
    """Turn the library's input errors into `error: ...` on stderr and exit status 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            msg = str(e) if not isinstance(e, KeyError) else e.args[0]
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _parse_kv(text: str, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"{what}: {item!r} is not NAME=VALUE (e.g. 'CL=5,V=50').")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"{what}: value of {k.strip()!r} is not a number: {v!r}.") from None
    if not out:
        raise ValueError(f"{what}: no values given (e.g. 'CL=5,V=50').")
    return out


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}.") from None
    if not vals:
        raise ValueError(f"{what}: no values given.")
    return vals


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command()
@_friendly
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    family: Annotated[str | None, typer.Option(help="Only 'pk' or 'pd'.")] = None,
):
    """List the model library (10 PK and 10 PD classes) with parameters and units."""
    from .models import model_catalogue

    cat = [m for m in model_catalogue() if family is None or m["family"] == family]
    if family is not None and family not in ("pk", "pd"):
        raise ValueError(f"--family must be 'pk' or 'pd'; got {family!r}.")
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


@app.command()
@_friendly
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
    from ._x64 import enable_x64

    enable_x64()
    import numpy as np
    import polars as pl

    from .dosing import Regimen
    from .models import get_model
    from .simulate import SimulationError, SolverConfig, simulate as run_sim

    model = get_model(pk, pd)
    theta = model.pack(_parse_kv(params, "--params"))
    ts = np.asarray(_parse_floats(times, "--times"))
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


@app.command()
@_friendly
def example(
    out: Annotated[Path, typer.Option(help="Directory for study.csv and truth.json.")],
):
    """Write the bundled example study (NONMEM format) and its known truth."""
    import shutil

    from .data.example import example_paths

    out.mkdir(parents=True, exist_ok=True)
    csv, js = example_paths()
    shutil.copyfile(csv, out / "study.csv")
    shutil.copyfile(js, out / "truth.json")
    typer.echo(f"wrote {out / 'study.csv'} and {out / 'truth.json'}")


@app.command()
@_friendly
def validate(
    file: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
):
    """Check a data set; print a one-line summary, or the first problem (row and column)."""
    from .data import validate as run_validate

    typer.echo(str(run_validate(file)))


@app.command()
@_friendly
def run(
    data: Annotated[
        Path | None, typer.Option(help="NONMEM-style CSV (default: the bundled example study).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("pkpd_out"),
):
    """Run the pipeline on a study (today: validate and summarise, with a data overview plot)."""
    from ._x64 import enable_x64

    enable_x64()
    from .data.example import example_paths
    from .report.overview import study_overview

    source = data if data is not None else example_paths()[0]
    typer.echo(f"[1/1] validating {'bundled example study' if data is None else source}")
    summary = study_overview(source, out)
    typer.echo(summary["text"])
    typer.echo(f"wrote {out / 'summary.json'} and {out / 'data_overview.png'}")


@app.command()
@_friendly
def fit(
    data: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
    pk: Annotated[str, typer.Option(help="PK model name (see `pkpd-jax models`).")],
    pd: Annotated[
        str | None, typer.Option(help="PD model name; omit for a PK-only fit of the concentrations.")
    ] = None,
    covariates: Annotated[
        str, typer.Option(help="'auto' (BW and COMED when present), 'none', or e.g. 'BW:CL,V;COMED:CL'.")
    ] = "auto",
    sampler: Annotated[str, typer.Option(help="'qhmc' or 'nuts'.")] = "qhmc",
    chains: Annotated[int, typer.Option(help="Chains run in parallel.")] = 4,
    warmup: Annotated[int, typer.Option(help="Warm-up (adaptation) iterations per chain.")] = 1000,
    samples: Annotated[int, typer.Option(help="Kept draws per chain (after thinning).")] = 1000,
    thin: Annotated[int, typer.Option(help="Keep every `thin`-th iteration.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same draws.")] = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("pkpd_fit"),
    plots: Annotated[bool, typer.Option(help="Write trace, pair, VPC and individual-fit plots.")] = True,
    parametrization: Annotated[
        str,
        typer.Option(help="Random effects: 'auto' (centred for rich data, non-centred for sparse), "
                     "'centered' or 'noncentered'."),
    ] = "auto",
):
    """Fit a population (NLME-style) model with QHMC or NUTS; write summary.json, draws.parquet, plots."""
    from .inference.diagnostics import warning_table
    from .inference.fit import fit as run_fit

    fr = run_fit(
        data,
        pk=pk,
        pd=pd,
        covariates=covariates,
        sampler=sampler,
        chains=chains,
        warmup=warmup,
        samples=samples,
        thin=thin,
        seed=seed,
        out=out,
        plots=plots,
        parametrization=parametrization,
        log=typer.echo,
    )
    from rich.console import Console

    _print_fit_table(fr)
    Console().print(warning_table(fr.warnings))
    typer.echo(f"wrote {out / 'summary.json'}, {out / 'draws.parquet'} and plots to {out}")


def _print_fit_table(fr) -> None:
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


#: Modules that contribute commands: each has `register(app, friendly=...)` and stays cheap to
#: import (heavy imports inside the command functions). Missing modules are skipped.
_COMMAND_MODULES = ("amortized.corpus_commands", "amortized.commands", "quantum.commands", "trials.commands")


def _register_subpackage_commands() -> None:
    import importlib
    import importlib.util

    for name in _COMMAND_MODULES:
        package, _ = name.split(".")
        if importlib.util.find_spec(f"{__package__}.{package}") is None:
            continue
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}").register(app, friendly=_friendly)


_register_subpackage_commands()


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
