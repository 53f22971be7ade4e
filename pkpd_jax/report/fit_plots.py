"""Plots of a population fit: traces, pairs, visual predictive check, individual fits.

`fit_plots(fit_result, out)` writes `FIT_PLOTS` into a fit directory; pass it as
``fit(..., plots=fit_plots)`` (what ``pkpd-jax fit`` and ``pkpd-jax run`` do). This module reads
the fit (`pkpd_jax.inference`); the inference layer never imports it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..inference.fitdir import FitResult
from ..solve import SolverConfig, simulate_population


__all__ = ["FIT_PLOTS", "KEY_PARAMS", "fit_plots", "trace_plot", "pair_plot", "vpc_plot",
           "individual_fits_plot", "vpc_bins"]

#: The files `fit_plots` writes.
FIT_PLOTS = ("trace.png", "pairs.png", "vpc.png", "individual_fits.png")

#: Parameters shown in the pair plot when present.
KEY_PARAMS = ("CL", "V", "V1", "IC50", "EC50", "BW_CL", "COMED_CL", "omega_CL")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def trace_plot(draws: dict[str, np.ndarray], path: Path, max_params: int = 24) -> None:
    """One panel per population parameter, one line per chain."""
    plt = _plt()
    names = list(draws)[:max_params]
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.9 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        for c, chain in enumerate(np.atleast_2d(draws[name])):
            ax.plot(chain, lw=0.4, alpha=0.8, label=f"chain {c}")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pair_plot(draws: dict[str, np.ndarray], names: list[str], path: Path) -> None:
    plt = _plt()
    names = [n for n in names if n in draws][:5]
    k = len(names)
    if k < 2:
        return
    fig, axes = plt.subplots(k, k, figsize=(2.2 * k, 2.2 * k), squeeze=False)
    flat = {n: np.asarray(draws[n]).ravel() for n in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ax = axes[i, j]
            if i == j:
                ax.hist(flat[a], bins=30, color="C0", alpha=0.8)
            elif i > j:
                ax.plot(flat[b], flat[a], ".", ms=1, alpha=0.3)
            else:
                ax.axis("off")
            if i == k - 1:
                ax.set_xlabel(b, fontsize=8)
            if j == 0 and i > 0:
                ax.set_ylabel(a, fontsize=8)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def vpc_bins(times: np.ndarray, n_bins: int = 8) -> np.ndarray:
    """Bin edges at quantiles of the observation times (so every bin has data)."""
    edges = np.unique(np.quantile(times, np.linspace(0, 1, n_bins + 1)))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def _percentiles_by_bin(t, y, edges, qs=(5, 50, 95)):
    idx = np.digitize(t, edges) - 1
    out = np.full((len(qs), len(edges) - 1), np.nan)
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.sum() >= 2:
            out[:, b] = np.percentile(y[sel], qs)
    return out


def vpc_plot(pm, positions: np.ndarray, path: Path, *, seed: int = 0, n_rep: int = 200) -> dict:
    """Observed 5/50/95th percentiles vs 90% prediction intervals of the same percentiles from
    `n_rep` replicate studies (each from a posterior draw, new η, residual error).
    Returns the fraction of observed percentiles inside their intervals per observation type."""
    plt = _plt()
    flat = np.asarray(positions).reshape(-1, positions.shape[-1])
    rng = np.random.default_rng(seed)
    pick = flat[rng.choice(flat.shape[0], size=min(n_rep, flat.shape[0]), replace=False)]
    rep = pm.simulate_predictive(jnp.asarray(pick), jax.random.key(seed))
    dv = np.asarray(rep.dv)
    ok = np.asarray(rep.status) == 0
    time_, dvid, mask = (np.asarray(a) for a in (rep.time, rep.dvid, rep.mask))
    obs = np.asarray(pm.dataset.obs_dv)
    types = [t for t in (1, 2) if np.any(mask & (dvid == t))]
    fig, axes = plt.subplots(1, len(types), figsize=(5.5 * len(types), 4), squeeze=False)
    coverage = {}
    for ax, t in zip(axes.ravel(), types):
        sel = mask & (dvid == t)
        tt, yy = time_[sel], obs[sel]
        edges = vpc_bins(tt)
        mids = 0.5 * (edges[1:] + edges[:-1])
        observed = _percentiles_by_bin(tt, yy, edges)
        sims = np.stack([_percentiles_by_bin(tt, dv[r][sel], edges) for r in range(dv.shape[0])
                         if ok[r].all()])
        lo, hi = np.nanpercentile(sims, 5, axis=0), np.nanpercentile(sims, 95, axis=0)
        inside = (observed >= lo) & (observed <= hi)
        coverage[str(t)] = float(np.nanmean(np.where(np.isnan(observed), np.nan, inside)))
        for q, color in zip(range(3), ("C0", "C3", "C0")):
            ax.fill_between(mids, lo[q], hi[q], color=color, alpha=0.2, lw=0)
            ax.plot(mids, observed[q], "-o", color=color, ms=3, lw=1)
        ax.plot(tt, yy, ".", color="0.5", ms=2, alpha=0.5)
        ax.set_xlabel("time (h)")
        ax.set_ylabel("concentration (mg/L)" if t == 1 else "biomarker")
        if t == 1:
            ax.set_yscale("log")
        ax.set_title(f"VPC DVID {t}: observed 5/50/95th pct vs 90% PI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return coverage


def individual_fits_plot(pm, positions: np.ndarray, path: Path, max_subjects: int = 12) -> None:
    """Observed data and individual predictions (posterior-mean individual parameters) on a
    fine grid, for the first `max_subjects` subjects."""
    plt = _plt()
    flat = np.asarray(positions).reshape(-1, positions.shape[-1])
    theta = np.exp(np.mean(np.log(np.asarray(pm.individual_parameters(jnp.asarray(flat)))), 0))
    ds = pm.dataset
    n = min(max_subjects, ds.n_subjects)
    t_end = float(np.max(np.asarray(ds.obs_time)))
    # A fine grid plus every observation and dose-end time, so that peaks are drawn at their height.
    reg_np = jax.tree.map(np.asarray, ds.regimen)
    ends = (reg_np.time + np.maximum(reg_np.duration, 0.0))[:n].ravel()
    grid = np.unique(np.concatenate([
        np.linspace(0.0, t_end, 1200), np.asarray(ds.obs_time)[:n].ravel(), ends[ends <= t_end],
    ]))
    reg = jax.tree.map(lambda a: a[:n], ds.regimen)
    sol = simulate_population(pm.model, jnp.asarray(theta[:n]), reg, jnp.asarray(grid),
                              config=SolverConfig(), throw=False)
    types = list(pm.types)
    per_row = 4
    rows = -(-n // per_row) * len(types)
    fig, axes = plt.subplots(rows, per_row, figsize=(2.8 * per_row, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for s in range(n):
        t_obs = np.asarray(ds.obs_time[s])
        m = np.asarray(ds.obs_mask[s])
        for r, t in enumerate(types):
            ax = axes[(s // per_row) * len(types) + r, s % per_row]
            ax.axis("on")
            sel = m & (np.asarray(ds.obs_dvid[s]) == t)
            pred = np.asarray(sol.conc[s] if t == 1 else sol.resp[s])
            ax.plot(grid, pred, lw=0.8, label="individual prediction")
            ax.plot(t_obs[sel], np.asarray(ds.obs_dv[s])[sel], "o", ms=2.5, color="C3",
                    label="observed")
            ax.tick_params(labelsize=5)
            ax.set_title(f"ID {ds.ids[s]} · {'concentration' if t == 1 else 'biomarker'}",
                         fontsize=7)
    axes[0, 0].legend(fontsize=5, loc="best")
    fig.suptitle("Individual fits (posterior geometric-mean individual parameters)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fit_plots(fr: FitResult, out: Path) -> dict:
    """All fit plots (`FIT_PLOTS`) into the fit directory `out`.

    **Arguments:** `fr`, the [`FitResult`][] of `pkpd_jax.inference.fit.fit`; `out`, the directory.

    **Returns:** the VPC coverage figures (fraction of observed percentiles inside their
    intervals, per observation type).
    """
    out = Path(out)
    draws = fr.population_draws()
    trace_plot(draws, out / "trace.png")
    pair_plot(draws, list(KEY_PARAMS), out / "pairs.png")
    cov = vpc_plot(fr.population, fr.result.draws, out / "vpc.png")
    individual_fits_plot(fr.population, fr.result.draws, out / "individual_fits.png")
    return cov
