"""Fit a population model to a study and save everything later stages need.

`fit` = validate the data -> build the [`PopulationModel`][] -> starting points (short MAP) ->
sample (`qhmc` or `nuts`, chains in parallel) -> diagnostics -> write the fit directory
(`pkpd_jax.inference.fitdir`: ``summary.json``, ``draws.parquet``, ``positions.npy``,
``fit.json``, ``data.csv``) -> the caller's plots, if any (``pkpd-jax fit`` passes
`pkpd_jax.report.fit_plots.fit_plots`: ``trace.png``, ``pairs.png``, ``vpc.png``,
``individual_fits.png``).

`load_fit(DIR)` (from `pkpd_jax.inference.fitdir`, re-exported here) rebuilds the population
model and the draws from such a directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import polars as pl
from blackjax.adaptation.window_adaptation import build_schedule

from ..data import Dataset, read_nonmem
from ..models import get_model
from .adaptation import longest_slow_window
from .diagnostics import check, prior_sd_ratio, summarize
from .fitdir import (
    FitResult as FitResult,
    load_fit as load_fit,
    parametrization_meta,
    save_fit as save_fit,
    summary_json as _summary_json,  # noqa: F401  (its old private name here, for old callers)
)
from .likelihood import PopulationModel
from .samplers import sample


__all__ = ["FitResult", "fit", "load_fit", "save_fit", "WARMUP_MAX_STEPS", "AUTO_CENTERED_MIN_WEIGHT"]


#: Leapfrog steps per QHMC warm-up iteration at most (`fit` only; `sample`'s own default is 100).
#: On the bundled example study the low-rank warm-up wants 8-15 steps per iteration, and the
#: early diagonal windows up to ~30; the cap cut the warm-up's gradients by ~14 % with the same
#: R-hat and ESS (benchmarks/results/fit_low_rank.md).
WARMUP_MAX_STEPS = 16

#: ``parametrization="auto"`` centres a random effect when the median over subjects of its data
#: weight (data information relative to the population prior) is at least this.
AUTO_CENTERED_MIN_WEIGHT = 2.0


def fit(
    data,
    *,
    pk: str,
    pd: str | None = None,
    covariates: str = "auto",
    sampler: str = "qhmc",
    chains: int = 4,
    warmup: int = 1000,
    samples: int = 1000,
    thin: int = 1,
    seed: int = 0,
    out: str | Path | None = None,
    priors: dict | None = None,
    progress: bool = True,
    plots: Callable[[FitResult, Path], object] | bool | None = None,
    map_steps: int = 300,
    parametrization: str | list[str] = "auto",
    chain_devices: int | None = None,
    metric: str = "low_rank",
    sampler_options: dict | None = None,
    log=print,
) -> FitResult:
    """Fit `pk` (+ `pd`) to `data` (a CSV path, a polars frame or a [`Dataset`][]).

    `parametrization`: ``"centered"``, ``"noncentered"``, a list of the random effects to centre,
    or ``"auto"`` (default): start centred, then, per random effect, keep it centred when the
    median over subjects of its data weight ([`PopulationModel.data_weight`][] at the starting
    point) is at least `AUTO_CENTERED_MIN_WEIGHT`, and non-centre it otherwise (the mode and
    curvature are mapped, no second optimisation); all non-centred for sparse data. On the
    bundled example study (rich sampling) the centred form needs 2-5x fewer leapfrog steps per
    iteration than the non-centred one; its weakly informed random effects (e.g. of Q) are
    better sampled non-centred (no funnel between ω and the individual values).

    `chain_devices`: split the chains over that many JAX devices (see [`sample`][]); by default
    as many local devices as divide the chains. The command line splits a CPU host into one
    device per core, so the chains of a fit run on all cores.

    `metric`: QHMC's mass centre, ``"low_rank"`` (default: a diagonal scale plus a rank-64
    correction estimated from the slow windows' draws and gradients; on the bundled study 10-12
    leapfrog steps per iteration instead of 28 with ``"diag"``, see
    ``benchmarks/results/fit_low_rank.md``) or ``"diag"``. Ignored by NUTS (blackjax's diagonal
    window adaptation).

    `sampler_options`: fields of [`QHMCOptions`][] / [`NUTSOptions`][] (e.g.
    ``{"target_acceptance_rate": 0.9}``). QHMC's warm-up trajectories are capped at
    `WARMUP_MAX_STEPS` leapfrog steps per iteration unless ``max_warmup_steps`` is given (the
    warm-up needs positions in the typical set and acceptance statistics, not long
    trajectories; the sampling phase is not capped).

    `plots`: a function called as ``plots(fit_result, out)`` once the fit directory `out` is
    written, e.g. [`pkpd_jax.report.fit_plots.fit_plots`][] (what ``pkpd-jax fit`` passes);
    ``None`` or ``False``: no plots. (The inference layer does not import the report layer, so
    the plotter is the caller's choice.)

    Every input problem (bad rows, missing covariate columns, a PD model without PD
    observations, no doses) raises a `ValueError` before anything is compiled.
    """
    from .._x64 import enable_x64

    enable_x64()
    if metric not in ("diag", "low_rank"):
        raise ValueError(f"metric must be 'diag' or 'low_rank', got {metric!r}")
    if chains < 1 or warmup < 0 or samples < 1 or thin < 1:
        raise ValueError(
            f"need chains >= 1, warmup >= 0, samples >= 1, thin >= 1; got {chains}, {warmup}, "
            f"{samples}, {thin}."
        )
    frame = data if isinstance(data, Dataset) else read_nonmem(data)
    dataset = frame if isinstance(frame, Dataset) else Dataset.from_frame(frame)
    if isinstance(parametrization, str) and parametrization not in ("auto", "centered", "noncentered"):
        raise ValueError(
            f"parametrization must be 'auto', 'centered', 'noncentered' or a list of the random "
            f"effects to centre; got {parametrization!r}"
        )
    model = get_model(pk, pd)
    first = "centered" if parametrization == "auto" else (
        parametrization if isinstance(parametrization, str) else list(parametrization))
    pm = PopulationModel(model, dataset, covariates, priors, parametrization=first)
    # (after the data checks, so that a data problem is reported first; still before compiling)
    if plots is True:
        raise TypeError(
            "fit: plots=True no longer picks a plotter; pass the function, e.g. "
            "plots=pkpd_jax.report.fit_plots.fit_plots, or None for no plots."
        )
    if plots is not None and plots is not False and not callable(plots):
        raise TypeError(f"fit: plots must be a function (fit_result, out) or None, got {plots!r}")
    log(f"model {model.name}: {pm.n_subjects} subjects, {pm.dim} unknowns, covariates "
        f"{[e.name for e in pm.effects] or 'none'}")

    t0 = time.perf_counter()
    key = jax.random.key(seed)
    start = pm.starting_points(key, chains, map_steps=map_steps)
    if parametrization == "auto":
        weights = np.nanmedian(pm.data_weight(start.mode, start.curvature), axis=0)
        centred = [b for b, w in zip(pm.bsv_params, weights) if w >= AUTO_CENTERED_MIN_WEIGHT]
        shown = ", ".join(f"{b} {w:.2g}" for b, w in zip(pm.bsv_params, weights))
        if not centred:
            log(f"sparse data (median data weight per random effect: {shown}; all < "
                f"{AUTO_CENTERED_MIN_WEIGHT}): non-centred random effects")
            pm = PopulationModel(model, dataset, covariates, priors, parametrization="noncentered")
            start = pm.starting_points(key, chains, map_steps=map_steps)
        elif len(centred) < len(pm.bsv_params):
            weak = [b for b in pm.bsv_params if b not in centred]
            log(f"median data weight per random effect: {shown}; centred {', '.join(centred)}, "
                f"non-centred {', '.join(weak)} (weight < {AUTO_CENTERED_MIN_WEIGHT})")
            pm, mode, h = pm.reparametrized(centred, start.mode, start.curvature)
            start = pm.scatter(key, chains, mode, h)
        else:
            log(f"rich data (median data weight per random effect: {shown}): centred random effects")
    log(f"starting points ready ({time.perf_counter() - t0:.1f} s, MAP {map_steps} steps + curvature)")
    if sampler == "qhmc" and metric == "low_rank" and not _low_rank_can_engage(warmup, chains, pm.dim):
        log(f"metric: diag (no warm-up window pools the {2 * pm.dim} draws a low-rank estimate needs)")
        metric = "diag"
    result = sample(
        pm.logdensity,
        start.positions,
        sampler=sampler,
        num_warmup=warmup,
        num_samples=samples,
        thin=thin,
        seed=seed,
        progress=progress,
        chain_devices=chain_devices,
        value_and_grad_fn=pm.value_and_grad,
        **{**({"max_warmup_steps": WARMUP_MAX_STEPS} if sampler == "qhmc" else {}),
           **({"metric": metric, "max_rank": 64} if sampler == "qhmc" and metric == "low_rank" else {}),
           **(sampler_options or {})},
        **({"inverse_mass_init": start.inverse_mass} if sampler == "qhmc" else {}),
    )
    vals = pm.unflatten(result.draws)
    names = list(pm.names)
    stacked = np.stack([np.asarray(vals[n]) for n in names], axis=-1)
    table = summarize(stacked, names).with_columns(
        pl.Series("prior_sd_ratio", prior_sd_ratio(stacked, names, pm.prior_table())))
    warns = check(result, table)
    fr = FitResult(pm, result, table, warns, None if out is None else Path(out))
    if out is not None:
        save_fit(fr, out, data_frame=None if isinstance(frame, Dataset) else frame,
                 meta={"pk": pk, "pd": pd, "covariates": covariates, "priors": priors,
                       "metric": metric if sampler == "qhmc" else None,
                       "parametrization": parametrization_meta(pm)})
        if plots:
            plots(fr, Path(out))
    return fr


def _low_rank_can_engage(warmup: int, chains: int, dim: int) -> bool:
    """Whether some slow warm-up window pools the ``2 * dim`` draws the low-rank estimator needs
    (see ``metrics.low_rank_estimate``); otherwise the low-rank mode would only re-estimate the
    diagonal, at the cost of extra compilations, and the Welford diagonal is used instead."""
    if warmup <= 0:
        return False
    return longest_slow_window(np.asarray(build_schedule(warmup))) * chains >= 2 * dim
