"""`pkpd-jax qkernel`: quantum (and classical) kernel regression of parameters on covariates.

Cheap to import: JAX, PennyLane and scikit-learn are imported inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._options import AsJson


__all__ = ["qkernel"]


def qkernel(
    train: Annotated[
        Path | None,
        typer.Option(
            help="Training CSV: one row per subject, covariate and "
            "parameter columns (parameters > 0, natural units)."
        ),
    ] = None,
    test: Annotated[Path | None, typer.Option(help="Test CSV with the same columns.")] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Covariate columns, e.g. 'BW,COMED' (0/1 columns "
            "are treated as binary). Default BW,COMED for tables, "
            "the population model's covariates for cohorts."
        ),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            help="Parameter columns, e.g. 'CL,V1' (default: every "
            "other column but ID / every model parameter)."
        ),
    ] = None,
    kernel: Annotated[
        str,
        typer.Option(
            help="angle | iqp | projected (quantum), rbf | linear "
            "(classical), or covariate (the population model's covariate "
            "equation)."
        ),
    ] = "angle",
    method: Annotated[
        str, typer.Option(help="krr (kernel ridge, JAX) or svr (scikit-learn SVR on the precomputed kernel).")
    ] = "krr",
    from_fit: Annotated[
        Path | None,
        typer.Option(help="Fit directory (`pkpd-jax fit`): train on a cohort drawn from its posterior."),
    ] = None,
    from_truth: Annotated[
        bool,
        typer.Option(
            "--from-truth",
            help="Train on a cohort drawn from the bundled example study's true population model.",
        ),
    ] = False,
    n: Annotated[int, typer.Option("--n", help="Training subjects drawn (cohort modes).")] = 10000,
    n_test: Annotated[int, typer.Option(help="Held-out subjects drawn (cohort modes).")] = 2000,
    qubits: Annotated[
        int | None, typer.Option(help="Qubits (default: 3 per continuous covariate + 1 per binary one).")
    ] = None,
    layers: Annotated[int, typer.Option(help="Feature-map layers (IQP repeats / angle re-uploading).")] = 1,
    bandwidth: Annotated[
        float | None,
        typer.Option(help="Fix the bandwidth (RBF: length scale) instead of cross-validating it."),
    ] = None,
    cv_subset: Annotated[int, typer.Option(help="Subjects used for cross-validation.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the cohort, the split and the CV subset.")] = 0,
    study_rmse: Annotated[
        bool,
        typer.Option(
            help="Cohort modes: simulate the real study's subjects from "
            "the predicted parameters and report the RMSE."
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Write the test subjects' predicted parameters to this CSV.")
    ] = None,
    as_json: AsJson = False,
):
    """Predict each subject's PK/PD parameters from covariates with a quantum-kernel regressor."""
    from ..quantum.pipeline import parse_names, run_cohort, run_tables

    feats = parse_names(features, "--features")
    targs = parse_names(targets, "--targets")
    cohort_mode = from_fit is not None or from_truth
    if from_fit is not None and from_truth:
        raise ValueError("give either --from-fit DIR or --from-truth, not both.")
    if cohort_mode and (train is not None or test is not None):
        raise ValueError("--train/--test cannot be combined with --from-fit/--from-truth.")
    if not cohort_mode and (train is None or test is None):
        missing = "--train" if train is None else "--test"
        raise ValueError(
            f"missing {missing}: give --train TRAIN.csv and --test TEST.csv, or --from-fit DIR "
            "(or --from-truth) to draw a synthetic cohort."
        )
    common = dict(
        kernel=kernel,
        method=method,
        qubits=qubits,
        layers=layers,
        bandwidth=bandwidth,
        cv_subset=cv_subset,
        seed=seed,
        out=out,
    )
    if cohort_mode:
        res = run_cohort(
            from_fit=from_fit,
            n=n,
            n_test=n_test,
            features=feats,
            targets=targs,
            study_rmse=study_rmse,
            **common,
        )
    else:
        res = run_tables(train, test, features=feats or ["BW", "COMED"], targets=targs, **common)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    _print(res)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{res['kernel']} kernel ({res['method']}), {res['n_train']} training / {res['n_test']} test "
        f"subjects, log scale"
    )
    table = Table(title=title)
    cols = ["target", "R²", "RMSE"]
    cohort = "noise_free" in res
    if cohort:
        cols += ["R² vs noise-free", "oracle R²"]
    for c in cols:
        table.add_column(c, justify="left" if c == "target" else "right")
    for t in res["targets"]:
        row = [t, _fmt(res["r2"][t]), _fmt(res["rmse"][t])]
        if cohort:
            row += [_fmt(res["noise_free"]["r2"][t]), _fmt(res["oracle"]["r2"][t])]
        table.add_row(*row)
    con = Console()
    con.print(table)
    hyper = res.get("hyperparameters")
    con.print(f"fit {res['fit_s']:.1f} s" + (f", hyper-parameters {hyper}" if hyper else ""))
    pp = res.get("population_prediction")
    if pp:
        for who in ("regressor", "population_model"):
            parts = [f"{k} RMSE {v['rmse']:.4g} ({v['n_obs']} obs)" for k, v in pp[who].items()]
            con.print(f"study subjects simulated from the {who.replace('_', ' ')}: " + "; ".join(parts))
    for w in res.get("warnings", []):
        con.print(f"[yellow]warning:[/yellow] {w}")
