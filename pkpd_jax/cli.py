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
    from .solve import SimulationError

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
    from .solve import SimulationError, SolverConfig, simulate as run_sim

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
    public: Annotated[
        str | None,
        typer.Option(help="Instead, a classic public data set converted to NONMEM format: "
                     "'theoph' (oral theophylline) or 'phenobarb' (neonatal phenobarbital)."),
    ] = None,
):
    """Write the bundled example study (NONMEM format) and its known truth, or a public data set."""
    import shutil

    from .data.example import example_paths

    if public is not None:
        from .data import write_nonmem
        from .data.public import PUBLIC_DATASETS, load_public

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


@app.command()
@_friendly
def validate(
    file: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
):
    """Check a data set; print a one-line summary, or the first problem (row and column)."""
    from .data import validate as run_validate

    typer.echo(str(run_validate(file)))


#: Settings of `pkpd-jax run` (full / `--fast`). The full run keeps 4 x 600 draws after 600
#: warm-up iterations: the dose answers use 100 of them, and on the example study (seed 0) the
#: 600-iteration warm-up ends with the low-rank metric of a 1000-iteration one (11.5 leapfrog
#: steps per draw, R-hat <= 1.003, no divergence, smallest bulk / tail ESS 673 / 605 per 4000
#: draws); `pkpd-jax fit` keeps 1000 + 1000 by default, and --warmup / --samples override both.
RUN_SETTINGS = {
    "full": dict(chains=4, warmup=600, samples=600, metric="low_rank", n_virtual=1000, n_draws=100,
                 qkernel_n=2000),
    "fast": dict(chains=2, warmup=200, samples=150, metric="low_rank", n_virtual=300, n_draws=40,
                 qkernel_n=500),
}
_FULL, _FAST = RUN_SETTINGS["full"], RUN_SETTINGS["fast"]


def _run_settings(fast: bool, **overrides: int | None) -> dict:
    """`RUN_SETTINGS` of the full or `--fast` run with the user's ``chains``, ``warmup`` and
    ``samples`` (``None`` keeps the setting's); raises `ValueError` naming a bad option."""
    settings = dict(RUN_SETTINGS["fast" if fast else "full"])
    for name, value in overrides.items():
        if value is None:
            continue
        least = 0 if name == "warmup" else 1
        if value < least:
            raise ValueError(f"--{name} must be >= {least}; got {value}.")
        settings[name] = value
    return settings


#: The settings a reused fit (OUT/fit/run_settings.json) must have been run with.
FIT_SETTING_KEYS = ("chains", "warmup", "samples", "metric")
#: The population model fitted by `run` when no selector decides (see model_selection.json).
DEFAULT_PIPELINE_MODEL = ("pk_2c_iv_infusion", "pd_indirect_inhib_kin")


@app.command()
@_friendly
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
    threshold: Annotated[float, typer.Option(help="Biomarker threshold to stay below.")] = 3.3,
    seed: Annotated[int, typer.Option(help="Seed for every random step.")] = 0,
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
    import time

    from ._x64 import enable_x64

    enable_x64()
    from .data import read_nonmem
    from .data.example import example_paths
    from .inference.diagnostics import warning_table
    from .inference.fit import fit as run_fit
    from .report.html import write_report
    from .report.overview import study_overview
    from .trials.dose_search import answer_questions, check_trial_inputs

    check_trial_inputs(threshold=threshold, targets=(0.9, 0.75))  # before hours of work, not after
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"no data file {data}")
    settings = _run_settings(fast, chains=chains, warmup=warmup, samples=samples)
    source = data if data is not None else example_paths()[0]
    truth = example_paths()[1] if data is None else None
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings = {}

    typer.echo(f"[1/5] validating {'bundled example study' if data is None else source}")
    t = time.perf_counter()
    summary = study_overview(source, out)
    typer.echo(summary["text"])
    timings["validate_s"] = time.perf_counter() - t

    typer.echo("[2/5] model selection")
    t = time.perf_counter()
    selection = _select_model(source, pk, pd)
    timings["select_s"] = time.perf_counter() - t
    (out / "model_selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    typer.echo(f"      {selection['pk']} + {selection['pd']} ({selection['how']})")

    typer.echo(f"[3/5] population fit ({settings['chains']} chains, {settings['warmup']} warm-up + "
               f"{settings['samples']} draws)")
    t = time.perf_counter()
    fit_dir = out / "fit"
    if reuse_fit and _finished_fit(fit_dir, source, selection, settings, seed):
        typer.echo(f"      reusing the finished fit in {fit_dir}")
    else:
        fr = run_fit(
            read_nonmem(source),
            pk=selection["pk"],
            pd=selection["pd"],
            chains=settings["chains"],
            warmup=settings["warmup"],
            samples=settings["samples"],
            metric=settings["metric"],
            seed=seed,
            out=fit_dir,
            log=lambda m: typer.echo(f"      {m}"),
        )
        from rich.console import Console

        _print_fit_table(fr)
        Console().print(warning_table(fr.warnings))
        (fit_dir / "run_settings.json").write_text(json.dumps(
            {"data": str(Path(source).resolve()), "pk": selection["pk"], "pd": selection["pd"],
             "seed": seed, **{k: settings[k] for k in FIT_SETTING_KEYS}}, indent=2) + "\n")
    timings["fit_s"] = time.perf_counter() - t

    typer.echo(f"[4/5] in-silico trials ({settings['n_virtual']} virtual subjects x "
               f"{settings['n_draws']} posterior draws, daily and weekly, 3 scenarios)")
    t = time.perf_counter()
    individual_model, extra_sections, assumptions = None, [], []
    if qkernel:
        from .quantum.pipeline import covariate_model_from_fit

        individual_model, qk = covariate_model_from_fit(fit_dir, n=settings["qkernel_n"], seed=seed)
        (out / "qkernel.json").write_text(json.dumps(qk, indent=2, default=float) + "\n")
        # R² is undefined (None) for a parameter without covariate effects (a constant target)
        r2 = ", ".join(f"{k} {v:.3f}" for k, v in qk["r2_noise_free"].items() if v is not None)
        typer.echo(f"      quantum-kernel covariate model ({qk['kernel']} {qk['method']}, "
                   f"{qk['n_train']} synthetic subjects, {qk['fit_s']:.1f} s): R² vs the covariate "
                   f"equations {r2}")
        extra_sections.append((
            "Quantum-kernel covariate model",
            f"Virtual subjects' typical parameters come from a {qk['kernel']}-kernel {qk['method']} "
            f"regressor of {', '.join(qk['features'])} trained on {qk['n_train']} synthetic subjects "
            f"drawn from the posterior; held-out R² against the fitted covariate equations: {r2}.",
        ))
        assumptions.append(
            "Quantum-kernel covariate model: the typical parameters given the covariates are the "
            "regressor's prediction for every posterior draw (the between-subject variability still "
            "varies by draw), so the dose intervals understate the uncertainty in the typical values."
        )
        timings["qkernel_s"] = time.perf_counter() - t
    answers = answer_questions(
        fit_dir, n_virtual=settings["n_virtual"], n_draws=settings["n_draws"], seed=seed,
        threshold=threshold, out_dir=out, data=source, individual_model=individual_model,
    )
    (out / "answers.json").write_text(json.dumps(answers, indent=2) + "\n")
    timings["trials_s"] = time.perf_counter() - t

    typer.echo("[5/5] report")
    t = time.perf_counter()
    report = write_report(out, fit_dir=fit_dir, answers=answers, truth=truth, model_selection=selection,
                          extra_sections=extra_sections, assumptions=assumptions)
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    _print_answers(answers)
    typer.echo(f"wrote {out / 'answers.json'} and {report} ({timings['total_s']:.0f} s)")


def _select_model(source, pk: str | None, pd: str | None) -> dict:
    """The model to fit: the user's choice, else the shipped model selectors' choice (`pkpd-jax
    classify`), else the default population model.

    `pk`/`pd` (and `how`) are what is fitted; with the selectors, `selected` is their choice,
    `probabilities` their study-level class probabilities, and `fitted_reason` says why the fitted
    model differs from the selected one (a class the population fit cannot use for these data).
    A user-given `pd` is kept while the selector chooses the PK class.
    """
    if pk is not None:
        return {"pk": pk, "pd": pd, "how": "given on the command line"}
    default_pd = DEFAULT_PIPELINE_MODEL[1] if pd is None else pd
    try:
        from .amortized.classify import classify_study

        result = classify_study(source)
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
    why = _unfittable_pk(selected["pk"], source)
    if why:
        out["pk"] = DEFAULT_PIPELINE_MODEL[0]
        reasons.append(f"selected PK class {selected['pk']} not fitted: {why}; default "
                       f"{DEFAULT_PIPELINE_MODEL[0]} fitted instead")
    if reasons:
        out["fitted_reason"] = "; ".join(reasons)
    return out


def _unfittable_pk(name: str, source) -> str | None:
    """Why the population fit cannot use PK class `name` for the study's doses (None: it can).

    The fit takes any registry class; what it cannot do is meaningful: an infusion into an
    absorption depot, or a dose compartment (`CMT`) the class does not have."""
    import numpy as np

    from .data import read_nonmem
    from .models import get_pk

    cls = get_pk(name)
    df = read_nonmem(source)
    doses = df.filter(df["EVID"] == 1)
    depot = cls.dose_cmt != cls.central
    if depot and "DUR" in doses.columns and bool(np.any(np.nan_to_num(doses["DUR"].to_numpy()) > 0)):
        return "the study's doses are IV infusions and the class absorbs from a depot"
    cmt = np.nan_to_num(doses["CMT"].to_numpy()) if "CMT" in doses.columns else np.zeros(0)
    if cmt.size and cmt.max() > len(cls.states):
        return f"the data dose into CMT {int(cmt.max())} and the class has {len(cls.states)} compartments"
    return None


def _finished_fit(fit_dir: Path, source, selection: dict, settings: dict, seed: int) -> bool:
    path = fit_dir / "run_settings.json"
    if not (path.exists() and (fit_dir / "summary.json").exists() and (fit_dir / "positions.npy").exists()):
        return False
    saved = json.loads(path.read_text())
    want = {"data": str(Path(source).resolve()), "pk": selection["pk"], "pd": selection["pd"], "seed": seed,
            **{k: settings[k] for k in FIT_SETTING_KEYS}}
    return saved == want


def _print_answers(answers: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Dose answers (posterior-median coverage; 90% interval of the per-draw dose)")
    for col in ("question", "dose (mg)", "interval (mg)"):
        table.add_column(col, justify="left" if col == "question" else "right")
    for key, val in answers.items():
        lo, hi = (val.get("dose_interval") or [None, None])[:2]
        fmt = lambda v: "not reached" if v is None else f"{v:g}"
        table.add_row(key, fmt(val.get("dose")), f"[{fmt(lo)}, {fmt(hi)}]")
    Console().print(table)


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
    metric: Annotated[
        str, typer.Option(help="QHMC mass centre: 'low_rank' (diagonal + rank-64 correction) or 'diag'.")
    ] = "low_rank",
    chains: Annotated[int, typer.Option(help="Chains run in parallel.")] = 4,
    warmup: Annotated[int, typer.Option(help="Warm-up (adaptation) iterations per chain.")] = 1000,
    samples: Annotated[int, typer.Option(help="Kept draws per chain (after thinning).")] = 1000,
    thin: Annotated[int, typer.Option(help="Keep every `thin`-th iteration.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same draws.")] = 0,
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
    from .inference.diagnostics import warning_table
    from .inference.fit import fit as run_fit

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
        plots=plots,
        parametrization=(parametrization if parametrization in ("auto", "centered", "noncentered")
                         else [p.strip() for p in parametrization.split(",") if p.strip()]),
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
_COMMAND_MODULES = ("amortized.corpus_commands", "amortized.commands", "amortized.classify_commands",
                    "quantum.commands", "trials.commands", "virtual_patients.commands",
                    "twin.commands", "pbpk.commands")


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
    from .devices import use_compilation_cache, use_host_devices

    use_host_devices()  # one JAX device per core: a fit's chains run on all cores
    use_compilation_cache()  # a second fit/run of the same study skips compilation
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
