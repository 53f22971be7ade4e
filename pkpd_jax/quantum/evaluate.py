"""Honest evaluation of covariate -> parameter regressors.

Individual parameters contain between-subject variability that no covariate explains, so a
perfect regressor of the covariate function still has ``R² < 1`` on individual targets. Reported,
per target, on held-out subjects (all on the log scale):

- ``individual``: R² and RMSE against the held-out individual log-parameters;
- ``noise_free``: against ``E[log θ | covariates]`` of the generating model (what a regressor
  can learn at best);
- ``oracle``: the R² and RMSE that ``E[log θ | covariates]`` itself reaches on the individual
  targets: the ceiling for the ``individual`` figures.

R² is ``1 − SS_res/SS_tot``. Where the reference values do not vary (a parameter without any
covariate effect has a constant noise-free function) R² is undefined: it is reported as ``None``
with the reason in ``notes``, never as NaN.

[`population_prediction_rmse`][] simulates the real study's subjects (their doses and sampling
times) from predicted parameters and compares with the observed concentrations and biomarker
values: the population-prediction (PRED-type, η = 0) error of a covariate model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


__all__ = ["r2_rmse", "evaluate_predictions", "population_prediction_rmse"]

#: Relative variance under which a reference is considered constant (R² undefined).
_CONSTANT_TOL = 1e-12


def r2_rmse(y: np.ndarray, yhat: np.ndarray, names: Sequence[str]) -> tuple[dict, dict, dict]:
    """``({name: R² or None}, {name: RMSE}, {name: note})`` column by column."""
    y, yhat = np.asarray(y, float), np.asarray(yhat, float)
    if y.shape != yhat.shape:
        raise ValueError(f"shapes differ: {y.shape} vs {yhat.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(yhat))):
        raise FloatingPointError("non-finite values in the targets or predictions")
    r2, rmse, notes = {}, {}, {}
    for k, name in enumerate(names):
        res = float(np.sum((y[:, k] - yhat[:, k]) ** 2))
        tot = float(np.sum((y[:, k] - y[:, k].mean()) ** 2))
        rmse[name] = float(np.sqrt(res / y.shape[0]))
        scale = max(float(np.mean(y[:, k] ** 2)), 1.0)
        if tot <= _CONSTANT_TOL * scale * y.shape[0]:
            r2[name] = None
            notes[name] = (
                "reference values are constant (e.g. no covariate acts on this parameter): R² undefined"
            )
        else:
            r2[name] = 1.0 - res / tot
    return r2, rmse, notes


def evaluate_predictions(pred: np.ndarray, test, names: Sequence[str] | None = None) -> dict:
    """Metrics of predicted log-parameters `pred` ``(M, P)`` on a held-out
    [`Cohort`][pkpd_jax.quantum.cohort.Cohort] (columns ordered as ``test.param_names``)."""
    names = tuple(test.param_names if names is None else names)
    idx = [test.param_names.index(p) for p in names]
    y = test.log_params[:, idx]
    out = {}
    r2, rmse, notes = r2_rmse(y, pred, names)
    out["individual"] = {"r2": r2, "rmse": rmse}
    if test.noise_free is not None:
        f = test.noise_free[:, idx]
        r2n, rmsen, notes_n = r2_rmse(f, pred, names)
        r2o, rmseo, _ = r2_rmse(y, f, names)
        out["noise_free"] = {"r2": r2n, "rmse": rmsen}
        out["oracle"] = {"r2": r2o, "rmse": rmseo}
        notes = {**notes, **{k: v for k, v in notes_n.items()}}
        out["gap_to_oracle"] = {
            p: (None if r2[p] is None or r2o[p] is None else r2o[p] - r2[p]) for p in names
        }
    out["notes"] = notes
    return out


def population_prediction_rmse(
    pm, log_params: np.ndarray, names: Sequence[str], fill: np.ndarray | None = None
) -> dict:
    """RMSE of concentration (DVID 1) and biomarker (DVID 2) when the study's subjects are
    simulated from predicted parameters (one row per study subject, in ``pm.dataset`` order).

    `names` are the predicted parameters (log scale); the model's other parameters come from
    `fill` ``(N, P)`` (log scale, in ``pm.param_names`` order), e.g. the population model's
    typical values. Quantified observations only (BLQ rows are left out); the RMSE is in the
    observation's units (mg/L, biomarker units), with the number of observations."""
    import jax.numpy as jnp

    names = list(names)
    P = list(pm.param_names)
    n = pm.n_subjects
    lp = np.asarray(log_params, float)
    if lp.shape != (n, len(names)):
        raise ValueError(f"need predictions ({n}, {len(names)}) for the study's subjects; got {lp.shape}")
    missing = [p for p in P if p not in names]
    if missing and fill is None:
        raise ValueError(f"no prediction for {missing}: pass `fill` (e.g. the typical values)")
    u = np.zeros((n, len(P))) if fill is None else np.array(fill, float)
    for k, p in enumerate(names):
        if p in P:
            u[:, P.index(p)] = lp[:, k]
    f, ok = _predict_fn(pm)(jnp.exp(jnp.asarray(u)))
    f, ok = np.asarray(f), np.asarray(ok)
    if not ok.all():
        bad = [pm.dataset.ids[i] for i in np.flatnonzero(~ok)]
        raise FloatingPointError(f"simulation failed for subjects {bad[:5]} at the predicted parameters")
    ds = pm.dataset
    use = np.asarray(ds.obs_mask) & ~np.asarray(ds.obs_blq)
    dv, dvid = np.asarray(ds.obs_dv, float), np.asarray(ds.obs_dvid)
    out = {}
    for t, label in ((1, "concentration"), (2, "biomarker")):
        sel = use & (dvid == t)
        if sel.any():
            out[label] = {"rmse": float(np.sqrt(np.mean((f[sel] - dv[sel]) ** 2))), "n_obs": int(sel.sum())}
    return out


_PREDICT_CACHE: dict = {}


def _predict_fn(pm):
    import jax

    key = id(pm)
    if key not in _PREDICT_CACHE:
        _PREDICT_CACHE.clear()
        _PREDICT_CACHE[key] = (pm, jax.jit(pm.predictions))
    return _PREDICT_CACHE[key][1]
