"""End-to-end runs behind ``pkpd-jax qkernel``: tables in, metrics out.

- [`run_tables`][]: train on one table, evaluate on another (one row per subject: covariate and
  parameter columns, parameters in natural units and > 0; the regression is on their logs).
- [`run_cohort`][]: draw a synthetic cohort from the example study's truth or from a fit's
  posterior, split it, evaluate against the individual targets, the noise-free covariate function
  and the oracle ceiling, and simulate the real study's subjects from the predicted parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


__all__ = ["read_table", "run_tables", "run_cohort", "parse_names", "covariate_model_from_fit"]


def parse_names(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError(f"{what}: no names given (e.g. 'BW,COMED').")
    dup = sorted({n.upper() for n in names if sum(m.upper() == n.upper() for m in names) > 1})
    if dup:
        raise ValueError(f"{what}: {dup} listed more than once.")
    return names


def read_table(path, what: str):
    """A CSV as text columns with upper-cased names (a polars frame)."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} table {str(path)!r} does not exist.")
    if path.is_dir():
        raise ValueError(f"{what} table {str(path)!r} is a directory, not a CSV file.")
    try:
        df = pl.read_csv(path, infer_schema=False)
    except Exception as e:  # polars raises several error types for malformed files
        raise ValueError(f"{what} table {str(path)!r} cannot be read as CSV: {e}") from None
    if df.height == 0:
        raise ValueError(f"{what} table {str(path)!r} has no data rows.")
    upper = [c.strip().upper() for c in df.columns]
    dup = sorted({c for c in upper if upper.count(c) > 1})
    if dup:
        raise ValueError(
            f"{what} table {str(path)!r}: column(s) {dup} appear more than once (names are case-insensitive)."
        )
    return df.rename(dict(zip(df.columns, upper)))


def _columns(df, names: Sequence[str], what: str, path, *, positive: bool = False) -> np.ndarray:
    """Numeric columns `names` (case-insensitive) as ``(N, k)``; errors name the row and column."""
    missing = [n for n in names if n.upper() not in df.columns]
    if missing:
        raise ValueError(
            f"{what} table {str(path)!r} has no column {missing[0]!r}; its columns are "
            f"{', '.join(df.columns)}."
        )
    out = np.empty((df.height, len(names)))
    for j, name in enumerate(names):
        col = df[name.upper()].to_list()
        for i, v in enumerate(col):
            s = (v or "").strip()
            if s in ("", ".", "NA", "NaN", "nan"):
                raise ValueError(
                    f"{what} table {str(path)!r}, row {i + 1}, column {name}: value is missing; "
                    "every subject needs a value."
                )
            try:
                x = float(s)
            except ValueError:
                raise ValueError(
                    f"{what} table {str(path)!r}, row {i + 1}, column {name}: value {s!r} is not a number."
                ) from None
            if not math.isfinite(x):
                raise ValueError(
                    f"{what} table {str(path)!r}, row {i + 1}, column {name}: value {s!r} is not finite."
                )
            if positive and not x > 0:
                raise ValueError(
                    f"{what} table {str(path)!r}, row {i + 1}, column {name}: value {s} is not "
                    "> 0; parameters are regressed on the log scale and must be positive."
                )
            out[i, j] = x
    return out


def _options(kernel, method, qubits, layers, bandwidth, cv_subset, seed):
    opts = {}
    if kernel != "covariate":
        if bandwidth is not None:
            if not bandwidth > 0:
                raise ValueError(f"--bandwidth must be > 0; got {bandwidth}.")
            hyper_name = {"rbf": "lengthscale"}.get(kernel, "bandwidth")
            if kernel == "linear":
                raise ValueError("--bandwidth does not apply to the linear kernel.")
            opts["hyper"] = {hyper_name: float(bandwidth)}
        if qubits is not None and qubits < 1:
            raise ValueError(f"--qubits must be >= 1; got {qubits}.")
        if layers < 1:
            raise ValueError(f"--layers must be >= 1; got {layers}.")
        opts.update(n_qubits=qubits, layers=layers, cv_subset=cv_subset, seed=seed)
    return opts


def _fit_predict(kernel, method, X, Y, features, targets, Xt, *, structure=None, **opts):
    from .regression import make_regressor

    reg = make_regressor(kernel, method, structure=structure, **opts)
    t0 = time.perf_counter()
    reg.fit(X, Y, features, targets)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = reg.predict(Xt)
    return reg, pred, fit_s, time.perf_counter() - t0


def _summary(reg, features, targets, n_train, n_test, fit_s, predict_s) -> dict:
    info = reg.info
    return {
        "kernel": reg.kernel_name,
        "method": reg.method,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "features": list(features),
        "targets": list(targets),
        "fit_s": fit_s,
        "predict_s": predict_s,
        "hyperparameters": info.get("hyperparameters"),
        "ridge": info.get("ridge"),
        "svr": info.get("svr"),
        "feature_map": info.get("feature_map"),
        "warnings": info.get("warnings", []),
    }


def run_tables(
    train,
    test,
    *,
    features: Sequence[str],
    targets: Sequence[str] | None = None,
    kernel: str = "angle",
    method: str = "krr",
    qubits: int | None = None,
    layers: int = 1,
    bandwidth: float | None = None,
    cv_subset: int = 2000,
    seed: int = 0,
    out=None,
) -> dict:
    """Train on table `train`, evaluate on `test` (CSV paths). Returns the result dictionary."""
    from .._x64 import enable_x64
    from .evaluate import r2_rmse

    enable_x64()
    tr, te = read_table(train, "training"), read_table(test, "test")
    features = list(features)
    if targets is None:
        skip = {f.upper() for f in features} | {"ID"}
        targets = [c for c in tr.columns if c not in skip]
        if not targets:
            raise ValueError(
                f"training table {str(train)!r} has no columns besides the features {features}; "
                "give --targets."
            )
    targets = list(targets)
    both = sorted({f.upper() for f in features} & {t.upper() for t in targets})
    if both:
        raise ValueError(f"{both} cannot be both a feature and a target.")
    X = _columns(tr, features, "training", train)
    Y = np.log(_columns(tr, targets, "training", train, positive=True))
    Xt = _columns(te, features, "test", test)
    Yt = np.log(_columns(te, targets, "test", test, positive=True))
    opts = _options(kernel, method, qubits, layers, bandwidth, cv_subset, seed)
    reg, pred, fit_s, predict_s = _fit_predict(kernel, method, X, Y, features, targets, Xt, **opts)
    r2, rmse, notes = r2_rmse(Yt, pred, targets)
    res = _summary(reg, features, targets, X.shape[0], Xt.shape[0], fit_s, predict_s)
    res.update(r2=r2, rmse=rmse, notes=notes, scale="log")
    if out is not None:
        _write_predictions(out, te, features, targets, Xt, pred)
    return res


def _write_predictions(out, te, features, targets, Xt, pred) -> None:
    import polars as pl

    cols = {}
    if "ID" in te.columns:
        cols["ID"] = te["ID"].to_list()
    cols.update({f: Xt[:, j] for j, f in enumerate(features)})
    cols.update({t: np.exp(pred[:, k]) for k, t in enumerate(targets)})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(cols).write_csv(out)


def run_cohort(
    *,
    from_fit=None,
    n: int = 10000,
    n_test: int = 2000,
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    kernel: str = "angle",
    method: str = "krr",
    qubits: int | None = None,
    layers: int = 1,
    bandwidth: float | None = None,
    cv_subset: int = 2000,
    seed: int = 0,
    study_rmse: bool = True,
    max_draws: int | None = 1000,
    out=None,
) -> dict:
    """Synthetic cohort of `n` training + `n_test` test subjects from a fit's posterior
    (`from_fit`, a fit directory) or, with ``from_fit=None``, from the example study's truth."""
    from .._x64 import enable_x64
    from .cohort import cohort_from_fit, cohort_from_truth
    from .evaluate import evaluate_predictions, population_prediction_rmse

    enable_x64()
    if n < 20:
        raise ValueError(f"--n must be >= 20 training subjects; got {n}.")
    if n_test < 5:
        raise ValueError(f"--n-test must be >= 5; got {n_test}.")
    opts = _options(kernel, method, qubits, layers, bandwidth, cv_subset, seed)
    if from_fit is not None:
        cohort, gen, pm = cohort_from_fit(from_fit, n + n_test, seed, max_draws=max_draws)
        source = f"fit {from_fit}"
    else:
        cohort, gen, pm = cohort_from_truth(n + n_test, seed)
        source = "truth of the bundled example study"
    cov_names = list(cohort.covariate_names)
    if features is not None:
        unknown = [f for f in features if f.upper() not in cov_names]
        if unknown:
            raise ValueError(
                f"--features {unknown} are not covariates of the population model; it uses "
                f"{', '.join(cov_names)}."
            )
        features = [f.upper() for f in features]
    else:
        features = cov_names
    params = list(cohort.param_names)
    if targets is not None:
        unknown = [t for t in targets if t not in params]
        if unknown:
            raise ValueError(
                f"--targets {unknown} are not parameters of {pm.model.name}; its parameters are "
                f"{', '.join(params)}."
            )
    targets = list(targets) if targets is not None else params
    train, test = cohort.split(n_test, seed=seed + 1)
    fidx = [cov_names.index(f) for f in features]
    tidx = [params.index(t) for t in targets]
    structure = {p: tuple(c for c in s if c in features) for p, s in gen.structure.items()}
    reg, pred, fit_s, predict_s = _fit_predict(
        kernel,
        method,
        train.covariates[:, fidx],
        train.log_params[:, tidx],
        features,
        targets,
        test.covariates[:, fidx],
        structure=structure,
        **opts,
    )
    ev = evaluate_predictions(pred, test, targets)
    res = _summary(reg, features, targets, train.n, test.n, fit_s, predict_s)
    res.update(
        source=source,
        scale="log",
        r2=ev["individual"]["r2"],
        rmse=ev["individual"]["rmse"],
        noise_free=ev["noise_free"],
        oracle=ev["oracle"],
        gap_to_oracle=ev["gap_to_oracle"],
        notes=ev["notes"],
    )
    if study_rmse:
        study_cov = np.stack([np.asarray(pm.dataset.covariate(c), float) for c in cov_names], 1)
        typical = gen.noise_free(study_cov)
        res["population_prediction"] = {
            "subjects": pm.n_subjects,
            "regressor": population_prediction_rmse(
                pm, reg.predict(study_cov[:, fidx]), targets, fill=typical
            ),
            "population_model": population_prediction_rmse(pm, typical, params),
        }
    if out is not None:
        import polars as pl

        te = pl.DataFrame({"ID": np.arange(1, test.n + 1)})
        _write_predictions(out, te, features, targets, test.covariates[:, fidx], pred)
    return res


def covariate_model_from_fit(
    fit_dir,
    *,
    n: int = 2000,
    n_test: int = 500,
    kernel: str = "angle",
    method: str = "krr",
    seed: int = 0,
    cv_subset: int = 1000,
):
    """A kernel regressor of the individual parameters on the covariates, trained on a synthetic
    cohort of `n` subjects drawn from the fit's posterior, for the virtual trials
    (``individual_model=`` of [`pkpd_jax.trials.dose_search.answer_questions`][]).

    Returns ``(individual_model, summary)``: ``individual_model({covariate: (m,)}) -> (m, P)``
    natural-unit parameters (the predicted conditional mean of the unconstrained parameters,
    mapped back through each parameter's bijection), and the regressor's summary with its R²
    against the noise-free covariate function on `n_test` held-out subjects."""
    from .._x64 import enable_x64
    from .cohort import cohort_from_fit
    from .evaluate import evaluate_predictions

    enable_x64()
    cohort, gen, pm = cohort_from_fit(fit_dir, n + n_test, seed, max_draws=1000)
    features = list(cohort.covariate_names)
    targets = list(cohort.param_names)
    train, test = cohort.split(n_test, seed=seed + 1)
    structure = {p: tuple(s) for p, s in gen.structure.items()}
    opts = _options(kernel, method, None, 1, None, cv_subset, seed)
    reg, pred, fit_s, predict_s = _fit_predict(
        kernel, method, train.covariates, train.log_params, features, targets, test.covariates,
        structure=structure, **opts,
    )
    ev = evaluate_predictions(pred, test, targets)
    summary = _summary(reg, features, targets, train.n, test.n, fit_s, predict_s)
    summary.update(r2_noise_free=ev["noise_free"]["r2"], r2_individual=ev["individual"]["r2"])
    params = pm.model.params
    if [p.name for p in params] != targets:
        raise ValueError(f"cohort parameters {targets} do not match the model's {pm.model.param_names}")

    def individual_model(covariates: dict) -> np.ndarray:
        missing = [c for c in features if c not in covariates]
        if missing:
            raise ValueError(f"the covariate model needs covariates {missing}.")
        x = np.stack([np.asarray(covariates[c], float) for c in features], axis=1)
        u = np.asarray(reg.predict(x), float)
        return np.stack([np.asarray(p.to_natural(u[:, k])) for k, p in enumerate(params)], axis=1)

    return individual_model, summary
